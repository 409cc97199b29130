"""What every estimator shares: the context it reads, the output it writes, call counting.

An estimator turns a :class:`~probes.sampling.Trajectory` into estimates along its sigma grid:
``log p(leaf | x_sigma)`` ``[B, S', L]`` for the posterior estimators, or per-sample level entropies
and node contributions directly (``immse``). Costs are counted in *sample-evaluations*: a denoiser
or classifier call on a batch of B inputs counts B.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from probes.entropy.engine import EntropyCurves, tree_entropy
from probes.errors import ProbesError


@dataclass(frozen=True)
class ProbeContext:
    """What a probe is built from: the model's parts, the grid, and what the estimators read.

    A model family builds the fields it knows (:meth:`probes.families.base.Family.build`); a run
    adds its grid, prior and generation settings with :func:`dataclasses.replace` (the object is
    frozen: nothing is patched after it is made). Each estimator names the fields it requires and
    raises a :class:`ProbesError` when one is missing.

    Attributes:
        taxonomy: the :class:`probes.taxonomy.Taxonomy` whose leaves index every ``[..., L]`` tensor.
        sigmas: the run's grid (``immse`` integrates on it; others use the trajectory's own grid).
        denoiser: the denoiser posteriors are read with (rollout completions, plug-in). Runs pass
            the model's plain denoiser, called with ``cond=None`` (unconditional, unguided).
        cond_denoiser: the unguided base denoiser for class-conditional calls (``bayes``,
            ``immse``); defaults to ``denoiser``.
        conditioner: taxonomy node names -> ``cond`` for ``cond_denoiser``.
        classifier: clean input -> leaf log-probabilities (``plugin``, ``rollout``).
        prior: ``[L]`` leaf probabilities; uniform when ``None`` (``bayes`` starts from it,
            ``immse`` takes its entropies as the values at ``sigmas[0]``).
        sampler: sampling method (``rollout`` completions must be stochastic).
        sample_pairs: ``f(n, generator) -> (x0 [n, ...], leaf_index [n])``: labelled clean data
            for ``immse``.
        exact_model: a :class:`probes.models.gmm.GaussianMixture` for the ``exact`` estimator.
        guided_denoiser: the denoiser the samples are generated with (guided and conditional;
            ``guided`` filters with its per-leaf kernels); defaults to ``cond_denoiser``.
        batch_size: rows per internal denoiser/classifier call (bounds memory).
        outside_mass: the probability, under the law the samples were drawn from, that a sample's
            class lies outside the taxonomy (0 for a taxonomy that covers the model's world and for
            leaf-conditional runs). ``bayes`` then filters an extra outside cell.
        partial_taxonomy: the model's world is larger than the taxonomy (mixture components,
            classifier classes or prompts outside it); ``immse`` then measures against the
            taxonomy's own mixture ``D(x; root)`` instead of the unconditional ``D(x)``.
        inside_weighted: the samples come from the model's whole world, so curves are
            inside-weighted means (False for leaf-conditional runs and ``source: data``); an
            estimator that corrects per-sample bias (``rollout``'s jackknife) corrects the quantity
            that is averaged.

    What the model's family adds for sampling and for a run's outcomes:
        shape: one sample's state (``(C, H, W)`` for images, ``(dim,)`` for vectors).
        sigma_max, sigma_min: the noise range the model was trained on (a grid's default ends).
        device: where the model runs; ``state_dtype``: the dtype of its states.
        guidance_base: what classifier-free guidance's unconditional branch calls (a negative
            prompt's denoiser), when it is not ``denoiser``.
        data: ``f(n, generator) -> (x0, leaf_index)``: labelled clean data (``source: data``).
        generation_cond: ``f(sample indices) -> cond`` of the samples a run generates (``None``:
            unconditional).
        decode: states -> images in ``[-1, 1]`` (previews, x0 strips), or ``None`` for states that
            are no images.
        reference: ``f(seed) -> features`` of reference data for the Frechet distance, in the
            classifier's feature space (``None``: the family has none).
        threads: CPU threads the model runs best with (``None``: torch's default).
    """

    taxonomy: Any
    sigmas: torch.Tensor | None = None
    denoiser: Callable | None = None
    cond_denoiser: Callable | None = None
    conditioner: Callable | None = None
    classifier: Callable | None = None
    prior: torch.Tensor | None = None
    sampler: str = "ancestral"
    sample_pairs: Callable | None = None
    exact_model: Any = None
    batch_size: int = 4096
    guided_denoiser: Callable | None = None
    outside_mass: float = 0.0
    partial_taxonomy: bool = False
    inside_weighted: bool = True
    shape: tuple[int, ...] | None = None
    sigma_max: float | None = None
    sigma_min: float | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    state_dtype: torch.dtype = torch.float32
    guidance_base: Callable | None = None
    data: Callable | None = None
    generation_cond: Callable | None = None
    decode: Callable | None = None
    reference: Callable | None = None
    threads: int | None = None

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: the defaults are filled in once, here
        if self.cond_denoiser is None:
            set_(self, "cond_denoiser", self.denoiser)
        if self.guided_denoiser is None:
            set_(self, "guided_denoiser", self.cond_denoiser)
        n_leaves = len(self.taxonomy.leaves)
        prior = self.prior
        if prior is None:
            prior = torch.full((n_leaves,), 1.0 / n_leaves, dtype=torch.float64)
        prior = torch.as_tensor(prior, dtype=torch.float64)
        set_(self, "prior", prior)
        if prior.shape != (n_leaves,) or (prior < 0).any() or abs(float(prior.sum()) - 1) > 1e-6:
            raise ProbesError(f"probe context: prior must be {n_leaves} non-negative probabilities summing to 1")
        if self.batch_size < 1:
            raise ProbesError("probe context: batch_size must be at least 1")
        if not 0.0 <= float(self.outside_mass) < 1.0:
            raise ProbesError(f"probe context: outside_mass must be in [0, 1), got {self.outside_mass}")

    def require(self, field: str, estimator: str, why: str):
        value = getattr(self, field)
        if value is None:
            raise ProbesError(f"estimator {estimator!r} needs ctx.{field}: {why}")
        return value

    def replace(self, **changes) -> ProbeContext:
        """A copy with ``changes``; the derived defaults (``cond_denoiser``, ``guided_denoiser``)
        follow a changed ``denoiser`` unless given."""
        if "denoiser" in changes:
            changes.setdefault("cond_denoiser", changes["denoiser"] if self.cond_denoiser is self.denoiser
                               else self.cond_denoiser)
        if "cond_denoiser" in changes and self.guided_denoiser is self.cond_denoiser:
            changes.setdefault("guided_denoiser", changes["cond_denoiser"])
        return dataclasses.replace(self, **changes)


@dataclass
class EstimatorOutput:
    """Estimates on the sigma grid ``sigmas [S']`` for a batch of B samples.

    ``log_probs`` ``[B, S', L]`` for posterior estimators; ``levels`` ``[B, S', D]`` and
    ``nodes`` ``[B, S', K]`` (per-sample, NaN where the estimator cannot resolve them) with the
    prior's ``prior_levels [D]``/``prior_nodes [K]`` for estimators of entropies (``immse``).
    An estimator may give both (``rollout`` with its jackknife: the averaged posteriors and the
    bias-corrected entropies); the entropies are then what the curves report.
    """

    name: str
    sigmas: torch.Tensor
    log_probs: torch.Tensor | None = None
    levels: torch.Tensor | None = None
    nodes: torch.Tensor | None = None
    denoiser_calls: int = 0
    classifier_calls: int = 0
    prior_levels: torch.Tensor | None = None
    prior_nodes: torch.Tensor | None = None
    bounds: dict | None = None  # per-sample lower/upper bounds (``guided``): levels_lo/hi, nodes_lo/hi
    evidence: Any = None  # per-position evidence maps (``bayes`` with ``evidence``): an ``EvidenceMaps``

    def curves(self, taxonomy, prior=None, inside_weighted: bool = True):
        """The estimates as :class:`probes.entropy.engine.EntropyCurves` over ``taxonomy``.

        ``log_probs`` rows may sum to less than 1 (the model's mass outside the taxonomy);
        ``inside_weighted`` says whether the samples came from the model's whole world (means are
        then weighted by the inside mass) or from the taxonomy (see :mod:`probes.entropy.engine`).
        """
        if self.levels is None:
            return tree_entropy(self.log_probs, taxonomy, self.sigmas, prior=prior, inside_weighted=inside_weighted)
        if self.log_probs is not None:  # per-sample entropies beside the posteriors (rollout's jackknife)
            c = tree_entropy(self.log_probs, taxonomy, self.sigmas, prior=prior, inside_weighted=inside_weighted)
            return EntropyCurves.from_per_sample(self.sigmas, taxonomy, self.levels, self.nodes, prior=c.prior,
                                                 inside=c.inside, inside_weighted=inside_weighted)
        if self.bounds is not None and prior is not None:
            return EntropyCurves.from_per_sample(self.sigmas, taxonomy, self.levels, self.nodes, prior=prior,
                                                 bounds=self.bounds)
        return EntropyCurves(sigmas=self.sigmas, level_names=list(range(1, self.levels.shape[-1] + 1)),
                             node_names=list(taxonomy.internal_nodes), levels=self.levels, nodes=self.nodes,
                             prior_levels=self.prior_levels, prior_nodes=self.prior_nodes, bounds=self.bounds)


class Estimator:
    """Base class. Subclasses set ``name`` and implement :meth:`estimate`.

    Args:
        sigma_stride: evaluate every k-th grid point (``0, k, 2k, ...``) to save compute.
    """

    name = ""
    gives_bounds = False  # whether the output carries lower/upper bounds (``bounds``)

    def __init__(self, sigma_stride: int = 1):
        if int(sigma_stride) != sigma_stride or sigma_stride < 1:
            raise ProbesError(f"estimator {self.name!r}: sigma_stride must be a positive integer, got {sigma_stride}")
        self.sigma_stride = int(sigma_stride)

    def grid_index(self, n_sigmas: int) -> list[int]:
        return list(range(0, n_sigmas, self.sigma_stride))

    def check_grid(self, n_sigmas: int) -> None:
        """An entropy curve needs two sigmas at least: refuse a stride that leaves fewer (a grid of
        one sigma, a one-step pipeline, stays what it is)."""
        kept = len(self.grid_index(n_sigmas))
        if kept < min(2, n_sigmas):
            raise ProbesError(f"estimator {self.name!r}: sigma_stride {self.sigma_stride} keeps {kept} of the "
                              f"{n_sigmas} sigmas; at most {max(1, (n_sigmas - 1))} keeps two")

    def estimate(self, traj, ctx: ProbeContext, generator: torch.Generator | None = None) -> EstimatorOutput:
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({opts})"


def options_of(cls) -> list[str]:
    """Keyword options an estimator class accepts (its ``__init__`` parameters)."""
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p != "self"]


def needs_states(traj, name: str):
    if traj is None or traj.states is None:
        raise ProbesError(f"estimator {name!r} needs a trajectory with recorded states (sample with record=True)")
    return traj.states


class Counter:
    """Wraps a denoiser or classifier and counts sample-evaluations (a call on B inputs counts B)."""

    def __init__(self, fn: Callable):
        self.fn, self.calls = fn, 0

    def __call__(self, x, *args):
        self.calls += x.shape[0]
        return self.fn(x, *args)


def chunks(n: int, size: int):
    """Slices covering ``range(n)`` in pieces of at most ``size``."""
    size = max(1, int(size))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def check_posteriors(out: EstimatorOutput, leaves, what: str, then: str = "") -> None:
    """One line naming the leaf and sigma where an estimator's log-posteriors are NaN or +inf, or
    where not one sample of the batch has mass on any leaf (``-inf`` is zero mass, valid for one
    sample whose class lies outside the taxonomy, never for all of them at once); ``then`` is
    appended (what is kept, how to go on)."""
    lp = out.log_probs
    if lp is None:
        return
    bad = torch.isnan(lp) | (lp == float("inf"))
    if bad.any():
        i, j, k = (int(v) for v in bad.nonzero()[0])
        raise ProbesError(f"{what}: NaN/inf for leaf {leaves[k]!r} at sigma={float(out.sigmas[j]):.4g} (sample {i}); "
                          f"the classifier or model returned non-finite values{then}")
    empty = (lp == float("-inf")).all(-1).all(0)  # [S]: no sample has mass on any leaf
    if empty.any():
        j = int(empty.nonzero()[0])
        raise ProbesError(f"{what}: no mass on any leaf for any sample at sigma={float(out.sigmas[j]):.4g} (all "
                          f"log-probabilities -inf); the classifier or model returned no probabilities{then}")
