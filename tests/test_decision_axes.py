"""Decisions on the log-sigma, VP-time and log-SNR axes: each the peak of the rate against its axis."""

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from probes import noise
from probes.entropy import EntropyCurves, decide, decide_axes
from probes.report.rundir import DECISIONS_COLUMNS, write_decisions_csv

HALF = math.log(3 + 2 * math.sqrt(2))  # the logistic derivative is at half max at u = +-HALF


def curves_from(values, sigmas):
    values = np.asarray(values, dtype=np.float64)[None, :, None]
    return EntropyCurves(sigmas=sigmas, level_names=[1], node_names=["n0"], levels=values, nodes=values,
                         prior_levels=np.array([math.log(2)]))


def two_class_entropy(sigma, m=2.0, s0=1.0, n=80):
    """H(Y | x_sigma) of two equiprobable classes at +-m (std s0), by Gauss-Hermite quadrature."""
    xi, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    r = m / np.sqrt(s0**2 + np.asarray(sigma, dtype=np.float64)[..., None] ** 2)
    u = 2 * r**2 + 2 * r * xi
    p = 1 / (1 + np.exp(-u))
    h = np.logaddexp(0, -u) * p + np.logaddexp(0, u) * (1 - p)  # binary entropy, stable
    return (h * w).sum(-1)


def test_vp_time_axis_is_the_peak_of_the_vp_rate():
    """A logistic in VP time: the VP-time rate peaks at t0 exactly, with half-width HALF * w."""
    sigmas = noise.geometric_grid(100.0, 0.01, 161).numpy()
    t = 0.5 * np.log1p(sigmas**2)
    t0, w = 0.6, 0.15
    c = 1 / (1 + np.exp(-(t - t0) / w))
    d = decide(curves_from(c, sigmas), n_boot=0, axis="vp_time")["nodes"]["n0"]
    assert d.axis == "vp_time"
    # Discretisation, against the grid's step in t near t0 (0.04): the parabola's vertex within an
    # eighth of a step (measured 5e-4), the linearly interpolated half-peak crossings within a
    # quarter (measured 3e-3); sigma relatively to 1% (measured 8e-4); the peak rate, lowered by
    # central differences by ~(step / w)^2 / 12, to 1% (measured 6e-3).
    step = float(np.abs(np.diff(t))[np.argmin(np.abs(t - t0))])
    assert d.vp_time == pytest.approx(t0, abs=step / 8)
    assert d.decision_sigma == pytest.approx(noise.sigma_from_vp_time(t0), rel=0.01)
    lo, hi = (noise.vp_time(s) for s in d.window)
    assert lo == pytest.approx(t0 - HALF * w, abs=step / 4)
    assert hi == pytest.approx(t0 + HALF * w, abs=step / 4)
    assert d.peak_rate == pytest.approx(1 / (4 * w), rel=0.01)
    assert not d.under_resolved


def test_log_snr_axis_peaks_with_log_sigma_at_half_height():
    sigmas = noise.geometric_grid(100.0, 0.01, 121).numpy()
    c = 1 / (1 + np.exp(-(np.log(sigmas) - math.log(1.3)) / 0.4))
    out = decide_axes(curves_from(c, sigmas), n_boot=0)
    a, b = out["log_sigma"]["nodes"]["n0"], out["log_snr"]["nodes"]["n0"]
    # one parabola on a linearly rescaled axis: float64 rounding, amplified by the vertex's -b / 2a;
    # relative 1e-9 (measured: equal)
    assert b.decision_sigma == pytest.approx(a.decision_sigma, rel=1e-9)
    assert b.peak_rate == pytest.approx(a.peak_rate / 2, rel=1e-9)  # d/d(-lambda) = (1/2) d/dlog sigma
    assert b.window == pytest.approx(a.window, rel=1e-9)


