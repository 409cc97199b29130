"""The tracked Bayes filter (``bayes`` with ``track``) against the full filter and exact posteriors.

Models: a 4-leaf two-level mixture (d = 8, coarse split 3.0, fine 1.5, s0 = 1), a 4-leaf mixture
whose leaves come in indistinguishable pairs, a 10-leaf three-level mixture on the digits-shape
tree, and the 256-leaf two-level mixture of ``benchmarks/bench_bayes_scale.py`` (16 groups of 16,
d = 32, separations 8 and 3, s0 = 0.5). Paths are forward (data) paths, so ``exact`` on the same
paths is the truth. Each tolerance says where it comes from.
"""

import math

import networkx as nx
import numpy as np
import pytest
import torch

from probes.conditioning import ClassLabelConditioner
from probes.errors import ProbesError
from probes.estimators import ProbeContext, build_estimator
from probes.models.gmm import GaussianMixture
from probes.noise import geometric_grid
from probes.sampling import forward_path
from probes.taxonomy import load_taxonomy
from probes.taxonomy.tree import Taxonomy

pytestmark = pytest.mark.usefixtures("one_thread")


def tree(edges) -> Taxonomy:
    g = nx.DiGraph()
    g.add_edges_from(edges)
    return Taxonomy(g)


TAX4 = tree([("root", "A"), ("root", "B"), ("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2")])
GMM4 = GaussianMixture.hierarchical(TAX4, dim=8, separations=[3.0, 1.5], std=1.0, axis_aligned=True)
GRID4 = geometric_grid(60.0, 0.02, 40)


