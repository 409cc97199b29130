"""Per-node guidance schedules (probes.denoisers.per_node) against independent computations on
Gaussian mixtures, whose every denoiser (per leaf, per group, unconditional) is exact."""

import json
import math

import pytest
import torch
import yaml
from gmm_runs import gmm_recipe

import probes.runner as runner
from probes.cli import main
from probes.conditioning import ClassLabelConditioner
from probes.denoisers.base import GuidedDenoiser
from probes.denoisers.generation import generation_denoiser
from probes.denoisers.per_node import NodeWindow, PerNodeGuidedDenoiser
from probes.errors import ProbesError
from probes.models.gmm import GaussianMixture
from probes.noise import geometric_grid
from probes.recipe import Guidance, load_recipe
from probes.sampling import sample
from probes.taxonomy import load_taxonomy

EVERYWHERE = (0.0, 1e6)
pytestmark = pytest.mark.usefixtures("one_thread")  # many small tensor operations


@pytest.fixture(scope="module")
def two_by_two():
    """The two-level mixture of tests/gmm_runs.py (coarse split 6 on e1, fine split 2 on e2), in 3-D."""
    tax = load_taxonomy("gmm-two-by-two")
    gmm = GaussianMixture.hierarchical(tax, 3, [6.0, 2.0], std=0.5, axis_aligned=True, share_level_axes=True)
    return tax, gmm


def _states(gmm, leaves, seed=0, n=12, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, gmm.dim, generator=g, dtype=torch.float64) * scale
    return x, [leaves[i % len(leaves)] for i in range(n)]


def test_a_root_window_with_the_unconditional_model_standing_for_it_is_plain_cfg():
    # One level: the root's children are the leaves, so D_y + (w - 1)(D_y - D_u) = D_u + w (D_y - D_u).
    tax = load_taxonomy("gmm-two-class")
    gmm = GaussianMixture.from_means(tax.leaves, torch.tensor([[-1.5, 0.3], [1.5, -0.2]]), 0.5)
    cond = gmm.conditioner(tax)
    per_node = PerNodeGuidedDenoiser(gmm.denoiser(), tax, cond, [NodeWindow("root", *EVERYWHERE, 3.0)], gmm.weights)
    cfg = GuidedDenoiser(gmm.denoiser(), 3.0)
    sigmas = geometric_grid(20.0, 0.02, 32)
    leaves = cond([tax.leaves[i % 2] for i in range(16)])
    runs = []
    for den in (per_node, cfg):
        g = torch.Generator().manual_seed(3)
        noise = torch.randn(16, 2, generator=g, dtype=torch.float64) * sigmas[0]
        runs.append(sample(den, noise, sigmas, method="ancestral", cond=leaves, generator=g))
    # Tolerance: float64 rounding of the same sums taken in another order (exact in real arithmetic).
    torch.testing.assert_close(runs[0].states, runs[1].states, rtol=1e-12, atol=1e-12)
    assert per_node.extra_evaluations == cfg.extra_evaluations == 16 * 32  # one unconditional call a step


def test_per_node_contrasts_are_the_formula_with_exact_group_denoisers(two_by_two):
    tax, gmm = two_by_two
    cond = gmm.conditioner(tax)
    windows = [NodeWindow("root", 1.0, 10.0, 3.0), NodeWindow("left", 0.5, 4.0, 2.0),
               NodeWindow("right", 0.5, 2.0, 5.0)]
    den = PerNodeGuidedDenoiser(gmm.denoiser(), tax, cond, windows, gmm.weights)
    x, leaves = _states(gmm, tax.leaves)
    parent = [tax.parent(leaf) for leaf in leaves]

    def exact(nodes, sigma):
        return gmm.denoise(x, sigma, None if nodes is None else cond(nodes))

    for sigma in (8.0, 3.0, 1.5, 0.7, 0.3):
        expected = exact(leaves, sigma).clone()
        for row, group in enumerate(parent):
            if 1.0 < sigma <= 10.0:  # root: the leaf's group against the unconditional model
                expected[row] += 2.0 * (exact([group] * len(leaves), sigma)[row] - exact(None, sigma)[row])
            w = {"left": (2.0, 4.0), "right": (5.0, 2.0)}[group]
            if 0.5 < sigma <= w[1]:  # the group's window: the leaf against its group
                expected[row] += (w[0] - 1) * (exact(leaves, sigma)[row] - exact([group] * len(leaves), sigma)[row])
        # Tolerance: float64 sums of O(10) terms of size ~6 (the means), accumulated in another order.
        torch.testing.assert_close(den(x, sigma, cond(leaves)), expected, rtol=1e-12, atol=1e-12)


