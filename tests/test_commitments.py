"""Per-sample commitment times against a brute-force recomputation from the posteriors.

The brute force below reads the posteriors the way a user reads ``posteriors.safetensors``: for
each sample and each node on the way to its final leaf, ``q(child | node)`` is the sum of the
child's leaf probabilities over the node's; the commitment sigma is found by walking up from the
smallest sigma while ``q >= theta``; flips by walking down and counting changes of a strict leader.
It shares no code with :mod:`probes.entropy.commitments`.

The Bayes filter's per-sample posteriors are checked on a Gaussian mixture (two-by-two, 2-D, coarse
split 3 along e1, fine split 1.5 along e2, s0 = 0.5) sampled ancestrally with its exact denoiser:
their per-sample entropies average to the level entropies (of the engine, and of the exact
posterior on the same paths), and their commitments match those of the exact posterior.
"""

import itertools
import math

import networkx as nx
import numpy as np
import pytest
import torch
from PIL import Image
from tolerances import magnitude

from probes.entropy.commitments import (
    ORDER_KINDS,
    commitments,
    final_leaves,
    node_log_mass,
    restricted_posterior,
)
from probes.entropy.engine import tree_entropy
from probes.errors import ProbesError
from probes.estimators import ProbeContext, build_estimator
from probes.models.gmm import GaussianMixture
from probes.noise import geometric_grid
from probes.report.commitment_plots import plot_commitment_ecdf, plot_commitment_pairs
from probes.sampling import sample
from probes.taxonomy import load_taxonomy
from probes.taxonomy.tree import Taxonomy

pytestmark = pytest.mark.usefixtures("one_thread")

THETA = 0.9


def _tree(edges) -> Taxonomy:
    g = nx.DiGraph()
    g.add_edges_from(edges)
    return Taxonomy(g)


# Uneven on purpose: a three-way split, a leaf at depth 1, a leaf at depth 2 beside a depth-3 pair.
UNEVEN = _tree([("root", "A"), ("root", "B"), ("root", "c"), ("A", "a1"), ("A", "a2"), ("A", "a3"),
                ("B", "B1"), ("B", "b3"), ("B1", "b1"), ("B1", "b2")])


def _random_posteriors(n=80, steps=25, seed=0):
    """Posteriors that drift from uniform (exactly, at the first sigma) to a per-sample target
    leaf, with noise large enough that leaders flip and some samples never commit."""
    rng = np.random.default_rng(seed)
    sigmas = np.geomspace(20.0, 0.05, steps)
    L = len(UNEVEN.leaves)
    target = rng.integers(0, L, n)
    pull = np.linspace(0.0, 1.0, steps)[None, :] * rng.uniform(2.0, 9.0, n)[:, None]  # [n, S]
    logits = rng.normal(0.0, 1.2, (n, steps, L)) * np.linspace(0.0, 1.0, steps)[None, :, None]
    logits[np.arange(n), :, target] += pull
    lp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    return torch.tensor(lp, dtype=torch.float32), sigmas, target


def brute_force(log_probs, sigmas, taxonomy, final, theta):
    """``{(sample, node): (final_child, commit_sigma or None, flips)}`` by explicit loops."""
    p = np.exp(np.asarray(log_probs, dtype=np.float64))
    leaves = list(taxonomy.leaves)
    descending = sorted(range(len(sigmas)), key=lambda k: -sigmas[k])
    out = {}
    for i in range(p.shape[0]):
        leaf = leaves[final[i]]
        path = list(taxonomy.ancestors(leaf)) + [leaf]
        for node, child in itertools.pairwise(path):
            kids = taxonomy.children(node)
            mass = {c: sum(p[i, :, leaves.index(u)] for u in ([c] if taxonomy.is_leaf(c) else taxonomy.leaves_under(c)))
                    for c in kids}
            total = sum(mass.values())
            q = {c: mass[c] / total for c in kids}
            commit = None
            for k in reversed(descending):  # from the smallest sigma up
                if q[child][k] >= theta:
                    commit = sigmas[k]
                else:
                    break
            flips, leader = 0, None
            for k in descending:
                ranked = sorted(kids, key=lambda c: -q[c][k])
                # the toolkit's tie rule (TIE_TOL: log q within 1e-6, float32 resolution of order-one logs)
                if math.log(q[ranked[0]][k]) - math.log(q[ranked[1]][k]) <= 1e-6:
                    continue  # a tie: no leader, the previous one holds
                if leader is not None and ranked[0] != leader:
                    flips += 1
                leader = ranked[0]
            out[(i, node)] = (child, commit, flips)
    return out


