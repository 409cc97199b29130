"""The entropy of a guided run's own process: the ``guided`` estimator's band against exact density
propagation of the guided chain on an x-grid (written here, independently of the toolkit)."""

import math

import networkx as nx
import numpy as np
import pytest
import torch

from probes.denoisers.base import GuidedDenoiser
from probes.errors import ProbesError
from probes.estimators import ProbeContext, build_estimator
from probes.models.gmm import GaussianMixture
from probes.noise import geometric_grid
from probes.sampling import sample
from probes.taxonomy.tree import Taxonomy

M, S0, W, STEPS = 1.5, 0.5, 3.0, 64
GRID = geometric_grid(30.0, 0.01, STEPS)
N_SAMPLES = 8192


def exact_guided_entropy(sigmas, m=M, s0=S0, w=W, floor=0.05, res=0.5, cap=601):
    """H_w(Y | x_i) at every state of the guided ancestral chain with sigma_i >= floor (two
    equiprobable classes at +-m, within-class std s0), NaN below the floor.

    Each class's density of x_i lives on a uniform grid over +-(3 + 8 sigma_i) with spacing ``res``
    times the next kernel's std (at most ``cap`` points), carried through the chain's Gaussian
    kernel N(a x + (1 - a) D_w(x; s, y), (1 - a) t^2) by a Riemann sum, which converges spectrally
    for these smooth integrands: spacings of 0.5, 0.3 and 0.1 kernel stds (601 / 1001 / 2001 point
    caps) agree to 2e-10 nats. The chain starts from N(0, sigma_0^2), like the sampler."""
    sig = np.asarray(sigmas, dtype=np.float64)
    means = np.array([-m, m])

    def d_w(x, s, y):
        var = s0**2 + s**2
        d_class = (s0**2 * x[:, None] + s**2 * means[None, :]) / var  # [n, 2] per-class denoisers
        logp = -(x[:, None] - means[None, :]) ** 2 / (2 * var)
        post = np.exp(logp - logp.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)
        d_u = (post * d_class).sum(1)
        return d_u + w * (d_class[:, y] - d_u)

    def grid_for(i):
        t = sig[i + 1] if i + 1 < len(sig) else sig[i]
        std = math.sqrt(1 - t**2 / sig[i] ** 2) * t if i + 1 < len(sig) else t
        r = 3 + 8 * sig[i]
        return np.linspace(-r, r, int(min(cap, max(201, 2 * r / (res * std)))))

    out = np.full(len(sig), np.nan)
    grid = grid_for(0)
    dens = [np.exp(-grid**2 / (2 * sig[0] ** 2)) / math.sqrt(2 * math.pi * sig[0] ** 2)] * 2
    for i in range(len(sig)):
        if sig[i] < floor:
            break
        dx = grid[1] - grid[0]
        joint = 0.5 * np.stack(dens)  # [2, n] p(y) p(x | y)
        px = joint.sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(px > 0, joint / px, 0.5)
            h = -(np.where(q > 0, q * np.log(q), 0.0)).sum(0)
        out[i] = float((px * h).sum() * dx)
        if i + 1 == len(sig):
            break
        s, t = sig[i], sig[i + 1]
        a, var = t**2 / s**2, (1 - t**2 / s**2) * t**2
        new = grid_for(i + 1)
        dens = [
            (np.exp(-(new[:, None] - (a * grid + (1 - a) * d_w(grid, s, y))[None, :]) ** 2 / (2 * var))
             / math.sqrt(2 * math.pi * var)) @ dens[y] * dx
            for y in (0, 1)
        ]
        grid = new
    return out


@pytest.fixture(scope="module")
def guided_run():
    g = nx.DiGraph([("root", "minus"), ("root", "plus")])
    tax = Taxonomy(g)
    gmm = GaussianMixture.from_means(["minus", "plus"], torch.tensor([[-M], [M]], dtype=torch.float64), S0)
    guided = GuidedDenoiser(gmm.denoiser(), W)
    cond = gmm.conditioner(tax)
    gen = torch.Generator().manual_seed(0)
    leaf = torch.arange(N_SAMPLES) % 2
    noise = float(GRID[0]) * torch.randn(N_SAMPLES, 1, generator=gen, dtype=torch.float64)
    traj = sample(guided, noise, GRID, "ancestral", cond=cond([tax.leaves[i] for i in leaf.tolist()]),
                  generator=gen, leaf=leaf)
    ctx = ProbeContext(tax, sigmas=GRID, denoiser=gmm.denoiser(), conditioner=cond, guided_denoiser=guided,
                       classifier=gmm.classifier(), exact_model=gmm)
    return tax, gmm, ctx, traj


