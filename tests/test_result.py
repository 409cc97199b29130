"""ProbeResult: entropies, decisions, comparison, plots and the saved run directory.

Synthetic posteriors with known entropies: a uniform posterior over L leaves has leaf-level entropy
log L, a one-hot posterior 0; a posterior uniform inside one coarse cell has level-1 entropy 0 and
leaf entropy log(cell size). Tolerance 1e-6 (float32 posteriors, float64 entropies).
"""

import csv
import math

import matplotlib.figure
import numpy as np
import pytest
import torch
from tolerances import F32, magnitude

import probes
from probes.errors import ProbesError
from probes.estimators import EstimatorOutput
from probes.result import ProbeResult
from probes.taxonomy import load_taxonomy


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy("animals-vehicles")


def _result(tax, kind, n=4, sigmas=(8.0, 4.0, 2.0, 1.0, 0.5)):
    L, S = len(tax.leaves), len(sigmas)
    if kind == "uniform":
        p = torch.full((n, S, L), 1.0 / L)
    elif kind == "onehot":
        p = torch.zeros(n, S, L)
        p[..., 0] = 1.0
    else:  # a decision at sigma 2: uniform above, one-hot below
        p = torch.full((n, S, L), 1.0 / L)
        p[:, 3:] = 0.0
        p[:, 3:, 0] = 1.0
    lp = p.clamp_min(1e-30).log()
    out = EstimatorOutput("plugin", torch.tensor(sigmas, dtype=torch.float64), log_probs=lp, classifier_calls=n * S)
    prior = torch.full((L,), 1.0 / L, dtype=torch.float64)  # else the mean posterior stands in for p(y)
    return ProbeResult(taxonomy=tax, estimates={"plugin": out}, meta={"family": "test"}, prior=prior)


def test_entropy_of_known_posteriors(tax):
    L = len(tax.leaves)
    uni, one = _result(tax, "uniform").entropy(), _result(tax, "onehot").entropy()
    # float32 posteriors (renormalised in float64): a few float32 units of the entropies' magnitude log L
    tol = 3 * F32 * math.log(L)
    assert np.allclose(uni.level_mean()[:, -1], math.log(L), rtol=0, atol=tol)
    assert np.allclose(one.level_mean(), 0.0, rtol=0, atol=tol)
    # level 1 of animals-vehicles: animal (6 leaves) vs vehicle (7 leaves)
    h1 = -(6 / 13) * math.log(6 / 13) - (7 / 13) * math.log(7 / 13)
    assert np.allclose(uni.level_mean()[:, 0], h1, rtol=0, atol=tol)


def test_compare_gives_the_information_gap(tax):
    uni, one = _result(tax, "uniform"), _result(tax, "onehot")
    gap = uni.compare(one, n_boot=20)
    depth = tax.max_depth
    # float32 posteriors: a few float32 units of the information's magnitude log L (as above); a
    # result against itself: float64 rounding, 1e-12 of it
    tol = 3 * F32 * math.log(len(tax.leaves))
    assert np.allclose(gap.levels[depth].delta, math.log(len(tax.leaves)), rtol=0, atol=tol)
    # every sample is the same: every replicate gives the same curve, so the interval is a point
    assert np.allclose(gap.levels[depth].delta_interval, math.log(len(tax.leaves)), rtol=0, atol=tol)
    assert np.allclose(one.compare(one).levels[depth].delta, 0.0, rtol=0, atol=1e-12 * magnitude(math.log(13)))
    assert set(gap.nodes) == set(tax.internal_nodes)
    # another grid is compared over the overlap (tests/test_compare_grids.py); too little overlap is one line
    other_grid = _result(tax, "onehot", sigmas=(9.0, 4.0, 2.0, 1.0, 0.5))
    assert np.allclose(uni.compare(other_grid).levels[depth].delta, math.log(len(tax.leaves)), rtol=0, atol=tol)
    with pytest.raises(ProbesError, match="different sigma grids that overlap in 1 grid point"):
        uni.compare(_result(tax, "uniform", sigmas=(0.9, 0.6, 0.5, 0.3, 0.1)))


