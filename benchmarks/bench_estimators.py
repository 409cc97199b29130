"""Accuracy per unit compute of the posterior estimators, on Gaussian mixtures with exact answers.

For each model, N forward (data) paths on a geometric grid; every estimator runs on the same paths
and is scored against the exact posterior *on those paths* (mean level entropies over the paths,
compared point by point on the grid, all levels). ``immse`` draws its own N pairs, so it is scored
against a 20000-sample exact reference instead; the ``exact`` row shows that reference's distance
from the N-path exact curves, i.e. the Monte-Carlo floor at this N.

    .venv/bin/python benchmarks/bench_estimators.py [--paths 256] [--steps 40] [--seed 0]
    .venv/bin/python benchmarks/bench_estimators.py --digits-rollout [--paths 16]

``--digits-rollout`` times ``rollout`` (k = 8, every 8th of 48 points, as ``recipes/digits.yaml``)
on the shipped digits model: completions on the run's grid tail without bias correction (the
former default) against completions on their own short grid with the jackknife.
"""

from __future__ import annotations

import argparse
import math
import time

import networkx as nx
import numpy as np
import torch

from probes.entropy.engine import tree_entropy
from probes.estimators import ProbeContext, build_estimator
from probes.models.gmm import GaussianMixture
from probes.noise import geometric_grid
from probes.sampling import forward_path
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
    from pathlib import Path

    from probes.components import build_components
    from probes.recipe import load_recipe
    from probes.sampling import sample

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "digits.yaml")
    recipe.device = "cpu"
    parts = build_components(recipe)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digits-rollout", action="store_true", help="time rollout on the digits model")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors: extra threads only add contention
    if args.digits_rollout:
        digits_rollout(args.paths, args.seed)
        return
    for label, tax, gmm in models():
        bench(label, tax, gmm, args.paths, args.steps, args.seed)


if __name__ == "__main__":
    main()
