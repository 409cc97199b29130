"""Entropy of class posteriors restricted to a taxonomy.

Given ``log p(y | x_sigma)`` over the taxonomy's leaves for N samples along S noise levels, the
engine computes, per sample and per sigma:

* ``log p(v | x)`` for every node v, as the log-sum-exp of its children, level by level from the
  deepest level up;
* the **node contribution** of every internal node n with children c::

      C_n(x) = p(n | x) * H( p(c | x, Y in n) ) = -sum_c p(c|x) * (log p(c|x) - log p(n|x))

* the **level entropies** ``H_l(x) = -sum_cells p(cell | x) log p(cell | x)`` for l = 1..max_depth,
  where the cells of level l are the nodes at depth l plus the leaves shallower than l (they stay
  their own cell). ``H_max_depth`` is ``H(Y | x)``.

The level entropies are computed from the cells directly, not from the C_n, so the chain rule
``H_l = sum of C_n over internal nodes with depth < l`` is an independent check of both. Everything
is accumulated in float64 (inputs may be float32), with ``0 log 0 = 0`` for ``-inf`` log-probs.

Curves are per sample; averages over samples (and their standard errors) are taken by
:class:`EntropyCurves`.

**The model's world may be larger than the taxonomy.** A row of log-probabilities may sum to less
than 1: the deficit is the mass the model puts outside the taxonomy, and the row sum is the
*inside mass* ``p(T | x_sigma)``. Entropies are those of the posterior renormalised over the
leaves, ``H(. | x, T)``. For samples drawn from the model's whole world, means are inside-weighted,
``E[p(T|x) H(. | x, T)] / E[p(T|x)]``, which is ``H(level | x_sigma, Y in T)``: the entropy of the
sub-process of samples whose class lies in the taxonomy (``p(x | T) = p(x) p(T | x) / p(T)``).
For samples drawn from the taxonomy itself (leaf-conditional runs) the plain mean is that quantity
already (``inside_weighted=False``). Mutual information is measured against a prior over the leaves. When none
is given, the prior is the mean posterior over all samples and sigmas: by the martingale property
of the posterior along the noising process, ``E_x[p(y | x_sigma)] = p(y)`` at every sigma, so the
pooled mean posterior is an estimate of the class distribution the samples were drawn from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from probes.errors import ProbesError
from probes.taxonomy.index import TreeIndex

NORMALISATION_TOL = 1e-3
_AUTO_CHUNK_ELEMENTS = 2**24  # float64 elements per chunk for the node table (~128 MiB)


# --------------------------------------------------------------------------------------------
# The curves
# --------------------------------------------------------------------------------------------


BOUND_KEYS = ("levels_lo", "levels_hi", "nodes_lo", "nodes_hi")
# A band's ends are means over samples, each with its own sampling error. Each moves outward by
# Bernstein's deviation for a mean of N values of range M at this z: z standard errors plus
# z^2 / 3 * M / N (with the true standard deviation, exceeded with probability at most
# exp(-z^2 / 2) = 3.4e-4 per end and point; the sample's standard error stands in for it).
BAND_Z = 4.0


def _as_float64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _weights_like(a: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """Per-sample weights ``[N, S]`` broadcast to ``a`` ``[N, S, ...]`` (ones when None)."""
    if weight is None:
        return np.ones_like(a)
    return np.broadcast_to(weight.reshape(weight.shape + (1,) * (a.ndim - weight.ndim)), a.shape)


def _nan_mean(a: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """(Weighted) mean over axis 0 ignoring NaN; NaN where no sample is finite (no warnings)."""
    ok = np.isfinite(a)
    w = np.where(ok, _weights_like(a, weight), 0.0)
    total = (w * np.where(ok, a, 0.0)).sum(axis=0)
    mass = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mass > 0, total / np.where(mass > 0, mass, 1.0), np.nan)


def _nan_stderr(a: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Standard error of the (weighted) mean over axis 0; NaN entries are ignored and the result is
    NaN where fewer than two samples are finite.

    Unweighted it is the sample std (ddof=1) over sqrt(count). Weighted, the mean is a ratio
    ``sum w a / sum w`` and its linearised standard error is
    ``sqrt(n / (n - 1) * sum (w (a - mean))^2) / sum w``, which is the unweighted formula when all
    weights are 1.
    """
    ok = np.isfinite(a)
    count = ok.sum(axis=0)
    w = np.where(ok, _weights_like(a, weight), 0.0)
    mean = _nan_mean(a, weight)
    dev = np.where(ok, w * (a - mean), 0.0)
    mass = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (dev**2).sum(axis=0) * count / np.maximum(count - 1, 1)
        return np.where((count >= 2) & (mass > 0), np.sqrt(var) / np.where(mass > 0, mass, 1.0), np.nan)


