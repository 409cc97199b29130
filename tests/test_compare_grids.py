"""Comparisons across grids and taxonomies, against exact Gaussian-mixture answers.

Two results of the four-leaf mixture of ``gmm-two-by-two`` in 2-D (within-class std s0 = 0.5, coarse
split along e1, fine split along e2, so the mixture is a product of two two-class problems): A with
separations (3, 1) on a 64-point geometric grid from sigma 40 to 0.05, B with (2, 1.5) on a 48-point
Karras grid (rho 7) from 80 to 0.02. Each node's contribution is a two-class entropy,
``C_root = H2(m1 / s)`` and ``C_left = C_right = 1/2 H2(m2 / s)`` with ``s^2 = s0^2 + sigma^2``, so its
decision (the peak of ``dC / dlog sigma``) is where ``dH2/dlog s * sigma^2 / s^2`` peaks: by DESIGN.md
section 2 the rate in log s peaks at ``r^2 ~ 1.508``, the factor ``sigma^2 / s^2`` moves it a little;
both come from :mod:`probes.models.gmm_theory` here, maximised by scipy. The exact decision shift in
log-SNR is ``lambda_B - lambda_A = -2 log(sigma_B / sigma_A)``.

Sampling design: the posteriors are exact (the ``exact`` estimator's values on ``x0 + sigma n``), so
the only errors are the grids' and the samples'. To keep the second well below the first, clean
deviations and noises are scrambled Sobol points mapped to normals (quasi-Monte Carlo), and every
draw enters with its three mirror images under the mixture's symmetries ``x1 -> -x1``, ``x2 -> -x2``
(each image is a draw of another leaf). Mirror images are not independent, so the bootstrap
intervals of these results are not checked for coverage here (``tests/test_compare.py`` does that
with independent draws on one grid).
"""

import math

import networkx as nx
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.optimize import minimize_scalar
from scipy.stats import norm, qmc

from probes.cli import main
from probes.entropy.difference import align_grids, interpolate_curves
from probes.entropy.engine import EntropyCurves
from probes.errors import ProbesError
from probes.estimators import EstimatorOutput
from probes.models.gmm import GaussianMixture
from probes.models.gmm_theory import two_class_entropy_curve, two_class_rate_curve
from probes.noise import geometric_grid, karras_grid
from probes.report.compare_plots import plot_decision_trees
from probes.result import ProbeResult
from probes.taxonomy import load_taxonomy
from probes.taxonomy.tree import Taxonomy

pytestmark = pytest.mark.usefixtures("one_thread")

STD = 0.5
SEPARATIONS = {"A": (3.0, 1.0), "B": (2.0, 1.5)}
GRIDS = {"A": geometric_grid(40.0, 0.05, 64), "B": karras_grid(80.0, 0.02, 48)}
TAX = load_taxonomy("gmm-two-by-two")
MIRRORS = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)


def _mixture(separations, taxonomy=TAX) -> GaussianMixture:
    return GaussianMixture.hierarchical(taxonomy, dim=2, separations=separations, std=STD, axis_aligned=True,
                                        share_level_axes=True)


def _symmetric_result(which: str, log2_draws: int = 10, seed: int = 0) -> ProbeResult:
    """Exact posteriors of 4 * 2^log2_draws samples (see the module docstring) on ``GRIDS[which]``."""
    gmm = _mixture(SEPARATIONS[which])
    u = qmc.Sobol(d=4, scramble=True, seed=seed).random_base2(log2_draws)
    z, n = (torch.tensor(norm.ppf(u[:, k:k + 2])) for k in (0, 2))
    x0 = gmm.means[0] + STD * z  # leaf left-a; its mirror images are the other three leaves
    x0, n = torch.cat([x0 * f for f in MIRRORS]), torch.cat([n * f for f in MIRRORS])
    lp = gmm.log_posterior_path(x0, n, GRIDS[which], dtype=torch.float32)
    return ProbeResult(taxonomy=TAX, estimates={"exact": EstimatorOutput("exact", GRIDS[which], log_probs=lp)},
                       prior=torch.full((4,), 0.25, dtype=torch.float64))


