"""Gaussian-mixture runs through the CLI against the independent oracles of tests/exact_oracles.py:
prints, per comparison, the worst absolute error and the worst excess over the tolerance the
oracle tests use (`5 stderr + floor`; <= 0 passes). The figures quoted in the oracle tests'
docstrings and in docs/estimators.md's partial-taxonomy rollout paragraph come from here.

    python benchmarks/bench_oracles.py [--samples 4096] [--out runs/bench-oracles]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from exact_oracles import Mixture, Tree, guided_chain_curves  # noqa: E402
from test_independent_oracles import (  # noqa: E402
    HIERARCHY,
    PARTIAL_MEANS,
    PARTIAL_SETS,
    PARTIAL_WEIGHTS,
    WEIGHTS,
    curve_errors,
    documented_peak,
    factorised_hierarchy,
    read_rows,
    run_cli,
    series,
)

HIERARCHY_MEANS = np.array([[-6.0, -2.0], [-6.0, 2.0], [6.0, -2.0], [6.0, 2.0]])
LINE = ["model.dim=1", "model.std=0.5", "model.hierarchy=null",
        "model.means={left-a: [-4.5], left-b: [-1.5], right-a: [1.5], right-b: [4.5]}",
        "model.weights={left-a: 0.1, left-b: 0.2, right-a: 0.3, right-b: 0.4}", "sampling.sigma_max=40",
        "sampling.sigma_min=0.05", "sampling.steps=64", "sampling.source=model", "sampling.condition=leaf",
        "estimators=[exact, guided]"]


def show(case, estimator, report):
    worst = max(report.values(), key=lambda v: v[1])
    excess = max(v[0] for v in report.values())
    print(f"{case:38s} {estimator:26s} max err {worst[1]:.4f}  worst excess over tolerance {excess:+.4f}")


def sigmas_of(out):
    return np.array(json.loads((out / "run.json").read_text())["sigmas"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-oracles"))
    args = ap.parse_args(argv)
    n = [f"sampling.samples={args.samples}", f"sampling.batch_size={args.samples}"]

    out = run_cli(args.out / "hierarchy", "gmm-hierarchy", "sampling.source=data", "analysis.n_boot=100", *n,
                  "estimators=[exact, plugin, {name: rollout, k: 8, sigma_stride: 4}, bayes, "
                  "{name: immse, n_pairs: 4096}]")
    rows, sig = read_rows(out / "curves.csv"), sigmas_of(out)
    oracle = factorised_hierarchy(sig)
    for est, floor in (("exact", 5e-4), ("bayes", 0.03), ("immse", 0.03)):
        show("hierarchy, source: data", est, curve_errors(rows, est, oracle, floor=floor))
    keep = [int(np.argmin(np.abs(sig - v))) for v in series(rows, "rollout", "level", "1")[0]]
    show("hierarchy, source: data", "rollout k=8",
         curve_errors(rows, "rollout", {k: v[keep] for k, v in oracle.items()}, floor=0.045))
    pair = Tree(["a", "b"])
    plug = {a: Mixture(np.array([[-a], [a]]), [1, 1], 0.5).tree_curves(sig, pair, [0, 1], reading="plugin",
                                                                        h=0.002)["level_1"] for a in (6.0, 2.0)}
    show("hierarchy, source: data", "plugin (vs its expectation)",
         curve_errors(rows, "plugin", {"level_1": plug[6.0], "level_2": plug[6.0] + plug[2.0],
                                       "node_root": plug[6.0], "node_left": plug[2.0] / 2,
                                       "node_right": plug[2.0] / 2}, floor=2e-3))
    dense = np.geomspace(0.2, 40, 600)
    dense_curves = factorised_hierarchy(dense)
    for d in read_rows(out / "decisions.csv"):
        if d["estimator"] == "exact" and d["kind"] == "node":
            truth = documented_peak(dense, dense_curves[f"node_{d['name']}"], d["axis"])[0]
            print(f"  decision {d['name']:6s} {d['axis']:9s} run {float(d['decision_sigma']):.3f} "
                  f"({float(d['interval_lo']):.3f}-{float(d['interval_hi']):.3f})  oracle {truth:.3f}")

    out = run_cli(args.out / "prior", "gmm-hierarchy", "sampling.condition=leaf", "estimators=[exact, bayes]",
                  "analysis.n_boot=0", "sampling.steps=96", *n,
                  "model.weights={left-a: 0.1, left-b: 0.2, right-a: 0.3, right-b: 0.4}")
    rows = read_rows(out / "curves.csv")
    oracle = Mixture(HIERARCHY_MEANS, WEIGHTS, 0.5).tree_curves(sigmas_of(out), HIERARCHY, [0, 1, 2, 3])
    for est, floor in (("exact", 0.005), ("bayes", 0.015)):
        show("prior 0.1/0.2/0.3/0.4, leaf-conditional", est, curve_errors(rows, est, oracle, floor=floor))

    out = run_cli(args.out / "partial", "gmm-two-class", *PARTIAL_SETS, "sampling.source=model", *n,
                  "estimators=[exact, plugin, bayes, {name: rollout, k: 8, sigma_stride: 4}, "
                  "{name: immse, n_pairs: 4096}]", "analysis.n_boot=0", "sampling.steps=128")
    rows, sig = read_rows(out / "curves.csv"), sigmas_of(out)
    mix, two = Mixture(PARTIAL_MEANS, PARTIAL_WEIGHTS, 0.5), Tree(["minus", "plus"])
    oracle = mix.tree_curves(sig, two, [0, 1], inside_weighted=True)
    for est, floor in (("exact", 0.005), ("bayes", 0.015), ("immse", 0.03)):
        show("partial taxonomy, P(T) = 0.6", est, curve_errors(rows, est, oracle, floor=floor))
    show("partial taxonomy, P(T) = 0.6", "plugin (vs its expectation)",
         curve_errors(rows, "plugin", mix.tree_curves(sig, two, [0, 1], inside_weighted=True, reading="plugin"),
                      floor=0.005))
    s_roll, roll, _ = series(rows, "rollout", "level", "1")
    s_exact, exact, _ = series(rows, "exact", "level", "1")
    paired = exact[[int(np.argmin(np.abs(s_exact - v))) for v in s_roll]]
    label = "rollout k=8 - exact (paired)"
    print(f"{'partial taxonomy, P(T) = 0.6':38s} {label:26s} max {np.abs(roll - paired).max():.4f}")

    for scale, interval in ((2.0, None), (3.0, (1.0, 5.0))):
        sets = [*LINE, *n, "analysis.n_boot=0", f"sampling.guidance.scale={scale}"]
        if interval:
            sets.append(f"sampling.guidance.interval=[{interval[0]}, {interval[1]}]")
        out = run_cli(args.out / f"guided-{scale:g}", "gmm-hierarchy", *sets)
        rows = read_rows(out / "curves.csv")
        oracle = guided_chain_curves([-4.5, -1.5, 1.5, 4.5], 0.5, WEIGHTS, scale, sigmas_of(out), HIERARCHY,
                                     interval=interval)
        case = f"guidance {scale:g}{' in (1, 5]' if interval else ''}, 4 leaves on a line"
        show(case, "exact:unguided_posterior",
             curve_errors(rows, "exact:unguided_posterior",
                          {k[len("unguided_"):]: v for k, v in oracle.items() if k.startswith("unguided_")}))
        above_lo = below_hi = 0.0
        for kind, name in [("level", "1"), ("level", "2"), ("node", "root"), ("node", "left"), ("node", "right")]:
            truth = oracle[f"{kind}_{name}"]
            above_lo = max(above_lo, float(np.max(series(rows, "guided", kind, name, "entropy_lo")[1] - truth)))
            below_hi = max(below_hi, float(np.max(truth - series(rows, "guided", kind, name, "entropy_hi")[1])))
        print(f"{case:38s} {'guided band':26s} lo above truth by {above_lo:+.4f}, truth above hi by {below_hi:+.4f}")


if __name__ == "__main__":
    main()
