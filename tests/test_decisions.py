"""Decision sigmas, half-peak windows and bootstrap intervals on curves with known answers."""

import json
import math

import numpy as np
import pytest

from probes import noise
from probes.entropy import Decision, EntropyCurves, decide, rates
from probes.errors import ProbesError

HALF = math.log(3 + 2 * math.sqrt(2))  # the logistic derivative is at half max at u = +-HALF


def sigmoid(u):
    return 1 / (1 + np.exp(-u))


def curves_from(nodes, sigmas, levels=None):
    """EntropyCurves from per-sample node curves [N, S, K] (levels default to their cumsum)."""
    nodes = np.asarray(nodes, dtype=np.float64)
    if levels is None:
        levels = nodes.sum(-1, keepdims=True)
    return EntropyCurves(
        sigmas=sigmas,
        level_names=list(range(1, levels.shape[-1] + 1)),
        node_names=[f"n{k}" for k in range(nodes.shape[-1])],
        levels=levels,
        nodes=nodes,
        prior_levels=np.full(levels.shape[-1], math.log(2)),
    )


def test_sigmoid_peak_and_window_exact():
    sigmas = noise.geometric_grid(100.0, 0.01, 121).numpy()  # descending, as runs use
    s0, w = 1.3, 0.4
    c = sigmoid((np.log(sigmas) - math.log(s0)) / w)
    curves = curves_from(c[None, :, None], sigmas)
    d = decide(curves, n_boot=0)["nodes"]["n0"]
    assert isinstance(d, Decision)
    # Discretisation, relative to the quantity: the grid steps h = 0.077 in log sigma. The parabola's
    # vertex locates the peak to a small fraction of h (measured 6e-5, allowed 2e-3 in log sigma);
    # central differences lower the peak rate and move the half-peak crossings by ~(h / w)^2 / 12
    # (measured 3e-3, allowed 1e-2).
    assert d.decision_sigma == pytest.approx(s0, rel=2e-3)
    assert d.peak_rate == pytest.approx(0.25 / w, rel=1e-2)
    assert d.window[0] == pytest.approx(s0 * math.exp(-w * HALF), rel=1e-2)
    assert d.window[1] == pytest.approx(s0 * math.exp(w * HALF), rel=1e-2)
    assert not d.at_edge and not d.window_clipped and d.interval is None
    # the same float64 conversions of one number: relative 1e-12
    assert d.vp_time == pytest.approx(noise.vp_time(d.decision_sigma), rel=1e-12)
    assert d.log_snr == pytest.approx(-2 * math.log(d.decision_sigma), rel=1e-12)
    json.dumps(d.to_dict())


def test_nonuniform_grid_and_order_independence():
    sigmas = noise.karras_grid(80.0, 0.002, 90).numpy()
    s0, w = 0.5, 0.6
    c = sigmoid((np.log(sigmas) - math.log(s0)) / w)
    a = decide(curves_from(c[None, :, None], sigmas), n_boot=0)["nodes"]["n0"]
    perm = np.random.default_rng(0).permutation(len(sigmas))
    b = decide(curves_from(c[None, perm, None], sigmas[perm]), n_boot=0)["nodes"]["n0"]
    # Karras steps are 0.126 in log sigma here and uneven: peak to 1e-2, crossings to 2e-2, relatively
    # (measured 6e-4 and 7e-3); the permuted grid is the same float64 arithmetic sorted: 1e-12
    assert a.decision_sigma == pytest.approx(s0, rel=1e-2)
    assert a.window[0] == pytest.approx(s0 * math.exp(-w * HALF), rel=2e-2)
    assert a.window[1] == pytest.approx(s0 * math.exp(w * HALF), rel=2e-2)
    assert b.decision_sigma == pytest.approx(a.decision_sigma, rel=1e-12)


def test_rates_against_log_sigma():
    sigmas = np.array([8.0, 4.0, 2.0, 1.0])
    s, r = rates(sigmas, 3 * np.log(sigmas))
    np.testing.assert_array_equal(s, [1.0, 2.0, 4.0, 8.0])  # the grid itself, sorted
    # difference quotients of values up to 3 log 8 ~ 6 over steps of log 2: float64 rounding, 1e-12
    np.testing.assert_allclose(r, 3.0, rtol=1e-12, atol=0)


def test_bootstrap_interval_covers_truth():
    rng = np.random.default_rng(1)
    sigmas = noise.geometric_grid(50.0, 0.02, 60).numpy()
    truths = [0.3, 2.0]
    per_sample = []
    for s0 in truths:
        shift = 0.25 * rng.standard_normal((80, 1))  # per-sample decision jitter, symmetric in log
        curve = sigmoid((np.log(sigmas)[None] - math.log(s0) - shift) / 0.5)
        per_sample.append(curve + 0.05 * rng.standard_normal(curve.shape))
    nodes = np.stack(per_sample, -1)
    out = decide(curves_from(nodes, sigmas), n_boot=300, seed=3)
    for k, s0 in enumerate(truths):
        d = out["nodes"][f"n{k}"]
        lo, hi = d.interval
        assert lo < s0 < hi, (s0, d.interval)
        assert lo <= d.decision_sigma <= hi
        assert hi / lo < 2.0  # informative: the grid spans a factor 2500
        assert d.n_boot == 300
    again = decide(curves_from(nodes, sigmas), n_boot=300, seed=3)
    assert again["nodes"]["n0"].interval == out["nodes"]["n0"].interval


