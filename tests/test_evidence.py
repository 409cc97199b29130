"""Evidence maps of the Bayes filter (``bayes`` with ``evidence``) on mixtures of images.

Geometry: images ``[2, 4, 6]`` (two channels, four rows, six columns) under the 2 x 2 taxonomy
root -> A, B -> a1, a2 | b1, b2. The two groups differ only in rows 0-1 (the *coarse* region,
separation 3), the two leaves of each group only in rows 2-3 (the *fine* region, separation 2,
the same directions in both groups), within-class std 0.5
(:meth:`GaussianMixture.on_regions`). A transposed height and width, or channels mixed into
positions, would move evidence out of its region.
"""

import math

import networkx as nx
import numpy as np
import pytest
import torch

from probes.errors import ProbesError
from probes.estimators import ProbeContext, build_estimator
from probes.estimators.bayes import BayesEstimator, filter_log_posterior
from probes.estimators.evidence import EvidenceRecorder, commitment_sigma
from probes.models.gmm import GaussianMixture
from probes.noise import geometric_grid
from probes.sampling import forward_path, sample
from probes.taxonomy import load_taxonomy
from probes.taxonomy.tree import Taxonomy

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (2, 4, 6)
COARSE = torch.zeros(4, 6, dtype=torch.bool)
COARSE[:2] = True
FINE = ~COARSE
S0 = 0.5


def taxonomy() -> Taxonomy:
    g = nx.DiGraph()
    g.add_edges_from([("root", "A"), ("root", "B"), ("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2")])
    return Taxonomy(g)


TAX = taxonomy()
GMM = GaussianMixture.on_regions(TAX, SHAPE, [COARSE, FINE], [3.0, 2.0], std=S0)
REGION = {"root": COARSE, "A": FINE, "B": FINE}


def context(grid):
    return ProbeContext(TAX, sigmas=grid, denoiser=GMM.denoiser(), conditioner=GMM.conditioner(TAX))


