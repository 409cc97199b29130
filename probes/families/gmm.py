"""Gaussian mixtures: exact denoisers and posteriors (the toolkit's ground truth)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator

from probes.errors import ProbesError
from probes.estimators.base import ProbeContext
from probes.families.base import BuildSpec, Family
from probes.models.gmm import GaussianMixture
from probes.schema import MAX_SCALE, MAX_SEED, Strict, leaf_weights

MAX_DIM = 1 << 20  # every node's mean is a vector of this length; pixel-space 256x256x3 is 196,608
# A separation of 0 is a level whose children coincide: a split no sample can decide (a control).
Separation = Annotated[float, Field(ge=0, le=MAX_SCALE)]
Coordinate = Annotated[float, Field(ge=-MAX_SCALE, le=MAX_SCALE)]
REFERENCE_SAMPLES = 4096  # exact mixture samples the Frechet distance is measured against
REFERENCE_SEED = 7919  # added to the recipe's seed: the reference never shares the run's draws


Span = Annotated[list[Annotated[int, Field(ge=0, le=MAX_DIM)]], Field(min_length=2, max_length=2)]


class Region(Strict):
    """A rectangle of an image-shaped mixture, half-open like a Python slice: ``rows: [0, 2]`` is
    rows 0 and 1; every channel."""

    rows: Span
    cols: Span

    @model_validator(mode="after")
    def _ordered(self):
        for name, (start, stop) in (("rows", self.rows), ("cols", self.cols)):
            if stop <= start:
                raise ValueError(f"{name}: [start, stop] needs stop > start, got [{start}, {stop}]")
        return self

    def mask(self, height: int, width: int, field: str) -> torch.Tensor:
        if self.rows[1] > height or self.cols[1] > width:
            raise ProbesError(f"{field}: rows {self.rows} / cols {self.cols} reach outside the {height} x {width} "
                              "image (model.shape)")
        out = torch.zeros(height, width, dtype=torch.bool)
        out[self.rows[0]:self.rows[1], self.cols[0]:self.cols[1]] = True
        return out


class GMMHierarchy(Strict):
    """Means built down the taxonomy: children sit ``separations[depth-1]`` from their parent.

    With ``regions`` (one rectangle per depth, image-shaped mixtures only) the children of every
    node at depth d-1 differ only inside ``regions[d-1]``: the geometry where evidence maps have a
    known answer (:meth:`probes.models.gmm.GaussianMixture.on_regions`)."""

    separations: list[Separation] = Field(min_length=1)
    axis_aligned: bool = False
    share_level_axes: bool = False
    regions: list[Region] | None = Field(None, min_length=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _regions_alone(self):
        if self.regions is not None and (self.axis_aligned or self.share_level_axes):
            raise ValueError("'regions' places every level's directions itself; drop axis_aligned / share_level_axes")
        return self


class GMMModel(Strict):
    """A Gaussian mixture over the taxonomy's leaves (exact posteriors and denoisers)."""

    kind: Literal["gmm"]
    dim: int | None = Field(None, gt=0, le=MAX_DIM)
    shape: Annotated[list[Annotated[int, Field(gt=0, le=MAX_DIM)]], Field(min_length=3, max_length=3)] | None = Field(
        None, description="[C, H, W]: image-shaped samples (means are given flattened row-major)")
    std: float = Field(1.0, gt=0, le=MAX_SCALE)
    weights: dict[str, float] | None = None
    means: dict[str, Annotated[list[Coordinate], Field(min_length=1)]] | None = None
    hierarchy: GMMHierarchy | None = None

    @model_validator(mode="after")
    def _one_source_of_means(self):
        if (self.means is None) == (self.hierarchy is None):
            raise ValueError("give exactly one of 'means' (per leaf) or 'hierarchy'")
        if self.shape is not None:
            values = math.prod(self.shape)
            if values > MAX_DIM:
                raise ValueError(f"shape {self.shape} holds {values} values, more than {MAX_DIM}")
            if self.dim is not None and self.dim != values:
                raise ValueError(f"dim {self.dim} is not the {values} values of shape {self.shape}; give one of them")
        if self.hierarchy is not None and self.dimension is None:
            raise ValueError("'hierarchy' needs 'dim' or 'shape'")
        if self.hierarchy is not None and self.hierarchy.regions is not None and self.shape is None:
            raise ValueError("'hierarchy.regions' are rectangles of an image: give 'shape' [C, H, W]")
        return self

    @property
    def dimension(self) -> int | None:
        return math.prod(self.shape) if self.shape is not None else self.dim


class ExactClassifierConfig(Strict):
    """The mixture's exact clean posterior."""

    kind: Literal["exact"]