class Counting:
    """A denoiser wrapper that counts sample-evaluations on its own."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, sigma, cond=None):
        self.calls += x.shape[0]
        return self.fn(x, sigma, cond)


def paths(gmm, grid, n, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x0, y = gmm.sample(n, gen)
    return forward_path(x0.to(dtype), grid, gen, leaf=y)


def context(tax, gmm, grid, conditioner=None, **kw):
    return ProbeContext(tax, sigmas=grid, denoiser=gmm.denoiser(), exact_model=gmm, prior=gmm.weights,
                        conditioner=conditioner if conditioner is not None else gmm.conditioner(tax), **kw)


def levels(out, ctx):
    return out.curves(ctx.taxonomy, prior=ctx.prior).level_mean()


def labels(tax):
    return ClassLabelConditioner({leaf: i for i, leaf in enumerate(tax.leaves)})


def test_flat_tracking_that_keeps_every_leaf_is_the_full_filter():
    # A class-label conditioner has no kernels for internal nodes: the root is split straight into
    # the leaves, and with every leaf kept (tail 0) and a kernel at every step (move 0) each step
    # is the full filter's. Both outputs are float32 log-probabilities: 1e-6 nats is float32
    # resolution on entropies of order 1.
    ctx = context(TAX4, GMM4, GRID4, labels(TAX4))
    traj = paths(GMM4, GRID4, 64)
    full = build_estimator("bayes").estimate(traj, ctx)
    tracked = build_estimator("bayes", track=4, tail=0.0, move=0.0).estimate(traj, ctx)
    np.testing.assert_allclose(levels(tracked, ctx), levels(full, ctx), rtol=0, atol=1e-6)
    assert tracked.denoiser_calls <= full.denoiser_calls


@pytest.mark.parametrize("conditioner", ["mixture", "labels"])
def test_remainder_cell_converges_to_exact_as_the_grid_is_refined(conditioner):
    # Leaves a1 = a2 and b1 = b2 (same means, weights 0.4, 0.4, 0.1, 0.1), so the posterior ratio
    # inside each pair is 1 at every sigma. With track 3 the heavier pair are cells and the lighter
    # pair one remainder cell, its kernel solved from the whole taxonomy's prediction (the root's
    # mask, or the unconditional model for class labels) with the filter's own split; its frozen
    # inner ratio is the truth, so what is left is the filter's first-order error, which the solve
    # divides by the remainder's mass: measured 0.057 / 0.007 nats on 40 / 160 points (the full
    # filter's 0.021 / 0.005). Refining the grid fourfold must cut it by 2.5 at least.
    m = torch.zeros(4, 4, dtype=torch.float64)
    m[:2, 0], m[2:, 0] = 1.5, -1.5
    gmm = GaussianMixture(m, 1.0, weights=[0.4, 0.4, 0.1, 0.1], leaves=["a1", "a2", "b1", "b2"])
    tax = tree([("root", leaf) for leaf in gmm.leaves])
    errors = []
    for steps in (40, 160):
        grid = geometric_grid(40.0, 0.02, steps)
        ctx = context(tax, gmm, grid, gmm.conditioner(tax) if conditioner == "mixture" else labels(tax))
        whole = []  # rows of the calls for the whole taxonomy (the remainder cell's source)
        denoiser = gmm.denoiser()

        def spy(x, sigma, cond=None, denoiser=denoiser, whole=whole):
            if cond is None or (cond.dtype == torch.bool and bool(cond.all())):
                whole.append(x.shape[0])
            return denoiser(x, sigma, cond)

        ctx = ctx.replace(cond_denoiser=spy)
        traj = paths(gmm, grid, 256)
        exact = levels(build_estimator("exact").estimate(traj, ctx), ctx)
        tracked = build_estimator("bayes", track=3, tail=0.0, move=0.0).estimate(traj, ctx)
        assert sum(whole) > 256 * steps / 4  # the remainder cell is in use (until the lighter pair's mass underflows)
        errors.append(float(np.abs(levels(tracked, ctx) - exact).max()))
    assert errors[0] > 2.5 * errors[1] and errors[1] < 0.025, errors
    ctx = ctx.replace(partial_taxonomy=True)  # the unconditional model is then not the taxonomy's mixture
    if conditioner == "labels":
        with pytest.raises(ProbesError, match="bayes.*more than track 3 leaves.*raise track"):
            build_estimator("bayes", track=3, tail=0.0).estimate(traj, ctx)


def test_tree_filter_on_three_levels_matches_exact():
    # Node by node down the digits-shape tree (10 leaves, levels 3): each node's split is a filter
    # of its own with the children's kernels (node masks). Measured max error against exact on
    # these 256 paths: 0.010 nats with a kernel at every step, 0.012 with stages, the full filter's
    # 0.011 (all first order in the step); bound twice that.
    tax = load_taxonomy("digits-shape")
    gmm = GaussianMixture.hierarchical(tax, dim=10, separations=[4.0, 2.0, 1.0], std=0.5, axis_aligned=True)
    grid = geometric_grid(100.0, 0.02, 60)
    ctx = context(tax, gmm, grid)
    traj = paths(gmm, grid, 256)
    exact = levels(build_estimator("exact").estimate(traj, ctx), ctx)
    for options in ({"move": 0.0, "tail": 0.0}, {}):
        out = build_estimator("bayes", track=16, **options).estimate(traj, ctx)
        assert np.abs(levels(out, ctx) - exact).max() < 0.025, options


def two_level(groups: int, per_group: int) -> Taxonomy:
    return tree([e for i in range(groups) for e in
                 [("root", f"g{i}")] + [(f"g{i}", f"g{i}_{k}") for k in range(per_group)]])


def test_tracking_256_leaves_is_within_002_nats_of_exact_at_a_fraction_of_the_calls():
    # The goal of the tracked filter: 256 leaves (16 groups of 16), track 16, within 0.02 nats of
    # the exact level entropies and node contributions at every sigma, for at most 15% of the full
    # filter's 256 calls per sample and step. Measured on these 32 paths: 0.004 / 0.012 nats
    # (group / leaf; the full filter's own first-order error here is 0.004 / 0.011) at 6.6%.
    tax = two_level(16, 16)
    gmm = GaussianMixture.hierarchical(tax, dim=32, separations=[8.0, 3.0], std=0.5, axis_aligned=True,
                                       share_level_axes=True)
    grid = geometric_grid(300.0, 0.05, 128)
    ctx = context(tax, gmm, grid)
    counting = Counting(gmm.denoiser())
    ctx = ctx.replace(denoiser=counting, cond_denoiser=counting)
    traj = paths(gmm, grid, 32, dtype=torch.float32)
    exact = build_estimator("exact").estimate(traj, ctx).curves(tax, prior=ctx.prior)
    out = build_estimator("bayes", track=16).estimate(traj, ctx)
    got = out.curves(tax, prior=ctx.prior)
    assert np.abs(got.level_mean() - exact.level_mean()).max() < 0.02
    assert np.abs(got.node_mean() - exact.node_mean()).max() < 0.02
    assert out.denoiser_calls == counting.calls  # the calls really made
    assert out.denoiser_calls <= 0.15 * 256 * 127 * 32


def test_tracked_estimates_do_not_depend_on_chunking():
    traj = paths(GMM4, GRID4, 24)
    outs = [build_estimator("bayes", track=2).estimate(traj, context(TAX4, GMM4, GRID4, batch_size=size))
            for size in (5, 4096)]
    assert torch.equal(outs[0].log_probs, outs[1].log_probs)
    assert outs[0].denoiser_calls == outs[1].denoiser_calls


def test_tracked_filter_reports_every_sigma_it_is_asked_for():
    ctx = context(TAX4, GMM4, GRID4)
    traj = paths(GMM4, GRID4, 8)
    out = build_estimator("bayes", track=4, sigma_stride=3).estimate(traj, ctx)
    assert out.log_probs.shape == (8, 14, 4) and torch.equal(out.sigmas, GRID4[::3])
    total = out.log_probs.double().exp().sum(-1)
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-6)  # float32 probabilities summing to one
    np.testing.assert_allclose(out.log_probs[:, 0].exp(), 0.25, rtol=0, atol=1e-7)  # the prior at sigma_max


@pytest.mark.parametrize("options, message", [
    ({"track": 1}, "track must be an integer >= 2"),
    ({"track": "many"}, "option 'track' must be"),
    ({"track": 2.5}, "option 'track' must be"),
    ({"track": True}, "option 'track' must be"),
    ({"track": 4, "tail": 1.0}, "tail must be a number in \\[0, 1\\)"),
    ({"track": 4, "tail": -0.1}, "tail must be a number"),
    ({"track": 4, "move": math.nan}, "option 'move' must be"),
    ({"track": 4, "move": 2.0}, "move must be a number in \\[0, 1\\]"),
    ({"tail": 1e-4}, "tail applies to the tracked filter only; set track"),
    ({"move": 0.1}, "move applies to the tracked filter only; set track"),
])
def test_bad_options_are_one_line_naming_the_option(options, message):
    with pytest.raises(ProbesError, match="estimator 'bayes'.*" + message):
        build_estimator("bayes", **options)


def test_tracking_refuses_an_outside_cell_before_any_call():
    ctx = context(TAX4, GMM4, GRID4, outside_mass=0.2)
    ctx = ctx.replace(cond_denoiser=Counting(GMM4.denoiser()))
    with pytest.raises(ProbesError, match="bayes.*track needs a taxonomy that covers.*outside_mass is 0.2"):
        build_estimator("bayes", track=4).estimate(paths(GMM4, GRID4, 4), ctx)
    assert ctx.cond_denoiser.calls == 0
