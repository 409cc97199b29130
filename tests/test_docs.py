"""The docs point at things that exist: links, anchors, repository paths, CLI flags, shipped recipes.

Checks are textual and cheap (no model is built): a renamed flag, file or heading that a page still
names fails here instead of in a reader's terminal.
"""

import argparse
import re
from pathlib import Path

import pytest

from probes.cli import build_parser
from probes.resources import shipped_names

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEXT = {page: page.read_text() for page in PAGES}


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _links():
    for page, text in TEXT.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if not re.match(r"[a-z]+:", target):
                yield page, target


@pytest.mark.parametrize("page,target", list(_links()), ids=lambda v: str(v).rsplit("/", 1)[-1])
def test_relative_links_and_anchors_resolve(page, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path) if path else page
    assert file.exists(), f"{page.name}: link to missing {target}"
    if anchor and file.suffix == ".md":
        anchors = {_anchor(h) for h in re.findall(r"^#+\s+(.*)$", file.read_text(), re.M)}
        assert anchor in anchors, f"{page.name}: no heading for #{anchor} in {file.name}"


def test_repository_paths_named_in_docs_exist():
    missing = []
    for page, text in TEXT.items():
        for path in re.findall(r"`((?:probes|docs|benchmarks|tests|scripts|experiments)/[\w./-]*\w/?)`", text):
            if "<" not in path and not (ROOT / path).exists():
                missing.append(f"{page.name}: {path}")
        for script in re.findall(r"python ((?:benchmarks|experiments|scripts)/\w+\.py)", text):
            if not (ROOT / script).exists():
                missing.append(f"{page.name}: {script}")
    assert not missing


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def _command_lines():
    """Every `probes ...` command line in code blocks and inline code: its page and the words after `probes`."""
    for page, text in TEXT.items():
        fenced = r"```[a-z]*\n(.*?)```"
        blocks = re.findall(fenced, text, re.S) + re.findall(r"`([^`\n]+)`", re.sub(fenced, "", text, flags=re.S))
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                words = line.split("#", 1)[0].replace("[", " ").replace("]", " ").replace("|", " ").split()
                for i, word in enumerate(words[:-1]):
                    if word in ("probes", ".venv/bin/probes") and (i == 0 or words[i - 1] in ("-m", "&&")
                                                                   or "=" in words[i - 1]):
                        yield page, words[i + 1:]


def test_every_documented_command_and_flag_exists():
    """`probes run ... --resume`, `probes taxonomy export ... --format`: each command and flag a page
    shows is one the CLI accepts (a flag renamed in the code but not in the docs fails here)."""
    top = build_parser()
    commands = _subparsers(top)
    problems, seen = [], 0
    for page, words in _command_lines():
        while words and words[0] in _options(top):
            words = words[1:]             # probes --debug run ...
        if not words or words[0] in ("...", "COMMAND"):
            continue
        if words[0] not in commands:
            problems.append(f"{page.name}: probes {words[0]}: no such command")
            continue
        parser, rest = commands[words[0]], words[1:]
        nested = _subparsers(parser)
        if nested and rest and not rest[0].startswith("-"):
            if rest[0] not in nested:
                problems.append(f"{page.name}: probes {words[0]} {rest[0]}: no such command")
                continue
            parser, rest = nested[rest[0]], rest[1:]
        for flag in (w.split("=", 1)[0] for w in rest if re.match(r"--?[a-zA-Z]", w)):
            seen += 1
            if flag not in _options(parser) | _options(top):
                problems.append(f"{page.name}: probes {words[0]} ... {flag}: no such flag")
    assert seen > 40, "the command-line scan found too few flags: the pattern broke"
    assert not problems


def test_readme_lists_every_shipped_recipe():
    table = re.search(r"\| recipe \| model \| runs on \|\n(.*?)\n\n", TEXT[ROOT / "README.md"], re.S).group(1)
    listed = set(re.findall(r"`([\w.-]+)`", "\n".join(row.split("|")[1] for row in table.splitlines())))
    assert listed == set(shipped_names("recipes"))


def test_every_top_level_name_is_documented():
    import probes

    docs = "\n".join(TEXT.values())
    undocumented = [name for name in probes.__all__
                    if not name.startswith("_") and f"probes.{name}" not in docs and name not in docs]
    assert not undocumented


def _all_parsers(parser: argparse.ArgumentParser, path: str = "probes"):
    yield path, parser
    for name, sub in _subparsers(parser).items():
        yield from _all_parsers(sub, f"{path} {name}")


def test_every_command_and_flag_of_the_cli_is_documented():
    """The other direction: nothing `probes --help` offers is missing from the docs."""
    docs = "\n".join(TEXT.values())
    missing = []
    for path, parser in _all_parsers(build_parser()):
        if path != "probes" and path not in docs:
            missing.append(path)
        for option in _options(parser) - {"-h", "--help", "--version"}:
            if option.startswith("--") and not re.search(re.escape(option) + r"(?![\w-])", docs):
                missing.append(f"{path} {option}")
    assert not missing


def test_dotted_names_in_docs_resolve():
    """`probes.models.stable_diffusion.StableDiffusionDenoiser`, `probes.taxonomy.from_nested`, ...:
    every dotted `probes.<module>.<name>` a page names can be imported."""
    import importlib

    refs = {m for text in TEXT.values() for m in re.findall(r"\bprobes(?:\.[A-Za-z_]\w*){2,}", text)}
    missing = []
    for ref in sorted(refs):
        parts = ref.split(".")
        for i in range(len(parts), 1, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            if obj is None:
                missing.append(ref)
            break
        else:
            missing.append(ref)
    assert len(refs) > 15 and not missing


def test_readme_links_every_page_of_docs():
    readme = TEXT[ROOT / "README.md"]
    assert [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in readme] == []