def _random_result(gmm, taxonomy, grid, n: int, seed: int) -> ProbeResult:
    """Exact posteriors of n independent draws of ``gmm``; the prior is the mixture's weights."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = gmm.sample(n, g)
    lp = gmm.log_posterior_path(x0, torch.randn(x0.shape, generator=g, dtype=torch.float64), grid,
                                dtype=torch.float32)
    return ProbeResult(taxonomy=taxonomy, estimates={"exact": EstimatorOutput("exact", grid, log_probs=lp)},
                       prior=gmm.weights.clone())


def exact_decision_sigma(m: float) -> float:
    """Where ``d H2(m / s) / dlog sigma = dH2/dlog s * sigma^2 / s^2`` peaks (``s^2 = s0^2 + sigma^2``)."""
    def rate(u):
        sigma2 = math.exp(2 * u)
        return float(two_class_rate_curve(np.array([math.exp(u)]), m, STD)[0]) * sigma2 / (STD**2 + sigma2)

    best = minimize_scalar(lambda u: -rate(u), bounds=(-4.0, 4.0), method="bounded", options={"xatol": 1e-10})
    return math.exp(best.x)


def exact_log_snr_shift(level: int) -> float:
    a, b = (exact_decision_sigma(SEPARATIONS[w][level]) for w in ("A", "B"))
    return -2 * math.log(b / a)


@pytest.fixture(scope="module")
def comparison():
    return _symmetric_result("A", seed=1).compare(_symmetric_result("B", seed=2), n_boot=100)


def test_decision_shifts_across_grids_match_the_theory(comparison):
    alignment = comparison.curves.alignment
    assert not alignment.same_grid and alignment.interpolated in ("A", "B")
    truth = {"root": exact_log_snr_shift(0), "left": exact_log_snr_shift(1), "right": exact_log_snr_shift(1)}
    # B's coarse split is narrower (2 vs 3): it decides later (at a larger lambda); its fine split is
    # wider (1.5 vs 1): earlier. Both by ~0.7-0.8 in lambda.
    assert truth["root"] > 0.7 and truth["left"] < -0.6
    for node, exact in truth.items():
        shift = comparison.curves.shifts[node]["log_snr"]
        # Tolerance 10% of the shift. Error budget: through these grids the exact curves' decisions
        # are off by at most 0.011 in log sigma (Karras, m = 1.5 and 2), so the shift by <= 0.02 in
        # lambda (3% of the fine nodes' shift); the quasi-Monte-Carlo samples add about 2%.
        assert shift.shift == pytest.approx(exact, rel=0.1), (node, shift.shift, exact)
        assert shift.interval is not None and shift.interval[0] <= shift.shift <= shift.interval[1]
        assert shift.n_boot == 100
        # the shift on log-SNR is the shift of the decision sigmas each run placed on its own grid
        # (float64 logs of the same numbers: relative 1e-9)
        assert shift.shift == pytest.approx(-2 * math.log(shift.sigma_b / shift.sigma_a), rel=1e-9)


def test_decisions_are_placed_on_each_runs_own_grid(comparison):
    """The decision sigmas in the comparison are those of each result decided alone (the same float64
    arithmetic: relative 1e-12)."""
    a, b = _symmetric_result("A", seed=1), _symmetric_result("B", seed=2)
    for node in ("root", "left", "right"):
        shift = comparison.curves.shifts[node]["log_sigma"]
        assert shift.sigma_a == pytest.approx(a.decisions(n_boot=0)[node].decision_sigma, rel=1e-12)
        assert shift.sigma_b == pytest.approx(b.decisions(n_boot=0)[node].decision_sigma, rel=1e-12)


def test_information_gap_on_the_common_grid_matches_the_theory(comparison):
    alignment = comparison.curves.alignment
    lo, hi = alignment.log_snr_range
    # the overlap of the two grids: sigma 40 to 0.05 (A's range, inside B's); float64 logs, relative 1e-9
    assert lo == pytest.approx(-2 * math.log(40.0), rel=1e-9) and hi == pytest.approx(-2 * math.log(0.05), rel=1e-9)
    for kind, name, level in (("level", 1, 0), ("node", "root", 0), ("node", "left", 1)):
        d = (comparison.levels if kind == "level" else comparison.nodes)[name]
        np.testing.assert_allclose(d.sigmas, alignment.sigmas, rtol=1e-12)  # the common grid itself
        a, b = SEPARATIONS["A"][level], SEPARATIONS["B"][level]
        exact = two_class_entropy_curve(d.sigmas, a, STD) - two_class_entropy_curve(d.sigmas, b, STD)
        if kind == "node" and name == "left":
            exact = exact / 2  # C_left = 1/2 H2(m2 / s)
        # Tolerance 0.01 nats against gaps of ~0.2: linear interpolation in log sigma between Karras
        # points errs by h^2 / 8 |C''| < 2e-3 nats (h < 0.3, |C''| < 0.15 per unit log sigma squared);
        # the quasi-Monte-Carlo means are within a few 1e-3.
        assert np.abs(d.delta - exact).max() < 0.01, (kind, name, np.abs(d.delta - exact).max())
    assert "grids differ" in comparison.text() and "interpolated linearly in lambda" in comparison.text()


def test_interpolation_commutes_with_resampling():
    """Per-sample curves interpolated in log sigma, then averaged under a replicate's sample counts
    (inside-weighted), give the interpolation of that replicate's weighted sum over the interpolation
    of its weight (np.interp here); unweighted, the interpolation of the replicate's mean."""
    rng = np.random.default_rng(0)
    sigmas, target = np.geomspace(30.0, 0.1, 17), np.geomspace(20.0, 0.12, 23)
    x, t = np.log(sigmas[::-1]), np.log(target[::-1])  # ascending, as np.interp wants

    def interp(row):
        return np.interp(t, x, row[::-1])[::-1]

    N = 40
    levels = rng.uniform(0.0, 1.4, (N, 17, 2))
    inside = rng.uniform(0.1, 1.0, (N, 17))
    counts = rng.multinomial(N, np.full(N, 1 / N), size=3).astype(float)
    for weighted in (True, False):
        curves = EntropyCurves(sigmas=sigmas, level_names=[1, 2], node_names=["a", "b"], levels=levels,
                               nodes=levels, prior_levels=np.array([math.log(2), math.log(4)]), inside=inside,
                               inside_weighted=weighted)
        moved = interpolate_curves(curves, target)
        # float64 interpolations and weighted sums of positive numbers: relative 1e-12
        np.testing.assert_allclose(moved.inside, np.array([interp(r) for r in inside]), rtol=1e-12)
        u_moved = moved.inside if weighted else np.ones_like(moved.inside)
        u = inside if weighted else np.ones_like(inside)
        for c in counts:
            for k in range(2):
                mean = (c @ (u_moved * moved.levels[..., k])) / (c @ u_moved)
                expected = interp(c @ (u * levels[..., k])) / interp(c @ u)
                np.testing.assert_allclose(mean, expected, rtol=1e-12)