def test_commitments_agree_with_a_brute_force_recomputation():
    lp, sigmas, _ = _random_posteriors()
    final = final_leaves(lp, sigmas)
    result = commitments(lp, sigmas, UNEVEN, final, theta=THETA)
    truth = brute_force(lp.numpy(), sigmas, UNEVEN, final, THETA)
    rows = result.rows()
    assert len(rows) == len(truth)
    for sample_index, node, child, commit, flips in rows:
        t_child, t_commit, t_flips = truth[(sample_index, node)]
        assert child == t_child and flips == t_flips, (sample_index, node)
        # both are grid values: the same float or both absent
        assert commit == t_commit, (sample_index, node, commit, t_commit)
    # mass outside a partial taxonomy (rows summing to less than 1) drops out of every q
    assert commitments(lp - 0.7, sigmas, UNEVEN, final, theta=THETA).rows() == rows
    # the posteriors were made to exercise every case
    commits = [r[3] for r in rows]
    assert any(c is None for c in commits) and len(set(commits)) > 10
    assert max(r[4] for r in rows) >= 2 and any(r[4] == 0 for r in rows)


def test_a_hand_made_path():
    """Two leaves; q(plus) along a descending grid of five sigmas."""
    tax = _tree([("root", "minus"), ("root", "plus")])
    sigmas = np.array([16.0, 8.0, 4.0, 2.0, 1.0])

    def run(q_plus):
        q = np.array(q_plus)
        lp = np.log(np.stack([1 - q, q], axis=-1))[None]  # [1, 5, 2]
        return commitments(lp, sigmas, tax, [1]).rows()[0]

    # dips below theta at sigma 4: the commitment is from sigma 2 on; the tie at 16 is no leader
    assert run([0.5, 0.95, 0.85, 0.92, 0.97]) == (0, "root", "plus", 2.0, 0)
    # leaders: none, minus, plus, minus, plus -> three flips, committed at the last sigma only
    assert run([0.5, 0.3, 0.6, 0.4, 0.95]) == (0, "root", "plus", 1.0, 3)
    # never reaches theta at the end
    assert run([0.5, 0.95, 0.95, 0.95, 0.85]) == (0, "root", "plus", None, 0)
    # committed from the largest sigma
    assert run([0.91, 0.95, 0.99, 0.99, 0.999]) == (0, "root", "plus", 16.0, 0)
    # the grid may come in any order: the result is on the descending grid
    shuffled = commitments(np.log(np.stack([1 - np.array([0.97, 0.5, 0.85]), np.array([0.97, 0.5, 0.85])], -1))[None],
                           np.array([1.0, 16.0, 4.0]), tax, [1])
    assert shuffled.sigmas.tolist() == [16.0, 4.0, 1.0] and shuffled.rows()[0][3] == 1.0


def test_final_leaf_is_the_conditioning_leaf_where_known():
    lp, sigmas, _ = _random_posteriors(n=6)
    argmax = lp[:, -1].argmax(-1).numpy()
    assert final_leaves(lp, sigmas).tolist() == argmax.tolist()
    known = np.array([-1, 3, -1, 0, 6, -1])
    expected = np.where(known >= 0, known, argmax)
    assert final_leaves(lp, sigmas, known).tolist() == expected.tolist()
    # the smallest sigma, wherever it sits in the grid
    flipped = torch.flip(lp, dims=[1])
    assert final_leaves(flipped, sigmas[::-1].copy()).tolist() == argmax.tolist()
    with pytest.raises(ProbesError, match="conditioning leaf indices"):
        final_leaves(lp, sigmas, np.array([0, 1, 2, 3, 4, 7]))