def test_the_group_mixture_with_exact_weights_is_the_exact_group_denoiser(two_by_two):
    # A model conditioned on leaves only (class ids): D(x; g) = sum_l p(l | x, g) D(x; l). With the
    # mixture's exact posterior restricted to g as weights it is the mixture's own E[x0 | x, Y in g].
    tax, gmm = two_by_two
    masks = gmm.conditioner(tax)
    ids = ClassLabelConditioner({leaf: i for i, leaf in enumerate(tax.leaves)})

    def exact_weights(x, sigma, members):
        keep = masks(members).any(0).expand(len(x), -1)
        return gmm.log_posterior(x, sigma, keep)[:, [tax.leaves.index(m) for m in members]]

    window = [NodeWindow("left", *EVERYWHERE, 3.0), NodeWindow("right", *EVERYWHERE, 3.0)]
    mixture = PerNodeGuidedDenoiser(gmm.denoiser(), tax, ids, window, gmm.weights, group_weights=exact_weights)
    direct = PerNodeGuidedDenoiser(gmm.denoiser(), tax, masks, window, gmm.weights)
    assert mixture.how["left"] == "mixture" and direct.how["left"] == "direct"
    x, leaves = _states(gmm, tax.leaves)
    for sigma in (5.0, 1.2, 0.4):
        # Tolerance: the mixture sums two exact conditional means with weights that are exact to
        # float64 rounding, against the masked posterior mean computed in one step.
        torch.testing.assert_close(mixture(x, sigma, ids(leaves)), direct(x, sigma, masks(leaves)),
                                   rtol=1e-10, atol=1e-10)


def test_equal_windows_on_every_node_of_the_path_telescope_to_plain_cfg(two_by_two):
    # sum over the path of (D(child) - D(node)) = D(leaf) - D(root): with the same scale everywhere the
    # schedule is classifier-free guidance, whatever weights the group mixtures use.
    tax, gmm = two_by_two
    ids = ClassLabelConditioner({leaf: i for i, leaf in enumerate(tax.leaves)})
    windows = [NodeWindow(node, *EVERYWHERE, 2.5) for node in tax.internal_nodes]
    sigmas = geometric_grid(40.0, 0.05, 24)
    cond = ids([tax.leaves[i % 4] for i in range(12)])
    states = []
    for den in (PerNodeGuidedDenoiser(gmm.denoiser(), tax, ids, windows, gmm.weights, group_weights="filter"),
                GuidedDenoiser(gmm.denoiser(), 2.5)):
        g = torch.Generator().manual_seed(5)
        noise = torch.randn(12, gmm.dim, generator=g, dtype=torch.float64) * sigmas[0]
        states.append(sample(den, noise, sigmas, method="ancestral", cond=cond, generator=g).states)
    # Tolerance: the group terms cancel in real arithmetic; float64 leaves rounding of size ~1e-15 * |x|.
    torch.testing.assert_close(states[0], states[1], rtol=1e-10, atol=1e-10)


def _filter_error(gmm, tax, steps: int, samples: int = 32) -> float:
    """Largest distance, relative to the prediction's size, between the group mixture weighted by the
    path filter and the exact group denoiser, along ancestral paths of ``steps`` steps from sigma 1000."""
    masks = gmm.conditioner(tax)
    ids = ClassLabelConditioner({leaf: i for i, leaf in enumerate(tax.leaves)})
    window = [NodeWindow("left", *EVERYWHERE, 3.0), NodeWindow("right", *EVERYWHERE, 3.0)]
    filtered = PerNodeGuidedDenoiser(gmm.denoiser(), tax, ids, window, gmm.weights, group_weights="filter")
    exact = PerNodeGuidedDenoiser(gmm.denoiser(), tax, masks, window, gmm.weights)
    sigmas = geometric_grid(1000.0, 0.05, steps)
    leaves = [tax.leaves[i % 4] for i in range(samples)]
    g = torch.Generator().manual_seed(11)
    noise = torch.randn(samples, gmm.dim, generator=g, dtype=torch.float64) * sigmas[0]
    traj = sample(gmm.denoiser(), noise, sigmas, method="ancestral", cond=masks(leaves), generator=g)
    worst = 0.0
    for i, sigma in enumerate(sigmas.tolist()):  # replay the states in order: the filter follows them
        a, b = filtered(traj.states[i], sigma, ids(leaves)), exact(traj.states[i], sigma, masks(leaves))
        worst = max(worst, float((a - b).norm(dim=1).max() / b.norm(dim=1).max()))
    return worst