def test_same_grid_needs_no_alignment():
    a = align_grids(GRIDS["A"].numpy(), GRIDS["A"].numpy().astype(np.float32).astype(np.float64))
    assert a.same_grid and a.text() == ""
    with pytest.raises(ProbesError, match="overlap in 0 grid point"):
        align_grids(np.geomspace(40, 10, 8), np.geomspace(5, 0.1, 8))


def test_the_subtree_two_taxonomies_share():
    """A: the four-leaf mixture over its taxonomy; B: the same mixture given that the class is one of
    three leaves (its own three-leaf taxonomy). Restricted to the shared leaves, A measures B's
    law, so the gap is zero up to sampling noise, on two different grids."""
    shared = ["left-a", "left-b", "right-a"]
    gmm = _mixture(SEPARATIONS["A"])
    sub = TAX.restrict(shared)
    assert sub.internal_nodes == ["root", "left"]  # 'right' keeps one leaf and collapses into it
    a = _random_result(gmm, TAX, GRIDS["A"], 3000, seed=5)
    b = _random_result(gmm.restricted(shared), sub, karras_grid(80.0, 0.02, 40), 3000, seed=6)
    comparison = a.compare(b, n_boot=100)
    text = comparison.text()
    assert "taxonomies differ: compared over the subtree they share, 3 of A's 4 and B's 3 leaves" in text
    assert "grids differ" in text
    assert comparison.taxonomy.leaves == shared and set(comparison.nodes) == {"root", "left"}
    for d in list(comparison.levels.values()) + list(comparison.nodes.values()):
        lo, hi = d.delta_interval
        # 95% pointwise intervals: most of each curve covers 0 (one sample's weight, 1/3000, of slack)
        assert np.mean((lo - 1e-3 <= 0) & (hi + 1e-3 >= 0)) >= 0.8, d.name
        assert np.abs(d.delta).max() < 0.05, d.name  # against gaps of 0.2 nats in the test above
    for node in ("root", "left"):
        shift = comparison.curves.shifts[node]["log_snr"]
        assert shift.interval[0] - 0.05 <= 0 <= shift.interval[1] + 0.05, (node, shift.interval)


