"""The entropy engine against hand-computed cases, the chain rule, priors and input checks."""

import math

import numpy as np
import pytest
import torch
from test_entropy_trees import make_taxonomy
from tolerances import F32, magnitude

from probes.entropy import EntropyCurves, tree_entropy
from probes.errors import ProbesError

FOUR = {"A": ["a1", "a2"], "B": ["b1", "b2"]}
UNEVEN = {"x": None, "P": {"p1": None, "R": ["r1", "r2", "r3"]}, "Q": ["q1", "q2"], "y": None}


def h(*ps):
    return -sum(p * math.log(p) for p in ps if p > 0)


def log(p):
    return torch.log(torch.tensor(p, dtype=torch.float64))


def random_log_probs(n, s, n_leaves, seed=0, zeros=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, s, n_leaves, generator=g, dtype=torch.float64) * 2
    if zeros:
        logits[torch.rand(n, s, n_leaves, generator=g) < 0.2] = -math.inf
        logits[..., 0] = torch.where(torch.isinf(logits).all(-1), 0.0, logits[..., 0])
    return torch.log_softmax(logits, -1)


def test_hand_computed_two_level_tree():
    tax = make_taxonomy(FOUR)
    assert tax.leaves == ["a1", "a2", "b1", "b2"]
    rows = [
        [0.5, 0.25, 0.25, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.25, 0.25, 0.25, 0.25],
        [0.1, 0.2, 0.3, 0.4],
    ]
    lp = log(rows).unsqueeze(0)  # one sample, four "sigmas"
    c = tree_entropy(lp, tax, [4.0, 3.0, 2.0, 1.0])
    assert c.level_names == [1, 2]
    assert c.node_names == ["root", "A", "B"]
    expect_levels = [
        [h(0.75, 0.25), h(0.5, 0.25, 0.25)],
        [0.0, 0.0],
        [math.log(2), math.log(4)],
        [h(0.3, 0.7), h(0.1, 0.2, 0.3, 0.4)],
    ]
    expect_nodes = [
        [h(0.75, 0.25), 0.75 * h(2 / 3, 1 / 3), 0.0],
        [0.0, 0.0, 0.0],
        [math.log(2), 0.5 * math.log(2), 0.5 * math.log(2)],
        [h(0.3, 0.7), 0.3 * h(1 / 3, 2 / 3), 0.7 * h(3 / 7, 4 / 7)],
    ]
    # float64 rounding of a few p log p terms: 1e-12 of the entropies' magnitude (at most log 4)
    np.testing.assert_allclose(c.levels[0], expect_levels, rtol=0, atol=1e-12 * magnitude(expect_levels))
    np.testing.assert_allclose(c.nodes[0], expect_nodes, rtol=0, atol=1e-12 * magnitude(expect_levels))
    assert c.levels.dtype == np.float64 and np.isfinite(c.levels).all()


def test_chain_rule_on_uneven_tree():
    tax = make_taxonomy(UNEVEN)
    assert tax.max_depth == 3
    lp = random_log_probs(7, 5, len(tax.leaves), seed=1)
    c = tree_entropy(lp, tax, torch.linspace(5, 1, 5))
    p = lp.exp()
    leaf_entropy = -torch.where(p > 0, p * lp, torch.zeros(())).sum(-1).numpy()
    # the chain rule in float64: sums of up to 8 rounded terms, 1e-10 of the entropies' magnitude
    tol = 1e-10 * magnitude(leaf_entropy)
    np.testing.assert_allclose(c.levels[..., -1], leaf_entropy, rtol=0, atol=tol)
    np.testing.assert_allclose(c.nodes.sum(-1), leaf_entropy, rtol=0, atol=tol)
    depth = np.array([tax.depth(n) for n in c.node_names])
    for lvl in c.level_names:
        np.testing.assert_allclose(
            c.levels[..., lvl - 1], c.nodes[..., depth < lvl].sum(-1), rtol=0, atol=tol
        )
    # every level against the taxonomy's own level cuts
    for lvl in c.level_names:
        cut = tax.level_cut(lvl)
        cells = {}
        for i, leaf in enumerate(tax.leaves):
            cells[cut[leaf]] = cells.get(cut[leaf], 0) + p[..., i]
        pc = torch.stack(list(cells.values()), -1)
        hl = -torch.where(pc > 0, pc * pc.log(), torch.zeros(())).sum(-1)
        # one float64 evaluation against another: 1e-12 of the entropies' magnitude
        np.testing.assert_allclose(c.levels[..., lvl - 1], hl.numpy(), rtol=0, atol=1e-12 * magnitude(hl))
    # level 1 cells: x, P, Q, y; a leaf shallower than the level stays its own cell
    idx = {n: i for i, n in enumerate(tax.leaves)}
    cells = [["x"], ["p1", "r1", "r2", "r3"], ["q1", "q2"], ["y"]]
    pc = torch.stack([p[..., [idx[v] for v in cell]].sum(-1) for cell in cells], -1)
    h1 = -torch.where(pc > 0, pc * pc.log(), torch.zeros(())).sum(-1)
    np.testing.assert_allclose(c.levels[..., 0], h1.numpy(), rtol=0, atol=1e-12 * magnitude(h1))


