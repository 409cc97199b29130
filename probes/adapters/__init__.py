"""Model families on the toolkit's sigma axis, one file each, and the registry that lists them.

Adding a family: write ``probes/adapters/<family>.py`` with a :class:`~probes.adapters.base.Family`
subclass and add one line to :data:`FAMILIES`. The probing of pipelines
(:func:`probes.probe`), the contract tests and the docs table are driven by this registry.
"""

from __future__ import annotations

from probes.adapters.base import DiscreteScheduleDenoiser, Family, FlowDenoiser, SigmaDenoiser
from probes.adapters.digits import Digits
from probes.adapters.dit import DiT
from probes.adapters.edm2 import EDM2
from probes.adapters.flux import Flux
from probes.adapters.gmm import GaussianMixtureFamily
from probes.adapters.pixart import PixArt
from probes.adapters.sd import StableDiffusion
from probes.adapters.sd3 import StableDiffusion3
from probes.adapters.sdxl import StableDiffusionXL
from probes.errors import ProbesError

#: name -> family; the one list every other part of the toolkit reads.
FAMILIES: dict[str, Family] = {family.name: family for family in (
    StableDiffusion(),
    StableDiffusionXL(),
    StableDiffusion3(),
    Flux(),
    PixArt(),
    DiT(),
    EDM2(),
    Digits(),
    GaussianMixtureFamily(),
)}


def family_of(pipe) -> Family:
    """The family serving a diffusers pipeline (matched on its class or a base class's name)."""
    for cls in type(pipe).__mro__:
        for family in FAMILIES.values():
            if cls.__name__ in family.pipelines:
                return family
    served = sorted(p for f in FAMILIES.values() for p in f.pipelines)
    raise ProbesError(f"no adapter for {type(pipe).__name__}; supported pipelines: {', '.join(served)}")


def recipe_models() -> list[type]:
    """Every family's recipe ``model:`` sections: the recipe schema's union is built from these."""
    return [m for f in FAMILIES.values() for m in f.recipe_models]


def recipe_kinds() -> dict[str, Family]:
    """Recipe ``model.kind`` -> family."""
    return {m.model_fields["kind"].annotation.__args__[0]: f for f in FAMILIES.values() for m in f.recipe_models}


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
        kinds = ", ".join(f"`{k}`" for k, fam in recipe_kinds().items() if fam is f)
        rows.append(f"| {f.name} | {kinds} | {', '.join(f.pipelines) or '-'} | {f.parameterisation} "
                    f"| {f.conditioning} | {f.description} |")
    return "\n".join(rows)


__all__ = [
    "FAMILIES",
    "DiscreteScheduleDenoiser",
    "Family",
    "FlowDenoiser",
    "SigmaDenoiser",
    "families_table",
    "family_of",
    "family_of_kind",
    "recipe_kinds",
    "recipe_models",
]
