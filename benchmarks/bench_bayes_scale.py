"""Cost and accuracy of the tracked Bayes filter (``bayes`` with ``track``) against the full filter.

Two models:

* a Gaussian mixture of 256 leaves under a two-level taxonomy (16 groups of 16), d = 32, std 0.5,
  group means on a 16-vertex simplex at distance 8 from the origin and leaf means on a simplex at
  distance 3 around their group's (one set of axes per level, so the mixture is a product of the
  two levels), N forward (data) paths on a 128-point geometric grid from sigma 300 to 0.05. Errors
  are against the exact posterior on the same paths (``exact``) and against the full filter;
* the shipped digits model (10 leaves, the ``digits-shape`` taxonomy, a class-label UNet: no
  kernels for internal nodes, so the root is split straight into the digits) on the default
  recipe's grid (24 geometric points, sigma 20 to 0.05), N unconditional ancestral samples.
  Errors are against the full filter (the model has no exact posterior).

Each row: the estimator's denoiser calls (sample-evaluations), their share of the full filter's,
the largest error of the mean level entropies over the grid (per level, coarse to fine) and of
the mean node contributions, and the wall time (one torch thread).

    .venv/bin/python benchmarks/bench_bayes_scale.py [--paths 256] [--digits-paths 128] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import networkx as nx
import numpy as np
import torch

from probes.estimators import ProbeContext, build_estimator
from probes.models import digits
from probes.models.gmm import GaussianMixture
from probes.noise import geometric_grid
from probes.sampling import forward_path, sample
from probes.taxonomy import load_taxonomy
from probes.taxonomy.tree import Taxonomy

SETTINGS = [  # (label, options of bayes)
    ("full filter", {}),
    ("track 16", {"track": 16}),
    ("track 16, tail 1e-4", {"track": 16, "tail": 1e-4}),
    ("track 16, move 0.05", {"track": 16, "move": 0.05}),
    ("track 16, move 0 (a kernel every step)", {"track": 16, "move": 0.0}),
    ("track 8", {"track": 8}),
]


def two_level(groups: int = 16, per_group: int = 16) -> Taxonomy:
    g = nx.DiGraph()
    for i in range(groups):
        g.add_edge("root", f"g{i}")
        for k in range(per_group):
            g.add_edge(f"g{i}", f"g{i}_{k}")
    return Taxonomy(g)


def rows(traj, ctx, tax, reference, reference_label, settings):
    """Print one table row per setting; ``reference`` ``(levels, nodes)`` the curves errors are taken against."""
    full = None
    for label, options in settings:
        start = time.perf_counter()
        out = build_estimator("bayes", **options).estimate(traj, ctx)
        wall = time.perf_counter() - start
        curves = out.curves(tax, prior=ctx.prior)
        levels, nodes = curves.level_mean(), curves.node_mean()
        if full is None:
            full = (out.denoiser_calls, levels, nodes)
        err = np.abs(levels - reference[0]).max(0)
        err_full = np.abs(levels - full[1]).max(0)
        node_err = np.abs(nodes - reference[1]).max()
        print(f"| {label} | {out.denoiser_calls:,} | {100 * out.denoiser_calls / full[0]:.1f}% | "
              + " / ".join(f"{e:.4f}" for e in err) + f" | {node_err:.4f} | "
              + (" / ".join(f"{e:.4f}" for e in err_full) + " | " if reference_label != "full filter" else "")
              + f"{wall:.1f} |")


def mixture(paths: int, seed: int) -> None:
    tax = two_level()
    gmm = GaussianMixture.hierarchical(tax, dim=32, separations=[8.0, 3.0], std=0.5, axis_aligned=True,
                                       share_level_axes=True)
    grid = geometric_grid(300.0, 0.05, 128)
    gen = torch.Generator().manual_seed(seed)
    x0, y = gmm.sample(paths, gen)
    traj = forward_path(x0.float(), grid, gen, leaf=y)
    ctx = ProbeContext(tax, sigmas=grid, denoiser=gmm.denoiser(), conditioner=gmm.conditioner(tax), exact_model=gmm)
    exact = build_estimator("exact").estimate(traj, ctx).curves(tax, prior=ctx.prior)
    print(f"\n### 256 leaves (16 groups of 16), d = 32: {paths} forward paths, 128-point grid 300 -> 0.05\n")
    print("| bayes | denoiser calls | of full | max err vs exact, group / leaf (nats) | nodes vs exact | "
          "max err vs full, group / leaf | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows(traj, ctx, tax, (exact.level_mean(), exact.node_mean()), "exact", SETTINGS)


def digits_model(paths: int, seed: int) -> None:
    tax = load_taxonomy("digits-shape")
    denoiser = digits.load_digits_denoiser()
    grid = geometric_grid(20.0, 0.05, 24)
    gen = torch.Generator().manual_seed(seed)
    traj = sample(denoiser, torch.randn(paths, 1, 8, 8, generator=gen) * grid[0], grid, "ancestral", generator=gen)
    ctx = ProbeContext(tax, sigmas=grid, denoiser=denoiser, conditioner=digits.digits_conditioner(tax))
    full = build_estimator("bayes").estimate(traj, ctx).curves(tax, prior=ctx.prior)
    print(f"\n### digits model, digits-shape taxonomy (10 leaves, 3 levels): {paths} unconditional samples, "
          "24 ancestral steps 20 -> 0.05\n")
    print("| bayes | denoiser calls | of full | max err vs full, level 1 / 2 / 3 (nats) | nodes vs full | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    settings = [s for s in SETTINGS if s[1].get("track", 16) == 16]
    rows(traj, ctx, tax, (full.level_mean(), full.node_mean()), "full filter", settings)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=256, help="forward paths of the 256-leaf mixture")
    parser.add_argument("--digits-paths", type=int, default=128, help="samples of the digits model (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors; a second thread only adds contention on a shared machine
    mixture(args.paths, args.seed)
    if args.digits_paths:
        digits_model(args.digits_paths, args.seed)


if __name__ == "__main__":
    main()