def test_float32_input_and_chunking_agree():
    tax = make_taxonomy(UNEVEN)
    lp = random_log_probs(9, 4, len(tax.leaves), seed=2)
    a = tree_entropy(lp, tax, [4.0, 3.0, 2.0, 1.0])
    b = tree_entropy(lp.float(), tax, [4.0, 3.0, 2.0, 1.0], chunk=2)
    c = tree_entropy(lp, tax, [4.0, 3.0, 2.0, 1.0], chunk=1)
    # chunks compute the same rows with the same operations: 1e-14 of the entropies' magnitude (a
    # few float64 units, should a vector loop's tail round differently from its body)
    np.testing.assert_allclose(a.levels, c.levels, rtol=0, atol=1e-14 * magnitude(a.levels))
    np.testing.assert_allclose(a.nodes, c.nodes, rtol=0, atol=1e-14 * magnitude(a.levels))
    # float32 input rounds each log p by half a float32 unit of |log p|, which moves an entropy by
    # < (F32 / 2) sum p (1 + |log p|) |log p| (< 3 F32 for these 8 leaves): 8 units of its magnitude
    np.testing.assert_allclose(a.levels, b.levels, rtol=0, atol=8 * F32 * magnitude(a.levels))
    assert b.levels.dtype == np.float64
    # float32 rows are renormalised in float64: the chain rule still holds to float64 precision
    np.testing.assert_allclose(b.nodes.sum(-1), b.levels[..., -1], rtol=0, atol=1e-12 * magnitude(b.levels))


def test_means_and_stderr():
    tax = make_taxonomy(FOUR)
    lp = random_log_probs(11, 3, 4, seed=3)
    c = tree_entropy(lp, tax, [3.0, 2.0, 1.0])
    assert c.n_samples == 11
    # means and stds of 11 float64 numbers, summed in another order: 1e-12 of the entropies' magnitude
    tol = 1e-12 * magnitude(c.levels)
    np.testing.assert_allclose(c.level_mean(), c.levels.mean(0), rtol=0, atol=tol)
    np.testing.assert_allclose(c.level_stderr(), c.levels.std(0, ddof=1) / math.sqrt(11), rtol=0, atol=tol)
    np.testing.assert_allclose(c.node_mean(), c.nodes.mean(0), rtol=0, atol=tol)
    np.testing.assert_allclose(c.node_stderr(), c.nodes.std(0, ddof=1) / math.sqrt(11), rtol=0, atol=tol)


def test_default_prior_is_mean_posterior():
    tax = make_taxonomy(FOUR)
    lp = random_log_probs(6, 3, 4, seed=4)
    c = tree_entropy(lp, tax, [3.0, 2.0, 1.0])
    prior = lp.exp().mean((0, 1)).numpy()
    # a mean of 18 probabilities (~18 float64 units of magnitude 1 at most): 1e-14 of it
    np.testing.assert_allclose(c.prior, prior, rtol=0, atol=1e-14 * magnitude(prior))
    pa, pb = prior[:2].sum(), prior[2:].sum()
    # entropies of that prior, float64: 1e-12 of their magnitude (at most log 4)
    tol = 1e-12 * magnitude(c.prior_levels)
    np.testing.assert_allclose(c.prior_levels, [h(pa, pb), h(*prior)], rtol=0, atol=tol)
    np.testing.assert_allclose(c.mutual_information(), c.prior_levels - c.level_mean(), rtol=0, atol=tol)
    # given prior
    u = tree_entropy(lp, tax, [3.0, 2.0, 1.0], prior=torch.full((4,), 0.25))
    np.testing.assert_allclose(u.prior_levels, [math.log(2), math.log(4)], rtol=0, atol=tol)
    np.testing.assert_allclose(u.prior_nodes, [math.log(2), 0.5 * math.log(2), 0.5 * math.log(2)], rtol=0, atol=tol)
    with pytest.raises(ProbesError, match="prior"):
        tree_entropy(lp, tax, [3.0, 2.0, 1.0], prior=torch.full((4,), 0.5))


