"""Estimators against exact Gaussian-mixture answers.

Two models: two equiprobable classes at +-m in d=4 (|m| = 2, s0 = 1), and a 4-leaf two-level
hierarchy in d=8 (coarse split 3.0 along e1, fine split 1.5 along e2, s0 = 1). Grids: 40 points
geometric from ~20x the data scale down to 0.02. ``exact`` on the same trajectories is the truth
for the posterior estimators; ``immse`` (which draws its own pairs) is compared with a 20000-sample
exact reference whose stderr is < 0.003 nats. Every tolerance below states where it comes from.
"""

import math

import networkx as nx
import numpy as np
import pytest
import torch

from probes.conditioning import ClassLabelConditioner
from probes.entropy.engine import tree_entropy
from probes.errors import ProbesError
from probes.estimators import ESTIMATORS, ProbeContext, build_estimator
from probes.models.gmm import GaussianMixture
from probes.noise import geometric_grid
from probes.sampling import forward_path, sample
from probes.taxonomy.tree import Taxonomy


def tree(edges):
    g = nx.DiGraph()
    g.add_edges_from(edges)
    return Taxonomy(g)


TAX2 = tree([("root", "minus"), ("root", "plus")])
GMM2 = GaussianMixture.two_class(dim=4, mean_norm_sq_per_dim=1.0, std=1.0)
GRID2 = geometric_grid(45.0, 0.02, 40)
TAX4 = tree([("root", "A"), ("root", "B"), ("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2")])
GMM4 = GaussianMixture.hierarchical(TAX4, dim=8, separations=[3.0, 1.5], std=1.0, axis_aligned=True)
GRID4 = geometric_grid(60.0, 0.02, 40)


pytestmark = pytest.mark.usefixtures("one_thread")


def context(tax, gmm, grid, **kw):
    return ProbeContext(tax, sigmas=grid, denoiser=gmm.denoiser(), conditioner=gmm.conditioner(tax),
                        classifier=gmm.classifier(), exact_model=gmm,
                        sample_pairs=lambda n, g: gmm.sample(n, g), **kw)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def data_paths(gmm, grid, n, seed=0):
    g = gen(seed)
    x0, y = gmm.sample(n, g)
    return forward_path(x0, grid, g, leaf=y)


def ancestral_paths(gmm, grid, n, seed=0):
    g = gen(seed)
    noise = float(grid[0]) * torch.randn(n, gmm.dim, generator=g, dtype=torch.float64)
    return sample(gmm.denoiser(), noise, grid, "ancestral", generator=g)


def run(name, traj, ctx, seed=0, **options):
    return build_estimator(name, **options).estimate(traj, ctx, gen(seed))


def curves(out, ctx):
    return out.curves(ctx.taxonomy, prior=ctx.prior)


def exact_on(traj, ctx, stride=1):
    return curves(run("exact", traj, ctx, sigma_stride=stride), ctx)


@pytest.fixture(scope="module")
def reference4():
    """Exact mean curves of the 4-leaf model from 20000 forward samples."""
    g = gen(123)
    x0, _ = GMM4.sample(20000, g)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return tree_entropy(GMM4.log_posterior_path(x0, noise, GRID4), TAX4, GRID4, prior=torch.full((4,), 0.25))


# ---- exact ----------------------------------------------------------------------------------


def test_exact_is_the_model_posterior_on_the_thinned_grid():
    ctx = context(TAX4, GMM4, GRID4)
    traj = data_paths(GMM4, GRID4, 16)
    out = run("exact", traj, ctx, sigma_stride=3)
    assert torch.equal(out.sigmas, GRID4[::3])
    assert out.log_probs.shape == (16, 14, 4) and out.denoiser_calls == out.classifier_calls == 0
    # float64 posteriors rounded once to float32 on each side: 2 float32 units of the magnitude
    ref = GMM4.log_posterior(traj.states[6], float(GRID4[6])).float()
    tol = 2 * torch.finfo(torch.float32).eps * max(1.0, float(ref.abs().max()))
    torch.testing.assert_close(out.log_probs[:, 2], ref, rtol=2 * torch.finfo(torch.float32).eps, atol=tol)


# ---- plugin ---------------------------------------------------------------------------------


