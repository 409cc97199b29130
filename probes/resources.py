"""Data that ships inside the package, found with :mod:`importlib.resources`.

Three kinds: ``taxonomies/`` and ``recipes/`` (YAML files addressable by their stem, e.g.
``digits-shape``, ``digits``) and ``data/digits/`` (the embedded default model's weights and
checksums). They live in the package so that an installed wheel finds them from any directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from probes.errors import ProbesError

TAXONOMIES = "taxonomies"
RECIPES = "recipes"


def shipped_path(*parts: str) -> Path:
    """A file or folder shipped in the package, as a filesystem path (diffusers and safetensors
    read files, not streams, so a zipped install is refused in one line)."""
    root = files("probes")
    target = root.joinpath(*parts)
    if not isinstance(target, Path):
        raise ProbesError(f"probes is installed in a form whose data files are not on disk ({root}); "
                          "install it as a regular package (pip install probes)")
    return target


def shipped_names(kind: str) -> list[str]:
    """Stems of the YAML files shipped under ``kind`` (``taxonomies`` or ``recipes``), sorted."""
    folder = shipped_path(kind)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def is_bare_name(text: str) -> bool:
    """``digits-shape`` is a name; ``./digits-shape``, ``a/b.yaml`` or ``x.yaml`` are paths."""
    path = Path(text)
    return bool(text) and len(path.parts) == 1 and path.suffix == "" and not text.startswith((".", "~"))


def find_shipped(kind: str, name: str) -> Path | None:
    """The shipped ``kind/name.yaml``, or ``None``."""
    path = shipped_path(kind, f"{name}.yaml")
    return path if path.is_file() else None
