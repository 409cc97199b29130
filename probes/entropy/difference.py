"""Where in sigma one set of entropy curves knows more than another, with joint bootstrap intervals.

For two sets of curves A and B on one taxonomy and one sigma grid, per level cut l and per
internal node n:

* ``dI(sigma) = I_B - I_A``, with ``I_l = H(cell_l) - H_l(sigma)`` and, per node,
  ``I_n = C_n(prior) - C_n(sigma)`` (nats);
* its **rate** ``d dI / d(-log sigma)``: positive where B gains on A as sigma falls;
* where ``|dI|`` peaks (and its half-peak band) and where ``|rate|`` peaks, each peak refined by a
  parabola through the top three grid points in log sigma.

**Intervals** are bootstrap percentile intervals that resample both sets at once: every replicate
draws multinomial sample weights for A and for B, recomputes both mean curves (and the prior, where
it was estimated as the mean posterior), and from them the whole difference curve, its rate and
where their peaks lie. So the pointwise intervals of ``dI`` and of its rate, and the intervals of
the peak positions, come from one joint resampling. Two pairings:

* ``paired``: sample i of A and sample i of B were drawn from the same seeds (same recipe seed,
  batch size and sample count), so they are resampled together, one weight vector for both. Their
  shared noise then cancels in the difference and the intervals are narrower.
* ``independent``: A and B are resampled separately.

Means are those of the curves themselves: inside-weighted where the model's world is larger than
the taxonomy (:meth:`EntropyCurves.sample_weight`), in the point estimate and in every replicate.

``stderr`` is the standard error of the mean entropy difference (linearised over the samples,
taken together when paired, ``sqrt(se_A^2 + se_B^2)`` otherwise); it leaves out the prior's own
uncertainty, which the bootstrap intervals include.

**Decision shifts.** Each node's decision (:mod:`probes.entropy.decisions`: the peak of its
contribution's rate) moves from A to B by ``value_B - value_A`` on each axis in that axis's units:
log sigma (``log(sigma_B / sigma_A)``), VP time ``t`` and log-SNR ``lambda``. Its interval comes from
the same replicates: each decides A and B under its two weight vectors, and the percentiles are
taken over the replicates in which both decided.

**Runs on different grids** (another scheduler, step count or sigma range) share one axis, log-SNR
``lambda = -2 log sigma``. Their curves are compared over the overlap of the two grids: the grid
with fewer points inside the overlap is the common grid (A's on a tie), and every *per-sample* curve
of the other set is interpolated linearly in lambda (equivalently in log sigma) onto it. Where the
means are inside-weighted, the weighted values ``u x`` and the weights ``u`` are interpolated apart
and divided afterwards. Interpolation is one fixed linear map applied to every sample alike, so the
mean of the interpolated samples, under any replicate's sample counts, is the interpolation of that
replicate's mean: the bootstrap still resamples whole sample paths, and every interval keeps its
meaning. Interpolating the finer set (rather than the coarser one) keeps the interpolation error to
the finer grid's spacing and adds no kinks to the rates. Decisions need no common grid: each set is
decided on its own full grid (its peak refined there) and the shift is taken between the two on
each axis, so a decision outside the overlap is still placed. :func:`align_grids`.

**Runs over different taxonomies** are compared over the subtree they share
(:func:`shared_subtree`): both are restricted (:meth:`Taxonomy.restrict`) to the leaves they have in
common, which must then be grouped alike; each run's posteriors keep the shared leaves' columns and
are renormalised over them, with means weighted by the mass on those leaves (the engine's partial
taxonomy: ``H(. | x_sigma, Y in shared)``; :func:`restricted_curves`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from probes.errors import ProbesError

from .decisions import AXES, _refine, axis_value, check_n_boot, check_seed, decide, decision_replicates
from .engine import EntropyCurves, _as_float64, tree_entropy

PAIRINGS = ("paired", "independent")
_CHUNK = 64  # curves (levels or nodes) per vectorised block: bounds the [n_boot, S, chunk] arrays


@dataclass
class Difference:
    """``dI = I_B - I_A`` of one level cut (``kind="level"``) or node (``kind="node"``) along sigma.

    Arrays are ``[S]`` on ``sigmas`` (in the curves' order; runs are descending); ``*_interval``
    are ``[2, S]`` (lower, upper) pointwise bootstrap intervals, NaN without a bootstrap. Peak
    sigmas are ``None`` where the difference is zero everywhere.
    """

    kind: str
    name: str
    sigmas: np.ndarray
    info_a: np.ndarray
    info_b: np.ndarray
    delta: np.ndarray
    stderr: np.ndarray
    delta_interval: np.ndarray
    rate: np.ndarray
    rate_interval: np.ndarray
    peak_sigma: float | None = None
    peak_delta: float = 0.0
    peak_delta_interval: tuple[float, float] | None = None
    peak_interval: tuple[float, float] | None = None
    band: tuple[float, float] | None = None
    rate_peak_sigma: float | None = None
    rate_peak: float = 0.0
    rate_peak_interval: tuple[float, float] | None = None

    def summary(self) -> dict:
        """The scalars (peaks, band, intervals) as plain JSON-ready values."""
        def pair(v):
            return None if v is None else [float(v[0]), float(v[1])]

        return {"kind": self.kind, "name": self.name, "peak_sigma": self.peak_sigma,
                "peak_delta": self.peak_delta, "peak_delta_interval": pair(self.peak_delta_interval),
                "peak_interval": pair(self.peak_interval), "band": pair(self.band),
                "rate_peak_sigma": self.rate_peak_sigma, "rate_peak": self.rate_peak,
                "rate_peak_interval": pair(self.rate_peak_interval)}


@dataclass
class DecisionShift:
    """How far one node's decision moved from A to B on one ``axis``.

    ``sigma_a`` / ``sigma_b`` are the decision sigmas (NaN where that set does not decide the
    node); ``shift`` is ``value_B - value_A`` in the axis's units (:func:`~probes.entropy.decisions.axis_value`:
    log sigma, VP time, log-SNR); ``interval`` its bootstrap percentile interval (None without
    two replicates in which both decided) and ``n_boot`` the number of such replicates.
    """

    name: str
    axis: str
    sigma_a: float
    sigma_b: float
    shift: float
    interval: tuple[float, float] | None = None
    n_boot: int = 0

    def summary(self) -> dict:
        return {"sigma_a": self.sigma_a, "sigma_b": self.sigma_b, "shift": self.shift,
                "shift_interval": None if self.interval is None else [float(v) for v in self.interval],
                "n_boot": self.n_boot}


@dataclass
class CurveComparison:
    """Every level's and node's :class:`Difference`, each node's :class:`DecisionShift` per axis
    (``shifts[node][axis]``, nodes in A's order), and how the intervals were made."""

    pairing: str
    n_boot: int
    ci: float
    seed: int
    n_samples: tuple[int, int]
    levels: dict[int, Difference]
    nodes: dict[str, Difference]
    shifts: dict[str, dict[str, DecisionShift]] = field(default_factory=dict)
    alignment: GridAlignment | None = None


# --- grids ---------------------------------------------------------------------------------------

GRID_RTOL = 1e-6  # sigmas this close are the same grid point (grids pass through float32 files)


@dataclass
class GridAlignment:
    """How two sigma grids were put on one (see the module docstring): ``sigmas`` the common grid
    (in the order of the set it came from), ``interpolated`` which set was interpolated onto it
    (``"A"``, ``"B"`` or None when both share one grid), ``log_snr_range`` the overlap in lambda
    (low, high) and ``grids`` each set's (largest sigma, smallest sigma, number of sigmas)."""

    sigmas: np.ndarray
    interpolated: str | None
    log_snr_range: tuple[float, float]
    grids: tuple[tuple[float, float, int], tuple[float, float, int]]

    @property
    def same_grid(self) -> bool:
        return self.interpolated is None

    def text(self) -> str:
        """One line saying how the curves were aligned ('' when both share one grid)."""
        if self.same_grid:
            return ""
        (ha, la, na), (hb, lb, nb) = self.grids
        lo, hi = self.log_snr_range
        onto = "A" if self.interpolated == "B" else "B"
        return (f"grids differ (A: {na} sigmas {ha:.3g} to {la:.3g}; B: {nb} sigmas {hb:.3g} to {lb:.3g}): curves "
                f"compared on log-SNR lambda = -2 log sigma over their overlap, lambda {lo:.3g} to {hi:.3g}, "
                f"{self.interpolated}'s per-sample curves interpolated linearly in lambda onto {onto}'s "
                f"{len(self.sigmas)} sigmas there; decisions placed on each run's own grid")

    def apply(self, curves: EntropyCurves, which: str) -> EntropyCurves:
        """``curves`` (set ``which``, ``"A"`` or ``"B"``) on the common grid."""
        if self.same_grid:
            return curves
        if which != self.interpolated:
            keep = np.flatnonzero(_on_grid(curves.sigmas, self.sigmas))
            return curves.subset_sigmas(keep)
        return interpolate_curves(curves, self.sigmas)


def _on_grid(sigmas: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Which of ``sigmas`` are points of ``grid`` (within ``GRID_RTOL``)."""
    sigmas, grid = np.asarray(sigmas, dtype=np.float64), np.asarray(grid, dtype=np.float64)
    return np.isclose(sigmas[:, None], grid[None, :], rtol=GRID_RTOL, atol=0).any(axis=1)


def align_grids(sigmas_a, sigmas_b) -> GridAlignment:
    """The common grid of two sets of curves (see the module docstring); one line naming both
    grids when they overlap in fewer than three points of the common grid."""
    sa, sb = np.asarray(sigmas_a, dtype=np.float64), np.asarray(sigmas_b, dtype=np.float64)
    grids = ((float(sa.max()), float(sa.min()), len(sa)), (float(sb.max()), float(sb.min()), len(sb)))
    if sa.shape == sb.shape and np.allclose(sa, sb, rtol=GRID_RTOL, atol=0):
        lam = -2 * np.log(sa)
        return GridAlignment(sa.copy(), None, (float(lam.min()), float(lam.max())), grids)
    top, bottom = min(sa.max(), sb.max()), max(sa.min(), sb.min())
    inside_a = sa[(sa <= top * (1 + GRID_RTOL)) & (sa >= bottom * (1 - GRID_RTOL))]
    inside_b = sb[(sb <= top * (1 + GRID_RTOL)) & (sb >= bottom * (1 - GRID_RTOL))]
    common, interpolated = (inside_a, "B") if len(inside_a) <= len(inside_b) else (inside_b, "A")
    if len(common) < 3:
        (ha, la, na), (hb, lb, nb) = grids
        raise ProbesError(f"compare: the results have different sigma grids that overlap in {len(common)} grid "
                          f"point(s) (A: {na} sigmas {ha:.3g} to {la:.3g}; B: {nb} sigmas {hb:.3g} to {lb:.3g}); "
                          "a comparison needs at least three sigmas in common range")
    return GridAlignment(common.copy(), interpolated, (float(-2 * np.log(top)), float(-2 * np.log(bottom))), grids)


def interpolation_weights(source, target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation in log sigma (so in lambda) from the grid ``source [S]`` to the sigmas
    ``target [T]`` inside its range: ``(lower [T], upper [T], f [T])`` with the value at target t
    ``(1 - f_t) v[lower_t] + f_t v[upper_t]`` (indices into ``source``'s own order)."""
    source = np.asarray(source, dtype=np.float64)
    order = np.argsort(source, kind="stable")
    x = np.log(source[order])
    t = np.clip(np.log(np.asarray(target, dtype=np.float64)), x[0], x[-1])  # rounding at the ends
    j = np.clip(np.searchsorted(x, t, side="right") - 1, 0, len(x) - 2)
    f = np.clip((t - x[j]) / (x[j + 1] - x[j]), 0.0, 1.0)
    return order[j], order[j + 1], f


def _interpolate(values: np.ndarray, lower, upper, f) -> np.ndarray:
    """``values [N, S, ...]`` at the target sigmas; a grid point's value is taken as it is (no NaN
    from a neighbour that carries no weight)."""
    shape = (1, -1) + (1,) * (values.ndim - 2)
    w = f.reshape(shape)
    lo, hi = values[:, lower], values[:, upper]
    with np.errstate(invalid="ignore"):
        mixed = (1 - w) * lo + w * hi
    return np.where(w == 0, lo, np.where(w == 1, hi, mixed))


def interpolate_curves(curves: EntropyCurves, sigmas) -> EntropyCurves:
    """Per-sample curves interpolated linearly in log sigma onto ``sigmas`` (inside the curves'
    range). Inside-weighted curves interpolate the weighted values and the weights apart, so the
    weighted mean of the result is the interpolated weighted sum over the interpolated weight; the
    prior is kept as it is."""
    lower, upper, f = interpolation_weights(curves.sigmas, sigmas)
    weight = curves.sample_weight()

    def move(values):
        if values is None:
            return None
        if weight is None:
            return _interpolate(values, lower, upper, f)
        u = np.nan_to_num(weight)[..., None]
        moved_u = _interpolate(u, lower, upper, f)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(moved_u > 0, _interpolate(u * values, lower, upper, f) / np.where(moved_u > 0, moved_u, 1),
                            np.nan)

    inside = None if curves.inside is None else _interpolate(curves.inside[..., None], lower, upper, f)[..., 0]
    return EntropyCurves(
        sigmas=np.asarray(sigmas, dtype=np.float64).copy(), level_names=list(curves.level_names),
        node_names=list(curves.node_names), levels=move(curves.levels), nodes=move(curves.nodes),
        prior_levels=curves.prior_levels.copy(),
        prior_nodes=None if curves.prior_nodes is None else curves.prior_nodes.copy(),
        prior=None if curves.prior is None else curves.prior.copy(), prior_weight=curves.prior_weight,
        _index=curves._index,
        bounds=None if curves.bounds is None else {k: move(v) for k, v in curves.bounds.items()},
        inside=inside, inside_weighted=curves.inside_weighted)


# --- taxonomies ----------------------------------------------------------------------------------


@dataclass
class SharedTree:
    """The subtree two taxonomies share: ``taxonomy`` (A's, restricted to the shared leaves; B's
    restriction groups them alike), each result's leaf columns in its leaf order
    (``columns_a``, ``columns_b``) and each taxonomy's number of leaves (``n_leaves``)."""

    taxonomy: object
    columns_a: list[int]
    columns_b: list[int]
    n_leaves: tuple[int, int]

    def text(self) -> str:
        na, nb = self.n_leaves
        tax = self.taxonomy
        return (f"taxonomies differ: compared over the subtree they share, {len(tax.leaves)} of A's {na} and B's "
                f"{nb} leaves ({len(tax.internal_nodes)} internal nodes, named as in A), each run's posteriors "
                "renormalised over those leaves")


def _clusters(taxonomy) -> dict[frozenset, str]:
    """Each internal node as the set of leaves under it (the tree's shape, names aside)."""
    return {frozenset(taxonomy.leaves_under(n)): n for n in taxonomy.internal_nodes}


def shared_subtree(tax_a, tax_b) -> SharedTree | None:
    """None when the taxonomies are one tree; else the subtree they share (see the module
    docstring). One line when they share fewer than two leaves or group the shared ones apart."""
    if tax_a.same_tree(tax_b):
        return None
    in_b = set(tax_b.leaves)
    shared = [leaf for leaf in tax_a.leaves if leaf in in_b]
    if len(shared) < 2:
        raise ProbesError(f"compare: the results' taxonomies share {len(shared)} leaf(s) ({tax_a.name!r} has "
                          f"{len(tax_a.leaves)}, {tax_b.name!r} has {len(tax_b.leaves)}); a comparison needs two")
    sub_a, sub_b = tax_a.restrict(shared), tax_b.restrict(shared)
    ca, cb = _clusters(sub_a), _clusters(sub_b)
    if set(ca) != set(cb):
        group = sorted(set(ca) ^ set(cb), key=len)[0]
        whose, node = ("A", ca[group]) if group in ca else ("B", cb[group])
        leaves = ", ".join(sorted(group)[:4]) + (" ..." if len(group) > 4 else "")
        raise ProbesError(f"compare: the taxonomies group their {len(shared)} shared leaves differently ({whose} "
                          f"groups {leaves} under {node!r}, the other does not); compare results over one taxonomy "
                          "or over taxonomies that agree on the leaves they share")
    col_a = {leaf: i for i, leaf in enumerate(tax_a.leaves)}
    col_b = {leaf: i for i, leaf in enumerate(tax_b.leaves)}
    return SharedTree(taxonomy=sub_a, columns_a=[col_a[leaf] for leaf in sub_a.leaves],
                      columns_b=[col_b[leaf] for leaf in sub_a.leaves],
                      n_leaves=(len(tax_a.leaves), len(tax_b.leaves)))


def restricted_curves(log_probs, sigmas, columns: list[int], taxonomy, prior=None,
                      what: str = "result") -> tuple[EntropyCurves, tuple[np.ndarray, np.ndarray]]:
    """Curves over a shared subtree from a result's ``log_probs [N, S, L]``: the ``columns`` of the
    shared leaves (in ``taxonomy``'s leaf order), renormalised over them with inside-weighted means,
    against the ``prior [L]`` restricted and renormalised (None: the mean posterior). Returns the
    curves and their :func:`prior_sums`. Estimators of entropies alone cannot be restricted."""
    if log_probs is None:
        raise ProbesError(f"compare: {what} gives entropies, not posteriors, so it cannot be restricted to the "
                          "leaves the two taxonomies share; compare results over one taxonomy or choose a posterior "
                          "estimator with --estimator")
    lp = log_probs[..., columns]
    sub_prior = None
    if prior is not None:
        p = _as_float64(prior).reshape(-1)[columns]
        if not p.sum() > 0:
            raise ProbesError(f"compare: the prior of {what} puts no mass on the shared leaves")
        sub_prior = p / p.sum()
    curves = tree_entropy(lp, taxonomy, sigmas, prior=sub_prior, inside_weighted=True)
    return curves, prior_sums(curves, _as_float64(lp))


# --- the comparison ------------------------------------------------------------------------------


def compare_curves(a: EntropyCurves, b: EntropyCurves, paired: bool, n_boot: int = 200, seed: int = 0,
                   ci: float = 0.95, prior_sums_a=None, prior_sums_b=None) -> CurveComparison:
    """``dI = I_B - I_A`` per level and node with joint bootstrap intervals (see the module docstring).

    ``paired`` resamples sample i of both sets together (they must have as many samples).
    ``prior_sums_a`` / ``prior_sums_b`` (``([N, L], [N])``: each sample's posterior summed over
    sigma with the weights of the mean posterior, and the sum of those weights; see
    :func:`prior_sums`) let a replicate re-estimate a prior that was itself the mean posterior
    (``prior_weight > 0``); without them such a prior is held fixed.
    """
    if not 0 < ci < 1:
        raise ProbesError(f"compare: ci must be in (0, 1); got {ci}")
    if list(a.level_names) != list(b.level_names):
        raise ProbesError("compare: the results have different taxonomy levels; compare one taxonomy")
    if len(a.sigmas) < 3 or len(b.sigmas) < 3:
        raise ProbesError("compare: needs at least three sigmas to place a difference")
    alignment = align_grids(a.sigmas, b.sigmas)
    n_a, n_b = a.n_samples, b.n_samples
    if paired and n_a != n_b:
        raise ProbesError(f"compare: paired resampling needs as many samples in both ({n_a} and {n_b})")
    n_boot = check_n_boot(n_boot, "compare: n_boot")
    rng = np.random.default_rng(check_seed(seed, "compare: seed"))
    w_a = w_b = None
    if n_boot:
        w_a = rng.multinomial(n_a, np.full(n_a, 1.0 / n_a), size=n_boot).astype(np.float64)
        w_b = w_a if paired else rng.multinomial(n_b, np.full(n_b, 1.0 / n_b), size=n_boot).astype(np.float64)
    prior_a, prior_b = _replicate_priors(a, w_a, prior_sums_a), _replicate_priors(b, w_b, prior_sums_b)
    shifts = decision_shifts(a, b, w_a, w_b, ci)  # each set decided on its own grid
    a, b = alignment.apply(a, "A"), alignment.apply(b, "B")
    grid = _Grid(a.sigmas, ci, _sample_weight(a), _sample_weight(b))

    levels = grid.differences("level", a.level_names, a.levels, b.levels, a.prior_levels, b.prior_levels,
                              prior_a[0], prior_b[0], w_a, w_b, paired)
    nodes: dict = {}
    common = [n for n in a.node_names if n in b.node_names]
    if a.prior_nodes is not None and b.prior_nodes is not None and common:
        ia = [a.node_names.index(n) for n in common]
        ib = [b.node_names.index(n) for n in common]
        nodes = grid.differences("node", common, a.nodes[:, :, ia], b.nodes[:, :, ib], a.prior_nodes[ia],
                                 b.prior_nodes[ib], None if prior_a[1] is None else prior_a[1][:, ia],
                                 None if prior_b[1] is None else prior_b[1][:, ib], w_a, w_b, paired)
    return CurveComparison(pairing="paired" if paired else "independent", n_boot=n_boot, ci=ci, seed=seed,
                           n_samples=(n_a, n_b), levels=levels, nodes=nodes, shifts=shifts, alignment=alignment)


def decision_shifts(a: EntropyCurves, b: EntropyCurves, w_a=None, w_b=None, ci: float = 0.95,
                    axes=AXES) -> dict[str, dict[str, DecisionShift]]:
    """Each of A's internal nodes' :class:`DecisionShift` on each axis, with intervals from the
    replicate sample counts ``w_a``, ``w_b`` ``[B, N]`` (the same array for paired sets; None: no
    intervals)."""
    q = 100 * (1 - ci) / 2
    out: dict[str, dict[str, DecisionShift]] = {str(n): {} for n in a.node_names}
    replicates_a = replicates_b = None
    if w_a is not None and w_b is not None and len(w_a) >= 2:
        replicates_a, replicates_b = decision_replicates(a, w_a, axes), decision_replicates(b, w_b, axes)
    for axis in axes:
        point_a = decide(a, n_boot=0, axis=axis)["nodes"]
        point_b = decide(b, n_boot=0, axis=axis)["nodes"]
        boot_a = None if replicates_a is None else replicates_a[axis]
        boot_b = None if replicates_b is None else replicates_b[axis]
        for node, da in point_a.items():
            db = point_b.get(node)
            sa = np.nan if da is None else float(da.decision_sigma)
            sb = np.nan if db is None else float(db.decision_sigma)
            shift = DecisionShift(name=str(node), axis=axis, sigma_a=sa, sigma_b=sb,
                                  shift=float(axis_value(axis, sb) - axis_value(axis, sa)))
            if boot_a is not None and str(node) in boot_b:
                moved = axis_value(axis, boot_b[str(node)]) - axis_value(axis, boot_a[str(node)])
                moved = moved[np.isfinite(moved)]
                shift.n_boot = len(moved)
                if len(moved) >= 2:
                    lo, hi = np.percentile(moved, [q, 100 - q])
                    shift.interval = (float(lo), float(hi))
            out[str(node)][axis] = shift
    return out


def prior_sums(curves: EntropyCurves, log_probs) -> tuple[np.ndarray, np.ndarray]:
    """What the mean-posterior prior of ``curves`` averages, per sample: ``(sum over sigma of
    w p(leaf | x, T) [N, L], sum over sigma of w [N])`` with ``w`` the sample weight of the curves
    (the inside mass where that applies, else 1), from the estimator's ``log_probs [N, S, L]``."""
    p = np.exp(np.asarray(log_probs, dtype=np.float64))
    inside = p.sum(-1)  # [N, S]
    with np.errstate(invalid="ignore", divide="ignore"):
        renormalised = np.nan_to_num(p / inside[..., None])
    weight = curves.sample_weight()
    w = np.ones_like(inside) if weight is None else np.nan_to_num(np.asarray(weight, dtype=np.float64))
    return (w[..., None] * renormalised).sum(1), w.sum(1)


def _sample_weight(curves: EntropyCurves):
    weight = curves.sample_weight()
    return None if weight is None else np.asarray(weight, dtype=np.float64)


def _replicate_priors(curves: EntropyCurves, weights, sums):
    """Per-replicate prior level entropies ``[B, D]`` and node contributions ``[B, K]`` when the
    prior was estimated from the samples themselves (so it varies with them); ``(None, None)``
    when it is held fixed."""
    if weights is None or sums is None or curves.prior_weight <= 0 or curves._index is None:
        return None, None
    leaf_sums, mass = (np.asarray(v, dtype=np.float64) for v in sums)
    priors = (weights @ leaf_sums) / (weights @ mass)[:, None]
    priors = priors / priors.sum(1, keepdims=True)
    pairs = [curves._index.prior_entropies(p) for p in priors]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _per_sample_weights(values: np.ndarray, weight) -> np.ndarray:
    """The weight of each entry of ``values [N, S, K]`` in a mean: the curves' sample weight
    ``[N, S]`` (the inside mass) or 1, and 0 where the entry is NaN."""
    w = np.ones(values.shape[:2]) if weight is None else np.nan_to_num(weight)
    return np.where(np.isfinite(values), w[..., None], 0.0)


def _weighted_mean(replicates: np.ndarray, values: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``[B, S, K]`` means of ``values [N, S, K]`` with entry weights ``u`` under the replicates'
    sample counts ``[B, N]`` (``sum c u x / sum c u``)."""
    N, S, K = values.shape
    num = replicates @ np.where(u > 0, u * values, 0.0).reshape(N, S * K)
    den = replicates @ u.reshape(N, S * K)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan).reshape(-1, S, K)


def _mean_and_influence(values: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The weighted mean ``[S, K]``, each sample's linearised influence on it
    ``u_i (x_i - mean) / sum u`` ``[N, S, K]``, and the number of samples in it ``[S, K]``."""
    mass = u.sum(0)
    safe = np.where(mass > 0, mass, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(mass > 0, np.where(u > 0, u * values, 0.0).sum(0) / safe, np.nan)
        influence = np.where(u > 0, u * (values - mean), 0.0) / safe
    return mean, influence, (u > 0).sum(0)


def _stderr(influence: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``sqrt(n / (n - 1) sum influence^2)``: the sample standard error of a (weighted) mean."""
    var = (influence**2).sum(0) * count / np.maximum(count - 1, 1)
    return np.where(count >= 2, np.sqrt(var), np.nan)


class _Grid:
    """The sigma grid in ascending log sigma, and the peak and band arithmetic on it."""

    def __init__(self, sigmas: np.ndarray, ci: float, weight_a=None, weight_b=None):
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.order = np.argsort(self.sigmas, kind="stable")
        self.back = np.argsort(self.order, kind="stable")
        self.x = np.log(self.sigmas[self.order])
        self.q = 100 * (1 - ci) / 2
        o = self.order
        self.weight_a = None if weight_a is None else weight_a[:, o]
        self.weight_b = None if weight_b is None else weight_b[:, o]

    def differences(self, kind, names, va, vb, pa, pb, boot_pa, boot_pb, w_a, w_b, paired) -> dict:
        out = {}
        for start in range(0, len(names), _CHUNK):
            part = slice(start, start + _CHUNK)
            out.update(self._block(kind, names[part], va[..., part], vb[..., part], pa[part], pb[part],
                                   None if boot_pa is None else boot_pa[:, part],
                                   None if boot_pb is None else boot_pb[:, part], w_a, w_b, paired))
        return out

    def _block(self, kind, names, va, vb, pa, pb, boot_pa, boot_pb, w_a, w_b, paired) -> dict:
        o = self.order
        va, vb = va[:, o], vb[:, o]  # [N, S, K], sigma ascending
        ua, ub = _per_sample_weights(va, self.weight_a), _per_sample_weights(vb, self.weight_b)
        mean_a, infl_a, count_a = _mean_and_influence(va, ua)
        mean_b, infl_b, count_b = _mean_and_influence(vb, ub)
        info_a, info_b = pa[None, :] - mean_a, pb[None, :] - mean_b  # [S, K]
        delta = info_b - info_a
        if paired:  # sample i moves both means at once
            stderr = _stderr(infl_b - infl_a, np.minimum(count_a, count_b))
        else:
            stderr = np.sqrt(_stderr(infl_a, count_a) ** 2 + _stderr(infl_b, count_b) ** 2)
        rate = self._rate(delta.T)  # [K, S]
        boot = rate_boot = None
        if w_a is not None:
            ia = (pa if boot_pa is None else boot_pa)[..., None, :] - _weighted_mean(w_a, va, ua)
            ib = (pb if boot_pb is None else boot_pb)[..., None, :] - _weighted_mean(w_b, vb, ub)
            boot = np.transpose(ib - ia, (2, 0, 1))  # [K, B, S]
            rate_boot = self._rate(boot)
        out = {}
        for k, name in enumerate(names):
            d = Difference(
                kind=kind, name=str(name), sigmas=self.sigmas.copy(), info_a=info_a[self.back, k],
                info_b=info_b[self.back, k], delta=delta[self.back, k], stderr=stderr[self.back, k],
                delta_interval=self._pointwise(None if boot is None else boot[k]),
                rate=rate[k][self.back], rate_interval=self._pointwise(None if rate_boot is None else rate_boot[k]))
            d.band = self._band(delta[:, k])
            d.peak_sigma, d.peak_delta, i = self._peak(delta[:, k])
            d.rate_peak_sigma, d.rate_peak, _ = self._peak(rate[k])
            if boot is not None and d.peak_sigma is not None:
                d.peak_interval = self._peak_interval(boot[k])
                d.peak_delta_interval = self._interval(boot[k][:, i])
            if rate_boot is not None and d.rate_peak_sigma is not None:
                d.rate_peak_interval = self._peak_interval(rate_boot[k])
            out[int(name) if kind == "level" else str(name)] = d
        return out

    def _rate(self, values: np.ndarray) -> np.ndarray:
        """``d values / d(-log sigma)`` along the last (ascending-sigma) axis."""
        return -np.gradient(values, self.x, axis=-1)

    def _peak(self, values: np.ndarray) -> tuple[float | None, float, int]:
        """(refined sigma of the peak of ``|values|``, signed value at its grid point, grid index)."""
        mag = np.where(np.isfinite(values), np.abs(values), -np.inf)
        i = int(np.argmax(mag))
        if not mag[i] > 0:
            return None, 0.0, i
        x, _ = _refine(self.x, np.where(np.isfinite(mag), mag, 0.0), np.array(i))
        return float(np.exp(x)), float(values[i]), i

    def _peak_interval(self, boot: np.ndarray) -> tuple[float, float] | None:
        """Percentile interval (in log sigma) of where ``|boot [B, S]|`` peaks in each replicate."""
        mag = np.where(np.isfinite(boot), np.abs(boot), -np.inf)
        i = np.argmax(mag, axis=-1)
        ok = np.take_along_axis(mag, i[:, None], -1)[:, 0] > 0
        if ok.sum() < 2:
            return None
        x, _ = _refine(self.x, np.where(np.isfinite(mag), mag, 0.0), i)
        lo, hi = np.percentile(x[ok], [self.q, 100 - self.q])
        return float(np.exp(lo)), float(np.exp(hi))

    def _interval(self, values: np.ndarray) -> tuple[float, float] | None:
        values = values[np.isfinite(values)]
        if len(values) < 2:
            return None
        lo, hi = np.percentile(values, [self.q, 100 - self.q])
        return float(lo), float(hi)

    def _pointwise(self, boot: np.ndarray | None) -> np.ndarray:
        """``[2, S]`` percentile band of ``boot [B, S]`` in the curves' own sigma order."""
        if boot is None or boot.shape[0] < 2:
            return np.full((2, len(self.sigmas)), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (unresolved sigmas) stay NaN
            band = np.nanpercentile(boot, [self.q, 100 - self.q], axis=0)
        return band[:, self.back]

    def _band(self, delta: np.ndarray) -> tuple[float, float] | None:
        """The contiguous range around the peak of ``|dI|`` where it exceeds half the peak."""
        mag = np.abs(np.nan_to_num(delta))
        if not mag.any():
            return None
        i = int(np.argmax(mag))
        above = mag >= 0.5 * mag[i]
        lo = hi = i
        while hi + 1 < len(mag) and above[hi + 1]:
            hi += 1
        while lo > 0 and above[lo - 1]:
            lo -= 1
        return float(np.exp(self.x[lo])), float(np.exp(self.x[hi]))