def test_plugin_is_overconfident_at_mid_sigma():
    # The Jensen gap is real and large: on the 2-class model the plug-in entropy falls short of the
    # exact one by 0.36 nats at sigma ~ 4 (measured). It shrinks where D(x) is close to the global
    # mean (sigma >> |m|; like 1/sigma^2, 0.02 nats left at sigma_max = 45) or to x itself
    # (sigma -> 0). 512 paths: per-point stderr of the difference is < 0.01, hence the bounds.
    ctx = context(TAX2, GMM2, GRID2)
    traj = data_paths(GMM2, GRID2, 512)
    gap = exact_on(traj, ctx).level_mean()[:, 0] - curves(run("plugin", traj, ctx), ctx).level_mean()[:, 0]
    print("\nplugin entropy bias (exact - plugin, nats) by sigma:",
          {f"{s:.3g}": round(float(b), 3) for s, b in zip(GRID2[::4].tolist(), gap[::4])})
    assert gap.min() > -0.01
    assert gap.max() > 0.2
    assert abs(gap[0]) < 0.1 * gap.max() and abs(gap[-1]) < 0.01


def test_plugin_reuses_the_recorded_denoiser_output():
    ctx = context(TAX2, GMM2, GRID2)
    traj = ancestral_paths(GMM2, GRID2, 8)
    free = run("plugin", traj, ctx)
    assert free.denoiser_calls == 0 and free.classifier_calls == 40 * 8
    traj.denoised = None
    paid = run("plugin", traj, ctx)
    assert paid.denoiser_calls == 40 * 8
    # the same denoiser output, recorded or recomputed: 32 float32 units of the log-probabilities' magnitude
    tol = 32 * torch.finfo(torch.float32).eps * max(1.0, float(paid.log_probs.abs().max()))
    torch.testing.assert_close(free.log_probs, paid.log_probs, rtol=0, atol=tol)


# ---- rollout --------------------------------------------------------------------------------

K = 16


def test_rollout_probabilities_are_unbiased():
    # E[p(y | x0) | x_sigma] = p(y | x_sigma): the mean over 256 paths of (p_rollout - p_exact) must
    # be within 4 stderr plus 0.01 for the completion sampler's discretisation (euler_maruyama,
    # 2 substeps; measured bias <= 0.018 at z <= 3). Entropies of a K-sample average are biased low
    # by up to (L_eff - 1) / (2K) (Miller-Madow): the level-l bound is that plus 0.02.
    ctx = context(TAX4, GMM4, GRID4)
    traj = data_paths(GMM4, GRID4, 256)
    out = run("rollout", traj, ctx, k=K, method="euler_maruyama", steps=None, substeps=2, sigma_stride=4,
              bias_correction="none")
    exact = run("exact", traj, ctx, sigma_stride=4)
    diff = out.log_probs.exp() - exact.log_probs.exp()
    assert (diff.mean(0).abs() <= 4 * diff.std(0) / math.sqrt(256) + 0.01).all()
    err = curves(out, ctx).level_mean() - curves(exact, ctx).level_mean()
    miller_madow = np.array([1, 3]) / (2 * K)
    assert (err >= -miller_madow - 0.02).all() and (err <= 0.02).all(), err


def test_rollout_jackknife_on_its_own_grid_is_within_003_nats_at_k8():
    # k = 8 with the defaults (jackknife over completions, euler_maruyama on a 32-point grid per
    # completion) against the exact posterior on the same 1024 forward paths of the 4-leaf mixture.
    # Measured max |error| 0.028 nats over all grid points and levels (full grid; the uncorrected
    # k = 8 on the run's grid tail: 0.204). Bound 0.04: the residual O(1/K^2) bias near H = log 4
    # (0.03) plus the completions' Monte-Carlo noise on every 2nd point. Cost: at most the denoiser
    # calls of completing on the run's grid tail, K * sum_i (S - i) per path.
    ctx = context(TAX4, GMM4, GRID4)
    traj = data_paths(GMM4, GRID4, 1024)
    out = run("rollout", traj, ctx, k=8, sigma_stride=2)
    err = curves(out, ctx).level_mean() - exact_on(traj, ctx, 2).level_mean()
    assert np.abs(err).max() < 0.04, err
    S = len(GRID4)
    assert out.denoiser_calls <= 8 * 1024 * sum(S - i for i in range(0, S, 2))