def test_decisions_on_a_step_posterior(tax):
    res = _result(tax, "step")
    levels = res.decisions(axis="levels", n_boot=20)
    nodes = res.decisions(axis="nodes", n_boot=20)
    assert set(levels) == set(range(1, tax.max_depth + 1)) and set(nodes) == set(tax.internal_nodes)
    # the entropy falls between grid points 2.0 and 1.0: every decided level lies in that step
    for d in levels.values():
        assert d is not None and 1.0 <= d.decision_sigma <= 2.0
    with pytest.raises(ProbesError, match="axis must be"):
        res.decisions(axis="leaves")


def test_save_and_load_round_trip(tax, tmp_path):
    res = _result(tax, "step")
    out = res.save(tmp_path / "run")
    for name in ("curves.csv", "decisions.csv", "tree.json", "run.json", "curves.png", "posteriors.safetensors",
                 "taxonomy.json", "summary.txt"):
        assert (out / name).is_file(), name
    back = probes.load(out)
    assert torch.equal(back.log_posteriors(), res.log_posteriors())
    assert back.taxonomy.leaves == tax.leaves and back.meta == {"family": "test"}
    assert back.output is None
    a, b = res.decisions(n_boot=20), back.decisions(n_boot=20)
    assert {k: v.decision_sigma for k, v in a.items()} == {k: v.decision_sigma for k, v in b.items()}
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    leaf_rows = [r for r in rows if r["kind"] == "level" and r["name"] == str(tax.max_depth)]
    # float32 posteriors: a few float32 units of the entropy's magnitude log 13
    assert len(leaf_rows) == 5 and abs(float(leaf_rows[0]["entropy"]) - math.log(13)) < 3 * F32 * math.log(13)
    with pytest.raises(ProbesError, match=r"saved probe result \(no run.json\)"):
        probes.load(tmp_path)


def test_plot(tax, tmp_path):
    res = _result(tax, "step")
    assert isinstance(res.plot(), matplotlib.figure.Figure)
    assert res.plot(tmp_path / "c.png").is_file()


def test_whole_float_and_tensor_replicate_counts_and_path_like_folders_are_accepted(tax, tmp_path):
    import os

    res = _result(tax, "step")
    counted = {k: v.n_boot for k, v in res.decisions(n_boot=20).items() if v is not None}
    for n_boot in (20.0, np.int64(20), torch.tensor(20)):  # 2e1 is the count 20, as the int is
        assert {k: v.n_boot for k, v in res.decisions(n_boot=n_boot).items() if v is not None} == counted
    for bad in (2.5, -1.0, float("nan"), True, "20"):
        with pytest.raises(ProbesError, match="n_boot: expected a whole number"):
            res.decisions(n_boot=bad)

    class Folder(os.PathLike):  # what pathlib-alike classes offer: a path through os.fspath
        def __fspath__(self):
            return str(tmp_path / "saved")

    res.save(Folder(), n_boot=10.0)
    assert torch.equal(probes.load(Folder()).log_posteriors(), res.log_posteriors())


def test_a_run_guided_at_scale_zero_is_recorded_as_scale_zero():
    from probes.result import _run_meta

    def meta(guidance):
        return _run_meta({"recipe": {"sampling": {"condition": "leaf", "guidance": guidance}}}, ["exact"])

    assert meta({"scale": 0.0})["guidance_scale"] == 0.0  # the unconditional denoiser, not "no guidance"
    assert meta({"scale": 0.0})["names_in_files"] == {"exact": "exact:unguided_posterior"}
    assert meta({})["guidance_scale"] == 1.0


def test_save_keeps_off_a_folder_of_other_files(tax, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.txt").write_text("my notes")  # a name save writes too
    with pytest.raises(ProbesError, match=r"save: .*mine holds files that are not a saved result \(summary.txt\)"):
        _result(tax, "step").save(mine, n_boot=0)
    assert (mine / "summary.txt").read_text() == "my notes"
    saved = _result(tax, "step").save(tmp_path / "saved", n_boot=0)
    _result(tax, "step").save(saved, n_boot=0)  # over an earlier saved result: allowed
