"""How long the ImageNet-1k taxonomy takes: WordNet load, tree build, and common operations.

    python benchmarks/bench_taxonomy.py [--repeats 3]

WordNet loading (nltk reading its index files) is timed apart from building the tree, since it
happens once per process. Build times are over ``--repeats`` runs with the cache cleared; the first run also parses the
synsets from WordNet's data file, later runs find them in nltk's cache.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes.taxonomy import read_taxonomy, write_taxonomy
from probes.taxonomy import wordnet as wordnet_module
from probes.taxonomy.wordnet_data import ensure_wordnet


def timed(fn, repeats=1, setup=None):
    times, result = [], None
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []

    def row(step, times, note=""):
        rows.append((step, times[0], min(times), statistics.median(times), len(times), note))

    _, t = timed(ensure_wordnet)
    row("WordNet load (nltk, first use)", t, "once per process")
    wnids, t = timed(wordnet_module.imagenet_wnids, args.repeats)
    row("ImageNet-1k wnid list", t, f"{len(wnids)} wnids")
    tax, t = timed(wordnet_module.imagenet_taxonomy, args.repeats, setup=wordnet_module._build.cache_clear)
    row("tree build, chains collapsed", t,
        f"{len(tax.leaves)} leaves, {len(tax.internal_nodes)} internal, depth {tax.max_depth}")
    full, t = timed(lambda: wordnet_module.imagenet_taxonomy(keep_chains=True), args.repeats,
                    setup=wordnet_module._build.cache_clear)
    row("tree build, chains kept", t, f"{len(full.internal_nodes)} internal, depth {full.max_depth}")
    _, t = timed(wordnet_module.imagenet_taxonomy, args.repeats)
    row("tree build, cached (a copy)", t)
    _, t = timed(lambda: [tax.level_cut(level) for level in range(1, tax.max_depth + 1)], args.repeats)
    row("all level cuts", t, f"{tax.max_depth} levels")
    _, t = timed(lambda: [tax.leaves_under(n) for n in tax.internal_nodes], args.repeats)
    row("leaves_under every internal node", t)
    _, t = timed(lambda: tax.restrict(tax.leaves[::10]), args.repeats)
    row("restrict to 100 leaves", t)
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, suffix in (("json", "json"), ("graphml", "graphml"), ("newick", "nwk")):
            path = Path(tmp) / f"imagenet.{suffix}"
            _, tw = timed(lambda path=path, fmt=fmt: write_taxonomy(tax, path, fmt), args.repeats)
            _, tr = timed(lambda path=path, fmt=fmt: read_taxonomy(path, fmt), args.repeats)
            row(f"write {fmt}", tw, f"{path.stat().st_size / 1024:.0f} KiB")
            row(f"read {fmt}", tr)

    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  {'first s':>8}  {'best s':>8}  {'median s':>8}  runs  note")
    for step, first, best, median, runs, note in rows:
        print(f"{step:<{width}}  {first:8.3f}  {best:8.3f}  {median:8.3f}  {runs:4d}  {note}")


if __name__ == "__main__":
    main()