def test_taxonomies_that_group_the_shared_leaves_apart_are_one_line():
    g = nx.DiGraph()
    g.add_edges_from([("root", "odd"), ("root", "even"), ("odd", "left-a"), ("odd", "right-a"),
                      ("even", "left-b"), ("even", "right-b")])
    regrouped = Taxonomy(g, name="regrouped")
    grid = GRIDS["A"]
    a = _random_result(_mixture(SEPARATIONS["A"]), TAX, grid, 50, seed=0)
    b = ProbeResult(taxonomy=regrouped, estimates={"exact": EstimatorOutput(
        "exact", grid, log_probs=torch.log_softmax(torch.randn(50, len(grid), 4), -1))})
    with pytest.raises(ProbesError, match="group their 4 shared leaves differently"):
        a.compare(b)
    lone = Taxonomy(nx.DiGraph([("root", "left-a"), ("root", "elsewhere")]), name="lone")
    c = ProbeResult(taxonomy=lone, estimates={"exact": EstimatorOutput(
        "exact", grid, log_probs=torch.log_softmax(torch.randn(50, len(grid), 2), -1))})
    with pytest.raises(ProbesError, match="share 1 leaf"):
        a.compare(c)

    def entropies(taxonomy):  # an estimator of entropies alone (immse)
        k = len(taxonomy.internal_nodes)
        return ProbeResult(taxonomy=taxonomy, estimates={"immse": EstimatorOutput(
            "immse", grid, levels=torch.rand(50, len(grid), 2), nodes=torch.rand(50, len(grid), k))})

    with pytest.raises(ProbesError, match="estimator 'immse' of result A gives entropies, not posteriors"):
        entropies(TAX).compare(entropies(TAX.restrict(["left-a", "left-b", "right-a"])))


def test_both_trees_in_one_figure(tmp_path, comparison):
    path = plot_decision_trees(tmp_path / "trees.png", comparison, "geometric 64", "Karras 48")
    assert path.is_file() and path.with_suffix(".pdf").is_file()
    with Image.open(path) as image:
        assert round(image.info["dpi"][0]) == 300


def test_the_cli_compares_saved_results_on_different_grids(tmp_path, capsys):
    gmm = _mixture(SEPARATIONS["A"])
    _random_result(gmm, TAX, GRIDS["A"], 200, seed=1).save(tmp_path / "a", n_boot=0)
    _random_result(gmm, TAX, GRIDS["B"], 200, seed=2).save(tmp_path / "b", n_boot=0)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp"),
                 "--n-boot", "20"]) == 0
    text = capsys.readouterr().out
    assert "grids differ (A: 64 sigmas 40 to 0.05; B: 48 sigmas 80 to 0.02)" in text
    rows = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * len(comparison_grid())


def comparison_grid():
    return align_grids(GRIDS["A"].numpy(), GRIDS["B"].numpy()).sigmas