def data_paths(n, grid, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x0, y = GMM.sample(n, gen)
    return forward_path(x0.to(dtype).reshape(n, *SHAPE), grid, gen, leaf=y)


def test_mixture_on_regions_differs_only_inside_the_regions():
    means = GMM.means.reshape(4, *SHAPE)
    groups = means[:2].mean(0) - means[2:].mean(0)
    leaves = means[0] - means[1], means[2] - means[3]
    assert groups[:, FINE].abs().max() == 0 and groups[:, COARSE].norm() == pytest.approx(6.0)  # 2 x 3
    for diff in leaves:
        assert diff[:, COARSE].abs().max() == 0 and diff.norm() == pytest.approx(4.0)  # 2 x 2
    torch.testing.assert_close(leaves[0], leaves[1])  # one set of directions per depth


@pytest.mark.parametrize("paths", ["data", "samples"])
def test_each_nodes_evidence_lies_in_its_own_region(paths):
    # The done-when of the evidence maps: at least 90% of each node's absolute evidence in its own
    # region. Here the classes differ nowhere else, so the maps put all of it there (measured
    # 100.0%); on unconditional samples the final leaf is the posterior's argmax.
    grid = geometric_grid(60.0, 0.02, 48)
    if paths == "data":
        traj = data_paths(128, grid)
    else:
        gen = torch.Generator().manual_seed(1)
        traj = sample(GMM.denoiser(), 60.0 * torch.randn(128, *SHAPE, generator=gen), grid, "ancestral",
                      generator=gen)
    out = build_estimator("bayes", evidence=True, sigma_stride=3).estimate(traj, context(grid))
    ev = out.evidence
    assert ev.final_from == ("condition" if paths == "data" else "posterior")
    for node, region in REGION.items():
        maps = ev.maps[node]
        on_path = ~maps[:, 0, 0, 0].isnan()
        assert on_path.sum() > 20, node
        total = maps[on_path].abs()  # every grid point of the cumulative map
        assert float(total[..., region].sum() / total.sum()) >= 0.9, node
        final = total[:, -1]
        share = final[:, region].sum(1) / final.sum((1, 2))
        assert float(share.min()) >= 0.9, node  # sample by sample at the end of sampling


def test_maps_are_cumulative_on_the_thinned_grid_and_nan_off_the_path():
    grid = geometric_grid(60.0, 0.02, 30)
    traj = data_paths(40, grid)
    plain = build_estimator("bayes", sigma_stride=4).estimate(traj, context(grid))
    out = build_estimator("bayes", evidence=True, sigma_stride=4).estimate(traj, context(grid))
    assert torch.equal(out.log_probs, plain.log_probs)  # the maps change nothing else
    ev = out.evidence
    assert torch.equal(ev.sigmas, grid[::4]) and torch.equal(ev.final_leaf, traj.leaf)
    under_a = traj.leaf < 2  # leaves a1, a2
    assert ev.maps["root"].shape == (40, 8, 4, 6)
    assert not ev.maps["root"].isnan().any()
    assert ev.maps["A"][under_a].isfinite().all() and ev.maps["A"][~under_a].isnan().all()
    assert ev.maps["B"][~under_a].isfinite().all() and ev.maps["B"][under_a].isnan().all()
    assert (ev.maps["root"][:, 0] == 0).all()  # no evidence before the first step
    torch.testing.assert_close(ev.child["root"], (~under_a).long())
    assert ev.nbytes == 4 * 8 * 4 * 6 * 40 * 3  # float32: 4 H W bytes per sample, node and sigma


def test_leaf_pair_maps_sum_to_the_filters_log_likelihood_ratio():
    # For a node of two leaf children the map is the exact per-position split of the filter's
    # log-likelihood ratio: its spatial sum is the ratio the filter's posteriors give, here from
    # the float32 output log-probabilities and float32 states. Float32 precision: 2^-20 (16 ulps)
    # of the magnitudes summed (the map's absolute values and both log-probabilities); measured
    # under one ulp.
    grid = geometric_grid(60.0, 0.02, 40)
    traj = data_paths(96, grid)
    out = build_estimator("bayes", evidence=True, sigma_stride=2).estimate(traj, context(grid))
    lp = out.log_probs.double()
    for node, pair in (("A", (0, 1)), ("B", (2, 3))):
        maps = out.evidence.maps[node].double()
        mine = ~maps[:, 0, 0, 0].isnan()
        child = out.evidence.child[node][mine]
        own = torch.tensor(pair)[child]
        other = torch.tensor(pair)[1 - child]
        rows = torch.arange(len(own))
        llr = lp[mine][rows, :, own] - lp[mine][rows, :, other]  # [b, S']; equal priors: no prior term
        total = maps[mine].sum((2, 3))
        scale = maps[mine].abs().sum((2, 3)) + lp[mine][rows, :, own].abs() + lp[mine][rows, :, other].abs()
        assert (total - llr).abs().max() <= 2**-20 * scale.max(), node
        assert llr[:, -1].abs().min() > 1.0  # the ratios compared are not trivially small


@pytest.mark.parametrize("split", ["exact", "before"])
def test_every_map_sums_to_the_filters_log_odds_of_the_final_child(split):
    # A mixture of 8 x 8 images on the digits-shape tree (10 leaves, nodes of 2 and 3 children)
    # whose levels all use the whole image, so group log-likelihoods do not split into levels.
    # With the exact split the weights mix the set's posterior before and after each step so that
    # the parts sum to the set's log-likelihood increment: every map's spatial sum is the filter's
    # log-odds of the final child against its siblings (from the float32 output: 2^-20 of the
    # magnitudes, as for leaf pairs). The first-order split (weights before the step) misses it
    # for groups by a Jensen gap (measured up to 50% of the log-odds here, at the last sigma).
    tax = load_taxonomy("digits-shape")
    whole = torch.ones(8, 8, dtype=torch.bool)
    gmm = GaussianMixture.on_regions(tax, [1, 8, 8], [whole] * 3, [4.0, 2.0, 1.0], std=0.5)
    grid = geometric_grid(60.0, 0.02, 48)
    gen = torch.Generator().manual_seed(0)
    x0, y = gmm.sample(64, gen)
    traj = forward_path(x0.float().reshape(64, 1, 8, 8), grid, gen, leaf=y)
    ctx = ProbeContext(tax, sigmas=grid, denoiser=gmm.denoiser(), conditioner=gmm.conditioner(tax))
    idx = list(range(48))
    recorder = EvidenceRecorder(tax, (1, 8, 8), idx, grid, 64, leaf=y, split=split)
    lp = filter_log_posterior(traj, ctx.cond_denoiser, ctx.conditioner, ctx, idx, "bayes", recorder=recorder).double()
    ev = recorder.result()
    worst = 0.0
    for node in tax.internal_nodes:
        maps = ev.maps[node].double()
        mine = ~maps[:, 0, 0, 0].isnan()
        for row, c, m in zip(lp[mine], ev.child[node][mine].tolist(), maps[mine]):
            inside = torch.zeros(10, dtype=torch.bool)
            inside[tax.leaf_slice(tax.children(node)[c])] = True
            rest = torch.zeros(10, dtype=torch.bool)
            rest[tax.leaf_slice(node)] = True
            rest &= ~inside
            odds = row[:, inside].logsumexp(-1) - row[:, rest].logsumexp(-1)
            odds = odds - odds[0]
            scale = m.abs().sum((1, 2)) + row[:, inside | rest].abs().sum(-1)
            gap = (m.sum((1, 2)) - odds).abs()
            if split == "exact":
                assert (gap <= 2**-20 * scale.max()).all(), node
            worst = max(worst, float(gap[-1] / odds[-1].abs()))
    if split == "before":
        assert worst > 0.05


def test_commitment_sigma_by_hand():
    sigmas = torch.tensor([8.0, 4.0, 2.0, 1.0])
    maps = torch.tensor([[0.0, 1.0, 3.0, 4.0],  # half (2) between sigma 4 (1) and 2 (3): log-midpoint
                         [0.0, -1.0, -3.0, -4.0],  # evidence against the final child: same crossing
                         [0.0, 4.0, 4.0, 4.0],  # all in on the first step: between 8 and 4
                         [0.0, 3.0, -1.0, 2.0],  # first reaches 1 at sigma 8 -> 4 (a third of the way)
                         [0.0, 0.0, 0.0, 0.0],  # no evidence: no commitment
                         [math.nan] * 4])  # off the node's path
    got = commitment_sigma(maps.T.reshape(1, 4, 6, 1).expand(2, -1, -1, 1), sigmas)
    assert got.shape == (2, 6, 1)
    want = [math.sqrt(8), math.sqrt(8), math.sqrt(32), 8 * (4 / 8) ** (1 / 3), math.nan, math.nan]
    np.testing.assert_allclose(got[0, :, 0].double(), want, rtol=1e-6)
    with pytest.raises(ProbesError, match="commitment_sigma: maps must be \\[samples, 4 sigmas, H, W\\]"):
        commitment_sigma(maps, sigmas)


def test_leaf_pair_commits_where_theory_says():
    # Two Gaussian leaves with a common std s0: given the leaf, the expected log-likelihood ratio
    # at x_sigma is |dm|^2 / (2 (s0^2 + sigma^2)) and every position's part has that shape in sigma,
    # so the mean map over samples that end in a leaf of A reaches half its final value (counted
    # from sigma_max, ending at sigma_min) where 1 / (s0^2 + sigma^2) is the mean of the two ends'.
    # At the position of largest separation the sample-mean map must commit there within 10%
    # (measured 5% below on 512 paths of a 128-point grid: Monte-Carlo noise of the mean map and
    # the grid's first-order error).
    grid = geometric_grid(60.0, 0.02, 128)
    traj = data_paths(512, grid, dtype=torch.float64)
    out = build_estimator("bayes", evidence=True).estimate(traj, context(grid))
    maps = out.evidence.maps["A"]
    mean = maps[~maps[:, 0, 0, 0].isnan()].mean(0, keepdim=True)  # [1, S, C, H, W] summed over channels
    got = commitment_sigma(mean, out.evidence.sigmas)[0]
    separation = (GMM.means[0] - GMM.means[1]).reshape(SHAPE).pow(2).sum(0)
    ends = 1 / (S0**2 + grid[0] ** 2), 1 / (S0**2 + grid[-1] ** 2)
    theory = math.sqrt(2 / float(ends[0] + ends[1]) - S0**2)
    assert abs(float(got[separation == separation.max()][0]) / theory - 1) < 0.1


def test_evidence_needs_image_states_and_the_full_filter():
    with pytest.raises(ProbesError, match="evidence maps are drawn from the full filter.*drop track"):
        build_estimator("bayes", evidence=True, track=8)
    with pytest.raises(ProbesError, match="evidence must be true or false"):
        BayesEstimator(evidence="yes")
    flat_gmm = GaussianMixture.hierarchical(TAX, dim=8, separations=[3.0, 1.5], std=1.0)
    grid = geometric_grid(20.0, 0.05, 10)
    gen = torch.Generator().manual_seed(0)
    x0, y = flat_gmm.sample(4, gen)
    ctx = ProbeContext(TAX, sigmas=grid, denoiser=flat_gmm.denoiser(), conditioner=flat_gmm.conditioner(TAX))
    with pytest.raises(ProbesError, match="evidence maps need image-shaped states \\[B, C, H, W\\]; these are \\[8\\]"):
        build_estimator("bayes", evidence=True).estimate(forward_path(x0, grid, gen, leaf=y), ctx)