def test_rollout_jackknife_needs_two_completions():
    with pytest.raises(ProbesError, match="jackknife needs k >= 2"):
        build_estimator("rollout", k=1)
    assert build_estimator("rollout", k=1, bias_correction="none").k == 1


def test_rollout_on_ancestral_samples_with_default_completions():
    # Default ancestral completions on the 40-point grid are slightly under-dispersed; measured
    # entropy error 0.06 nats at most (1/(2K) = 0.03 of it is Miller-Madow). Bound: 1/(2K) + 0.05.
    ctx = context(TAX2, GMM2, GRID2)
    traj = ancestral_paths(GMM2, GRID2, 256)
    err = curves(run("rollout", traj, ctx, k=K, sigma_stride=4), ctx).level_mean() - exact_on(traj, ctx, 4).level_mean()
    assert np.abs(err).max() < 1 / (2 * K) + 0.05, err


def test_conditional_trajectories_are_read_with_the_unconditional_model():
    # Estimators measure p(y | x_sigma) of the unconditional model at the states, whatever
    # conditioned their generation: plugin and rollout call the denoiser with cond=None, and the
    # recorded (conditional) denoised states are not reused. At sigma_max the posterior is then
    # the prior (0.25), although every sample was generated for a known leaf.
    conds = []

    def spy(x, sigma, cond=None):
        conds.append(cond)
        return GMM4.denoiser()(x, sigma, cond)

    ctx = context(TAX4, GMM4, GRID4).replace(denoiser=spy)
    y = torch.arange(4).repeat(8)
    noise = float(GRID4[0]) * torch.randn(32, 8, generator=gen(), dtype=torch.float64)
    traj = sample(GMM4.denoiser(), noise, GRID4, "ancestral", cond=y, generator=gen(), leaf=y)
    plugin = run("plugin", traj, ctx, sigma_stride=13)
    rollout = run("rollout", traj, ctx, k=4, sigma_stride=13)  # grid points 0, 13, 26, 39
    assert conds and all(c is None for c in conds)
    assert plugin.denoiser_calls == 4 * 32
    p_true = rollout.log_probs.exp().gather(2, y[:, None, None].expand(32, 4, 1))[..., 0]
    # within 4 standard errors of the 32-sample mean (each p from 4 completions: SE ~0.04); read
    # with the conditional model it would be near 1
    assert abs(float(p_true[:, 0].mean()) - 0.25) < 4 * float(p_true[:, 0].std()) / math.sqrt(32)
    assert float(p_true[:, -1].mean()) > 0.7  # near sigma = 0 the samples carry their leaf


# ---- bayes ----------------------------------------------------------------------------------


def test_bayes_error_shrinks_with_finer_grids():
    # The filter is exact in the small-step limit: on forward paths its error is first order in the
    # step (measured mean |error| 0.021 / 0.012 / 0.006 nats for 20 / 40 / 80 points). The grids
    # share their end points; each refinement must cut the mean error by a factor > 1.4.
    ctx = context(TAX4, GMM4, GRID4)
    errors = []
    for steps in (20, 40, 80):
        grid = geometric_grid(60.0, 0.02, steps)
        traj = data_paths(GMM4, grid, 512)
        err = curves(run("bayes", traj, ctx), ctx).level_mean() - exact_on(traj, ctx).level_mean()
        errors.append(float(np.abs(err).mean()))
        if steps == 80:
            assert np.abs(err).max() < 0.03
    assert errors[0] > 1.4 * errors[1] > 1.96 * errors[2], errors


def test_bayes_on_ancestral_samples():
    # The generation kernel is exactly the Gaussian the filter assumes; the remaining error is
    # the class-conditional kernels' discretisation (measured <= 0.044 nats at 40 points).
    for tax, gmm, grid in ((TAX2, GMM2, GRID2), (TAX4, GMM4, GRID4)):
        ctx = context(tax, gmm, grid)
        traj = ancestral_paths(gmm, grid, 256)
        out = run("bayes", traj, ctx)
        assert out.denoiser_calls == len(tax.leaves) * 256 * 39 and out.classifier_calls == 0
        err = curves(out, ctx).level_mean() - exact_on(traj, ctx).level_mean()
        assert np.abs(err).max() < 0.06, err


