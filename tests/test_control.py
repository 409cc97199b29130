"""Control derived from measurements: guidance intervals (probes interval) and entropic step grids."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from gmm_runs import gmm_recipe

import probes.runner as runner
from probes.cli import main
from probes.errors import ProbesError
from probes.interval import derive_interval, gain_band
from probes.noise import entropic_grid, geometric_grid
from probes.result import load


@pytest.fixture(scope="module")
def runs(guidance_runs):
    """The shared guided pair, plus an unconditional run and an unfinished one."""
    tmp = guidance_runs
    if not (tmp / "plain").exists():
        runner.run(gmm_recipe(tmp, "plain", condition="none"), tmp / "plain", progress=False)
        runner.run(gmm_recipe(tmp, "cut"), tmp / "cut", progress=False, stop_after_batches=1)
    return tmp


# --- the rules on curves with known answers ---------------------------------------------------------


def test_gain_band_of_a_logistic_gap_is_its_closed_form_half_peak_band():
    # dI(u) = A / (1 + exp((u - u0) / w)), u = log sigma: the gap opens as sigma falls through sigma0.
    # g = d dI / d(-u) = (A / w) s (1 - s) peaks at u0 and exceeds half its peak for
    # |u - u0| <= w log(3 + 2 sqrt 2).
    sigmas = torch.logspace(2, -2, 401, dtype=torch.float64).numpy()
    u0, w = math.log(1.5), 0.4
    delta = 0.8 / (1 + np.exp((np.log(sigmas) - u0) / w))
    lo, hi, peak, rate = gain_band(sigmas, delta)
    half = w * math.log(3 + 2 * math.sqrt(2))
    step = math.log(sigmas[0] / sigmas[1])
    # Tolerance: the band edges are grid points widened by one step (two steps in log sigma); the
    # peak rate by central differences is low by ~(step / w)^2 / 6 = 5e-4 of it (measured 4e-4).
    assert math.log(peak) == pytest.approx(u0, abs=step)
    assert math.log(lo) == pytest.approx(u0 - half, abs=2 * step)
    assert math.log(hi) == pytest.approx(u0 + half, abs=2 * step)
    assert rate == pytest.approx(0.8 / (4 * w), rel=1e-3)


def test_gain_band_is_empty_when_guidance_adds_nothing():
    sigmas = geometric_grid(10.0, 0.1, 20).numpy()
    assert gain_band(sigmas, -np.linspace(0, 1, 20))[0] is None


def test_entropic_grid_with_only_uniform_share_is_geometric():
    sig = geometric_grid(40.0, 0.05, 50)
    ent = torch.sigmoid(torch.log(sig))
    # float64 interpolation of the cumulative share: relative 1e-10 (measured 7e-14)
    assert torch.allclose(entropic_grid(sig, ent, 40.0, 0.05, 17, uniform_share=1.0),
                          geometric_grid(40.0, 0.05, 17), rtol=1e-10, atol=0)


def test_pure_entropic_time_spaces_the_entropy_evenly():
    # A measured H(sigma) = log 2 * sigmoid((u - u0) / w) on a fine grid: in pure entropic time the
    # steps cut H into equal parts, so H at the steps is an arithmetic progression.
    sig = torch.logspace(math.log10(40), math.log10(0.05), 600, dtype=torch.float64)
    u0, w = math.log(2.0), 0.5
    H = lambda s: math.log(2) * torch.sigmoid((torch.log(s) - u0) / w)
    grid = entropic_grid(sig, H(sig), 40.0, 0.05, 9, uniform_share=0.0)
    h = H(grid)
    expected = torch.linspace(float(H(torch.tensor(40.0, dtype=torch.float64))),
                              float(H(torch.tensor(0.05, dtype=torch.float64))), 9, dtype=torch.float64)
    # Tolerance 1e-4 nats (of H's range log 2): piecewise-linear interpolation of a 600-point curve
    # errs by at most step^2 / 8 max|H''| = 5e-6 nats (step 0.011 in log sigma; measured 8e-6).
    assert torch.allclose(h, expected, rtol=0, atol=1e-4)
    assert (grid[1:] < grid[:-1]).all()


# --- probes interval on real runs --------------------------------------------------------------------


def test_interval_from_a_guided_pair_ends_with_the_recipe_line(runs, capsys):
    assert main(["interval", str(runs / "w3"), "--against", str(runs / "w1"), "--level", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("sampling.guidance.interval: [")
    lo, hi = yaml.safe_load(last.split(":", 1)[1])
    assert 0.05 <= lo < hi <= 40.0


def test_interval_from_one_runs_decision_window_is_that_window(runs):
    result = derive_interval(runs / "w1", node="root")
    state = json.loads((runs / "w1" / "run.json").read_text())
    window = state["decisions"]["exact"]["nodes"]["root"]["window"]
    assert result["interval"] == pytest.approx(tuple(window), rel=5e-3)  # printed to 3 significant digits
    assert result["text"].splitlines()[-1].startswith("sampling.guidance.interval:")


@pytest.mark.parametrize("args, message", [
    (["plain"], "holds no guidance information"),
    (["cut"], "not finished"),
    (["w1", "--node", "nowhere"], "--node 'nowhere': not an internal node"),
    (["w1", "--against", "w3"], "has no guidance"),
    (["w3", "--against", "w1", "--level", "7"], "--level 7"),
])
def test_bad_interval_input_is_one_clear_line(runs, capsys, args, message):
    argv = ["interval"] + [str(runs / a) if (runs / a).exists() else a for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_interval_reads_saved_results_as_it_reads_runs(runs, tmp_path, capsys):
    """A result saved with ``ProbeResult.save`` gives the run's own lines; a damaged one is one
    line naming the file."""
    for name in ("w1", "w3"):
        load(runs / name).save(tmp_path / name, n_boot=0)
    for args in (["{}/w3", "--against", "{}/w1"], ["{}/w1", "--node", "root"], ["{}/w3", "--level", "1"]):
        assert main(["interval", *(a.format(runs) for a in args)]) == 0
        from_runs = capsys.readouterr().out.replace(str(runs), "DIR")
        assert main(["interval", *(a.format(tmp_path) for a in args)]) == 0
        assert capsys.readouterr().out.replace(str(tmp_path), "DIR") == from_runs
    (tmp_path / "w1" / "posteriors.safetensors").write_bytes(b"not a record")
    assert main(["interval", str(tmp_path / "w3"), "--against", str(tmp_path / "w1")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path / "w1" / "posteriors.safetensors") in err, err


# --- grid: {from_run: DIR} ----------------------------------------------------------------------------


def test_a_recipe_grid_from_a_run_puts_more_steps_in_its_decision_window(runs, tmp_path):
    path = gmm_recipe(tmp_path, "entropic", grid={"from_run": str(runs / "w1")})
    runner.run(path, tmp_path / "entropic", progress=False)
    sig = torch.tensor(json.loads((tmp_path / "entropic" / "run.json").read_text())["sigmas"])
    lo, hi = json.loads((runs / "w1" / "run.json").read_text())["decisions"]["exact"]["levels"]["2"]["window"]
    geo = geometric_grid(40.0, 0.05, 24)
    assert len(sig) == 24
    assert int(((sig >= lo) & (sig <= hi)).sum()) > int(((geo >= lo) & (geo <= hi)).sum())


def test_a_grid_from_a_missing_run_is_one_line_naming_the_field(tmp_path):
    path = gmm_recipe(tmp_path, "bad", grid={"from_run": "no/such/run"})
    with pytest.raises(ProbesError, match="sampling.grid.from_run"):
        runner.run(path, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def _binary_posterior(information: np.ndarray) -> np.ndarray:
    """The p in [1/2, 1) whose binary entropy is ``log 2 - information`` (bisection; h falls on it)."""
    lo, hi = np.full_like(information, 0.5), np.full_like(information, 1.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        h = -(mid * np.log(mid) + (1 - mid) * np.log1p(-mid))
        low_info = math.log(2) - h < information
        lo, hi = np.where(low_info, mid, lo), np.where(low_info, hi, mid)
    return (lo + hi) / 2


def _saved_result(path: Path, scale: float, sigmas: np.ndarray, coarse: np.ndarray, fine: np.ndarray) -> Path:
    """A saved probe result (``ProbeResult.save``) on ``gmm-two-by-two`` whose mutual information is
    ``coarse`` about level 1 and ``coarse + fine`` about level 2, with the guidance scale a probe
    records. Its posterior is a product: the coarse split with p1 (``log 2 - h(p1) = coarse``) and,
    within each group, the fine split with p2; under the uniform prior ``I_1 = log 2 - h(p1)`` and
    ``I_2 = log 4 - h(p1) - h(p2)``."""
    from probes.estimators import EstimatorOutput
    from probes.result import ProbeResult
    from probes.taxonomy import load_taxonomy

    p1, p2 = _binary_posterior(coarse), _binary_posterior(fine)
    leaves = np.stack([p1 * p2, p1 * (1 - p2), (1 - p1) * p2, (1 - p1) * (1 - p2)], -1)  # left-a .. right-b
    log_probs = torch.from_numpy(np.log(leaves))[None].expand(2, -1, -1).contiguous()
    out = EstimatorOutput("exact", torch.from_numpy(sigmas), log_probs=log_probs)
    result = ProbeResult(taxonomy=load_taxonomy("gmm-two-by-two"), estimates={"exact": out},
                         prior=torch.full((4,), 0.25, dtype=torch.float64), meta={"guidance_scale": scale})
    return result.save(path, n_boot=0)


def test_the_pair_interval_spans_the_gain_band_of_every_level(tmp_path):
    # Guidance adds information about level 1 around sigma 8 and, beyond it, about level 2 around
    # sigma 1: logistic gaps in log sigma whose half-peak bands are u0 +- w log(3 + 2 sqrt 2).
    sigmas = torch.logspace(2, -2, 321, dtype=torch.float64).numpy()
    u = np.log(sigmas)

    def gap(sigma0, w, height):
        return height / (1 + np.exp((u - math.log(sigma0)) / w))

    coarse, fine = gap(8.0, 0.3, 0.6), gap(1.0, 0.3, 0.2)  # the fine gain is smaller: dI_2 peaks at 8
    zero = np.zeros_like(u)
    plain = _saved_result(tmp_path / "plain", 1.0, sigmas, zero, zero)
    guided = _saved_result(tmp_path / "guided", 3.0, sigmas, coarse, fine)
    curves = load(guided).entropy()  # the saved posteriors carry the designed information
    # float64 logs of products of probabilities near 0 and 1: 1e-9 of the information's magnitude
    designed = np.stack([coarse, coarse + fine], -1)
    np.testing.assert_allclose(curves.mutual_information(), designed, rtol=0, atol=1e-9 * max(1.0, designed.max()))
    lo, hi = derive_interval(guided, against=plain)["interval"]
    half = 0.3 * math.log(3 + 2 * math.sqrt(2))
    step = math.log(sigmas[0] / sigmas[1])
    # Tolerance: band edges are grid points widened by one step, then rounded to 3 significant
    # digits: a relative change of at most 5e-3, so 5e-3 in log sigma.
    assert math.log(lo) == pytest.approx(math.log(1.0) - half, abs=2 * step + 5e-3)
    assert math.log(hi) == pytest.approx(math.log(8.0) + half, abs=2 * step + 5e-3)
    # Level 1 alone is guided only around its own split.
    lo1, _hi1 = derive_interval(guided, against=plain, level=1)["interval"]
    assert math.log(lo1) == pytest.approx(math.log(8.0) - half, abs=2 * step + 5e-3)
