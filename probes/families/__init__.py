"""Model families on the toolkit's sigma axis, one file each, and the registry that lists them.

Adding a family: write ``probes/families/<family>.py`` with a :class:`~probes.families.base.Family`
subclass and add one line to :data:`BUILT_IN`. A family outside this package registers through the
``probes.families`` entry point group (``docs/families.md``): its object is a ``Family`` subclass
(or an instance of one). The recipe schema, the probing of pipelines (:func:`probes.probe`), the
contract tests and the docs table are all driven by :data:`FAMILIES`.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

from probes.errors import ProbesError, quote_library_error
from probes.families.base import BuildSpec, Family
from probes.families.digits import Digits
from probes.families.dit import DiT
from probes.families.edm2 import EDM2
from probes.families.flux import Flux
from probes.families.gmm import GaussianMixtureFamily
from probes.families.pixart import PixArt
from probes.families.sd import StableDiffusion
from probes.families.sd3 import StableDiffusion3
from probes.families.sdxl import StableDiffusionXL

ENTRY_POINT_GROUP = "probes.families"

BUILT_IN: tuple[Family, ...] = (
    StableDiffusion(),
    StableDiffusionXL(),
    StableDiffusion3(),
    Flux(),
    PixArt(),
    DiT(),
    EDM2(),
    Digits(),
    GaussianMixtureFamily(),
)


def _kinds(family: Family) -> list[str]:
    return [m.model_fields["kind"].annotation.__args__[0] for m in family.recipe_models]


def _installed() -> list[Family]:
    """Families other packages register under :data:`ENTRY_POINT_GROUP`; one that fails to load is
    named in one line on stderr and left out (a broken plugin must not break every run)."""
    found = []
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        try:
            obj = point.load()
            family = obj() if isinstance(obj, type) else obj
            if not isinstance(family, Family):
                raise TypeError(f"{point.value} is a {type(family).__name__}, not a probes Family")
        except Exception as err:  # any failure of third-party code: name it, keep going
            print(f"probes: warning: family entry point {point.name!r} ({point.value}) not loaded: "
                  f"{quote_library_error(err)}", file=sys.stderr)
            continue
        found.append(family)
    return found


def _registry(families) -> dict[str, Family]:
    registry: dict[str, Family] = {}
    kinds: dict[str, str] = {}
    for family in families:
        if not family.name or family.name in registry:
            print(f"probes: warning: family {family.name!r} ({type(family).__module__}) is registered twice or "
                  "has no name; the first one is kept", file=sys.stderr)
            continue
        clash = [k for k in _kinds(family) if k in kinds]
        if clash:
            print(f"probes: warning: family {family.name!r} declares model.kind {clash[0]!r}, already family "
                  f"{kinds[clash[0]]!r}'s; it is left out", file=sys.stderr)
            continue
        registry[family.name] = family
        kinds.update(dict.fromkeys(_kinds(family), family.name))
    return registry


#: name -> family; the one list every other part of the toolkit reads.
FAMILIES: dict[str, Family] = _registry([*BUILT_IN, *_installed()])


def family_of(pipe) -> Family:
    """The family serving a diffusers pipeline (matched on its class or a base class's name)."""
    for cls in type(pipe).__mro__:
        for family in FAMILIES.values():
            if cls.__name__ in family.pipelines:
                return family
    served = sorted(p for f in FAMILIES.values() for p in f.pipelines)
    raise ProbesError(f"pipe: {type(pipe).__name__} is not a pipeline any model family serves; supported: "
                      f"{', '.join(served)} (a new family: docs/families.md)")


def recipe_models() -> list[type]:
    """Every family's recipe ``model:`` sections: the recipe schema's union is built from these."""
    return [m for f in FAMILIES.values() for m in f.recipe_models]


def classifier_models() -> list[type]:
    """Classifier sections that families declare for themselves."""
    return [m for f in FAMILIES.values() for m in f.classifier_models]


def recipe_kinds() -> dict[str, Family]:
    """Recipe ``model.kind`` -> family."""
    return {k: f for f in FAMILIES.values() for k in _kinds(f)}


def family_of_kind(kind: str) -> Family:
    kinds = recipe_kinds()
    if kind not in kinds:
        raise ProbesError(f"model.kind: unknown kind {kind!r}; expected one of {', '.join(kinds)}")
    return kinds[kind]


def families_table() -> str:
    """A Markdown table of the registry (for the docs; regenerated, never typed)."""
    rows = ["| family | recipe `model.kind` | pipelines | parameterisation | conditioning | notes |",
            "|---|---|---|---|---|---|"]
    for f in FAMILIES.values():
        kinds = ", ".join(f"`{k}`" for k in _kinds(f))
        rows.append(f"| {f.name} | {kinds} | {', '.join(f.pipelines) or '-'} | {f.parameterisation} "
                    f"| {f.conditioning} | {f.description} |")
    return "\n".join(rows)


__all__ = [
    "BUILT_IN",
    "ENTRY_POINT_GROUP",
    "FAMILIES",
    "BuildSpec",
    "Family",
    "classifier_models",
    "families_table",
    "family_of",
    "family_of_kind",
    "recipe_kinds",
    "recipe_models",
]
