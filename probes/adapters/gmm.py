"""Gaussian mixtures: exact denoisers and posteriors (the toolkit's ground truth)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from probes.adapters.base import Family
from probes.schema import MAX_SCALE, MAX_SEED, Strict

MAX_DIM = 1 << 20  # every node's mean is a vector of this length; pixel-space 256x256x3 is 196,608
# A separation of 0 is a level whose children coincide: a split no sample can decide (a control).
Separation = Annotated[float, Field(ge=0, le=MAX_SCALE)]
Coordinate = Annotated[float, Field(ge=-MAX_SCALE, le=MAX_SCALE)]


class GMMHierarchy(Strict):
    """Means built down the taxonomy: children sit ``separations[depth-1]`` from their parent."""

    separations: list[Separation] = Field(min_length=1)
    axis_aligned: bool = False
    share_level_axes: bool = False
    seed: int = Field(0, ge=0, le=MAX_SEED)


class GMMModel(Strict):
    """A Gaussian mixture over the taxonomy's leaves (exact posteriors and denoisers)."""

    kind: Literal["gmm"]
    dim: int | None = Field(None, gt=0, le=MAX_DIM)
    std: float = Field(1.0, gt=0, le=MAX_SCALE)
    weights: dict[str, float] | None = None
    means: dict[str, Annotated[list[Coordinate], Field(min_length=1)]] | None = None
    hierarchy: GMMHierarchy | None = None

    @model_validator(mode="after")
    def _one_source_of_means(self):
        if (self.means is None) == (self.hierarchy is None):
            raise ValueError("give exactly one of 'means' (per leaf) or 'hierarchy'")
        if self.hierarchy is not None and self.dim is None:
            raise ValueError("'hierarchy' needs 'dim'")
        return self


class GaussianMixtureFamily(Family):
    name = "gmm"
    parameterisation = "exact"
    conditioning = "mask"
    description = "Gaussian mixtures: exact D(x, sigma, leaves) and exact posteriors"
    recipe_models = (GMMModel,)

    def build(self, recipe, taxonomy, device):
        from probes.components import build_gmm

        return build_gmm(recipe, taxonomy, device)

    def denoiser(self, mixture):
        return mixture.denoiser()

    def decoder(self, mixture, call_kwargs: dict | None = None, decode_size=None):
        return lambda x: x

    def conditioner(self, mixture, taxonomy):
        return mixture.conditioner(taxonomy)
