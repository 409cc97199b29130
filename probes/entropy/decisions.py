"""Decision sigmas: where a node's entropy contribution changes fastest as sigma falls.

For each internal node n, the rate is ``dC_n / dlog sigma`` of the mean curve ``C_n(sigma)``
(taken against **log sigma**; the peak position depends on the variable differentiated against).
C_n falls from its prior value to ~0 as sigma falls, so the rate is positive where the model is
deciding between n's children.

* **decision sigma**: the argmax of the rate on the grid, refined by fitting a parabola through
  the peak and its two neighbours in log sigma. A peak on the first or last grid point is still
  reported, flagged ``at_edge`` (the true peak may lie outside the grid).
* **window** ``[lo, hi]``: the contiguous range of sigma around the peak where the rate exceeds half
  its peak, the edges interpolated linearly in log sigma. If the rate stays above half at the end
  of the grid, that edge is the grid's end and ``window_clipped`` is set.
* **interval**: a bootstrap percentile interval (95% by default) of the decision sigma, resampling
  samples with replacement (``n_boot`` multinomial weight vectors applied to the per-sample curves
  in one matrix product; percentiles taken in log sigma).

The same is done for level cuts with the rate of ``H_l``.

**Undecided.** A node (or level) gets no decision (``None``) when

* its mean curve has fewer than three finite points;
* it is **flat** relative to its own scale: at its fastest, the curve falls between neighbouring
  grid points by no more than ``flat_rtol`` (default ``FLAT_RTOL = 1e-6``) of its largest magnitude
  ``max |C_n|`` on the grid (``peak rate * grid step at the peak <= flat_rtol * max |C_n|``; a rate
  that is not positive at any grid point is flat too). The test is relative, so a real transition
  in a curve of small magnitude (a node of small prior mass) is decided and float rounding in a
  curve of any magnitude is not;
* its refined peak lies **outside its own half-peak window** (a window narrower than the grid step,
  on a noisy rate): the grid cannot place the peak.

So every reported decision lies inside its reported window. Each family's mapping (``decide()[
"nodes"]``, ``decide()["levels"]``) is a :class:`DecisionMap`, a dict whose ``reasons`` attribute
says why each ``None`` entry is undecided; :func:`undecided_reasons` reads it from any mapping.

**Axes.** The peak of a rate depends on the variable differentiated against. ``decide(axis=...)``
takes the rate against ``log_sigma`` (the default), ``vp_time`` (``t = 0.5 log(1 + sigma^2)``) or
``log_snr`` (``lambda = -2 log sigma``; the rate is ``-dC/dlambda``, positive as sigma falls, and
peaks where the log-sigma rate does, at half its height). Every sigma of a decision is the sigma at
that axis's peak. A peak whose half-peak half-width spans fewer than ``MIN_POINTS_PER_HALF_WIDTH``
grid spacings (on that axis, at the peak) is flagged ``under_resolved``: the grid cannot place it.

:func:`decision_replicates` decides every node under sample counts the caller supplies, so that
two sets of curves can be resampled together (``probes compare``'s decision shifts).
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import asdict, dataclass

import numpy as np

import probes.noise as noise
from probes.errors import ProbesError

from .engine import EntropyCurves

MAX_BOOT = 100_000  # bootstrap replicates: each holds a resampling of every sample


def _whole(value) -> int | None:
    """``value`` as an int when it is a whole number (int, numpy or 0-d torch integer, or a whole
    float such as ``1e3``); None otherwise (booleans included)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
            return int(value)
    return None


def check_n_boot(n_boot, what: str = "n_boot") -> int:
    """``n_boot`` as an int in ``0..MAX_BOOT``, or one line naming ``what``."""
    value = _whole(n_boot)
    if value is None or not 0 <= value <= MAX_BOOT:
        raise ProbesError(f"{what}: expected a whole number of bootstrap replicates from 0 to {MAX_BOOT:,}, "
                          f"got {n_boot!r}")
    return value