def test_bayes_rejects_deterministic_trajectories():
    ctx = context(TAX2, GMM2, GRID2)
    traj = sample(GMM2.denoiser(), 45.0 * torch.randn(4, 4, dtype=torch.float64), GRID2, "euler")
    with pytest.raises(ProbesError, match="bayes.*'euler' trajectory has no step noise"):
        run("bayes", traj, ctx)


# ---- immse ----------------------------------------------------------------------------------


def test_immse_matches_exact_levels_and_nodes(reference4):
    # 2000 pairs: per-point stderr ~0.025 nats; bound = 4 combined stderr + 0.01 (trapezoid rule
    # and H(sigma_max) ~ H(prior), each ~1e-3). Measured max |z| = 1.5.
    ctx = context(TAX4, GMM4, GRID4)
    out = run("immse", None, ctx, n_pairs=2000)
    assert out.log_probs is None and out.levels.shape == (2000, 40, 2) and out.nodes.shape == (2000, 40, 3)
    assert out.denoiser_calls == 3 * 2000 * 40  # D(x), D(x; coarse node), D(x; leaf)
    got = curves(out, ctx)
    # chain rule, per pair, in float64: 1e-12 of the entropies' magnitude
    tol = 1e-12 * max(1.0, float(out.levels.abs().max()))
    torch.testing.assert_close(out.nodes.sum(-1), out.levels[..., -1], rtol=0, atol=tol)
    pairs = ((got.level_mean(), got.level_stderr(), reference4.level_mean(), reference4.level_stderr()),
             (got.node_mean(), got.node_stderr(), reference4.node_mean(), reference4.node_stderr()))
    for mean, se, ref, ref_se in pairs:
        assert (np.abs(mean - ref) <= 4 * np.hypot(se, ref_se) + 0.01).all()
    np.testing.assert_allclose(got.prior_levels, [math.log(2), math.log(4)], rtol=1e-12)  # float64


def test_immse_leaf_only_conditioner_leaves_coarse_levels_nan():
    ctx = context(TAX4, GMM4, GRID4[::4])
    full = run("immse", None, ctx, n_pairs=50)
    ctx = ctx.replace(conditioner=ClassLabelConditioner({leaf: i for i, leaf in enumerate(TAX4.leaves)}))
    leaf_only = run("immse", None, ctx, n_pairs=50)
    assert torch.isnan(leaf_only.levels[..., 0]).all() and torch.isnan(leaf_only.nodes).all()
    # same seed, same pairs, float64: 1e-12 of the entropies' magnitude
    tol = 1e-12 * max(1.0, float(full.levels[..., 1].abs().max()))
    torch.testing.assert_close(leaf_only.levels[..., 1], full.levels[..., 1], rtol=0, atol=tol)
    assert leaf_only.denoiser_calls == 2 * 50 * 10


def test_immse_uses_trajectory_size_and_grid_when_context_has_none():
    ctx = context(TAX2, GMM2, None)
    out = run("immse", data_paths(GMM2, GRID2, 7), ctx, sigma_stride=5)
    assert out.levels.shape == (7, 8, 1) and torch.equal(out.sigmas, GRID2[::5])
    with pytest.raises(ProbesError, match="immse.*ctx.sigmas"):
        run("immse", None, ctx)


# ---- costs, chunking, registry, errors --------------------------------------------------------


def test_call_counts_are_per_sample_evaluation():
    ctx = context(TAX4, GMM4, GRID4[:10])
    traj = data_paths(GMM4, GRID4[:10], 8)
    out = run("rollout", traj, ctx, k=3, sigma_stride=3)  # grid points 0, 3, 6, 9
    assert out.denoiser_calls == 3 * 8 * (10 + 7 + 4 + 1)
    assert out.classifier_calls == 3 * 8 * 4
    out = run("rollout", traj, ctx, k=3, sigma_stride=3, steps=None, substeps=2)
    assert out.denoiser_calls == 3 * 8 * (19 + 13 + 7 + 1)
    out = run("rollout", traj, ctx, k=3, sigma_stride=3, steps=5)  # own grid: min(5, S - i) points
    assert out.denoiser_calls == 3 * 8 * (5 + 5 + 4 + 1)
    assert run("bayes", traj, ctx, sigma_stride=3).denoiser_calls == 4 * 8 * 9
    out = run("plugin", traj, ctx, sigma_stride=2)
    assert out.denoiser_calls == out.classifier_calls == 5 * 8