def test_summaries_against_their_definitions():
    lp, sigmas, _ = _random_posteriors(n=120, seed=1)
    final = final_leaves(lp, sigmas)
    result = commitments(lp, sigmas, UNEVEN, final)
    truth = brute_force(lp.numpy(), sigmas, UNEVEN, final, THETA)
    by_node: dict = {}
    for (i, node), (_, commit, _) in truth.items():
        by_node.setdefault(node, {})[i] = -math.inf if commit is None else commit
    # ECDF: at each grid sigma, the fraction of the node's samples with commitment sigma >= it
    for node, commits in by_node.items():
        grid, fraction = result.ecdf(node)
        values = np.array(list(commits.values()))
        np.testing.assert_array_equal(fraction, [(values >= s).mean() for s in grid])
    # fine before coarse: classes from the pairs of (parent, child) commitments
    orders = result.order(n_boot=0)
    assert set(orders) == {"A", "B", "B1"}  # internal nodes below the root
    for node, order in orders.items():
        parent = UNEVEN.parent(node)
        pairs = [(by_node[parent][i], c) for i, c in by_node[node].items()]
        count = {"fine_first": sum(c > p for p, c in pairs), "coarse_first": sum(p > c for p, c in pairs),
                 "together": sum(p == c > -math.inf for p, c in pairs),
                 "neither": sum(p == c == -math.inf for p, c in pairs)}
        assert order.parent == parent and order.n_samples == len(pairs)
        # fractions of one whole (magnitude 1), each one float64 division: 1e-12
        for kind in ORDER_KINDS:
            assert order.fractions[kind] == pytest.approx(count[kind] / len(pairs), abs=1e-12)
        assert sum(order.fractions.values()) == pytest.approx(1.0, abs=1e-12)
        # the joint pairs for the scatter hold the same commitments (NaN: never)
        _, joint = result.pairs()[node]
        got = sorted(map(tuple, np.where(np.isnan(joint), -np.inf, joint)))
        assert got == sorted(pairs)
    summary = result.summary(n_boot=20)
    assert set(summary["nodes"]) == set(by_node) and summary["nodes"]["root"]["order"] is None
    assert summary["nodes"]["A"]["order"]["parent"] == "root"


@pytest.fixture(scope="module")
def mixture_paths():
    """Bayes and exact posteriors on 1000 ancestral paths of the two-by-two mixture (64 steps)."""
    tax = load_taxonomy("gmm-two-by-two")
    gmm = GaussianMixture.hierarchical(tax, dim=2, separations=[3.0, 1.5], std=0.5, axis_aligned=True,
                                       share_level_axes=True)
    grid = geometric_grid(40.0, 0.02, 64)
    g = torch.Generator().manual_seed(0)
    noise = float(grid[0]) * torch.randn(1000, 2, generator=g, dtype=torch.float64)
    traj = sample(gmm.denoiser(), noise, grid, "ancestral", generator=g)
    ctx = ProbeContext(tax, sigmas=grid, denoiser=gmm.denoiser(), conditioner=gmm.conditioner(tax), exact_model=gmm)
    bayes = build_estimator("bayes").estimate(traj, ctx, g)
    exact = build_estimator("exact").estimate(traj, ctx, g)
    return tax, bayes, exact