def check_seed(seed, what: str = "seed") -> int | None:
    """A bootstrap seed as an int (None: fresh entropy), or one line naming ``what``."""
    if seed is None:
        return None
    value = _whole(seed)
    if value is None or value < 0:
        raise ProbesError(f"{what}: expected a non-negative whole number, got {seed!r}")
    return value


# Undecided below this fraction of the curve's magnitude per grid step: a few float32 rounding steps
# (2**-23 = 1.2e-7 relative), far below any change a sample mean can resolve.
FLAT_RTOL = 1e-6
AXES = ("log_sigma", "vp_time", "log_snr")
MIN_POINTS_PER_HALF_WIDTH = 3.0


def axis_coordinate(axis: str, sigma: np.ndarray) -> np.ndarray:
    """The coordinate rates are taken against, oriented to grow with sigma (so rates are positive
    where information is gained as sigma falls)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    if axis == "log_sigma":
        return np.log(sigma)
    if axis == "vp_time":
        return 0.5 * np.log1p(sigma**2)
    if axis == "log_snr":
        return 2 * np.log(sigma)  # = -lambda
    raise ProbesError(f"decide: unknown axis {axis!r}; expected one of {', '.join(AXES)}")


def sigma_of_coordinate(axis: str, x):
    """Inverse of :func:`axis_coordinate`."""
    x = np.asarray(x, dtype=np.float64)
    if axis == "log_sigma":
        return np.exp(x)
    if axis == "vp_time":
        return np.sqrt(np.expm1(2 * x))
    return np.exp(x / 2)


@dataclass(frozen=True)
class Decision:
    """The decision of one node (``kind="node"``) or level cut (``kind="level"``, name = depth).

    Sigmas are noise levels; ``vp_time`` and ``log_snr`` restate ``decision_sigma``; ``peak_rate``
    is in nats per unit of ``axis`` (the variable the rate was taken against: ``log_sigma``,
    ``vp_time`` or ``log_snr``); ``n_boot`` counts the bootstrap resamples that found a peak;
    ``grid`` is the (smallest, largest) sigma of the grid the curves were on;
    ``points_per_half_width`` is the half-peak half-width over the local grid spacing (on ``axis``)
    and ``under_resolved`` is set when it is below ``MIN_POINTS_PER_HALF_WIDTH``.
    """

    name: str
    kind: str
    decision_sigma: float
    window: tuple[float, float]
    interval: tuple[float, float] | None
    peak_rate: float
    at_edge: bool
    window_clipped: bool
    vp_time: float
    log_snr: float
    n_boot: int = 0
    grid: tuple[float, float] | None = None
    axis: str = "log_sigma"
    points_per_half_width: float = float("nan")
    under_resolved: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["window"] = [float(v) for v in self.window]
        d["interval"] = None if self.interval is None else [float(v) for v in self.interval]
        d["grid"] = None if self.grid is None else [float(v) for v in self.grid]
        return d


# --------------------------------------------------------------------------------------------
# Rates and peaks (vectorised over leading axes)
# --------------------------------------------------------------------------------------------


def _ascending(sigmas: np.ndarray) -> np.ndarray:
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if np.any(~np.isfinite(sigmas)) or np.any(sigmas <= 0):
        raise ProbesError("decisions: sigmas must be finite and positive")
    order = np.argsort(sigmas, kind="stable")
    if np.any(np.diff(sigmas[order]) <= 0):
        raise ProbesError("decisions: the sigma grid has repeated values")
    return order


def rates(sigmas, values) -> tuple[np.ndarray, np.ndarray]:
    """``d values / d log sigma`` along the last axis.

    ``values`` is ``[..., S]`` on ``sigmas`` ``[S]`` in any order. Returns ``(sigma_ascending [S],
    rate [..., S])`` with sigma sorted ascending. Non-uniform grids are handled (second-order
    central differences in log sigma, one-sided at the ends).
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    order = _ascending(sigmas)
    v = np.asarray(values, dtype=np.float64)[..., order]
    s = sigmas[order]
    if len(s) < 2:
        return s, np.full(v.shape, np.nan)
    return s, np.gradient(v, np.log(s), axis=-1)