def test_two_class_mixture_vp_peak_differs_from_log_sigma_peak():
    """Two classes at +-2 (std 1): the rate against VP time peaks at a smaller sigma than against
    log sigma; the toolkit must report each axis's own peak (truth: quadrature + optimiser)."""
    def neg_rate(x, coordinate):
        # central difference of the analytic curve in the axis coordinate (step 1e-4: error ~1e-8)
        h = 1e-4
        s1, s2 = coordinate(x - h), coordinate(x + h)
        return -(two_class_entropy(s2) - two_class_entropy(s1)) / (2 * h)

    true_log = math.exp(minimize_scalar(neg_rate, bounds=(-2, 3), args=(np.exp,), method="bounded").x)
    true_vp = noise.sigma_from_vp_time(minimize_scalar(
        neg_rate, bounds=(0.01, 3), args=(lambda t: np.sqrt(np.expm1(2 * t)),), method="bounded").x)
    assert true_vp < true_log  # the two axes really disagree here
    sigmas = noise.geometric_grid(80.0, 0.02, 64).numpy()
    out = decide_axes(curves_from(two_class_entropy(sigmas), sigmas), n_boot=0)
    # 64 points over 8.4 e-folds: 0.13 per step; parabolic refinement puts the peak within ~2%
    assert out["log_sigma"]["nodes"]["n0"].decision_sigma == pytest.approx(true_log, rel=0.02)
    assert out["vp_time"]["nodes"]["n0"].decision_sigma == pytest.approx(true_vp, rel=0.02)
    assert out["vp_time"]["nodes"]["n0"].vp_time == pytest.approx(noise.vp_time(true_vp), rel=0.02)


def test_under_resolved_peak_is_flagged():
    """A logistic of width 0.1 in log sigma has half-width HALF*0.1 = 0.18: a grid step of 0.5 puts
    under one point in it, a step of 0.02 puts nine."""
    def flag(steps):
        sigmas = noise.geometric_grid(100.0, 0.01, steps).numpy()
        c = 1 / (1 + np.exp(-(np.log(sigmas) - 0.05) / 0.1))
        return decide(curves_from(c, sigmas), n_boot=0)["nodes"]["n0"]

    coarse, fine = flag(20), flag(500)
    assert coarse.under_resolved and coarse.points_per_half_width < 3
    assert not fine.under_resolved and fine.points_per_half_width > 3


def test_decisions_csv_has_one_row_per_axis(tmp_path):
    sigmas = noise.geometric_grid(100.0, 0.01, 61).numpy()
    c = 1 / (1 + np.exp(-(np.log(sigmas) - 0.2) / 0.5))
    out = decide_axes(curves_from(c, sigmas), n_boot=0)
    text = write_decisions_csv(tmp_path / "d.csv", {"exact": out}).read_text().splitlines()
    assert text[0].split(",") == DECISIONS_COLUMNS
    axes = [row.split(",")[DECISIONS_COLUMNS.index("axis")] for row in text[1:]]
    assert axes == ["log_sigma"] * 2 + ["vp_time"] * 2 + ["log_snr"] * 2


def test_unknown_axis_is_one_error():
    from probes.errors import ProbesError

    sigmas = noise.geometric_grid(10.0, 0.1, 10).numpy()
    with pytest.raises(ProbesError, match="axis"):
        decide(curves_from(np.linspace(0, 1, 10), sigmas), axis="time")


def test_log_snr_grid_is_uniform_in_log_snr():
    g = noise.make_grid("log_snr", 80.0, 0.002, 33)
    lam = noise.log_snr(g)
    # float64 end points, relative 1e-12; steps are differences of |lambda| < 13, each rounded to
    # ~1e-15 of that: relative 1e-12 of the step (0.77)
    assert float(g[0]) == pytest.approx(80.0, rel=1e-12) and float(g[-1]) == pytest.approx(0.002, rel=1e-12)
    assert np.allclose(np.diff(lam.numpy()), float(lam[1] - lam[0]), rtol=1e-12, atol=0)
    assert np.all(np.diff(g.numpy()) < 0)  # descending, as every grid
