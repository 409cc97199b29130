"""The README's main job: its wall time, and whether its decisions agree with a high-sample
``bayes`` reference of the same model.

    python benchmarks/bench_default_run.py [--reference-samples 2048] [--keep DIR] [--set KEY=VALUE ...]

Runs ``probes run digits`` (the shipped default recipe) in a subprocess under ``/usr/bin/time -v``
when available (wall time, peak memory), then the same recipe with only ``bayes`` and
``--reference-samples`` samples. For every internal node it prints both decision sigmas and
bootstrap intervals and whether each decision lies inside the other's interval, and whether the
nodes come in the same order. Agreement is what "the default run is fast enough" has to keep.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], out: Path) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "probes.cli", "run", *args, "--out", str(out), "--overwrite", "--quiet"]
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    t0 = time.perf_counter()
    proc = subprocess.run(timer + cmd, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench_default_run: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return wall, f"{int(peak.group(1)) / 1024:.0f} MB" if peak else "n/a"


def decisions(out: Path, estimator: str) -> dict:
    nodes = json.loads((out / "run.json").read_text())["decisions"][estimator]["nodes"]
    return {n: d for n, d in nodes.items() if d and d.get("decision_sigma")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="digits")
    p.add_argument("--reference-samples", type=int, default=2048)
    p.add_argument("--keep", help="keep both run directories under this folder")
    p.add_argument("--reference", help="reuse this finished reference run directory instead of running one")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override for both runs (e.g. sampling.steps=32), repeatable")
    args = p.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp())
    overrides = [a for kv in args.set for a in ("--set", kv)]
    wall, peak = run([args.recipe, *overrides], base / "default")
    state = json.loads((base / "default" / "run.json").read_text())
    print(f"default run ({args.recipe}): {wall:.1f} s wall, peak memory {peak}")
    for name, cost in state["estimators"].items():
        print(f"  {name:8s} {cost['seconds']:7.1f} s  {cost['denoiser_calls']:>8d} denoiser calls")
    primary = state["primary_estimator"]
    reference = Path(args.reference) if args.reference else base / "reference"
    if not args.reference:
        ref_wall, _ = run([args.recipe, *overrides, "--set", "estimators=[bayes]", "--set", "analysis.primary=bayes",
                           "--samples", str(args.reference_samples)], reference)
        print(f"reference: bayes, {args.reference_samples} samples, {ref_wall:.1f} s wall")
    else:
        print(f"reference: {reference} ({json.loads((reference / 'run.json').read_text())['n_samples']} samples)")
    mine, ref = decisions(base / "default", primary), decisions(reference, "bayes")
    print(f"\n{'node':10s} {'default sigma (95% interval)':32s} {'reference sigma (95% interval)':32s} agree")
    agree = True
    for node in ref:
        a, b = mine.get(node), ref[node]
        if a is None:
            print(f"{node:10s} {'undecided':32s}")
            agree = False
            continue
        inside = (b["interval"][0] <= a["decision_sigma"] <= b["interval"][1]
                  and a["interval"][0] <= b["decision_sigma"] <= a["interval"][1])
        agree &= inside
        fa = f"{a['decision_sigma']:.3g} ({a['interval'][0]:.3g}-{a['interval'][1]:.3g})"
        fb = f"{b['decision_sigma']:.3g} ({b['interval'][0]:.3g}-{b['interval'][1]:.3g})"
        print(f"{node:10s} {fa:32s} {fb:32s} {'yes' if inside else 'NO'}")
    order_mine = sorted(mine, key=lambda n: -mine[n]["decision_sigma"])
    order_ref = sorted(ref, key=lambda n: -ref[n]["decision_sigma"])
    print(f"\norder by decision sigma (default):   {' > '.join(order_mine)}")
    print(f"order by decision sigma (reference): {' > '.join(order_ref)}")
    print(f"same order: {'yes' if order_mine == order_ref else 'no'}; every decision inside the other's interval: "
          f"{'yes' if agree else 'no'}")
    if not args.keep:
        shutil.rmtree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