def test_internal_chunking_does_not_change_deterministic_estimates():
    grid = GRID4[::4]
    traj = data_paths(GMM4, grid, 10)
    big, small = context(TAX4, GMM4, grid), context(TAX4, GMM4, grid, batch_size=3)
    # the same arithmetic in other batches: 32 float32 units of the log-probabilities' magnitude
    # (float64 levels: 1e-12 of theirs)
    for name in ("plugin", "bayes"):
        ref = run(name, traj, small).log_probs
        tol = 32 * torch.finfo(torch.float32).eps * max(1.0, float(ref.abs().max()))
        torch.testing.assert_close(run(name, traj, big).log_probs, ref, rtol=0, atol=tol)
    ref = run("immse", None, small, n_pairs=10).levels
    tol = 1e-12 * max(1.0, float(ref.abs().max()))
    torch.testing.assert_close(run("immse", None, big, n_pairs=10).levels, ref, rtol=0, atol=tol)


def test_registry_and_options():
    assert set(ESTIMATORS) == {"exact", "plugin", "rollout", "bayes", "immse", "guided"}
    est = build_estimator("rollout", k=4, method="euler_maruyama", substeps=2, sigma_stride=3)
    assert (est.k, est.method, est.substeps, est.sigma_stride) == (4, "euler_maruyama", 2, 3)
    with pytest.raises(ProbesError, match="unknown estimator 'oracle'.*exact, plugin, rollout, bayes, immse, guided"):
        build_estimator("oracle")
    with pytest.raises(ProbesError, match="'rollout' has no option 'K'.*k, method, steps, rho, substeps, "
                                          "bias_correction, sigma_stride"):
        build_estimator("rollout", K=4)
    with pytest.raises(ProbesError, match="'plugin' has no option 'k'"):
        build_estimator("plugin", k=4)
    # with method=None, a deterministic run sampler falls back to ancestral completions
    ctx = context(TAX2, GMM2, GRID2[:5], sampler="euler")
    assert run("rollout", data_paths(GMM2, GRID2[:5], 3), ctx, k=2, method=None).log_probs.shape == (3, 5, 2)
    for bad in ({"sigma_stride": 0}, {"k": 0}, {"substeps": 1.5}):
        with pytest.raises(ProbesError):
            build_estimator("rollout", **bad)


@pytest.mark.parametrize("name, missing, options, match", [
    ("exact", "exact_model", {}, "'exact' needs ctx.exact_model"),
    ("plugin", "classifier", {}, "'plugin' needs ctx.classifier"),
    ("rollout", "classifier", {}, "'rollout' needs ctx.classifier"),
    ("rollout", None, {"method": "heun"}, "stochastic completion sampler"),
    ("rollout", None, {"method": "leapfrog"}, "unknown sampler 'leapfrog'"),
    ("bayes", "conditioner", {}, "'bayes' needs ctx.conditioner"),
    ("immse", "sample_pairs", {}, "'immse' needs ctx.sample_pairs"),
])
def test_missing_requirements_are_named(name, missing, options, match):
    ctx = context(TAX2, GMM2, GRID2[:5])
    if missing:
        ctx = ctx.replace(**{missing: None})
    with pytest.raises(ProbesError, match=match):
        run(name, data_paths(GMM2, GRID2[:5], 3), ctx, **options)


def test_estimators_need_recorded_states():
    ctx = context(TAX2, GMM2, GRID2[:5])
    traj = sample(GMM2.denoiser(), 45.0 * torch.randn(3, 4, dtype=torch.float64), GRID2[:5], "ancestral", record=False)
    with pytest.raises(ProbesError, match="record=True"):
        run("plugin", traj, ctx)