def test_bayes_per_sample_entropies_average_to_the_level_entropy(mixture_paths):
    tax, bayes, exact = mixture_paths
    # Per-sample entropies by the chain rule over the nodes' restricted posteriors:
    # H(level 1) = H(q(. | root)), H(leaf) = H(q(. | root)) + sum over groups p(g | x) H(q(. | g)).
    mass = node_log_mass(bayes.log_probs, tax)

    def entropy(node):
        log_q = restricted_posterior(mass, tax, node)
        return -(np.exp(log_q) * np.where(np.isfinite(log_q), log_q, 0.0)).sum(-1)  # [N, S]

    level1 = entropy("root")
    leaf = level1 + sum(np.exp(mass[g]) * entropy(g) for g in ("left", "right"))
    per_sample = np.stack([level1, leaf], axis=-1).mean(0)  # [S, 2]
    # The engine computes levels from the cells directly: the same numbers up to float64 rounding of
    # float32 inputs (1e-9 of the entropies' magnitude).
    np.testing.assert_allclose(per_sample, tree_entropy(bayes.log_probs, tax, bayes.sigmas).level_mean(),
                               rtol=0, atol=1e-9 * magnitude(per_sample))
    # Along the reverse chain the path carries no more about the class than the state, so the
    # filter's mean per-sample entropy is the level entropy of the exact posterior on these paths.
    # Tolerance: the filter's class kernels are exact in the small-step limit; at 64 steps its mean
    # curves sit within 0.006 nats of the exact ones (measured here); 0.02 leaves room.
    exact_levels = tree_entropy(exact.log_probs, tax, exact.sigmas).level_mean()
    assert np.abs(per_sample - exact_levels).max() < 0.02


def test_bayes_commitments_match_the_exact_posterior(mixture_paths):
    """Per sample, not only on average: the filter commits where the exact posterior does."""
    tax, bayes, exact = mixture_paths
    final = final_leaves(exact.log_probs, exact.sigmas)
    assert (final_leaves(bayes.log_probs, bayes.sigmas) == final).mean() > 0.99
    cb = commitments(bayes.log_probs, bayes.sigmas, tax, final)
    ce = commitments(exact.log_probs, exact.sigmas, tax, final)
    step = math.log(40.0 / 0.02) / 63
    apart = np.abs(np.log(cb.commit_sigma) - np.log(ce.commit_sigma))
    # measured: 97% of (sample, node) rows within one grid step, 98% within two
    assert np.mean(apart <= 1.01 * step) > 0.9


def test_fine_before_coarse_intervals_have_the_binomial_width(mixture_paths):
    """A fraction's bootstrap interval over n samples is about +-1.96 sqrt(p (1 - p) / n)."""
    tax, bayes, _ = mixture_paths
    result = commitments(bayes.log_probs, bayes.sigmas, tax, final_leaves(bayes.log_probs, bayes.sigmas))
    orders = result.order(n_boot=2000, seed=3)
    for node in ("left", "right"):
        order = orders[node]
        p, n = order.fine_first, order.n_samples
        assert 0.03 < p < 0.5  # this mixture has fine-first samples (coarse split 3, fine 1.5)
        lo, hi = order.intervals["fine_first"]
        assert lo <= p <= hi
        # Tolerance 20%: 2000 replicates place a 2.5% percentile to ~5%, and the bootstrap of a
        # ratio (the node's count varies) differs from the binomial by O(1/n).
        assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / n), rel=0.2)
    again = result.order(n_boot=2000, seed=3)
    assert again["left"].intervals == orders["left"].intervals  # seeded


def test_bad_input_is_one_line():
    lp, sigmas, _ = _random_posteriors(n=4)
    final = final_leaves(lp, sigmas)
    with pytest.raises(ProbesError, match="7 leaf columns but the taxonomy has 4"):
        commitments(lp, sigmas, load_taxonomy("gmm-two-by-two"), final)
    with pytest.raises(ProbesError, match="theta must lie in"):
        commitments(lp, sigmas, UNEVEN, final, theta=1.0)
    with pytest.raises(ProbesError, match="final_leaf must be 4 leaf indices"):
        commitments(lp, sigmas, UNEVEN, [0, 1, 2, 99])
    with pytest.raises(ProbesError, match="24 sigmas for log-posteriors with 25"):
        commitments(lp, sigmas[:-1], UNEVEN, final)


def test_figures_state_their_conventions(tmp_path, mixture_paths):
    tax, bayes, _ = mixture_paths
    result = commitments(bayes.log_probs, bayes.sigmas, tax, final_leaves(bayes.log_probs, bayes.sigmas))
    for plot, name in ((plot_commitment_ecdf, "ecdf.png"), (plot_commitment_pairs, "pairs.png")):
        path = plot(tmp_path / name, result)
        assert path.is_file() and path.with_suffix(".pdf").is_file()
        with Image.open(path) as image:
            assert round(image.info["dpi"][0]) == 300