def test_the_path_filter_weights_follow_the_exact_posterior_within_the_group(two_by_two):
    # Along an ancestral path the filter over a group's leaves, started at the prior at the top of the
    # grid, tracks the exact p(l | x_i, Y in g) (Y -> x_i -> earlier states is Markov), so the mixture
    # it weighs converges to the exact group denoiser as the steps shrink. Two error sources: the
    # prior start (at sigma 1000 the state holds ~1e-3 nats about the fine split) and the ancestral
    # kernel, whose variance (1 - a) t^2 differs from a Gaussian class's exact reverse variance by a
    # relative O(step) in every step's evidence.
    tax, gmm = two_by_two
    coarse, fine = _filter_error(gmm, tax, 200), _filter_error(gmm, tax, 800)
    # Tolerances: 1e-2 of the prediction's size at 800 steps (measured 3e-3), and the error must
    # shrink with the step (4 times fewer steps give at least twice the error; measured 5 times).
    assert fine < 1e-2, fine
    assert fine < 0.5 * coarse, (coarse, fine)


def test_calls_are_counted_per_extra_prediction(two_by_two):
    tax, gmm = two_by_two
    ids = ClassLabelConditioner({leaf: i for i, leaf in enumerate(tax.leaves)})
    den = PerNodeGuidedDenoiser(gmm.denoiser(), tax, ids, [NodeWindow("root", 2.0, 8.0, 3.0)], gmm.weights)
    x, leaves = _states(gmm, tax.leaves, n=8)
    den(x, 20.0, ids(leaves))  # outside the window: the conditional model alone
    assert den.extra_evaluations == 0
    den(x, 4.0, ids(leaves))  # root: the unconditional call and the group's other leaf, per sample
    assert den.extra_evaluations == 8 * 2 and den.guided_evaluations.tolist() == [2] * 8


# --- the recipe and the run --------------------------------------------------------------------------


def _schedule(*entries):
    return {"schedule": [{"node": n, "interval": list(iv), "scale": w} for n, iv, w in entries]}


@pytest.mark.parametrize("guidance, message", [
    (_schedule(("nowhere", (1, 2), 3)), "sampling.guidance.schedule[0].node: 'nowhere' is not a node"),
    (_schedule(("left-a", (1, 2), 3)), "sampling.guidance.schedule[0].node: 'left-a' is a leaf"),
    (_schedule(("left", (1, 3), 3), ("left", (2, 4), 2)), "node 'left' has overlapping windows [1, 3] and [2, 4]"),
    (_schedule(("left", (1, 3), 0)), "sampling.guidance.schedule.0.scale: scale must be positive, got 0"),
    (_schedule(("left", (1, 3), -2)), "scale must be positive, got -2"),
    (_schedule(("left", (3, 1), 2)), "interval must be [lo, hi] with 0 <= lo < hi"),
    ({**_schedule(("left", (1, 3), 2)), "scale": 3}, "give either scale (and interval) or a per-node schedule"),
    ({"scale": 1.0, "stop": {"threshold": 0.9}}, "stopping guidance needs guidance"),
    ({"scale": 3.0, "stop": {"threshold": 1.5}}, "sampling.guidance.stop.threshold"),
])
def test_bad_schedules_are_one_line_before_sampling(tmp_path, guidance, message):
    path = gmm_recipe(tmp_path, "bad", guidance=guidance)
    with pytest.raises(ProbesError) as err:
        runner.run(path, tmp_path / "bad", progress=False)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "bad").exists()


def test_a_schedule_without_leaf_conditioning_is_refused(tmp_path):
    path = gmm_recipe(tmp_path, "bad", condition="none", guidance=_schedule(("left", (1, 3), 2)))
    with pytest.raises(ProbesError, match="needs condition: leaf"):
        load_recipe(path)


def test_a_model_with_no_way_to_condition_on_a_group_is_one_line(two_by_two):
    tax, gmm = two_by_two
    leaves_only_some = ClassLabelConditioner({"left-a": 0, "right-a": 2, "right-b": 3})
    section = Guidance.model_validate(yaml.safe_load("schedule: [{node: left, interval: [1, 3], scale: 2}]"))
    with pytest.raises(ProbesError) as err:
        generation_denoiser(gmm.denoiser(), leaves_only_some, tax, gmm.weights, section)
    assert str(err.value) == ("sampling.guidance.schedule: the model can be conditioned neither on node 'left' nor on "
                              "its leaf 'left-b', so it has no denoiser for that group")
    with pytest.raises(ProbesError, match="cannot be conditioned on the taxonomy's nodes"):
        generation_denoiser(gmm.denoiser(), None, tax, gmm.weights, section)