@pytest.mark.slow
def test_guided_band_contains_the_exact_entropy(guided_run):
    """Both bounds' means within 0.01 nats of the exact H_w(Y | x_sigma) (plus 3 Monte-Carlo standard
    errors of the 8192-sample mean, <= 0.005 here) at every grid point; the point estimate their
    middle; the reported band (each mean widened for its sampling error) holding the truth; and the
    old quantity (the unguided posterior read at guided states) far off."""
    tax, _gmm, ctx, traj = guided_run
    truth = exact_guided_entropy(GRID.numpy())
    keep = np.isfinite(truth)  # sigma >= 0.05, where the grid propagation is resolved
    out = build_estimator("guided").estimate(traj, ctx, torch.Generator().manual_seed(1))
    curves = out.curves(tax, prior=ctx.prior)
    lo, hi = (curves.bounds[key][:, keep, 0].mean(0) for key in ("levels_lo", "levels_hi"))
    point = curves.level_mean()[keep, 0]
    se_lo = curves.bounds["levels_lo"][:, keep, 0].std(0) / math.sqrt(N_SAMPLES)
    se_hi = curves.bounds["levels_hi"][:, keep, 0].std(0) / math.sqrt(N_SAMPLES)
    truth = truth[keep]
    print("\nsigma, truth, lo, hi:", np.round(np.c_[GRID.numpy()[keep], truth, lo, hi][::6], 3).tolist())
    assert np.all(lo - truth <= 0.01 + 3 * se_lo)  # a lower bound (up to noise)
    assert np.all(truth - hi <= 0.01 + 3 * se_hi)  # an upper bound (up to noise)
    assert np.abs(lo - truth).max() < 0.01 + 3 * se_lo.max()
    assert np.abs(hi - truth).max() < 0.01 + 3 * se_hi.max()
    assert np.allclose(point, 0.5 * (lo + hi))  # the point estimate is the middle of the two means
    band_lo, band_hi = (b[keep, 0] for b in curves.level_bounds())
    assert np.all(band_lo <= truth + 1e-9) and np.all(truth <= band_hi + 1e-9)  # the oracle: 2e-10
    old = build_estimator("exact").estimate(traj, ctx).curves(tax, prior=ctx.prior).level_mean()[keep, 0]
    print(f"\nmax |lo - truth| {np.abs(lo - truth).max():.4f}, max |hi - truth| {np.abs(hi - truth).max():.4f}, "
          f"max (old - truth) {(old - truth).max():.3f}")
    assert (old - truth).max() > 0.25  # the unguided posterior at guided states: not H_w


def test_guided_needs_labels_and_ancestral_paths(guided_run):
    _tax, gmm, ctx, _traj = guided_run
    est = build_estimator("guided")
    unlabelled = sample(gmm.denoiser(), torch.zeros(4, 1, dtype=torch.float64) + 1.0, GRID[:5], "ancestral")
    with pytest.raises(ProbesError, match="needs the conditioning leaf of every sample"):
        est.estimate(unlabelled, ctx)
    with pytest.raises(ProbesError, match="reference must be one of"):
        build_estimator("guided", reference="oracle")