def _refine(x: np.ndarray, r: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parabolic refinement of the argmax ``i`` of ``r [..., S]`` on coordinates ``x [S]``.

    Returns (x_peak, r_peak); points at the grid edge are returned unrefined.
    """
    S = len(x)
    if S < 3:
        return x[i], np.take_along_axis(r, i[..., None], -1)[..., 0]
    ic = np.clip(i, 1, S - 2)
    x0, x1, x2 = x[ic - 1], x[ic], x[ic + 1]
    y0 = np.take_along_axis(r, (ic - 1)[..., None], -1)[..., 0]
    y1 = np.take_along_axis(r, ic[..., None], -1)[..., 0]
    y2 = np.take_along_axis(r, (ic + 1)[..., None], -1)[..., 0]
    d1 = (y1 - y0) / (x1 - x0)
    d2 = (y2 - y1) / (x2 - x1)
    a = (d2 - d1) / (x2 - x0)
    b = d1 - a * (x0 + x1)
    with np.errstate(divide="ignore", invalid="ignore"):
        xv = np.where(a < 0, -b / (2 * a), x1)
    xv = np.clip(xv, x0, x2)
    yv = y0 + d1 * (xv - x0) + a * (xv - x0) * (xv - x1)
    yv = np.maximum(yv, y1)
    inner = (i > 0) & (i < S - 1)
    edge_y = np.take_along_axis(r, i[..., None], -1)[..., 0]
    return np.where(inner, xv, x[i]), np.where(inner, yv, edge_y)


def _peaks(x: np.ndarray, r: np.ndarray, flat_tol):
    """Vectorised peak of ``r [..., S]``: (x_peak, r_peak, argmax); x_peak NaN if flat/NaN.

    ``flat_tol`` (a number, or one per curve: shape ``r.shape[:-1]``) is the rate a peak must
    exceed, at the refined vertex and at its grid point."""
    bad = ~np.all(np.isfinite(r), axis=-1)
    rr = np.where(np.isfinite(r), r, -np.inf)
    i = np.argmax(rr, axis=-1)
    xp, yp = _refine(x, np.where(np.isfinite(r), r, 0.0), i)
    # no grid point gaining information means no decision, even where the parabola through the
    # top three points pokes above zero (its half-peak window would lie outside the grid)
    top = np.take_along_axis(rr, i[..., None], -1)[..., 0]
    flat = bad | ~(yp > flat_tol) | ~(top > flat_tol)
    return np.where(flat, np.nan, xp), np.where(flat, np.nan, yp), i


def _step_at(x: np.ndarray, i: np.ndarray) -> np.ndarray:
    """The grid step at index ``i`` of ``x [S]`` (S >= 3): the mean of its two neighbouring steps,
    those of the nearest inner point at the grid's ends."""
    ic = np.clip(i, 1, len(x) - 2)
    return (x[ic + 1] - x[ic - 1]) / 2


def _relative_peaks(x: np.ndarray, values: np.ndarray, flat_rtol: float):
    """:func:`_peaks` of the rate of ``values [..., S]`` (S >= 3) with the flat test relative to
    each curve's magnitude: flat where ``rate * step <= flat_rtol * max |value|`` at the peak.
    Returns (x_peak, r_peak, argmax, rate)."""
    r = np.gradient(values, x, axis=-1)
    with np.errstate(invalid="ignore"):
        scale = np.max(np.where(np.isfinite(values), np.abs(values), 0.0), axis=-1)
        i = np.argmax(np.where(np.isfinite(r), r, -np.inf), axis=-1)
        tol = flat_rtol * scale / _step_at(x, i)
    xp, yp, i = _peaks(x, r, tol)
    return xp, yp, i, r


def _outside_window(x: np.ndarray, r: np.ndarray, i: np.ndarray, xp: np.ndarray, yp: np.ndarray) -> np.ndarray:
    """Where the refined peak ``xp`` (of ``r [..., S]`` at grid index ``i``) lies outside its
    half-peak window, vectorised; the window edges are computed exactly as :func:`_window` does
    (same expressions), so this agrees with the window reported. NaN peaks are not outside."""
    S = len(x)
    take = lambda j: np.take_along_axis(r, np.clip(j, 0, S - 1)[..., None], -1)[..., 0]
    ri, rl, rr = take(i), take(i - 1), take(i + 1)
    half = np.where(0.5 * yp < ri, 0.5 * yp, 0.5 * ri)
    xi, xl, xr = x[i], x[np.clip(i - 1, 0, S - 1)], x[np.clip(i + 1, 0, S - 1)]
    with np.errstate(invalid="ignore", divide="ignore"):
        hi = xi + ((ri - half) / (ri - rr)) * (xr - xi)
        lo = xl + ((half - rl) / (ri - rl)) * (xi - xl)
        right = (xp > xi) & (i < S - 1) & ~(rr > half) & ~(xp <= hi)
        left = (xp < xi) & (i > 0) & ~(rl > half) & ~(xp >= lo)
    return right | left


def _window(x: np.ndarray, r: np.ndarray, i: int, half: float) -> tuple[float, float, bool]:
    """Log-sigma edges of the contiguous region around ``i`` where ``r > half``."""
    S = len(x)
    clipped = False
    j = i
    while j > 0 and r[j - 1] > half:
        j -= 1
    if j == 0:
        lo, clipped = x[0], True
    else:
        f = (half - r[j - 1]) / (r[j] - r[j - 1])
        lo = x[j - 1] + f * (x[j] - x[j - 1])
    k = i
    while k < S - 1 and r[k + 1] > half:
        k += 1
    if k == S - 1:
        hi, clipped = x[-1], True
    else:
        f = (r[k] - half) / (r[k] - r[k + 1])
        hi = x[k] + f * (x[k + 1] - x[k])
    return float(lo), float(hi), clipped


def _half_peak_window(x: np.ndarray, r: np.ndarray, i: int, peak: float) -> tuple[float, float, bool]:
    """The window where ``r`` exceeds half of ``peak`` (the refined maximum at grid index ``i``).

    On noisy rates the parabola through the top three points can overshoot the grid maximum by
    more than a factor two; the level then falls back to half the grid maximum, so the window
    always surrounds grid point ``i``.
    """
    half = 0.5 * peak if 0.5 * peak < r[i] else 0.5 * r[i]
    return _window(x, r, i, half)


# --------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------


class DecisionMap(dict):
    """``{name: Decision | None}`` as :func:`decide` returns each family; ``reasons`` maps every
    name whose entry is ``None`` to a sentence saying why it is undecided (a plain ``dict(...)``
    copy drops it; :func:`undecided_reasons` reads it back from any mapping)."""

    def __init__(self, *args, reasons: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.reasons: dict[str, str] = dict(reasons or {})


def undecided_reasons(decisions) -> dict:
    """Why each undecided entry of ``decisions`` is undecided: ``{name: reason}`` for a family
    mapping (``decide()["nodes"]``), ``{"nodes": {...}, "levels": {...}}`` for a whole
    :func:`decide` result. Entries of a mapping that carries no reasons (a plain dict) read
    ``"undecided"``."""
    if isinstance(decisions, dict) and set(decisions) <= {"nodes", "levels"} and decisions and \
            all(isinstance(v, dict) for v in decisions.values()):
        return {k: undecided_reasons(v) for k, v in decisions.items()}
    known = getattr(decisions, "reasons", {})
    return {str(n): known.get(n, known.get(str(n), "undecided")) for n, d in decisions.items() if d is None}


def _flat_reason(top: float, peak_step: float, scale: float, flat_rtol: float) -> str:
    if not top > 0:
        return "flat: the rate is not positive at any grid point (no information gained as sigma falls)"
    return (f"flat: at its fastest the curve changes by {peak_step:.2g} per grid step, not above "
            f"{flat_rtol:g} of its magnitude {scale:.3g}")


def _group_decisions(x: np.ndarray, m: np.ndarray, flat_rtol: float):
    """Point decisions for the mean curves ``m [G, P]`` on coordinates ``x [P]`` (P >= 3): per
    curve ``(x_peak, r_peak, argmax, (lo, hi, clipped))``, or a reason string where undecided.
    The rule of the module docstring; shared by :func:`decide` and :func:`decision_replicates`."""
    xp, yp, idx, r = _relative_peaks(x, m, flat_rtol)
    outside = _outside_window(x, r, idx, xp, yp)
    out: list = []
    for g in range(m.shape[0]):
        i = int(idx[g])
        if not np.isfinite(xp[g]):
            rate = r[g][np.isfinite(r[g])]
            top = float(rate.max()) if rate.size else math.nan
            scale = float(np.nanmax(np.abs(m[g])))
            out.append(_flat_reason(top, top * float(_step_at(x, np.array(i))), scale, flat_rtol))
            continue
        lo, hi, clipped = _half_peak_window(x, r[g], i, yp[g])
        if outside[g]:
            out.append("unresolved: the refined peak lies outside its own half-peak window (the rate "
                       "is narrower than the grid step there, or noisy)")
            continue
        out.append((float(xp[g]), float(yp[g]), i, (lo, hi, clipped)))
    return out


def _means(per_sample: np.ndarray, weights: np.ndarray | None, sample_weight: np.ndarray | None):
    """The mean ``[S, K]`` of ``per_sample [N, S, K]`` over its finite entries, each sample weighted
    by ``sample_weight [N, S]`` (inside mass) or equally, and the same mean under each bootstrap
    replicate's sample counts ``weights [B, N]`` (``[B, S, K]``; None without weights)."""
    N, S, K = per_sample.shape
    finite = np.isfinite(per_sample)
    w = np.ones((N, S, 1)) if sample_weight is None else sample_weight[..., None]
    finite_w = np.where(finite, w, 0.0)
    filled = np.where(finite, per_sample, 0.0) * finite_w
    count = finite_w.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, filled.sum(0) / np.where(count > 0, count, 1.0), np.nan)  # [S, K]
    boot = None
    if weights is not None:
        B = weights.shape[0]
        num = weights @ filled.reshape(N, S * K)
        den = weights @ finite_w.reshape(N, S * K)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = np.where(den > 0, num / den, np.nan).reshape(B, S, K)
    return mean, boot


def _usable_groups(mean: np.ndarray) -> list[tuple[np.ndarray, list[int]]]:
    """Curves grouped by which sigma points their mean has (``(points, curve indices)``), so each
    group's rates and peaks are one vectorised call."""
    usable = np.isfinite(mean)  # [S, K]
    groups: dict[bytes, list[int]] = {}
    for k in range(mean.shape[1]):
        groups.setdefault(usable[:, k].tobytes(), []).append(k)
    return [(np.flatnonzero(usable[:, ks[0]]), ks) for ks in groups.values()]


def _replicate_peaks(x: np.ndarray, boot: np.ndarray, pts: np.ndarray, ks: list[int], flat_rtol: float) -> np.ndarray:
    """Peak coordinates ``[B, G]`` of the replicate means ``boot [B, S, K]`` for the curves ``ks``
    on the points ``pts`` (``x`` = their coordinates); NaN where the replicate's mean curve is
    undecided by the rule :func:`decide` applies (flat relative to its magnitude, or a peak outside
    its window)."""
    bm = np.transpose(boot[:, pts][:, :, ks], (0, 2, 1))  # [B, G, P]
    bxp, byp, bi, br = _relative_peaks(x, bm, flat_rtol)
    return np.where(_outside_window(x, br, bi, bxp, byp), np.nan, bxp)


TOO_FEW_POINTS = "too few points: the mean curve has fewer than three finite points"


def _decide_family(
    kind: str,
    names: list,
    x_all: np.ndarray,
    per_sample: np.ndarray,
    weights: np.ndarray | None,
    flat_rtol: float,
    ci: float,
    axis: str = "log_sigma",
    sample_weight: np.ndarray | None = None,
) -> DecisionMap:
    """Decisions for ``per_sample [N, S, K]`` (sigma ascending, x_all = the axis coordinate);
    ``sample_weight [N, S]`` weights the samples in every mean (inside mass), else equal."""
    to_sigma = lambda v: float(sigma_of_coordinate(axis, v))
    mean, boot = _means(per_sample, weights, sample_weight)

    out: dict = {}
    reasons: dict = {}
    for pts, ks in _usable_groups(mean):
        if len(pts) < 3:
            for k in ks:
                out[names[k]], reasons[names[k]] = None, TOO_FEW_POINTS
            continue
        x = x_all[pts]
        found = _group_decisions(x, mean[pts][:, ks].T, flat_rtol)
        if boot is not None:
            bxp = _replicate_peaks(x, boot, pts, ks, flat_rtol)
        for g, k in enumerate(ks):
            if isinstance(found[g], str):
                out[names[k]], reasons[names[k]] = None, found[g]
                continue
            xp, yp, i, (lo, hi, clipped) = found[g]
            interval, n_valid = None, 0
            if boot is not None:
                vals = bxp[:, g]
                vals = vals[np.isfinite(vals)]
                n_valid = len(vals)
                if n_valid >= 2:
                    q = 100 * (1 - ci) / 2
                    a, b = np.percentile(vals, [q, 100 - q])
                    interval = (to_sigma(a), to_sigma(b))
            sigma = to_sigma(xp)
            spacing = float(_step_at(x, np.array(i)))
            per_half = 0.5 * (hi - lo) / spacing
            out[names[k]] = Decision(
                name=str(names[k]),
                kind=kind,
                decision_sigma=sigma,
                window=(to_sigma(lo), to_sigma(hi)),
                interval=interval,
                peak_rate=yp,
                at_edge=bool(i == 0 or i == len(x) - 1),
                window_clipped=bool(clipped),
                vp_time=float(noise.vp_time(sigma)),
                log_snr=float(noise.log_snr(sigma)),
                n_boot=n_valid,
                grid=(to_sigma(x_all[0]), to_sigma(x_all[-1])),
                axis=axis,
                points_per_half_width=float(per_half),
                # a clipped window's width is a lower bound: flag it only if even that is too narrow
                under_resolved=bool(per_half < MIN_POINTS_PER_HALF_WIDTH),
            )
    return DecisionMap({n: out[n] for n in names}, reasons={n: reasons[n] for n in names if n in reasons})


def decide(
    curves: EntropyCurves,
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
    flat_rtol: float = FLAT_RTOL,
    axis: str = "log_sigma",
) -> dict:
    """Decision sigma, half-peak window and bootstrap interval for every internal node and level.

    Returns ``{"nodes": {node: Decision | None}, "levels": {depth: Decision | None}}`` in the
    order of ``curves.node_names`` and ``curves.level_names``; each family is a
    :class:`DecisionMap` whose ``reasons`` say why each ``None`` is undecided (the rule is in the
    module docstring; ``flat_rtol`` is its flatness threshold). Rates are ``d/d axis`` of the
    sample-mean curves (``axis``: ``log_sigma``, ``vp_time`` or ``log_snr``, see the module
    docstring); ``n_boot=0`` skips the bootstrap (intervals are then None).
    """
    if not 0 < ci < 1:
        raise ProbesError(f"decide: ci must be in (0, 1); got {ci}")
    if not (isinstance(flat_rtol, numbers.Real) and 0 <= flat_rtol < 1):
        raise ProbesError(f"decide: flat_rtol must be a number in [0, 1); got {flat_rtol!r}")
    n_boot = check_n_boot(n_boot)
    seed = check_seed(seed)
    order = _ascending(curves.sigmas)
    x = axis_coordinate(axis, curves.sigmas[order])
    N = curves.n_samples
    weights = None
    if n_boot and N > 0:
        rng = np.random.default_rng(seed)
        weights = rng.multinomial(N, np.full(N, 1.0 / N), size=int(n_boot)).astype(np.float64)
    sample_weight = curves.sample_weight()
    if sample_weight is not None:
        sample_weight = sample_weight[:, order]
    nodes = _decide_family(
        "node", list(curves.node_names), x, curves.nodes[:, order], weights, flat_rtol, ci, axis, sample_weight
    )
    levels = _decide_family(
        "level", list(curves.level_names), x, curves.levels[:, order], weights, flat_rtol, ci, axis, sample_weight
    )
    return {"nodes": nodes, "levels": levels}


def decision_replicates(curves: EntropyCurves, weights: np.ndarray, axes=AXES,
                        flat_rtol: float = FLAT_RTOL) -> dict:
    """Each internal node's decision sigma under each bootstrap replicate, on each axis:
    ``{axis: {node: [B]}}`` (NaN where a replicate's rate is flat or the node gets no decision),
    for sample counts ``weights [B, N]`` supplied by the caller (so two sets of curves can share or
    pair their replicates).

    Each replicate is decided as :func:`decide` decides the curves: the (inside-weighted) mean
    under the replicate's counts, its rate against the axis on the sigma points the full-sample
    mean has, and the refined argmax of that rate. The replicate means do not depend on the axis,
    so they are computed once for all axes."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != curves.n_samples:
        raise ProbesError(f"decisions: replicate weights must be [replicates, {curves.n_samples}], "
                          f"not {list(weights.shape)}")
    order = _ascending(curves.sigmas)
    sample_weight = curves.sample_weight()
    if sample_weight is not None:
        sample_weight = sample_weight[:, order]
    names = list(curves.node_names)
    mean, boot = _means(curves.nodes[:, order], weights, sample_weight)
    groups = _usable_groups(mean)
    out: dict = {}
    for axis in axes:
        x_all = axis_coordinate(axis, curves.sigmas[order])
        out[axis] = {str(n): np.full(weights.shape[0], np.nan) for n in names}
        for pts, ks in groups:
            if len(pts) < 3:
                continue
            x = x_all[pts]
            # a node the full sample does not decide gets no decision, whatever its replicates say
            found = _group_decisions(x, mean[pts][:, ks].T, flat_rtol)
            bxp = _replicate_peaks(x, boot, pts, ks, flat_rtol)
            for g, k in enumerate(ks):
                if not isinstance(found[g], str):
                    out[axis][str(names[k])] = sigma_of_coordinate(axis, bxp[:, g])
    return out


def axis_value(axis: str, sigma):
    """Where ``sigma`` lies on ``axis`` in that axis's own units, as decisions report it: log sigma,
    VP time ``t`` or log-SNR ``lambda = -2 log sigma`` (which falls as sigma grows)."""
    if axis == "log_snr":
        return -axis_coordinate(axis, sigma)
    return axis_coordinate(axis, sigma)


def decide_axes(curves: EntropyCurves, axes=AXES, **kwargs) -> dict:
    """:func:`decide` on each axis: ``{axis: decide(curves, axis=axis, **kwargs)}`` (same bootstrap
    resamples on every axis, so intervals are comparable)."""
    return {axis: decide(curves, axis=axis, **kwargs) for axis in axes}