def test_a_scheduled_run_guides_only_in_its_windows_and_counts_the_calls(tmp_path, guidance_runs):
    guidance = _schedule(("root", (2.0, 12.0), 3.0), ("left", (0.5, 3.0), 3.0), ("right", (0.5, 3.0), 3.0))
    runner.run(gmm_recipe(tmp_path, "sched", guidance=guidance), tmp_path / "sched", progress=False)
    state = json.loads((tmp_path / "sched" / "run.json").read_text())
    sigmas = torch.tensor(state["sigmas"])
    # Masks condition on groups directly: one extra call per sample for each group the active windows
    # need (root window: the group and the unconditional model; a group's window: the group).
    in_root = int(((sigmas > 2.0) & (sigmas <= 12.0)).sum())
    in_group = int(((sigmas > 0.5) & (sigmas <= 3.0)).sum())
    both = int(((sigmas > 2.0) & (sigmas <= 3.0)).sum())  # the group's call is shared there
    assert state["calls"]["guided_denoiser"] == 64 * (2 * in_root + in_group - both)
    everywhere = json.loads((guidance_runs / "w3" / "run.json").read_text())["calls"]["guided_denoiser"]
    assert state["calls"]["guided_denoiser"] < everywhere


def test_interval_per_node_prints_each_window_as_a_recipe_block(guidance_runs, capsys, tmp_path):
    assert main(["interval", str(guidance_runs / "w1"), "--per-node", "--scale", "2.5"]) == 0
    out = capsys.readouterr().out
    block = yaml.safe_load(out[out.index("\nsampling:") + 1:])
    schedule = block["sampling"]["guidance"]["schedule"]
    windows = json.loads((guidance_runs / "w1" / "run.json").read_text())["decisions"]["exact"]["nodes"]
    assert [e["node"] for e in schedule] == [n for n, d in windows.items() if d is not None]
    for entry in schedule:
        assert entry["scale"] == 2.5
        # Printed to three significant digits.
        assert entry["interval"] == pytest.approx(windows[entry["node"]]["window"], rel=5e-3)
    # The block is a valid recipe section: a run with it builds.
    load_recipe(gmm_recipe(tmp_path, "again", guidance=block["sampling"]["guidance"]))


@pytest.mark.parametrize("args, message", [
    (["w1", "--per-node"], "--per-node: {}/w1 is not guided"),
    (["w1", "--per-node", "--against", "w3"], "--against: --per-node derives"),
    (["w1", "--scale", "3"], "--scale: sets the scale of each --per-node window"),
    (["w3", "--per-node", "--scale", "-1"], "--scale: a guidance scale must be positive"),
])
def test_bad_per_node_flags_are_one_line(guidance_runs, capsys, args, message):
    argv = ["interval"] + [str(guidance_runs / a) if (guidance_runs / a).exists() else a for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message.format(guidance_runs) in err, err


def test_per_node_cost_is_below_guidance_everywhere_when_windows_are_narrow():
    # A sanity bound on the count itself, independent of any run: the extra calls of one sample
    # through a window of k steps with m extra predictions per step are k * m.
    tax = load_taxonomy("gmm-two-by-two")
    gmm = GaussianMixture.hierarchical(tax, 2, [6.0, 2.0], std=0.5, axis_aligned=True, share_level_axes=True)
    ids = ClassLabelConditioner({leaf: i for i, leaf in enumerate(tax.leaves)})
    den = PerNodeGuidedDenoiser(gmm.denoiser(), tax, ids, [NodeWindow("left", 1.0, 4.0, 3.0)], gmm.weights)
    sigmas = geometric_grid(40.0, 0.05, 24)
    k = int(((sigmas > 1.0) & (sigmas <= 4.0)).sum())
    g = torch.Generator().manual_seed(0)
    traj = sample(den, torch.randn(1, 2, generator=g, dtype=torch.float64) * 40, sigmas, method="ancestral",
                  cond=ids(["left-a"]), generator=g, record=False)
    assert traj.denoiser_calls == len(sigmas) + k * 1  # the group's other leaf
    assert math.isfinite(float(traj.x0.sum()))