class GaussianMixtureFamily(Family):
    name = "gmm"
    parameterisation = "exact"
    conditioning = "mask"
    description = "Gaussian mixtures: exact D(x, sigma, leaves) and exact posteriors"
    recipe_models = (GMMModel,)
    classifier_models = (ExactClassifierConfig,)
    image_classifiers = False

    def build(self, spec: BuildSpec) -> ProbeContext:
        gmm, outside, outside_mass = mixture(spec.model, spec.taxonomy, spec.prior)
        leaves = list(spec.taxonomy.leaves)
        inside = gmm.restricted(leaves)  # the law of x given that its class is a leaf
        classifier = gmm.classifier(leaves) if spec.classifier is not None else None
        scale = float(gmm.largest_eigenvalue()) ** 0.5

        shape = tuple(spec.model.shape) if spec.model.shape is not None else (gmm.dim,)

        def data(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            x0, leaf = inside.sample(n, generator=g)
            return x0.reshape(n, *shape), leaf

        def reference(seed: int) -> torch.Tensor:  # features: flattened, as the classifier's
            g = torch.Generator().manual_seed(seed + REFERENCE_SEED)
            return gmm.sample(REFERENCE_SAMPLES, generator=g)[0].double()

        return ProbeContext(
            taxonomy=spec.taxonomy, denoiser=gmm.denoiser(), conditioner=gmm.conditioner(spec.taxonomy),
            classifier=classifier, prior=inside.weights.double(), shape=shape, sigma_max=20.0 * scale,
            sigma_min=0.02 * spec.model.std, exact_model=gmm, data=data,
            device=spec.device, partial_taxonomy=bool(outside), outside_mass=outside_mass, state_dtype=torch.float64,
            reference=reference, threads=1)

    def denoiser(self, mixture):
        return mixture.denoiser()

    def decoder(self, mixture, call_kwargs: dict | None = None, decode_size=None):
        return lambda x: x

    def conditioner(self, mixture, taxonomy):
        return mixture.conditioner(taxonomy)


def mixture(cfg: GMMModel, taxonomy, prior: torch.Tensor | None) -> tuple[GaussianMixture, list[str], float]:
    """``(mixture, components outside the taxonomy, their weight)`` of a recipe's ``model`` section.

    ``model.means`` may name components that are not leaves (the model's world beyond the
    taxonomy); ``model.weights`` then weighs all of them, and the run's prior over the leaves is
    the inside weights renormalised. A recipe ``prior`` is the mixture's weights (one prior per run:
    sampling, the exact posterior, the filters and the mutual information all use the same one).
    """
    leaves = list(taxonomy.leaves)
    outside = [] if cfg.means is None else [name for name in cfg.means if name not in set(leaves)]
    inner = [name for name in outside if name in set(taxonomy.internal_nodes)]
    if inner:
        raise ProbesError(f"model.means: {inner[0]!r} is an internal node of the taxonomy; a component outside "
                          "the taxonomy needs a name of its own")
    components = leaves + outside
    weights = None
    if cfg.weights is not None:
        what = "a leaf of the taxonomy or a component in model.means" if outside else "a leaf of the taxonomy"
        weights = leaf_weights(cfg.weights, components, "model.weights", what)
    if prior is not None:
        if outside and weights is None:
            raise ProbesError("prior: this mixture has components outside the taxonomy; give model.weights over "
                              "all of them instead (the prior over the leaves is their inside part)")
        if weights is not None:
            inside = weights[: len(leaves)]
            if not torch.allclose(inside / inside.sum(), prior, atol=1e-9):
                raise ProbesError("prior: differs from model.weights; a mixture's weights are its prior, give one "
                                  "of them")
        else:
            weights = prior
    if cfg.means is not None:
        missing = [leaf for leaf in leaves if leaf not in cfg.means]
        if missing:
            raise ProbesError(f"model.means: no mean for leaf {missing[0]!r}")
        rows = [cfg.means[name] for name in components]
        if len({len(r) for r in rows}) != 1 or (cfg.dimension is not None and len(rows[0]) != cfg.dimension):
            raise ProbesError("model.means: every mean must have the same length (model.dim, or the values of "
                              "model.shape)")
        gmm = GaussianMixture.from_means(components, torch.tensor(rows, dtype=torch.float64), cfg.std, weights)
    else:
        h = cfg.hierarchy
        if len(h.separations) < taxonomy.max_depth:
            raise ProbesError(f"model.hierarchy.separations: need one per level ({taxonomy.max_depth}), "
                              f"got {len(h.separations)}")
        if h.regions is not None:
            if len(h.regions) < taxonomy.max_depth:
                raise ProbesError(f"model.hierarchy.regions: need one per level ({taxonomy.max_depth}), "
                                  f"got {len(h.regions)}")
            _, height, width = cfg.shape
            masks = [r.mask(height, width, f"model.hierarchy.regions[{k}]")
                     for k, r in enumerate(h.regions[:taxonomy.max_depth])]
        try:
            if h.regions is not None:
                gmm = GaussianMixture.on_regions(taxonomy, cfg.shape, masks, h.separations[:taxonomy.max_depth],
                                                 std=cfg.std, seed=h.seed)
            else:
                gmm = GaussianMixture.hierarchical(taxonomy, cfg.dimension, h.separations, std=cfg.std, seed=h.seed,
                                                   axis_aligned=h.axis_aligned, share_level_axes=h.share_level_axes)
        except ProbesError as err:  # the mixture's own words; the recipe's field in front
            raise ProbesError(f"model.hierarchy: {err}") from None
        if weights is not None:
            gmm = GaussianMixture.from_means(leaves, gmm.means, cfg.std, weights)
    outside_mass = float(1.0 - gmm.weights[: len(leaves)].sum()) if outside else 0.0
    if outside and outside_mass >= 1.0:
        raise ProbesError("model.weights: the taxonomy's leaves have no weight; give them some")
    return gmm, outside, outside_mass
