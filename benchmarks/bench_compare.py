"""Coverage of `probes compare`'s joint bootstrap intervals, against the exact information gap.

Two runs of the four-leaf mixture ``gmm-two-by-two`` (2-D, std 0.5, one axis per level, exact
posteriors on forward-noised data): A with separations (3, 1), B with (2, 1.5). The exact
``dI = I_B - I_A`` per level and node comes from two-class entropies ``H2(r)`` integrated by
Gauss-Hermite quadrature (the same formulas as ``tests/test_compare.py``, which uses adaptive
quadrature). Over ``--trials`` seed pairs, paired (same seeds) and independent (different seeds),
it prints how often the 95% intervals cover the truth: pointwise (the share of grid points, with
the band widened by one sample's worth, log(cells)/N), and for where ``|dI|`` and its rate peak
(the exact peak within half a grid step / one grid step of the interval), plus the mean width.

It then prints how often each node's **decision shift** interval covers the exact shift, on log
sigma and on VP time (widened by ``SHIFT_TOL``, the grid's own bias, as in ``tests/test_compare.py``),
and how often two seeds of one recipe (A against A drawn again) give an interval containing 0.
Exact decisions are the peaks of the exact contributions' rates on a 4001-point grid:
root ``C = H2(m1 / s)``, left and right ``C = 1/2 H2(m2 / s)``.

    .venv/bin/python benchmarks/bench_compare.py [--samples 512] [--trials 8] [--n-boot 400]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import yaml

import probes.runner as runner
from probes.result import load

STD, SIGMA_MAX, SIGMA_MIN, STEPS = 0.5, 30.0, 0.05, 32
SEPARATIONS = {"A": (3.0, 1.0), "B": (2.0, 1.5)}
CURVES = [("level", 1), ("level", 2), ("node", "root"), ("node", "left"), ("node", "right")]
SHIFT_AXES = ("log_sigma", "vp_time")
SHIFT_TOL = 0.03  # the grid's bias in a shift (tests/test_compare.py says how it was bounded)


def h2(r: np.ndarray, nodes: int = 160) -> np.ndarray:
    """``E_xi[h(sigmoid(2 r^2 + 2 r xi))]`` by Gauss-Hermite quadrature, shifted to the class boundary
    (numpy's rule overflows past ~300 nodes; 160 agree with adaptive quadrature to 1e-9 here).
    ``r`` is capped at 12, where the entropy is below 1e-30 nats."""
    u, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / math.sqrt(2 * math.pi)
    r = np.minimum(np.asarray(r, dtype=np.float64), 12.0)[..., None]
    z = 2 * r * u  # xi = u - r puts the boundary at u = 0; the Gaussian weight picks up exp(r u - r^2 / 2)
    p = 1 / (1 + np.exp(-np.clip(z, -700, 700)))
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log(p), 0) + np.where(p < 1, (1 - p) * np.log1p(-p), 0))
    return (h * np.exp(r * u - r**2 / 2)) @ w


def exact_delta(kind, name, sigma):
    s = np.sqrt(STD**2 + np.asarray(sigma) ** 2)
    (a1, a2), (b1, b2) = SEPARATIONS["A"], SEPARATIONS["B"]
    coarse, fine = h2(a1 / s) - h2(b1 / s), h2(a2 / s) - h2(b2 / s)
    if (kind, name) in (("level", 1), ("node", "root")):
        return coarse
    return coarse + fine if (kind, name) == ("level", 2) else 0.5 * fine


def axis_value(axis: str, sigma):
    sigma = np.asarray(sigma, dtype=np.float64)
    return np.log(sigma) if axis == "log_sigma" else 0.5 * np.log1p(sigma**2)


def exact_shifts(fine: np.ndarray) -> dict:
    """``{(node, axis): value_B - value_A}`` of the exact decisions (peaks of ``dC / d axis``)."""
    def decision(m: float, axis: str) -> float:
        c = h2(m / np.sqrt(STD**2 + fine**2))
        return float(fine[np.argmax(np.gradient(c, axis_value(axis, fine)))])

    out = {}
    for node, level in (("root", 0), ("left", 1), ("right", 1)):
        ma, mb = SEPARATIONS["A"][level], SEPARATIONS["B"][level]
        for axis in SHIFT_AXES:
            out[(node, axis)] = float(axis_value(axis, decision(mb, axis)) - axis_value(axis, decision(ma, axis)))
    return out


def grid_bias() -> dict:
    """``{(node, axis): (decision bias A, decision bias B, shift bias)}``: what deciding the exact
    contributions on the runs' 32-point grid (central differences and the parabola through the top
    three points, as :func:`probes.entropy.decide` does) moves the decisions and shifts by, in the
    axis's units. ``SHIFT_TOL`` must cover the shift bias."""
    from probes.entropy.decisions import _refine

    grid = np.exp(np.linspace(math.log(SIGMA_MIN), math.log(SIGMA_MAX), STEPS))
    fine = np.exp(np.linspace(math.log(SIGMA_MIN), math.log(SIGMA_MAX), 40001))
    out = {}
    for node, level in (("root", 0), ("left", 1), ("right", 1)):
        for axis in SHIFT_AXES:
            bias = []
            for which in ("A", "B"):
                m = SEPARATIONS[which][level]
                x = axis_value(axis, grid)
                rate = np.gradient(h2(m / np.sqrt(STD**2 + grid**2)), x)
                i = int(np.argmax(rate))
                on_grid, _ = _refine(x, rate, np.array(i))
                exact_fine = np.gradient(h2(m / np.sqrt(STD**2 + fine**2)), axis_value(axis, fine))
                bias.append(float(on_grid) - float(axis_value(axis, fine[np.argmax(exact_fine)])))
            out[(node, axis)] = (bias[0], bias[1], bias[1] - bias[0])
    return out