def test_concat_pools_default_priors():
    tax = make_taxonomy(UNEVEN)
    lp = random_log_probs(10, 3, len(tax.leaves), seed=5)
    s = [3.0, 2.0, 1.0]
    whole = tree_entropy(lp, tax, s)
    joined = EntropyCurves.concat([tree_entropy(lp[:3], tax, s), tree_entropy(lp[3:], tax, s)])
    # per-sample rows computed in two batches, and the pooled prior's entropies: float64 rounding,
    # 1e-12 of the entropies' magnitude
    tol = 1e-12 * magnitude(whole.levels, whole.prior_levels)
    np.testing.assert_allclose(joined.levels, whole.levels, rtol=0, atol=tol)
    np.testing.assert_allclose(joined.nodes, whole.nodes, rtol=0, atol=tol)
    np.testing.assert_allclose(joined.prior_levels, whole.prior_levels, rtol=0, atol=tol)
    np.testing.assert_allclose(joined.prior_nodes, whole.prior_nodes, rtol=0, atol=tol)
    assert joined.n_samples == 10
    with pytest.raises(ProbesError, match="sigma"):
        EntropyCurves.concat([whole, tree_entropy(lp, tax, [4.0, 2.0, 1.0])])


def test_subset_sigmas():
    tax = make_taxonomy(FOUR)
    lp = random_log_probs(4, 5, 4, seed=6)
    c = tree_entropy(lp, tax, [5.0, 4.0, 3.0, 2.0, 1.0])
    sub = c.subset_sigmas([0, 2, 4])
    # a subset copies its numbers: equal bit for bit
    np.testing.assert_array_equal(sub.sigmas, [5.0, 3.0, 1.0])
    np.testing.assert_array_equal(sub.levels, c.levels[:, [0, 2, 4]])
    np.testing.assert_array_equal(sub.prior_levels, c.prior_levels)


def test_nan_and_normalisation_errors():
    tax = make_taxonomy(FOUR)
    lp = random_log_probs(3, 3, 4, seed=7)
    bad = lp.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ProbesError, match=r"NaN at sigma=1 .*estimator output"):
        tree_entropy(bad, tax, [3.0, 2.0, 1.0])
    bad = lp.clone()
    bad[0, 1] += 0.1
    with pytest.raises(ProbesError, match=r"do not normalise at sigma=2"):
        tree_entropy(bad, tax, [3.0, 2.0, 1.0])
    with pytest.raises(ProbesError, match="leaf columns"):
        tree_entropy(lp[..., :3], tax, [3.0, 2.0, 1.0])
    with pytest.raises(ProbesError, match="sigmas"):
        tree_entropy(lp, tax, [3.0, 2.0])


def test_direct_construction_with_nan():
    S, D, K = 4, 2, 3
    levels = np.random.default_rng(0).random((5, S, D))
    nodes = np.random.default_rng(1).random((5, S, K))
    nodes[:, :, 2] = np.nan  # unsupported node
    levels[0, 0, 0] = np.nan  # one sample missing one point
    c = EntropyCurves(
        sigmas=np.array([4.0, 3.0, 2.0, 1.0]),
        level_names=[1, 2],
        node_names=["root", "A", "B"],
        levels=levels,
        nodes=nodes,
        prior_levels=[math.log(2), math.log(4)],
    )
    assert np.isnan(c.node_mean()[:, 2]).all() and np.isnan(c.node_stderr()[:, 2]).all()
    assert np.isfinite(c.node_mean()[:, :2]).all()
    # a mean of 4 numbers in [0, 1), summed in another order: 1e-14 of their magnitude
    np.testing.assert_allclose(c.level_mean()[0, 0], levels[1:, 0, 0].mean(), rtol=0, atol=1e-14 * magnitude(levels))
    assert c.level_count()[0, 0] == 4
    with pytest.raises(ProbesError, match="nodes must be"):
        EntropyCurves([1.0], [1], ["root"], np.zeros((2, 1, 1)), np.zeros((2, 2, 1)), [0.0])


def test_from_per_sample_uses_taxonomy_and_prior():
    tax = make_taxonomy(FOUR)
    levels = np.full((3, 2, 2), 0.5)
    nodes = np.full((3, 2, 3), np.nan)
    c = EntropyCurves.from_per_sample([2.0, 1.0], tax, levels, nodes, prior=np.full(4, 0.25))
    assert c.node_names == ["root", "A", "B"] and c.level_names == [1, 2]
    # entropies of a uniform prior, float64: 1e-12 of their magnitude
    tol = 1e-12 * magnitude(math.log(4))
    np.testing.assert_allclose(c.prior_levels, [math.log(2), math.log(4)], rtol=0, atol=tol)
    np.testing.assert_allclose(c.mutual_information(), [[math.log(2) - 0.5, math.log(4) - 0.5]] * 2, rtol=0, atol=tol)
    bare = EntropyCurves.from_per_sample(torch.tensor([2.0, 1.0]), tax, torch.tensor(levels), nodes)
    assert np.isnan(bare.prior_levels).all() and bare.node_mutual_information() is None
