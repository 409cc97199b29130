"""Locating and installing WordNet 3.0 for nltk.

nltk reads WordNet from ``<nltk_data>/corpora/wordnet/``. Two ways to get it there:

* nltk's own ``nltk.download("wordnet")`` (needs its download host);
* the WordNet 3.0 files a Linux distribution ships (Debian/Ubuntu: packages ``wordnet-base`` and
  ``wordnet-sense-index`` in ``/usr/share/wordnet``). nltk reads them once they are copied into its
  layout and the ``lexnames`` file, which Debian does not ship, is added.

:func:`ensure_wordnet` returns nltk's reader. When nltk finds no WordNet but the distribution's
files exist, it lays them out once under ``<sys.prefix>/share/nltk_data`` (a directory nltk
searches by default, so a virtualenv needs no environment variable) and says so on stderr.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from probes.errors import ProbesError

DEBIAN_WORDNET = Path("/usr/share/wordnet")

# The 45 lexicographer files of WordNet 3.0 (lexnames(5WN)): number, name, syntactic category
# (1 noun, 2 verb, 3 adjective, 4 adverb).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

# Files nltk's reader cannot work without.
REQUIRED_FILES = tuple(
    f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")
) + tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv"))

SETUP_HINT = "run `probes wordnet setup` (or python -c \"import nltk; nltk.download('wordnet')\")"

_reader = None


def lexnames_text() -> str:
    """The ``lexnames`` file: ``NN<TAB>name<TAB>category`` per line, 45 lines."""
    return "".join(
        f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)
    )


def default_dest() -> Path:
    """``<sys.prefix>/share/nltk_data``: searched by nltk by default, private to a virtualenv."""
    return Path(sys.prefix) / "share" / "nltk_data"


def has_debian_wordnet(src: str | Path = DEBIAN_WORDNET) -> bool:
    src = Path(src)
    return all((src / name).is_file() for name in REQUIRED_FILES)


def install_from_debian(src: str | Path = DEBIAN_WORDNET, dest: str | Path | None = None) -> Path:
    """Lay out WordNet database files from ``src`` as nltk expects them under ``dest``.

    Copies every regular file of ``src`` (``data.*``, ``index.*``, ``*.exc``, ``index.sense``,
    ``cntlist*``, ...) into ``dest/corpora/wordnet/`` and writes ``lexnames``. Files are copied,
    not linked: nltk's path checks reject links that leave its data directory. Returns the
    ``corpora/wordnet`` directory.
    """
    src = Path(src)
    dest = Path(dest) if dest is not None else default_dest()
    if not src.is_dir():
        raise ProbesError(f"WordNet source {src}: no such directory")
    missing = [name for name in REQUIRED_FILES if not (src / name).is_file()]
    if missing:
        raise ProbesError(
            f"WordNet source {src}: missing {', '.join(missing)} "
            "(on Debian/Ubuntu: apt-get install wordnet-base wordnet-sense-index)"
        )
    target = dest / "corpora" / "wordnet"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Fill a sibling directory first so a failed copy never leaves a half-made corpus.
        staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
        try:
            for path in sorted(src.iterdir()):
                if path.is_file():
                    shutil.copyfile(path, staging / path.name)
            if not (staging / "lexnames").exists():
                (staging / "lexnames").write_text(lexnames_text(), encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    except OSError as exc:
        raise ProbesError(f"WordNet destination {target}: {exc.strerror or exc}") from None
    return target


def _nltk_wordnet():
    """nltk's WordNet reader, loaded; raises LookupError when nltk finds no WordNet."""
    from nltk.corpus import wordnet

    wordnet.ensure_loaded()
    return wordnet


def ensure_wordnet():
    """Return nltk's WordNet reader (``nltk.corpus.wordnet``), loaded and ready.

    When nltk finds no WordNet and Debian's files are present, installs them first (see module
    docstring). Otherwise raises :class:`ProbesError` with the one-line fix.
    """
    global _reader
    if _reader is not None:
        return _reader
    try:
        _reader = _nltk_wordnet()
        return _reader
    except LookupError:
        pass
    if has_debian_wordnet():
        import nltk

        dest = default_dest()
        if str(dest) not in nltk.data.path:
            nltk.data.path.append(str(dest))
        try:
            install_from_debian(DEBIAN_WORDNET, dest)
            print(f"probes: laid out WordNet from {DEBIAN_WORDNET} in {dest}", file=sys.stderr)
        except ProbesError as exc:
            problem = str(exc)
        else:
            problem = "nltk cannot read the copy"
        try:  # also succeeds when a concurrent process finished the same copy first
            _reader = _nltk_wordnet()
            return _reader
        except LookupError:
            raise ProbesError(f"WordNet: not installed for nltk ({problem}); {SETUP_HINT}") from None
    raise ProbesError(f"WordNet: nltk cannot find its WordNet data; {SETUP_HINT}")


def setup_wordnet(source: str | Path | None = None, dest: str | Path | None = None) -> str:
    """Install WordNet for nltk; returns a one-line description of what was done.

    From ``source`` (default: Debian's ``/usr/share/wordnet`` when present) by copying, else via
    ``nltk.download("wordnet")`` into ``dest`` (nltk's default location when ``dest`` is None).
    """
    if source is not None or has_debian_wordnet():
        src = Path(source) if source is not None else DEBIAN_WORDNET
        target = install_from_debian(src, dest)
        note = ""
        if dest is not None and not _on_default_path(Path(dest)):
            note = f" (nltk does not search it by default: export NLTK_DATA={dest})"
        _check_readable(target)
        return f"WordNet from {src} laid out in {target}{note}"
    import nltk

    try:
        ok = nltk.download("wordnet", download_dir=None if dest is None else str(dest), quiet=True)
    except Exception as exc:  # nltk raises assorted network errors
        ok, why = False, str(exc)
    else:
        why = "the download did not complete"
    if not ok:
        raise ProbesError(
            f"WordNet: no local WordNet files (looked in {DEBIAN_WORDNET}) and nltk.download('wordnet') "
            f"failed ({why}); install wordnet-base and wordnet-sense-index, or pass --source DIR"
        )
    return f"WordNet downloaded by nltk into {dest or 'nltk default location'}"


def open_reader(wordnet_dir: str | Path):
    """An nltk ``WordNetCorpusReader`` over ``.../corpora/wordnet`` wherever it lies.

    nltk only opens corpora under its data path, so the enclosing ``nltk_data`` directory is
    added to ``nltk.data.path`` when missing.
    """
    import warnings

    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    wordnet_dir = Path(wordnet_dir)
    data_root = str(wordnet_dir.parent.parent)
    if data_root not in nltk.data.path:
        nltk.data.path.append(data_root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        return WordNetCorpusReader(str(wordnet_dir), None)


def _on_default_path(dest: Path) -> bool:
    import os

    import nltk

    searched = list(nltk.data.path) + os.environ.get("NLTK_DATA", "").split(os.pathsep)
    return any(p and Path(p).expanduser().resolve() == dest.resolve() for p in searched)


def _check_readable(target: Path) -> None:
    try:
        open_reader(target).synset("entity.n.01")
    except Exception as exc:  # a damaged copy fails in many ways inside nltk
        raise ProbesError(f"WordNet at {target}: nltk cannot read it ({exc})") from None