def shift_rows(comparison, truth: dict | None) -> list[tuple]:
    """(node, axis, covered, width) per node and axis; ``truth`` None checks zero."""
    rows = []
    for (node, axis) in (truth or {(n, a): 0.0 for n in ("root", "left", "right") for a in SHIFT_AXES}):
        shift = comparison.curves.shifts[node][axis]
        exact = 0.0 if truth is None else truth[(node, axis)]
        lo, hi = shift.interval if shift.interval is not None else (math.nan, math.nan)
        rows.append((node, axis, lo - SHIFT_TOL <= exact <= hi + SHIFT_TOL, hi - lo))
    return rows


def recipe(folder: Path, name: str, separations, seed: int, n: int) -> Path:
    data = {"name": name, "seed": seed, "taxonomy": "gmm-two-by-two",
            "model": {"kind": "gmm", "dim": 2, "std": STD, "hierarchy": {
                "separations": list(separations), "axis_aligned": True, "share_level_axes": True}},
            "classifier": {"kind": "exact"},
            "sampling": {"samples": n, "batch_size": n, "steps": STEPS, "sigma_max": SIGMA_MAX,
                         "sigma_min": SIGMA_MIN, "source": "data"},
            "estimators": ["exact"], "analysis": {"n_boot": 0}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--n-boot", type=int, default=400)
    args = ap.parse_args()
    n, step = args.samples, math.log(SIGMA_MAX / SIGMA_MIN) / (STEPS - 1)
    fine = np.exp(np.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), 4001))
    truth_fine = {c: exact_delta(*c, fine) for c in CURVES}
    print(f"{n} samples per run, {args.trials} seed pairs, {args.n_boot} replicates, 95% intervals")
    print("pairing      curve       pointwise  peak  rate-peak  mean half-width [nats]")
    shifts_truth = exact_shifts(fine)
    shift_stats: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for pairing in ("paired", "independent"):
            stats = {c: [] for c in CURVES}
            for trial in range(args.trials):
                seeds = (10 + trial, 10 + trial if pairing == "paired" else 100 + trial)
                for (which, seps), seed in zip(SEPARATIONS.items(), seeds):
                    with contextlib.redirect_stderr(io.StringIO()):
                        runner.run(recipe(tmp, which, seps, seed, n), tmp / which, progress=False, overwrite=True)
                comparison = load(tmp / "A").compare(load(tmp / "B"), n_boot=args.n_boot)
                assert comparison.pairing == pairing
                for node, axis, covered, width in shift_rows(comparison, shifts_truth):
                    shift_stats.setdefault((pairing, node, axis), []).append((covered, width))
                if pairing == "independent":  # A again from other seeds: no shift
                    with contextlib.redirect_stderr(io.StringIO()):
                        runner.run(recipe(tmp, "A2", SEPARATIONS["A"], 200 + trial, n), tmp / "A2", progress=False,
                                   overwrite=True)
                    again = load(tmp / "A").compare(load(tmp / "A2"), n_boot=args.n_boot)
                    for node, axis, covered, width in shift_rows(again, None):
                        shift_stats.setdefault(("zero", node, axis), []).append((covered, width))
                for kind, name in CURVES:
                    d = (comparison.levels if kind == "level" else comparison.nodes)[name]
                    truth = exact_delta(kind, name, d.sigmas)
                    tol = (math.log(4) if (kind, name) == ("level", 2) else math.log(2)) / n
                    lo, hi = d.delta_interval
                    pointwise = np.mean((lo - tol <= truth) & (truth <= hi + tol))
                    exact = truth_fine[(kind, name)]
                    peak = fine[np.argmax(np.abs(exact))]
                    rate = -np.gradient(exact, np.log(fine))
                    rate_peak = fine[np.argmax(np.abs(rate))]
                    in_peak = (math.log(d.peak_interval[0]) - step / 2 <= math.log(peak)
                               <= math.log(d.peak_interval[1]) + step / 2)
                    in_rate = (math.log(d.rate_peak_interval[0]) - step <= math.log(rate_peak)
                               <= math.log(d.rate_peak_interval[1]) + step)
                    stats[(kind, name)].append((pointwise, in_peak, in_rate, np.mean(hi - lo) / 2))
            for (kind, name), rows in stats.items():
                a = np.array(rows, dtype=float).mean(0)
                print(f"{pairing:12s} {kind} {name!s:6s}  {a[0]:9.3f}  {a[1]:4.2f}  {a[2]:9.2f}  {a[3]:.4f}")
    print(f"\ndecision shifts (B - A; 'zero': A against A from other seeds), intervals widened by {SHIFT_TOL}")
    print("pairing      node   axis       exact    covered  mean width")
    for (pairing, node, axis), rows in shift_stats.items():
        covered = sum(r[0] for r in rows)
        exact = 0.0 if pairing == "zero" else shifts_truth[(node, axis)]
        print(f"{pairing:12s} {node:6s} {axis:10s} {exact:+.3f}  {covered:3d}/{len(rows):<3d}  "
              f"{np.nanmean([r[1] for r in rows]):.3f}")
    for pairing in ("paired", "independent", "zero"):
        rows = [r for (p, _, _), v in shift_stats.items() if p == pairing for r in v]
        print(f"{pairing}: {sum(r[0] for r in rows)} of {len(rows)} covered")
    print(f"\nthe {STEPS}-point grid's bias on the exact curves (axis units): decision A, decision B, shift")
    for (node, axis), (a, b, shift) in grid_bias().items():
        print(f"  {node:6s} {axis:10s} {a:+.4f}  {b:+.4f}  {shift:+.4f}")


if __name__ == "__main__":
    main()
