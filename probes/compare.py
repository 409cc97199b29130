"""Compare two finished runs: where in sigma does one inject more information about the leaf?

The typical use is classifier-free guidance: run the same recipe at guidance 1 and at w, then

    probes compare runs/w1 runs/w3 --out runs/w3-vs-w1

gives, per taxonomy level, ``dI(sigma) = I_B(leaf cell; x_sigma) - I_A(...)`` (nats, with the
standard error of the difference), where that difference sits on the sigma axis (its peak and
the half-peak band of ``|dI|``), and how far each node's decision moved.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from probes.errors import ProbesError
from probes.fileio import atomic_path, read_text


def add_compare_commands(sub) -> None:
    p = sub.add_parser(
        "compare", help="compare two runs (e.g. two guidance scales) level by level along sigma",
        description="Per taxonomy level, the difference in mutual information I_B - I_A between two finished "
        "runs along sigma, where it sits, and how each node's decision sigma moved.",
    )
    p.add_argument("run_a", help="baseline run directory (e.g. guidance 1)")
    p.add_argument("run_b", help="run directory to compare against it")
    p.add_argument("--estimator", help="estimator to compare (default: run A's primary estimator)")
    p.add_argument("--out", "-o", help="directory for compare.csv and compare.png")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args) -> int:
    result = compare_runs(args.run_a, args.run_b, estimator=args.estimator, out=args.out)
    print(result["text"])
    return 0


def read_finished_run(path: Path) -> tuple[dict, list[dict], list[dict]]:
    """``(run.json, curves.csv rows, decisions.csv rows)`` of a finished run, each checked: one
    line naming the file for anything missing, unfinished or damaged."""
    state_file = path / "run.json"
    if not state_file.is_file():
        raise ProbesError(f"{path}: not a probes run directory (no run.json)")
    try:
        state = json.loads(read_text(state_file, "run.json"))
    except ValueError:
        raise ProbesError(f"{state_file}: not valid JSON; rerun with --resume to rewrite it") from None
    if not isinstance(state, dict) or state.get("status") != "complete":
        status = state.get("status") if isinstance(state, dict) else None
        raise ProbesError(f"{path}: the run is not finished (status {status!r}); resume it first")
    tables = []
    for name in ("curves.csv", "decisions.csv"):
        reader = csv.DictReader(io.StringIO(read_text(path / name, name)))
        rows = list(reader)
        if "estimator" not in (reader.fieldnames or []) or (name == "curves.csv" and not rows):
            raise ProbesError(f"{path / name}: empty or not a probes table; rerun with --resume to rewrite it")
        numeric = [c for c in ("sigma", "entropy", "stderr", "mutual_info", "decision_sigma") if c in reader.fieldnames]
        for line, row in enumerate(rows, start=2):
            for column in numeric:
                try:
                    _float(row[column])
                except (TypeError, ValueError):
                    raise ProbesError(f"{path / name}:{line}: {column} {row[column]!r} is not a number") from None
        tables.append(rows)
    return state, tables[0], tables[1]


def _float(x: str) -> float:
    return float(x) if x not in ("", None) else math.nan


def _resolve(rows: list[dict], estimator: str) -> str:
    """The estimator's name in a run's files: guided runs report posterior estimators as
    ``<name>:unguided_posterior`` (see ``probes.analysis.reported_name``)."""
    names = {r["estimator"] for r in rows}
    if estimator not in names and f"{estimator}:unguided_posterior" in names:
        return f"{estimator}:unguided_posterior"
    return estimator


def _levels(rows: list[dict], estimator: str, source: Path, kind: str = "level") -> dict:
    """{level or node: (sigma descending, mutual information, stderr)} for one estimator."""
    estimator = _resolve(rows, estimator)
    chosen = [r for r in rows if r["estimator"] == estimator and r["kind"] == kind]
    if not chosen and kind == "level":
        raise ProbesError(f"{source}: no curves for estimator {estimator!r}")
    out = {}
    for level in sorted({r["name"] for r in chosen}, key=int if kind == "level" else None):
        part = sorted((r for r in chosen if r["name"] == level), key=lambda r: -float(r["sigma"]))
        out[level] = tuple(np.array([_float(r[k]) for r in part]) for k in ("sigma", "mutual_info", "stderr"))
    return out


def compare_runs(run_a, run_b, estimator: str | None = None, out=None) -> dict:
    run_a, run_b = Path(run_a), Path(run_b)
    state_a, curves_a, dec_a = read_finished_run(run_a)
    _state_b, curves_b, dec_b = read_finished_run(run_b)
    estimator = estimator or state_a.get("primary_estimator")
    levels_a, levels_b = _levels(curves_a, estimator, run_a), _levels(curves_b, estimator, run_b)
    if set(levels_a) != set(levels_b):
        raise ProbesError(f"{run_b}: its taxonomy levels differ from {run_a}'s; compare runs of one taxonomy")

    rows, summary = [], {}
    for level in levels_a:
        sig_a, mi_a, se_a = levels_a[level]
        sig_b, mi_b, se_b = levels_b[level]
        if len(sig_a) != len(sig_b) or not np.allclose(sig_a, sig_b, rtol=1e-9):
            raise ProbesError(f"{run_b}: its sigma grid differs from {run_a}'s; compare runs with the same "
                              "sampling.steps, sigma_max, sigma_min and grid")
        delta, se = mi_b - mi_a, np.sqrt(se_a**2 + se_b**2)
        rows += [[level, s, a, b, d, e] for s, a, b, d, e in zip(sig_a, mi_a, mi_b, delta, se)]
        summary[level] = _where(sig_a, delta)

    node_summary = {}
    nodes_a, nodes_b = _levels(curves_a, estimator, run_a, "node"), _levels(curves_b, estimator, run_b, "node")
    for node in nodes_a:
        if node in nodes_b:
            node_summary[node] = _where(nodes_a[node][0], nodes_b[node][1] - nodes_a[node][1])
    shifts = _decision_shifts(dec_a, dec_b, estimator)
    result = {"estimator": estimator, "levels": summary, "node_information": node_summary, "nodes": shifts,
              "rows": rows}
    result["text"] = _format(run_a, run_b, estimator, summary, shifts)
    if out is not None:
        from probes.report.html import write_compare_report

        _write(Path(out), result, levels_a, levels_b)
        write_compare_report(out, result, run_a, run_b)
    return result


def _where(sigmas: np.ndarray, delta: np.ndarray) -> dict:
    """Where the difference sits: the peak of |dI| and the band where |dI| exceeds half of it."""
    mag = np.abs(np.nan_to_num(delta))
    if not mag.any():
        return {"peak_sigma": None, "peak_delta": 0.0, "band": None}
    i = int(np.argmax(mag))
    above = mag >= 0.5 * mag[i]
    lo, hi = i, i
    while hi + 1 < len(mag) and above[hi + 1]:
        hi += 1
    while lo > 0 and above[lo - 1]:
        lo -= 1
    # Grids are descending: the band runs from sigmas[hi] (small) to sigmas[lo] (large).
    out = {"peak_sigma": float(sigmas[i]), "peak_delta": float(delta[i]),
           "band": [float(sigmas[hi]), float(sigmas[lo])]}
    # where the difference is injected: the peak of |d(dI)/dlog sigma| (as sigma falls)
    ok = np.isfinite(delta)
    if ok.sum() >= 3:
        rate = -np.gradient(delta[ok], np.log(sigmas[ok]))
        j = int(np.argmax(np.abs(rate)))
        out["rate_peak_sigma"], out["rate_peak"] = float(sigmas[ok][j]), float(rate[j])
    return out


def _decision_shifts(dec_a: list[dict], dec_b: list[dict], estimator: str) -> dict:
    def table(rows):
        name = _resolve(rows, estimator)
        return {r["name"]: _float(r["decision_sigma"]) for r in rows
                if r["estimator"] == name and r["kind"] == "node" and r.get("axis", "log_sigma") == "log_sigma"}

    a, b = table(dec_a), table(dec_b)
    return {n: {"sigma_a": a[n], "sigma_b": b.get(n, math.nan),
                "ratio": b.get(n, math.nan) / a[n] if a[n] and math.isfinite(a[n]) else math.nan} for n in a}


def _format(run_a: Path, run_b: Path, estimator: str, summary: dict, shifts: dict) -> str:
    lines = [f"{run_b} vs {run_a} ({estimator} estimator): dI = I_B - I_A per level"]
    for level, s in summary.items():
        if s["peak_sigma"] is None:
            lines.append(f"  level {level}: no difference")
            continue
        lo, hi = s["band"]
        lines.append(f"  level {level}: dI peaks at {s['peak_delta']:+.3f} nats at sigma={s['peak_sigma']:.3g}; "
                     f"|dI| above half its peak for sigma in [{lo:.3g}, {hi:.3g}]")
    lines.append("decision sigma per node (A -> B, ratio):")
    for node, s in shifts.items():
        lines.append(f"  {node}: {s['sigma_a']:.3g} -> {s['sigma_b']:.3g} (x{s['ratio']:.2f})")
    return "\n".join(lines)


def _write(out: Path, result: dict, levels_a: dict, levels_b: dict) -> None:
    from probes.report.rundir import format_float, write_csv

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compare.csv", ["level", "sigma", "mutual_info_a", "mutual_info_b", "delta_mutual_info",
                                      "stderr"], [[r[0]] + [format_float(v) for v in r[1:]] for r in result["rows"]])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    cmap = plt.get_cmap("viridis")
    n = len(levels_a)
    for k, level in enumerate(levels_a):
        sig = levels_a[level][0]
        rows = [r for r in result["rows"] if r[0] == level]
        delta = np.array([r[4] for r in rows])
        se = np.nan_to_num(np.array([r[5] for r in rows]))
        color = cmap(k / max(1, n - 1) * 0.9)
        ax.plot(sig, delta, color=color, lw=1.6, label=f"level {level}")
        ax.fill_between(sig, delta - se, delta + se, color=color, alpha=0.2, lw=0)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel(r"noise level $\sigma$ (log scale; sampling runs left to right)")
    ax.set_ylabel(r"$I_B - I_A$ [nats]")
    ax.set_title(f"information gained by B over A ({result['estimator']})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out / "compare.png") as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)