@dataclass(eq=False)
class EntropyCurves:
    """Per-sample entropy curves along the sigma grid, restricted to a taxonomy.

    Arrays are float64 numpy arrays (torch tensors are accepted and converted):

    * ``sigmas`` ``[S]``: the noise levels, in the order given (runs use descending order).
    * ``level_names`` ``[D]``: depths ``1..max_depth``; ``levels[..., -1]`` is ``H(Y | x)``.
    * ``node_names`` ``[K]``: the internal nodes (taxonomy pre-order, root first).
    * ``levels`` ``[N, S, D]``: per-sample level entropies (nats).
    * ``nodes`` ``[N, S, K]``: per-sample node contributions ``C_n`` (nats);
      ``nodes.sum(-1) == levels[..., -1]``.
    * ``prior_levels`` ``[D]``: level entropies of the prior over leaves (``H(cell_l)``); None
      becomes NaN (mutual information is then unavailable).
    * ``prior_nodes`` ``[K]`` or None: node contributions of the prior.
    * ``prior`` ``[L]`` or None: the prior over leaves itself; ``prior_weight`` is the number of
      (sample, sigma) posteriors it averages when it is the default mean posterior (0 when given).

    * ``inside`` ``[N, S]`` or None: the per-sample inside mass ``p(T | x_sigma)`` where the
      model's world is larger than the taxonomy (None: every sample is inside, mass 1).
    * ``inside_weighted``: whether means weight samples by ``inside`` (samples drawn from the
      model's whole world) or not (samples drawn from the taxonomy); see the module docstring.

    * ``bounds`` or None: per-sample lower and upper bounds on the same quantities, a dict with
      ``levels_lo``, ``levels_hi`` ``[N, S, D]`` and ``nodes_lo``, ``nodes_hi`` ``[N, S, K]``
      (the ``guided`` estimator's band; ``levels``/``nodes`` are then its point estimate).

    Any entry may be NaN (an estimator that cannot resolve a level or node at some sigma): means
    and standard errors skip NaN samples and are NaN where no sample is finite.
    Construct directly from arrays, or with :func:`tree_entropy` from log-posteriors.
    """

    sigmas: np.ndarray
    level_names: list[int]
    node_names: list[str]
    levels: np.ndarray
    nodes: np.ndarray
    prior_levels: np.ndarray | None
    prior_nodes: np.ndarray | None = None
    prior: np.ndarray | None = None
    prior_weight: float = 0.0
    _index: TreeIndex | None = field(default=None, repr=False, compare=False)
    bounds: dict | None = None
    inside: np.ndarray | None = None
    inside_weighted: bool = True

    def __post_init__(self):
        if self.inside is not None:
            self.inside = _as_float64(self.inside)
        if self.bounds is not None:
            self.bounds = {key: _as_float64(self.bounds[key]) for key in BOUND_KEYS}
        self.sigmas = _as_float64(self.sigmas).reshape(-1)
        self.levels = _as_float64(self.levels)
        self.nodes = _as_float64(self.nodes)
        if self.prior_levels is None:
            self.prior_levels = np.full(len(self.level_names), np.nan)
        self.prior_levels = _as_float64(self.prior_levels).reshape(-1)
        if self.prior_nodes is not None:
            self.prior_nodes = _as_float64(self.prior_nodes).reshape(-1)
        if self.prior is not None:
            self.prior = _as_float64(self.prior).reshape(-1)
        self.level_names = [int(x) for x in self.level_names]
        self.node_names = [str(x) for x in self.node_names]
        S, D, K = len(self.sigmas), len(self.level_names), len(self.node_names)
        if self.levels.ndim != 3 or self.levels.shape[1:] != (S, D):
            raise ProbesError(
                f"EntropyCurves: levels must be [N, {S}, {D}] (samples, sigmas, levels); "
                f"got {list(self.levels.shape)}"
            )
        if self.nodes.ndim != 3 or self.nodes.shape[1:] != (S, K):
            raise ProbesError(
                f"EntropyCurves: nodes must be [N, {S}, {K}] (samples, sigmas, nodes); "
                f"got {list(self.nodes.shape)}"
            )
        if self.nodes.shape[0] != self.levels.shape[0]:
            raise ProbesError(
                f"EntropyCurves: levels has {self.levels.shape[0]} samples but nodes has "
                f"{self.nodes.shape[0]}"
            )
        if self.inside is not None and self.inside.shape != self.levels.shape[:2]:
            raise ProbesError(f"EntropyCurves: inside must be [N, {S}] (samples, sigmas); "
                              f"got {list(self.inside.shape)}")
        if self.prior_levels.shape != (D,):
            raise ProbesError(f"EntropyCurves: prior_levels must have {D} entries")
        if self.prior_nodes is not None and self.prior_nodes.shape != (K,):
            raise ProbesError(f"EntropyCurves: prior_nodes must have {K} entries")

    def level_bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The band around the level entropies, ``([S, D], [S, D])``, or None (see :meth:`_band`)."""
        return None if self.bounds is None else self._band("levels", self.level_mean())

    def node_bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The band around the node contributions, ``([S, K], [S, K])``, or None (see :meth:`_band`)."""
        return None if self.bounds is None else self._band("nodes", self.node_mean())

    def _band(self, kind: str, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)``: the mean of each per-sample bound moved outward by
        ``BAND_Z * stderr + BAND_Z**2 / 3 * M / N``, then widened to hold ``point``.

        Each end is a sample mean with its own noise, so the plain means can cross or miss the
        truth. The first term is the usual standard-error widening; the second (Bernstein's range
        term, ``M = log`` of the number of cells of the level or children of the node, ``N`` the
        samples) covers what a standard error cannot see: where a small entropy rests on a few
        rare samples, a run that drew fewer of them has both a low mean and a low standard error.
        With fewer than two samples there is no standard error and only the range term applies.
        """
        w = self.sample_weight()
        ranges = self._ranges(kind)
        ends = []
        for key, sign in ((f"{kind}_lo", -1.0), (f"{kind}_hi", 1.0)):
            values = self.bounds[key]
            count = np.maximum(np.isfinite(values).sum(axis=0), 1)
            se = np.nan_to_num(_nan_stderr(values, w), nan=0.0)
            ends.append(_nan_mean(values, w) + sign * (BAND_Z * se + BAND_Z**2 / 3 * ranges[None, :] / count))
        return np.fmin(ends[0], point), np.fmax(ends[1], point)

    def _ranges(self, kind: str) -> np.ndarray:
        """The range ``M`` of each level's or node's entropy: log of its number of cells (children);
        without the taxonomy's index, the largest per-sample lower bound of the curve."""
        if self._index is None:
            values = self.bounds[f"{kind}_lo"]
            largest = np.max(np.where(np.isfinite(values), values, -np.inf), axis=(0, 1), initial=-np.inf)
            return np.where(np.isfinite(largest), largest, 0.0)
        if kind == "levels":
            return np.log([len(cells) for cells in self._index.level_cells])
        return np.log([len(self._index.children[n]) for n in self.node_names])

    @classmethod
    def from_per_sample(cls, sigmas, taxonomy, levels, nodes, prior=None, bounds=None, inside=None,
                        inside_weighted: bool = True) -> EntropyCurves:
        """Curves from per-sample level entropies ``[N, S, D]`` and node contributions
        ``[N, S, K]`` computed elsewhere (e.g. by the I-MMSE estimator; NaN where unresolved).

        Levels are ``1..taxonomy.max_depth`` and nodes ``taxonomy.internal_nodes``. The prior's
        entropies come from ``prior`` (``[L]`` probabilities over the leaves); without one they
        are NaN and mutual information is unavailable. ``inside`` ``[N, S]`` is the per-sample inside
        mass where the model's world is larger than the taxonomy (see the module docstring).
        """
        index = TreeIndex(taxonomy)
        if prior is None:
            prior_p, prior_levels, prior_nodes = None, None, None
        else:
            prior_p = _check_prior(prior, index.n_leaves)
            prior_levels, prior_nodes = index.prior_entropies(prior_p)
        return cls(
            sigmas=sigmas,
            level_names=list(range(1, index.max_depth + 1)),
            node_names=list(index.internal),
            levels=levels,
            nodes=nodes,
            prior_levels=prior_levels,
            prior_nodes=prior_nodes,
            prior=prior_p,
            _index=index,
            bounds=bounds,
            inside=inside,
            inside_weighted=inside_weighted,
        )

    # -- summaries -----------------------------------------------------------------------------

    @property
    def n_samples(self) -> int:
        return int(self.levels.shape[0])

    def sample_weight(self) -> np.ndarray | None:
        """Weights ``[N, S]`` of the samples in every mean: the inside mass when the curves are
        inside-weighted and the model's world is larger than the taxonomy, else None (equal)."""
        return self.inside if (self.inside is not None and self.inside_weighted) else None

    def level_mean(self) -> np.ndarray:
        """Mean level entropy over samples, ``[S, D]`` (inside-weighted where that applies)."""
        return _nan_mean(self.levels, self.sample_weight())

    def level_stderr(self) -> np.ndarray:
        """Standard error of :meth:`level_mean` (std over samples / sqrt(N)), ``[S, D]``."""
        return _nan_stderr(self.levels, self.sample_weight())

    def node_mean(self) -> np.ndarray:
        """Mean node contribution ``C_n`` over samples, ``[S, K]``."""
        return _nan_mean(self.nodes, self.sample_weight())

    def node_stderr(self) -> np.ndarray:
        """Standard error of :meth:`node_mean`, ``[S, K]``."""
        return _nan_stderr(self.nodes, self.sample_weight())

    def inside_mean(self) -> np.ndarray | None:
        """Mean inside mass ``E[p(T | x_sigma)]`` over the samples, ``[S]`` (None: all inside)."""
        return None if self.inside is None else _nan_mean(self.inside)

    def inside_stderr(self) -> np.ndarray | None:
        """Standard error of :meth:`inside_mean`, ``[S]``."""
        return None if self.inside is None else _nan_stderr(self.inside)

    def level_count(self) -> np.ndarray:
        """Number of finite samples behind each level mean, ``[S, D]``."""
        return np.isfinite(self.levels).sum(axis=0)

    def node_count(self) -> np.ndarray:
        """Number of finite samples behind each node mean, ``[S, K]``."""
        return np.isfinite(self.nodes).sum(axis=0)

    def mutual_information(self) -> np.ndarray:
        """``I(cell_l ; x_sigma) = H(cell_l) - H(cell_l | x_sigma)`` per level, ``[S, D]``."""
        return self.prior_levels[None, :] - self.level_mean()

    def node_mutual_information(self) -> np.ndarray | None:
        """Information about node n's split, ``C_n(prior) - C_n(sigma)``, ``[S, K]`` (or None)."""
        if self.prior_nodes is None:
            return None
        return self.prior_nodes[None, :] - self.node_mean()

    # -- reshaping -----------------------------------------------------------------------------

    def subset_sigmas(self, idx) -> EntropyCurves:
        """Curves on a subset (or reordering) of the sigma grid; the prior is kept as is."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return EntropyCurves(
            sigmas=self.sigmas[idx],
            level_names=list(self.level_names),
            node_names=list(self.node_names),
            levels=self.levels[:, idx],
            nodes=self.nodes[:, idx],
            prior_levels=self.prior_levels.copy(),
            prior_nodes=None if self.prior_nodes is None else self.prior_nodes.copy(),
            prior=None if self.prior is None else self.prior.copy(),
            prior_weight=self.prior_weight,
            _index=self._index,
            bounds=None if self.bounds is None else {k: v[:, idx] for k, v in self.bounds.items()},
            inside=None if self.inside is None else self.inside[:, idx],
            inside_weighted=self.inside_weighted,
        )

    @staticmethod
    def concat(parts: Sequence[EntropyCurves]) -> EntropyCurves:
        """Join batches along the sample axis.

        All parts must share the sigma grid, levels and nodes. If their priors differ (each batch's
        default prior is its own mean posterior), the pooled prior is the average of the parts'
        priors weighted by ``prior_weight`` and its entropies are recomputed; parts without a
        leaf prior must agree on ``prior_levels``.
        """
        parts = list(parts)
        if not parts:
            raise ProbesError("EntropyCurves.concat: nothing to concatenate")
        first = parts[0]
        for p in parts[1:]:
            if p.sigmas.shape != first.sigmas.shape or not np.allclose(
                p.sigmas, first.sigmas, rtol=1e-9, atol=0
            ):
                raise ProbesError("EntropyCurves.concat: parts have different sigma grids")
            if p.level_names != first.level_names or p.node_names != first.node_names:
                raise ProbesError("EntropyCurves.concat: parts have different levels or nodes")
            if p.inside_weighted != first.inside_weighted:
                raise ProbesError("EntropyCurves.concat: parts weight samples by inside mass differently")
        levels = np.concatenate([p.levels for p in parts], axis=0)
        nodes = np.concatenate([p.nodes for p in parts], axis=0)

        def same(get):
            vals = [get(p) for p in parts]
            if any(v is None for v in vals):
                return all(v is None for v in vals)
            return all(np.allclose(v, vals[0], rtol=1e-12, atol=1e-12, equal_nan=True) for v in vals)

        prior, weight = first.prior, first.prior_weight
        prior_levels, prior_nodes = first.prior_levels, first.prior_nodes
        if same(lambda p: p.prior) and same(lambda p: p.prior_levels):
            weight = sum(p.prior_weight for p in parts)
        elif all(p.prior is not None and p._index is not None for p in parts):
            w = np.array([p.prior_weight for p in parts], dtype=np.float64)
            if not np.all(w > 0):
                raise ProbesError(
                    "EntropyCurves.concat: parts were given different explicit priors; "
                    "pass the same prior to every batch"
                )
            prior = (w[:, None] * np.stack([p.prior for p in parts])).sum(0) / w.sum()
            weight = float(w.sum())
            prior_levels, prior_nodes = first._index.prior_entropies(prior)
        else:
            raise ProbesError(
                "EntropyCurves.concat: parts have different prior level entropies and no leaf "
                "prior to pool; compute them with the same prior"
            )
        return EntropyCurves(
            sigmas=first.sigmas.copy(),
            level_names=list(first.level_names),
            node_names=list(first.node_names),
            levels=levels,
            nodes=nodes,
            prior_levels=np.array(prior_levels, dtype=np.float64),
            prior_nodes=None if prior_nodes is None else np.array(prior_nodes, dtype=np.float64),
            prior=None if prior is None else np.array(prior, dtype=np.float64),
            prior_weight=weight,
            _index=first._index,
            bounds=None if any(p.bounds is None for p in parts) else {
                key: np.concatenate([p.bounds[key] for p in parts], axis=0) for key in BOUND_KEYS},
            inside=None if all(p.inside is None for p in parts) else np.concatenate(
                [np.ones(p.levels.shape[:2]) if p.inside is None else p.inside for p in parts], axis=0),
            inside_weighted=first.inside_weighted,
        )


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


def _check_chunk(chunk: torch.Tensor, sigmas: np.ndarray, start: int) -> torch.Tensor:
    """Raise on NaN, +inf or rows that sum to more than 1; return the rows' log-normalisers
    (``log p(T | x)``: a row may sum to less than 1, the rest being outside the taxonomy)."""
    bad = torch.isnan(chunk)
    if bad.any():
        n, s = [int(i) for i in torch.nonzero(bad)[0, :2]]
        raise ProbesError(
            f"log-probabilities contain NaN at sigma={sigmas[s]:.6g} (sample {start + n}) "
            "(estimator output)"
        )
    pos = chunk == math.inf
    if pos.any():
        n, s = [int(i) for i in torch.nonzero(pos)[0, :2]]
        raise ProbesError(
            f"log-probabilities contain +inf at sigma={sigmas[s]:.6g} (sample {start + n}) "
            "(estimator output)"
        )
    log_total = torch.logsumexp(chunk, dim=-1, keepdim=True)  # [n, S, 1]
    total = log_total.squeeze(-1).exp()
    off = total - 1.0 > NORMALISATION_TOL
    if off.any():
        n, s = [int(i) for i in torch.nonzero(off)[0]]
        raise ProbesError(
            f"log-probabilities do not normalise at sigma={sigmas[s]:.6g} (sample {start + n}): "
            f"probabilities sum to {float(total[n, s]):.6g}, more than 1 (+{NORMALISATION_TOL:g}) "
            "(estimator output)"
        )
    return log_total


def _check_prior(prior, n_leaves: int) -> np.ndarray:
    p = _as_float64(prior).reshape(-1)
    if p.shape != (n_leaves,):
        raise ProbesError(f"entropy prior: must have {n_leaves} entries (one per leaf), got {p.size}")
    if np.isnan(p).any() or (p < 0).any():
        raise ProbesError("entropy prior: has negative or NaN entries")
    if abs(p.sum() - 1.0) > NORMALISATION_TOL:
        raise ProbesError(f"entropy prior: sums to {p.sum():.6g}, expected 1")
    return p / p.sum()


def tree_entropy(
    log_probs,
    taxonomy,
    sigmas,
    prior=None,
    chunk: int | None = None,
    inside_weighted: bool = True,
) -> EntropyCurves:
    """Level entropies and node contributions of ``p(y | x_sigma)`` over a taxonomy.

    Parameters
    ----------
    log_probs : ``[N, S, L]`` tensor (or array) of natural-log posteriors over ``taxonomy.leaves``
        for N samples at S noise levels. float32 or float64; ``-inf`` marks probability zero.
    taxonomy : a :class:`probes.taxonomy.Taxonomy`.
    sigmas : ``[S]`` noise levels, kept in the order given.
    prior : ``[L]`` probabilities over the leaves for the mutual-information baseline, or None for
        the mean posterior over all samples and sigmas (an estimate of p(y): the posterior is a
        martingale along the noising process, so ``E_x[p(y | x_sigma)] = p(y)`` at every sigma).
    chunk : samples processed at a time (bounds memory); None picks one from the problem size.
    inside_weighted : weight means by the inside mass (samples from the model's whole world) or
        not (samples from the taxonomy); only matters when rows sum to less than 1.

    A row may sum to less than 1: the rest is the model's mass outside the taxonomy, and the row
    sum is the inside mass ``p(T | x)`` (kept in ``curves.inside`` when some row is below
    ``1 - 1e-3``; see the module docstring). Raises :class:`ProbesError` if the log-probabilities
    contain NaN or +inf, or a row sums to more than 1 + 1e-3, naming the sigma and sample. Rows are
    renormalised in float64 before use (float32 rounding would otherwise break the chain rule at
    ~1e-7 nats). A row with no mass inside (all ``-inf``) has NaN entropies.
    """
    lp = log_probs if isinstance(log_probs, torch.Tensor) else torch.as_tensor(np.asarray(log_probs))
    lp = lp.detach()
    sig = _as_float64(sigmas).reshape(-1)
    if lp.ndim != 3:
        raise ProbesError(
            f"tree_entropy: log_probs must be [samples, sigmas, leaves]; got shape {list(lp.shape)}"
        )
    N, S, L = lp.shape
    if len(sig) != S:
        raise ProbesError(f"tree_entropy: {len(sig)} sigmas for log_probs with {S} sigma columns")
    index = TreeIndex(taxonomy)
    if index.n_leaves != L:
        raise ProbesError(
            f"tree_entropy: log_probs has {L} leaf columns but the taxonomy has {index.n_leaves} leaves"
        )
    if N == 0:
        raise ProbesError("tree_entropy: no samples")
    if chunk is None:
        chunk = max(1, _AUTO_CHUNK_ELEMENTS // max(1, S * index.width))
    chunk = max(1, int(chunk))

    D, K = index.max_depth, index.n_internal
    levels = torch.empty((N, S, D), dtype=torch.float64)
    nodes = torch.empty((N, S, K), dtype=torch.float64)
    inside = torch.empty((N, S), dtype=torch.float64)
    prior_sum = torch.zeros(L, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, N, chunk):
            block = lp[start : start + chunk].to(device="cpu", dtype=torch.float64)
            n = block.shape[0]
            # renormalise in float64 so that the chain rule holds to float64 precision even for
            # float32 estimator output; the normaliser is the inside mass
            log_inside = _check_chunk(block, sig, start)
            empty = torch.isneginf(log_inside)
            block = torch.where(empty, block, block - log_inside)
            lv, nd = index.compute(block.reshape(n * S, L).T)
            levels[start : start + n] = lv.T.reshape(n, S, D).masked_fill(empty, math.nan)
            nodes[start : start + n] = nd.T.reshape(n, S, K).masked_fill(empty, math.nan)
            mass = log_inside.squeeze(-1).exp()
            inside[start : start + n] = mass
            if prior is None:  # the (inside-weighted) mean renormalised posterior
                w = mass[..., None] if inside_weighted else torch.ones_like(mass)[..., None]
                prior_sum += torch.nan_to_num(torch.exp(block) * w).sum(dim=(0, 1))

    partial = bool((inside < 1.0 - NORMALISATION_TOL).any())
    if prior is None:
        weight = float(inside.sum()) if (partial and inside_weighted) else float(N * S)
        prior_p = (prior_sum / weight).numpy()
        prior_p = prior_p / prior_p.sum()
    else:
        weight = 0.0
        prior_p = _check_prior(prior, L)
    prior_levels, prior_nodes = index.prior_entropies(prior_p)

    return EntropyCurves(
        sigmas=sig,
        level_names=list(range(1, D + 1)),
        node_names=list(index.internal),
        levels=levels.numpy(),
        nodes=nodes.numpy(),
        prior_levels=prior_levels,
        prior_nodes=prior_nodes,
        prior=prior_p,
        prior_weight=weight,
        _index=index,
        inside=inside.numpy() if partial else None,
        inside_weighted=inside_weighted,
    )