def _recipe(tmp_path, **sampling):
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    r = {"name": "guided", "seed": 0, "taxonomy": str(root / "taxonomies" / "gmm-two-class.yaml"),
         "model": {"kind": "gmm", "std": S0, "means": {"minus": [-M], "plus": [M]}},
         "classifier": {"kind": "exact"},
         "sampling": {"samples": 256, "batch_size": 256, "steps": 32, "sigma_max": 30.0, "sigma_min": 0.05,
                      "method": "ancestral", "condition": "leaf", "guidance": {"scale": W}, **sampling},
         "estimators": ["exact", "guided"], "analysis": {"n_boot": 0, "primary": "guided"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def test_guided_run_reports_the_band_and_renames_the_old_quantity(tmp_path):
    import csv

    import probes.runner as runner

    runner.run(_recipe(tmp_path), tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "curves.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["estimator"] for r in rows} == {"guided", "exact:unguided_posterior"}
    band = [r for r in rows if r["estimator"] == "guided" and r["kind"] == "level"]
    assert band and all(r["entropy_lo"] != "" and r["entropy_hi"] != "" for r in band)
    for r in band:  # the point estimate lies in the band
        assert float(r["entropy_lo"]) <= float(r["entropy"]) <= float(r["entropy_hi"])
    assert all(r["entropy_lo"] == "" for r in rows if r["estimator"] != "guided")


def test_guided_estimator_without_labels_is_one_error_before_any_work(tmp_path):
    import probes.runner as runner

    with pytest.raises(ProbesError, match="'guided' scores each sample's conditioning leaf; "
                                          "it needs sampling.condition: leaf"):
        runner.run(_recipe(tmp_path, condition="none", guidance={"scale": 1.0}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_expected_cross_entropy_terms_follow_the_chain_rule():
    """With a one-hot posterior (the path reveals y) the terms are those y scores: -log q(y) splits
    along y's path into the node terms, and a level's term is -log q(cell). With any posterior p
    they are its averages over y, and each exceeds p's own entropy term by a KL divergence."""
    from probes.entropy.engine import tree_entropy
    from probes.estimators.guided import expected_cross_entropy_terms

    g = nx.DiGraph([("root", "A"), ("root", "B"), ("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2"), ("B", "b3")])
    tax = Taxonomy(g)
    gen = torch.Generator().manual_seed(0)
    log_q = torch.log_softmax(torch.randn(6, 3, 5, generator=gen, dtype=torch.float64), -1)
    leaf = torch.tensor([0, 1, 2, 3, 4, 2])
    one_hot = torch.log(torch.nn.functional.one_hot(leaf, 5).double())[:, None, :].expand(6, 3, 5)
    levels, nodes = expected_cross_entropy_terms(log_q, one_hot, tax)
    truth_leaf = -log_q.gather(-1, leaf[:, None, None].expand(6, 3, 1))[..., 0]
    # float64 log-sum-exps: 1e-12 of the terms' magnitude
    tol = 1e-12 * max(1.0, float(truth_leaf.abs().max()))
    torch.testing.assert_close(levels[..., -1], truth_leaf, rtol=0, atol=tol)
    torch.testing.assert_close(nodes.sum(-1), truth_leaf, rtol=0, atol=tol)  # chain rule, exactly
    in_a = leaf < 2
    mass_a = log_q[..., :2].logsumexp(-1)
    truth_level1 = torch.where(in_a[:, None], -mass_a, -torch.log1p(-mass_a.exp()))
    torch.testing.assert_close(levels[..., 0], truth_level1, rtol=0, atol=tol)
    assert (nodes[in_a][..., tax.internal_nodes.index("B")] == 0).all()  # y outside B: no B term
    # a spread posterior: the average of the one-hot terms over y, and above p's own entropies
    log_p = torch.log_softmax(torch.randn(6, 3, 5, generator=gen, dtype=torch.float64), -1)
    levels, nodes = expected_cross_entropy_terms(log_q, log_p, tax)
    per_leaf = [expected_cross_entropy_terms(log_q, torch.log(torch.nn.functional.one_hot(
        torch.full((6,), y), 5).double())[:, None, :].expand(6, 3, 5), tax) for y in range(5)]
    weights = log_p.exp().permute(2, 0, 1)[..., None]  # [L, B, S, 1]
    torch.testing.assert_close(levels, (weights * torch.stack([t[0] for t in per_leaf])).sum(0))
    torch.testing.assert_close(nodes, (weights * torch.stack([t[1] for t in per_leaf])).sum(0))
    own = tree_entropy(log_p, tax, torch.arange(3, 0, -1, dtype=torch.float64))
    assert (levels.numpy() >= own.levels - 1e-12).all() and (nodes.numpy() >= own.nodes - 1e-12).all()