def test_edge_flat_and_nan_nodes():
    sigmas = noise.geometric_grid(10.0, 0.1, 40).numpy()
    x = np.log(sigmas)
    edge = sigmoid((x - math.log(30.0)) / 0.3)  # transition above the grid
    flat = np.full_like(x, 0.7)
    nan = np.full_like(x, np.nan)
    partial = sigmoid((x - math.log(1.0)) / 0.3)
    partial_ps = np.stack([partial, partial, partial], 0)
    partial_ps[:, :3] = np.nan  # unsupported at the three noisiest sigmas
    nodes = np.stack(
        [np.tile(edge, (3, 1)), np.tile(flat, (3, 1)), np.tile(nan, (3, 1)), partial_ps], -1
    )
    out = decide(curves_from(nodes, sigmas, levels=nodes[..., :1]), n_boot=20)
    d = out["nodes"]["n0"]
    # at the edge the decision is the grid's end point (float64 exp of its log: relative 1e-12)
    assert d.at_edge and d.decision_sigma == pytest.approx(10.0, rel=1e-12) and d.window_clipped
    assert out["nodes"]["n1"] is None
    assert out["nodes"]["n2"] is None
    # steps of 0.118 in log sigma: the parabola's vertex within 2e-2 of the peak, relatively
    assert out["nodes"]["n3"].decision_sigma == pytest.approx(1.0, rel=2e-2)
    assert list(out["levels"]) == [1]
    assert out["levels"][1].name == "1" and out["levels"][1].kind == "level"



def test_window_surrounds_the_peak_on_a_noisy_rate():
    """A spiky rate whose parabolic refinement overshoots the grid maximum by more than a factor
    two (neighbours strongly negative) still gets a window lo <= x[argmax] <= hi."""
    import numpy as np

    from probes.entropy.decisions import _half_peak_window, _peaks

    x = np.linspace(0.0, 4.0, 9)
    r = np.array([0.0, 0.1, -30.0, 1.0, 0.95, -30.0, 0.1, 0.0, 0.0])
    _, peak, i = _peaks(x, r[None], 1e-9)
    assert peak[0] > 2 * r[i[0]]  # the overshoot this guards against
    lo, hi, _ = _half_peak_window(x, r, int(i[0]), float(peak[0]))
    assert lo <= x[i[0]] <= hi


def test_no_grid_point_gaining_information_is_no_decision():
    """Rates negative at every grid point (information only lost, as a noisy tiny model can give)
    whose parabola through the top three points still pokes above zero: no decision, no window
    outside the grid (this once gave a vp_time window edge below t = 0, hence a NaN sigma)."""
    from probes.entropy.decisions import _peaks

    x = np.array([0.0024, 0.0411, 0.3326, 1.0601, 1.901, 2.6844])  # vp_time coordinates
    r = np.array([-0.0035, -0.0031, -0.0002, -0.0003, -0.0049, -0.0105])
    xp, peak, _ = _peaks(x, r[None], 1e-12)
    assert np.isnan(xp[0]) and np.isnan(peak[0])
    # through decide(): a mean curve with exactly these rates decides nothing on any axis
    sigmas = np.sqrt(np.expm1(2 * x))
    values = np.concatenate([[0.0], np.cumsum(np.diff(x) * (r[1:] + r[:-1]) / 2)]) + 1.0
    nodes = np.tile(values[None, :, None], (3, 1, 1))
    with np.errstate(invalid="raise"):
        for axis in ("log_sigma", "vp_time", "log_snr"):
            out = decide(curves_from(nodes, sigmas, levels=nodes), axis=axis, n_boot=10)
            d = out["nodes"]["n0"]
            assert d is None or np.isfinite(d.window).all()


def test_seeds_and_counts_from_numpy_torch_or_whole_floats_are_accepted():
    import torch

    sigmas = noise.geometric_grid(10.0, 0.1, 30).numpy()
    rng = np.random.default_rng(0)
    nodes = 1 / (1 + np.exp(-(np.log(sigmas)[None] - rng.normal(0, 0.3, (40, 1))) / 0.5))[..., None]
    curves = curves_from(nodes, sigmas)
    want = decide(curves, n_boot=50, seed=3)["nodes"]["n0"].interval
    for n_boot, seed in ((50.0, 3), (np.int64(50), np.int64(3)), (torch.tensor(50), torch.tensor(3)), (50, 3.0)):
        assert decide(curves, n_boot=n_boot, seed=seed)["nodes"]["n0"].interval == want
    for seed in (-1, 2.5, "3", True):
        with pytest.raises(ProbesError, match="seed: expected a non-negative whole number"):
            decide(curves, n_boot=5, seed=seed)
