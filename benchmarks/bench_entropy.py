"""Throughput of the entropy engine and the decision step on an ImageNet-size taxonomy.

    python benchmarks/bench_entropy.py [--samples 512] [--sigmas 64] [--threads 2]

Uses the ImageNet-1k WordNet tree (``wordnet:imagenet-1k``) when it can be built here, otherwise a
synthetic 1000-leaf tree of depth ~10 (said so in the output). Reports leaf-probabilities processed
per second (samples x sigmas x leaves / time) for ``tree_entropy`` and the time of ``decide``.

Threads: the default is one torch thread. On a machine whose cores are busy with other work,
multi-threaded torch ops wait on each other at every operation (each op then costs a scheduler time
slice); pass ``--threads 2`` (or more) on an idle machine.
"""

from __future__ import annotations

import argparse
import itertools
import random
import time

import networkx as nx
import torch

from probes.entropy import decide, tree_entropy
from probes.noise import geometric_grid


def synthetic_tree(n_leaves: int = 1000, max_depth: int = 10, seed: int = 0):
    """A random tree: leaf ranges split recursively into 2-6 parts until depth ``max_depth``."""
    from probes.taxonomy.tree import Taxonomy

    rng = random.Random(seed)
    g = nx.DiGraph()
    g.add_node("n0")
    counter = [0]

    def split(node, lo, hi, depth):
        if hi - lo == 1:
            return
        if depth == max_depth:
            parts = [(i, i + 1) for i in range(lo, hi)]
        else:
            k = min(hi - lo, rng.randint(2, 6))
            cuts = sorted(rng.sample(range(lo + 1, hi), k - 1))
            bounds = [lo, *cuts, hi]
            parts = list(itertools.pairwise(bounds))
        for a, b in parts:
            if b - a == 1:
                child = f"leaf{a}"
            else:
                counter[0] += 1
                child = f"n{counter[0]}"
            g.add_edge(node, child)
            split(child, a, b, depth + 1)

    split("n0", 0, n_leaves, 0)
    return Taxonomy(g, name=f"synthetic-{n_leaves}")


def load_tree():
    try:
        from probes.taxonomy import load_taxonomy

        return load_taxonomy("wordnet:imagenet-1k"), "wordnet:imagenet-1k"
    except Exception as exc:
        return synthetic_tree(), f"synthetic 1000-leaf tree (wordnet:imagenet-1k unavailable: {exc})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--sigmas", type=int, default=64)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    tax, source = load_tree()
    t_tree = time.perf_counter() - t0
    L = len(tax.leaves)
    fan = max(len(tax.children(n)) for n in tax.internal_nodes)
    print(f"taxonomy: {source}")
    print(f"  {L} leaves, {len(tax.internal_nodes)} internal nodes, depth {tax.max_depth}, "
          f"max fan-out {fan} (built in {t_tree:.1f} s)")

    g = torch.Generator().manual_seed(0)
    N, S = args.samples, args.sigmas
    sigmas = geometric_grid(80.0, 0.002, S)
    scale = (3.0 / sigmas.float()).clamp(max=30)[None, :, None]
    log_probs = torch.log_softmax(torch.randn(N, S, L, generator=g) * scale, dim=-1)  # float32

    tree_entropy(log_probs[:2], tax, sigmas)  # warm-up (index construction, allocator)
    t0 = time.perf_counter()
    curves = tree_entropy(log_probs, tax, sigmas)
    t_entropy = time.perf_counter() - t0
    err = abs(curves.nodes.sum(-1) - curves.levels[..., -1]).max()

    t0 = time.perf_counter()
    decisions = decide(curves, n_boot=args.boot, seed=0)
    t_decide = time.perf_counter() - t0
    decided = sum(d is not None for d in decisions["nodes"].values())

    print(f"tree_entropy: {N} samples x {S} sigmas x {L} leaves in {t_entropy:.2f} s "
          f"= {N * S * L / t_entropy:.3g} leaf-probabilities/s ({N * S / t_entropy:.3g} posteriors/s); "
          f"chain-rule residual {err:.1e} nats")
    print(f"decide: {len(curves.node_names)} nodes + {len(curves.level_names)} levels, "
          f"{args.boot} bootstrap resamples in {t_decide:.2f} s ({decided} nodes decided)")
    print(f"total: {t_entropy + t_decide:.2f} s on {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
