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
    .venv/bin/python benchmarks/bench_bayes_scale.py --evidence [--digits-paths 128]

``--evidence`` measures the evidence maps (``bayes`` with ``evidence``, ``docs/evidence.md``): for
each internal node, how far the spatial sum of its map is from the filter's log-odds of the child
the sample ends in (zero for two leaf children; a first-order split for groups), on the digits
model and on a mixture of 8 x 8 images over the digits-shape tree whose levels overlap in the
whole image (so no level's evidence is separate); and the cost in time and memory of the maps on
the digits model next to a run without them.
"""

from __future__ import annotations

import argparse
import time

import networkx as nx
import numpy as np
import torch

from probes.estimators import ProbeContext, build_estimator
from probes.estimators.bayes import filter_log_posterior
from probes.estimators.evidence import EvidenceRecorder
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
DIGITS_SETTINGS = [s for s in SETTINGS if s[1].get("track", 16) == 16] + [
    ("track 16, tail 1e-4, move 0", {"track": 16, "tail": 1e-4, "move": 0.0}),
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
    rows(traj, ctx, tax, (full.level_mean(), full.node_mean()), "full filter", DIGITS_SETTINGS)


def log_odds_gap(log_probs, ev, tax):
    """Per internal node: (samples on the node's path, median and largest |gap| / |log-odds| at the last
    sigma, largest |gap| over the grid in nats), gap = spatial sum of the map - the filter's log-odds
    change of the final child against its siblings."""
    lp = log_probs.double()
    table = {}
    for node in tax.internal_nodes:
        maps = ev.maps[node].double()
        mine = ~maps[:, 0, 0, 0].isnan()
        span = tax.leaf_slice(node)
        odds = []
        for row, c in zip(lp[mine], ev.child[node][mine].tolist()):
            inside = torch.zeros(lp.shape[-1], dtype=torch.bool)
            inside[tax.leaf_slice(tax.children(node)[c])] = True
            rest = torch.zeros_like(inside)
            rest[span] = True
            odds.append(row[:, inside].logsumexp(-1) - row[:, rest & ~inside].logsumexp(-1))
        odds = torch.stack(odds)
        odds = odds - odds[:, :1]
        gap = maps[mine].sum((2, 3)) - odds
        rel = gap[:, -1].abs() / odds[:, -1].abs().clamp(min=1e-12)
        table[node] = (int(mine.sum()), float(rel.median()), float(rel.max()), float(gap.abs().max()))
    return table


def gap_tables(label, traj, ctx, tax):
    """The log-odds gap of the maps with the exact split (the estimator's) and with the first-order one."""
    idx = list(range(len(traj.sigmas)))
    rows = {}
    for split in ("exact", "before"):
        recorder = EvidenceRecorder(tax, traj.states.shape[2:], idx, traj.sigmas, traj.states.shape[1], split=split)
        log_probs = filter_log_posterior(traj, ctx.cond_denoiser, ctx.conditioner, ctx, idx, "bayes",
                                         recorder=recorder)
        rows[split] = log_odds_gap(log_probs, recorder.result(), tax)
    print(f"\n#### spatial sum of the map against the node's log-odds: {label}\n")
    print("| node | children | samples | exact split: max rel. gap | max abs. gap (nats) | first-order split: "
          "median rel. gap (last sigma) | max rel. gap | max abs. gap (nats) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for node in tax.internal_nodes:
        n, _, worst, gap = rows["exact"][node]
        _, med_b, worst_b, gap_b = rows["before"][node]
        print(f"| {node} | {', '.join(tax.children(node))} | {n} | {worst:.1e} | {gap:.1e} | {med_b:.4f} | "
              f"{worst_b:.4f} | {gap_b:.3f} |")


def evidence(paths: int, seed: int) -> None:
    tax = load_taxonomy("digits-shape")
    grid = geometric_grid(20.0, 0.05, 24)
    gen = torch.Generator().manual_seed(seed)
    denoiser = digits.load_digits_denoiser()
    traj = sample(denoiser, torch.randn(paths, 1, 8, 8, generator=gen) * grid[0], grid, "ancestral", generator=gen)
    ctx = ProbeContext(tax, sigmas=grid, denoiser=denoiser, conditioner=digits.digits_conditioner(tax))
    walls = {}
    for flag in (False, True, False, True):  # twice each, interleaved: the machine's load moves
        start = time.perf_counter()
        out = build_estimator("bayes", evidence=flag).estimate(traj, ctx)
        walls.setdefault(flag, []).append(time.perf_counter() - start)
    ev = out.evidence
    print(f"\n### evidence maps on the digits model: {paths} unconditional samples, 24 ancestral steps, "
          "final leaf = argmax of the last posterior\n")
    print("| bayes | wall (s), best of 2 | map memory | per sample, node and sigma |")
    print("|---|---:|---:|---:|")
    print(f"| without maps | {min(walls[False]):.1f} | | |")
    print(f"| with maps | {min(walls[True]):.1f} | {ev.nbytes / 2**20:.2f} MiB ({len(ev.maps)} nodes x "
          f"{len(ev.sigmas)} sigmas) | {4 * 8 * 8} bytes (float32, 8 x 8) |")
    gap_tables(f"digits model, {paths} samples, 24 steps", traj, ctx, tax)
    whole = torch.ones(8, 8, dtype=torch.bool)
    gmm = GaussianMixture.on_regions(tax, [1, 8, 8], [whole] * 3, [4.0, 2.0, 1.0], std=0.5, seed=seed)
    mgrid = geometric_grid(60.0, 0.02, 64)
    x0, y = gmm.sample(paths, gen)
    mtraj = forward_path(x0.float().reshape(paths, 1, 8, 8), mgrid, gen, leaf=y)
    mctx = ProbeContext(tax, sigmas=mgrid, denoiser=gmm.denoiser(), conditioner=gmm.conditioner(tax))
    gap_tables(f"mixture of 8 x 8 images on the same tree (separations 4, 2, 1; std 0.5; levels overlapping), "
               f"{paths} data paths, 64 steps", mtraj, mctx, tax)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=256, help="forward paths of the 256-leaf mixture (0: skip)")
    parser.add_argument("--digits-paths", type=int, default=128, help="samples of the digits model (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evidence", action="store_true", help="measure the evidence maps instead")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors; a second thread only adds contention on a shared machine
    if args.evidence:
        evidence(args.digits_paths or 128, args.seed)
        return
    if args.paths:
        mixture(args.paths, args.seed)
    if args.digits_paths:
        digits_model(args.digits_paths, args.seed)


if __name__ == "__main__":
    main()
