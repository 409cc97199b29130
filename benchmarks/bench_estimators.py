"""Accuracy per unit compute of the posterior estimators, on Gaussian mixtures with exact answers.

For each model, N forward (data) paths on a geometric grid; every estimator runs on the same paths
and is scored against the exact posterior *on those paths* (mean level entropies over the paths,
compared point by point on the grid, all levels). ``immse`` draws its own N pairs, so it is scored
against a 20000-sample exact reference instead; the ``exact`` row shows that reference's distance
from the N-path exact curves, i.e. the Monte-Carlo floor at this N.

    .venv/bin/python benchmarks/bench_estimators.py [--paths 256] [--steps 40] [--seed 0]
    .venv/bin/python benchmarks/bench_estimators.py --digits-rollout [--paths 16]
    .venv/bin/python benchmarks/bench_estimators.py --leaf-conditional [--paths 4096]
    .venv/bin/python benchmarks/bench_estimators.py --partial [--paths 4096]
    .venv/bin/python benchmarks/bench_estimators.py --digits-partial [--paths 128]
    .venv/bin/python benchmarks/bench_estimators.py --rollout-accuracy [--paths 2048]

``--digits-rollout`` times ``rollout`` (k = 8, every 8th of 48 points, as ``recipes/digits.yaml``)
on the shipped digits model: completions on the run's grid tail without bias correction (the
former default) against completions on their own short grid with the jackknife.

``--partial`` is a taxonomy that covers part of the model's world: a 1-D mixture whose two leaves
(-1.5, +1.5; weight 0.3 each) share the model with two components outside the taxonomy (0 and 4.5;
0.2 each), std 0.5, sampled unconditionally. Each estimator is scored against quadrature of the
inside entropy ``H(Y | x_sigma, Y in T)`` and against the mean inside mass ``P(T) = 0.6``.
``--digits-partial`` reads the inside mass of the shipped digits model's unconditional samples
under a three-digit taxonomy (0, 8 | 1) with ``plugin`` and with ``bayes`` and each outside kernel.

``--rollout-accuracy`` prints rollout's error per level and k on two 4-leaf mixtures (the mean over
the paths of rollout minus ``exact`` on the same states, its worst grid point and that point's
standard error), as shipped and with exact completions (``x0`` drawn from the mixture's
``p(x0 | x_sigma)``: the jackknife's residual alone), and the jackknife's exact residual where the
clean classifier is certain (the completions' labels are then multinomial counts).
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import networkx as nx
import numpy as np
import torch

from probes.entropy.engine import tree_entropy
from probes.estimators import ProbeContext, build_estimator
from probes.models.gmm import GaussianMixture
from probes.noise import geometric_grid
from probes.sampling import Trajectory, forward_path
from probes.taxonomy.tree import Taxonomy

SETTINGS = [  # (label, estimator, options)
    ("exact", "exact", {}),
    ("plugin", "plugin", {}),
    ("rollout k=8 former", "rollout", {"k": 8, "steps": None, "method": "ancestral", "bias_correction": "none"}),
    ("rollout k=4", "rollout", {"k": 4}),
    ("rollout k=8", "rollout", {"k": 8}),
    ("rollout k=16", "rollout", {"k": 16}),
    ("rollout k=8 stride 4", "rollout", {"k": 8, "sigma_stride": 4}),
    ("bayes", "bayes", {}),
    ("immse n=N", "immse", {}),
    ("immse n=8N", "immse", {"n_pairs": None}),  # filled in with 8 * paths
]


def taxonomy(edges) -> Taxonomy:
    g = nx.DiGraph()
    g.add_edges_from(edges)
    return Taxonomy(g)


def models():
    two = taxonomy([("root", "minus"), ("root", "plus")])
    four = taxonomy([("root", "A"), ("root", "B"), ("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2")])
    return [
        ("2-class, d=16, |m|=2", two, GaussianMixture.two_class(16, mean_norm_sq_per_dim=0.25, std=1.0)),
        ("4-leaf hierarchy, d=16", four, GaussianMixture.hierarchical(four, 16, separations=[3.0, 1.5], std=1.0)),
    ]


def reference(tax, gmm, grid, n=20000, seed=12345):
    g = torch.Generator().manual_seed(seed)
    x0, _ = gmm.sample(n, g)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return tree_entropy(gmm.log_posterior_path(x0, noise, grid), tax, grid).level_mean()


def score(mean, truth, sigmas, grid):
    rows = [int(np.argmin(np.abs(grid.numpy() - s))) for s in np.asarray(sigmas)]
    err = np.abs(mean - truth[rows])
    return float(err.mean()), float(err.max())


def bench(label, tax, gmm, paths, steps, seed):
    grid = geometric_grid(20 * math.sqrt(gmm.largest_eigenvalue()), 0.02, steps)
    gen = torch.Generator().manual_seed(seed)
    x0, y = gmm.sample(paths, gen)
    traj = forward_path(x0, grid, gen, leaf=y)
    ctx = ProbeContext(tax, sigmas=grid, denoiser=gmm.denoiser(), conditioner=gmm.conditioner(tax),
                       classifier=gmm.classifier(), exact_model=gmm, sample_pairs=lambda n, g: gmm.sample(n, g))
    exact = build_estimator("exact").estimate(traj, ctx).curves(tax, prior=ctx.prior).level_mean()
    population = reference(tax, gmm, grid)
    print(f"\n### {label}: {paths} paths, {steps}-point grid {float(grid[0]):.3g} -> 0.02\n")
    print("| estimator | MAE (nats) | max err (nats) | denoiser calls | classifier calls | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, kind, options in SETTINGS:
        options = dict(options)
        if kind == "immse" and "n_pairs" in options:
            options["n_pairs"] = 8 * paths
        start = time.perf_counter()
        out = build_estimator(kind, **options).estimate(traj, ctx, torch.Generator().manual_seed(seed + 1))
        wall = time.perf_counter() - start
        mean = out.curves(tax, prior=ctx.prior).level_mean()
        truth = population if kind in ("immse", "exact") else exact
        mae, worst = score(mean, truth, out.sigmas, grid)
        print(f"| {name} | {mae:.4f} | {worst:.4f} | {out.denoiser_calls:,} | {out.classifier_calls:,} | {wall:.2f} |")


def digits_rollout(paths: int, seed: int) -> None:
    from probes.build import build
    from probes.plan import resolve
    from probes.recipe import load_recipe
    from probes.sampling import sample

    recipe = load_recipe("digits", overrides=["device=cpu"])
    parts = build(resolve(recipe))
    s = recipe.sampling
    grid = geometric_grid(s.sigma_max, s.sigma_min, s.steps)
    gen = torch.Generator().manual_seed(seed)
    traj = sample(parts.denoiser, torch.randn(paths, *parts.shape, generator=gen) * grid[0], grid, "ancestral",
                  generator=gen)
    ctx = ProbeContext(parts.taxonomy, sigmas=grid, denoiser=parts.denoiser, classifier=parts.classifier,
                       prior=parts.prior, sampler="ancestral")
    print(f"\n### rollout on the digits model: {paths} samples, k = 8, sigma_stride 8 of {s.steps}\n")
    print("| completions | denoiser calls / sample | wall (s) |")
    print("|---|---:|---:|")
    for label, options in [
        ("run-grid tail, ancestral, no correction (former default)",
         {"steps": None, "method": "ancestral", "bias_correction": "none"}),
        ("own 32-point grid, euler_maruyama, jackknife (default)", {}),
        ("own 16-point grid, euler_maruyama, jackknife", {"steps": 16}),
    ]:
        start = time.perf_counter()
        out = build_estimator("rollout", k=8, sigma_stride=8, **options).estimate(
            traj, ctx, torch.Generator().manual_seed(seed + 1))
        print(f"| {label} | {out.denoiser_calls // paths:,} | {time.perf_counter() - start:.2f} |")


def guided_and_prior(paths: int, seed: int) -> None:
    """Leaf-conditional runs on the 1-D mixture (classes at +-1.5, std 0.5, 64 ancestral steps):
    guidance 3 (the ``guided`` band against the unguided posterior read at the guided states) and a
    0.8 / 0.2 prior without guidance (``exact``/``bayes`` against quadrature of the weighted mixture)."""
    from scipy.special import logsumexp

    from probes.build import leaves_from_prior
    from probes.denoisers.base import GuidedDenoiser
    from probes.sampling import sample

    two = taxonomy([("root", "minus"), ("root", "plus")])
    grid = geometric_grid(30.0, 0.05, 64)
    print(f"\n### leaf-conditional 1-D mixture (+-1.5, std 0.5): {paths} samples, 64 ancestral steps\n")
    print("| case | estimator | result (nats) | denoiser calls | wall (s) |")
    print("|---|---|---|---:|---:|")
    for w, prior in ((3.0, (0.5, 0.5)), (1.0, (0.2, 0.8))):
        gmm = GaussianMixture.from_means(["minus", "plus"], torch.tensor([[-1.5], [1.5]], dtype=torch.float64), 0.5,
                                         weights=torch.tensor(prior, dtype=torch.float64))
        gen = torch.Generator().manual_seed(seed)
        leaf = leaves_from_prior(torch.arange(paths), gmm.weights)
        cond = gmm.conditioner(two)
        denoiser = GuidedDenoiser(gmm.denoiser(), w) if w != 1.0 else gmm.denoiser()
        traj = sample(denoiser, float(grid[0]) * torch.randn(paths, 1, generator=gen, dtype=torch.float64), grid,
                      "ancestral", cond=cond([two.leaves[i] for i in leaf.tolist()]), generator=gen, leaf=leaf)
        ctx = ProbeContext(two, sigmas=grid, denoiser=gmm.denoiser(), conditioner=cond, guided_denoiser=denoiser,
                           classifier=gmm.classifier(), exact_model=gmm, prior=gmm.weights)
        if w != 1.0:
            start = time.perf_counter()
            out = build_estimator("guided").estimate(traj, ctx, torch.Generator().manual_seed(seed + 1))
            wall = time.perf_counter() - start
            c = out.curves(two, prior=ctx.prior)
            lo, hi = (b[:, 0] for b in c.level_bounds())
            old = build_estimator("exact").estimate(traj, ctx).curves(two, prior=ctx.prior).level_mean()[:, 0]
            mid = c.level_mean()[:, 0]
            print(f"| guidance 3 | guided | band width max {np.max(hi - lo):.4f}, mean {np.mean(hi - lo):.4f} | "
                  f"{out.denoiser_calls:,} | {wall:.2f} |")
            print(f"| guidance 3 | exact (unguided posterior) | max above guided's point estimate "
                  f"{np.max(old - mid):.3f} (at sigma {float(grid[int(np.argmax(old - mid))]):.3g}) | 0 | |")
            continue
        truth = []
        for s_ in np.sqrt(0.25 + grid.numpy() ** 2):
            xs = np.linspace(-1.5 - 12 * s_, 1.5 + 12 * s_, 20001)
            lp = np.stack([np.log(p) - (xs - m) ** 2 / (2 * s_**2) for p, m in zip(prior, (-1.5, 1.5))])
            lp -= 0.5 * np.log(2 * np.pi * s_**2)
            lpx = logsumexp(lp, 0)
            lq = lp - lpx
            truth.append(np.trapezoid(np.exp(lpx) * -(np.exp(lq) * lq).sum(0), xs))
        for name in ("exact", "bayes"):
            start = time.perf_counter()
            out = build_estimator(name).estimate(traj, ctx)
            wall = time.perf_counter() - start
            err = np.abs(out.curves(two, prior=ctx.prior).level_mean()[:, 0] - np.array(truth))
            print(f"| prior 0.2 / 0.8 | {name} | max err {err.max():.4f}, MAE {err.mean():.4f} | "
                  f"{out.denoiser_calls:,} | {wall:.2f} |")


PARTIAL_MEANS = {"minus": -1.5, "plus": 1.5, "mid": 0.0, "far": 4.5}
PARTIAL_WEIGHTS = {"minus": 0.3, "plus": 0.3, "mid": 0.2, "far": 0.2}


def partial_taxonomy(paths: int, seed: int) -> None:
    from scipy.special import logsumexp

    from probes.sampling import sample

    two = taxonomy([("root", "minus"), ("root", "plus")])
    names = list(PARTIAL_MEANS)
    gmm = GaussianMixture.from_means(names, torch.tensor([[PARTIAL_MEANS[n]] for n in names], dtype=torch.float64),
                                     0.5, weights=torch.tensor([PARTIAL_WEIGHTS[n] for n in names]))
    inside = gmm.restricted(["minus", "plus"])
    grid = geometric_grid(20.0, 0.02, 64)
    gen = torch.Generator().manual_seed(seed)
    traj = sample(gmm.denoiser(), float(grid[0]) * torch.randn(paths, 1, generator=gen, dtype=torch.float64), grid,
                  "ancestral", generator=gen)
    ctx = ProbeContext(two, sigmas=grid, denoiser=gmm.denoiser(), conditioner=gmm.conditioner(two),
                       classifier=gmm.classifier(two.leaves), exact_model=gmm, prior=inside.weights,
                       sample_pairs=lambda n, g: inside.sample(n, g), partial_taxonomy=True,
                       outside_mass=1.0 - float(gmm.weights[gmm.component_index(two.leaves)].sum()))
    truth = []
    for s_ in np.sqrt(0.25 + grid.numpy() ** 2):
        xs = np.linspace(-1.5 - 12 * s_, 1.5 + 12 * s_, 20001)
        lp = np.stack([np.log(0.5) - (xs - m) ** 2 / (2 * s_**2) for m in (-1.5, 1.5)])
        lp -= 0.5 * np.log(2 * np.pi * s_**2)
        lpx = logsumexp(lp, 0)
        lq = lp - lpx
        truth.append(np.trapezoid(np.exp(lpx) * -(np.exp(lq) * lq).sum(0), xs))
    truth = np.array(truth)
    print(f"\n### partial taxonomy: 2 leaves of a 4-component 1-D mixture (P(T) = 0.6), {paths} unconditional "
          "samples, 64 ancestral steps\n")
    print("| estimator | entropy max err (nats) | entropy MAE | inside mass max err | denoiser calls | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    settings = [("exact", "exact", {}), ("plugin", "plugin", {}), ("rollout k=8", "rollout", {"k": 8}),
                ("bayes, exact outside kernel", "bayes", {}),
                ("bayes, complement of the unconditional model", "bayes", {"outside": "complement"}),
                ("bayes, unconditional stand-in", "bayes", {"outside": "unconditional"}),
                ("immse (reference D(x; root))", "immse", {})]
    for label, name, options in settings:
        start = time.perf_counter()
        out = build_estimator(name, **options).estimate(traj, ctx, torch.Generator().manual_seed(seed + 1))
        wall = time.perf_counter() - start
        c = out.curves(two, prior=ctx.prior)
        err = np.abs(c.level_mean()[:, 0] - truth[: len(c.sigmas)])
        mass = "" if c.inside is None else f"{np.abs(c.inside_mean() - 0.6).max():.4f}"
        print(f"| {label} | {err.max():.4f} | {err.mean():.4f} | {mass} | {out.denoiser_calls:,} | {wall:.2f} |")
    # what the former closed-world classifiers reported: renormalised over the leaves, plain means
    out = build_estimator("exact").estimate(traj, ctx)
    c = out.curves(two, prior=ctx.prior, inside_weighted=False)
    err = np.abs(c.level_mean()[:, 0] - truth)
    print(f"| exact, renormalised and unweighted (closed world) | {err.max():.4f} | {err.mean():.4f} | | 0 | |")


def digits_partial(paths: int, seed: int) -> None:
    from probes.build import build
    from probes.plan import resolve
    from probes.recipe import load_recipe
    from probes.sampling import sample

    parts = build(resolve(load_recipe("digits", overrides=["device=cpu"])))
    tax = taxonomy([("root", "round"), ("round", "0"), ("round", "8"), ("root", "straight"), ("straight", "1")])
    from probes.models import digits

    classifier = digits.load_digits_classifier(tax)
    grid = geometric_grid(20.0, 0.05, 24)
    gen = torch.Generator().manual_seed(seed)
    traj = sample(parts.denoiser, torch.randn(paths, *parts.shape, generator=gen) * grid[0], grid, "ancestral",
                  generator=gen)
    ctx = ProbeContext(tax, sigmas=grid, denoiser=parts.denoiser, classifier=classifier,
                       conditioner=digits.digits_conditioner(tax), partial_taxonomy=True,
                       outside_mass=1.0 - len(tax.leaves) / digits.NUM_DIGITS)
    shown = [0, 8, 12, 16, 20, 23]
    print(f"\n### inside mass on the digits model, taxonomy 0, 8 | 1 (30% of the training digits): {paths} "
          "unconditional samples, 24 ancestral steps\n")
    print("| estimator | " + " | ".join(f"sigma {float(grid[i]):.3g}" for i in shown) + " | wall (s) |")
    print("|---|" + "---:|" * (len(shown) + 1))
    for label, name, options in [("plugin", "plugin", {}), ("bayes, complement", "bayes", {"outside": "complement"}),
                                 ("bayes, unconditional stand-in", "bayes", {"outside": "unconditional"})]:
        start = time.perf_counter()
        out = build_estimator(name, **options).estimate(traj, ctx, torch.Generator().manual_seed(seed + 1))
        wall = time.perf_counter() - start
        mass = out.log_probs.double().exp().sum(-1).mean(0)
        print(f"| {label} | " + " | ".join(f"{float(mass[i]):.3f}" for i in shown) + f" | {wall:.1f} |")


class PosteriorDraw:
    """A "denoiser" that returns a draw of ``x0 ~ p(x0 | x_sigma)`` of a Gaussian mixture instead of
    its mean: completions from ``x_sigma`` in one exact step (leaf ``y ~ p(y | x)``, then
    ``x0 ~ N(m_y + c (x - m_y), c sigma^2)`` with ``c = s0^2 / (s0^2 + sigma^2)``)."""

    def __init__(self, gmm: GaussianMixture, generator: torch.Generator):
        self.gmm, self.generator = gmm, generator

    def __call__(self, x, sigma, cond=None):
        post = self.gmm.log_posterior(x, sigma).exp()
        y = torch.multinomial(post, 1, generator=self.generator)[:, 0]
        c = self.gmm.std**2 / (self.gmm.std**2 + sigma**2)
        mean = self.gmm.means[y] + c * (x - self.gmm.means[y])
        return mean + math.sqrt(c) * sigma * torch.randn(x.shape, generator=self.generator, dtype=x.dtype)


def rollout_with_exact_completions(k: int, traj, ctx, gmm, seed: int):
    """Rollout's jackknifed level entropies ``[N, S, D]`` with every completion an exact posterior draw:
    each grid point is handed to the estimator as a one-point trajectory, whose completion is the
    single final step ``x0 = D(x)``, here the draw."""
    gen = torch.Generator().manual_seed(seed)
    draw = ProbeContext(ctx.taxonomy, denoiser=PosteriorDraw(gmm, gen), classifier=ctx.classifier)
    est = build_estimator("rollout", k=k)
    levels = []
    for i in range(len(traj.sigmas)):
        point = Trajectory(sigmas=traj.sigmas[i:i + 1], states=traj.states[i:i + 1], denoised=None,
                           x0=traj.x0, method="forward")
        levels.append(est.estimate(point, draw, gen).levels)
    return torch.cat(levels, 1).numpy()


def jackknife_multinomial_bias(k: int, mu: np.ndarray) -> np.ndarray:
    """Exact bias of rollout's jackknifed entropy when every completion's classifier output is
    one-hot: the K labels are then i.i.d. draws from ``mu = p(. | x_sigma)`` and each leaf's count is
    Binomial(K, mu_y). The jackknife of the plug-in entropy of counts is a sum over leaves of
    ``psi(n_y) = K f_K(n) - (K - 1) [n/K f_{K-1}(n - 1) + (1 - n/K) f_{K-1}(n)]`` with
    ``f_m(n) = -(n/m) log(n/m)`` (leaving out one completion changes its own leaf's count only),
    so its expectation is ``sum_y E psi(n_y)``. ``mu`` ``[P, L]``; returns the bias ``[P]``."""
    from scipy.stats import binom

    def f(n, m):
        n = np.asarray(n, dtype=np.float64)
        return -np.where(n > 0, n / m * np.log(np.where(n > 0, n / m, 1.0)), 0.0)

    n = np.arange(k + 1)
    psi = k * f(n, k) - (k - 1) * (n / k * f(n - 1, k - 1) + (1 - n / k) * f(n, k - 1))
    pmf = binom.pmf(n[None, None, :], k, mu[..., None])  # [P, L, K + 1]
    return (pmf @ psi).sum(-1) - f(mu, 1).sum(-1)


def rollout_accuracy(paths: int, seed: int) -> None:
    """Rollout's error per level and k on 4-leaf mixtures, against ``exact`` on the same forward paths."""
    four = taxonomy([("root", "A"), ("root", "B"), ("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2")])
    cases = [
        ("4-leaf hierarchy, d=16, s0 = 1, separations 3.0 / 1.5 (the table above)",
         GaussianMixture.hierarchical(four, 16, separations=[3.0, 1.5], std=1.0)),
        ("recipes/gmm-hierarchy's mixture: d=8, s0 = 0.5, separations 6 / 2 (a near-certain clean classifier)",
         GaussianMixture.hierarchical(four, 8, separations=[6.0, 2.0], std=0.5, axis_aligned=True,
                                      share_level_axes=True)),
    ]
    for label, gmm in cases:
        grid = geometric_grid(20 * math.sqrt(gmm.largest_eigenvalue()), 0.02, 40)
        gen = torch.Generator().manual_seed(seed)
        x0, y = gmm.sample(paths, gen)
        traj = forward_path(x0, grid, gen, leaf=y)
        ctx = ProbeContext(four, sigmas=grid, denoiser=gmm.denoiser(), classifier=gmm.classifier(), exact_model=gmm)
        exact = build_estimator("exact").estimate(traj, ctx).curves(four, prior=ctx.prior).levels
        print(f"\n### rollout on the {label}: {paths} forward paths, 40-point grid {float(grid[0]):.3g} -> 0.02\n")
        print("Worst grid point of |mean(rollout - exact)| per level (its standard error; its sigma).\n")
        print("| k | completions | level 1 | level 2 | denoiser calls / path | wall (s) |")
        print("|---:|---|---|---|---:|---:|")
        rows = [(k, "shipped (euler_maruyama, 32 points, rho 2)") for k in (4, 8, 16, 32)]
        rows += [(k, "exact draws of x0 given x_sigma") for k in (8, 16)]
        for k, kind in rows:
            start = time.perf_counter()
            if kind.startswith("exact"):
                levels, calls = rollout_with_exact_completions(k, traj, ctx, gmm, seed + 1), 0
            else:
                out = build_estimator("rollout", k=k).estimate(traj, ctx, torch.Generator().manual_seed(seed + 1))
                levels, calls = out.levels.numpy(), out.denoiser_calls // paths
            wall = time.perf_counter() - start
            diff = levels - exact
            mean, se = diff.mean(0), diff.std(0, ddof=1) / math.sqrt(paths)
            cells = []
            for level in range(mean.shape[1]):
                i = int(np.argmax(np.abs(mean[:, level])))
                cells.append(f"{mean[i, level]:+.4f} ({se[i, level]:.4f}; sigma {float(grid[i]):.3g})")
            print(f"| {k} | {kind} | {' | '.join(cells)} | {calls:,} | {wall:.1f} |")
    print("\n### the jackknife's exact residual with a certain clean classifier (multinomial labels)\n")
    print("Bias of the jackknifed leaf entropy at a uniform posterior and its range over the posteriors "
          "on a 0.025 grid of the simplex.\n")
    print("| leaves | k | at the uniform posterior | min over posteriors | max over posteriors |")
    print("|---:|---:|---:|---:|---:|")
    ticks = np.linspace(0.0, 1.0, 41)
    for leaves in (2, 3, 4):
        corner = np.array([p for p in itertools.product(ticks, repeat=leaves - 1) if sum(p) <= 1 + 1e-12])
        simplex = np.concatenate([corner, np.clip(1 - corner.sum(1, keepdims=True), 0, None)], 1)
        for k in (4, 8, 12, 16, 32):
            bias = jackknife_multinomial_bias(k, simplex)
            uniform = float(jackknife_multinomial_bias(k, np.full((1, leaves), 1 / leaves))[0])
            print(f"| {leaves} | {k} | {uniform:+.4f} | {bias.min():+.4f} | {bias.max():+.4f} |")


# The single-setting modes: flag -> (what it runs, its default --paths, help).
MODES = {
    "digits_rollout": (digits_rollout, 16, "time rollout on the digits model"),
    "leaf_conditional": (guided_and_prior, 4096, "guided band and non-uniform prior on a 1-D mixture"),
    "partial": (partial_taxonomy, 4096, "a taxonomy covering part of a mixture's world"),
    "digits_partial": (digits_partial, 128, "inside mass on the digits model under a three-digit taxonomy"),
    "rollout_accuracy": (rollout_accuracy, 2048, "rollout's error per level and k on 4-leaf mixtures"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=None, help="samples (default 256, or the mode's)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    for flag, (_, paths, text) in MODES.items():
        parser.add_argument("--" + flag.replace("_", "-"), action="store_true",
                            help=f"{text} (default --paths {paths})")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors: extra threads only add contention
    for flag, (run, paths, _) in MODES.items():
        if getattr(args, flag):
            run(args.paths if args.paths is not None else paths, args.seed)
            return
    for label, tax, gmm in models():
        bench(label, tax, gmm, args.paths if args.paths is not None else 256, args.steps, args.seed)

if __name__ == "__main__":
    main()
