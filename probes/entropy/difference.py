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
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from probes.errors import ProbesError

from .decisions import AXES, _refine, axis_value, check_n_boot, check_seed, decide, decision_replicates
from .engine import EntropyCurves

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
    if a.sigmas.shape != b.sigmas.shape or not np.allclose(a.sigmas, b.sigmas, rtol=1e-6, atol=0):
        raise ProbesError("compare: the results have different sigma grids; sample both with the same steps, "
                          "sigma_max, sigma_min and grid (or the same scheduler and number of steps)")
    if len(a.sigmas) < 3:
        raise ProbesError("compare: needs at least three sigmas to place a difference")
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
                           n_samples=(n_a, n_b), levels=levels, nodes=nodes,
                           shifts=decision_shifts(a, b, w_a, w_b, ci))


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
