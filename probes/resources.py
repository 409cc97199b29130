"""Data that ships with probes: ``taxonomies/``, ``recipes/`` (YAML files addressable by their stem,
``digits-shape``, ``digits``) and ``data/`` (the embedded default model's weights and checksums).

In the repository they sit at the top, next to the package; a wheel maps them into the package
(``probes/taxonomies``, ...). Both are found from here, so shipped names resolve from any directory,
from a checkout (also an editable install) and from an installed wheel.
"""

from __future__ import annotations

from pathlib import Path

from probes.errors import ProbesError

TAXONOMIES = "taxonomies"
RECIPES = "recipes"
DATA = "data"
KINDS = (TAXONOMIES, RECIPES, DATA)

_PACKAGE = Path(__file__).resolve().parent


def shipped_root(kind: str) -> Path:
    """The folder of one kind of shipped data: inside the installed package, else beside it."""
    if kind not in KINDS:
        raise ValueError(f"no shipped data of kind {kind!r}; expected one of {', '.join(KINDS)}")
    for folder in (_PACKAGE / kind, _PACKAGE.parent / kind):
        if folder.is_dir():
            return folder
    raise ProbesError(f"probes' shipped {kind} are missing (looked in {_PACKAGE / kind} and {_PACKAGE.parent / kind}); "
                      "reinstall probes")


def shipped_path(kind: str, *parts: str) -> Path:
    """A shipped file or folder, as a filesystem path (diffusers and safetensors read files)."""
    return shipped_root(kind).joinpath(*parts)


def shipped_names(kind: str) -> list[str]:
    """Stems of the YAML files shipped under ``kind`` (``taxonomies`` or ``recipes``), sorted."""
    return sorted(p.stem for p in shipped_root(kind).glob("*.yaml"))


def is_bare_name(text: str) -> bool:
    """``digits-shape`` is a name; ``./digits-shape``, ``a/b.yaml`` or ``x.yaml`` are paths."""
    path = Path(text)
    return bool(text) and len(path.parts) == 1 and path.suffix == "" and not text.startswith((".", "~"))


def find_shipped(kind: str, name: str) -> Path | None:
    """The shipped ``kind/name.yaml``, or ``None``."""
    path = shipped_path(kind, f"{name}.yaml")
    return path if path.is_file() else None
