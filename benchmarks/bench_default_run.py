"""The README's main job: its wall time, and whether its decisions agree with a high-sample
``bayes`` reference of the same model.

    python benchmarks/bench_default_run.py [--reference-samples 2048] [--keep DIR] [--set KEY=VALUE ...]

Runs ``probes run digits`` (the shipped default recipe) in a subprocess under ``/usr/bin/time -v``
when available (wall time, peak memory), then the same recipe with only ``bayes`` and
``--reference-samples`` samples. For every internal node it prints both decision sigmas and
bootstrap intervals and whether each decision lies inside the other's interval, and whether the
nodes come in the same order. Agreement is what "the default run is fast enough" has to keep.

"Inside the other's interval" both ways is strict: with independent samples the difference of the
two decisions has the standard error ``sqrt(se_a^2 + se_b^2)``, larger than the reference's own,
so with 640 against 2048 samples each node passes it with probability about 0.66 even when both
runs estimate the same sigma (six independent nodes: about 0.08). The bench therefore also prints
the two-sample test (is the difference inside its own 95% interval, standard errors from the
bootstrap intervals' widths) and the order up to ties (two nodes whose intervals overlap in both
runs are not ordered).
"""

from __future__ import annotations

import argparse
import json
import math
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


def _se(d: dict) -> float:
    """A decision's standard error in log sigma, from its 95% bootstrap interval's width."""
    return (math.log(d["interval"][1]) - math.log(d["interval"][0])) / (2 * 1.96)


def two_sample_z(a: dict, b: dict) -> float:
    """The difference of two independent decisions (log sigma) over its standard error."""
    return (math.log(a["decision_sigma"]) - math.log(b["decision_sigma"])) / math.hypot(_se(a), _se(b))


def overlap(a: dict, b: dict) -> bool:
    return a["interval"][0] <= b["interval"][1] and b["interval"][0] <= a["interval"][1]


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
    print(f"\n{'node':10s} {'default sigma (95% interval)':32s} {'reference sigma (95% interval)':32s} "
          "each inside the other's   two-sample test")
    agree = same = True
    for node in ref:
        a, b = mine.get(node), ref[node]
        if a is None:
            print(f"{node:10s} {'undecided':32s}")
            agree = same = False
            continue
        inside = (b["interval"][0] <= a["decision_sigma"] <= b["interval"][1]
                  and a["interval"][0] <= b["decision_sigma"] <= a["interval"][1])
        z = two_sample_z(a, b)
        agree &= inside
        same &= abs(z) <= 1.96
        fa = f"{a['decision_sigma']:.3g} ({a['interval'][0]:.3g}-{a['interval'][1]:.3g})"
        fb = f"{b['decision_sigma']:.3g} ({b['interval'][0]:.3g}-{b['interval'][1]:.3g})"
        print(f"{node:10s} {fa:32s} {fb:32s} {'yes' if inside else 'NO':25s} z = {z:+.2f} "
              f"{'(same)' if abs(z) <= 1.96 else '(DIFFERENT)'}")
    order_mine = sorted(mine, key=lambda n: -mine[n]["decision_sigma"])
    order_ref = sorted(ref, key=lambda n: -ref[n]["decision_sigma"])
    print(f"\norder by decision sigma (default):   {' > '.join(order_mine)}")
    print(f"order by decision sigma (reference): {' > '.join(order_ref)}")
    swapped = [(u, v) for i, u in enumerate(order_ref) for v in order_ref[i + 1:]
               if u in mine and v in mine and mine[u]["decision_sigma"] < mine[v]["decision_sigma"]]
    untied = [(u, v) for u, v in swapped if not (overlap(mine[u], mine[v]) and overlap(ref[u], ref[v]))]
    print(f"same order: {'yes' if not swapped else 'no'} (swapped pairs: {swapped or 'none'}); up to ties: "
          f"{'yes' if not untied else 'no'}")
    print(f"every decision inside the other's interval: {'yes' if agree else 'no'}; "
          f"every difference within its two-sample 95% interval: {'yes' if same else 'no'}")
    if not args.keep:
        shutil.rmtree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
