"""The digits section of docs/evidence.md: figures, what they show, and what the maps cost.

Runs the shipped digits recipe with the same seed and samples, without and with
``analysis.evidence_maps`` (each in its own process: wall time and peak memory of that process),
copies the evidence and commitment figures into ``docs/evidence/``, measures from the written
files where and when the decisions were made, and rewrites the block between the ``generated``
markers of docs/evidence.md.

    .venv/bin/python scripts/evidence_docs.py [--samples 256] [--repeats 2] [--dry-run]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from probes.store import read_tensors

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "evidence.md"
FIGURES = ROOT / "docs" / "evidence"
BEGIN = "<!-- generated: python scripts/evidence_docs.py -->"
END = "<!-- end generated -->"
# A child process that runs probes and reports its own peak resident memory (kB on Linux).
MEASURED = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "code = subprocess.call(sys.argv[1:]); "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)")


def run(out: Path, samples: int, maps: bool) -> tuple[float, float]:
    """``(wall seconds, peak MiB)`` of one ``probes run digits`` in its own process."""
    command = [str(ROOT / ".venv" / "bin" / "probes"), "run", "digits", "--out", str(out), "--quiet",
               "--samples", str(samples), "--set", f"analysis.evidence_maps={'true' if maps else 'false'}"]
    line = subprocess.run([sys.executable, "-c", MEASURED, *command], check=True, capture_output=True,
                          text=True).stdout.split()
    if line[2] != "0":
        raise SystemExit(f"probes run failed ({' '.join(command)})")
    return float(line[0]), float(line[1]) / 1024


def ink(run_dir: Path, n: int, side: int) -> np.ndarray:
    """Which positions of each sample's final image are ink (brighter than mid-grey), read from the
    previews (the 8 x 8 digits drawn 8 times larger)."""
    from PIL import Image

    out = []
    for i in range(n):
        picture = np.asarray(Image.open(run_dir / "previews" / f"sample_{i:05d}.png").convert("L"), dtype=float)
        step = picture.shape[0] // side
        out.append(picture[step // 2::step, step // 2::step] > 127.5)
    return np.stack(out)


def measure(run_dir: Path) -> dict:
    files = load_file(run_dir / "evidence.safetensors")
    _, header = read_tensors(run_dir / "evidence.safetensors")
    nodes = json.loads(header["nodes"])
    with open(run_dir / "decisions.csv", newline="") as fh:
        decisions = {r["name"]: float(r["decision_sigma"]) for r in csv.DictReader(fh)
                     if r["estimator"] == "bayes" and r["kind"] == "node" and r["axis"] == "log_sigma"
                     and r["decision_sigma"]}
    n, side = files["final_leaf"].shape[0], files[f"maps/{nodes[0]}"].shape[-1]
    on_ink = ink(run_dir, n, side)
    rows = []
    for node in nodes:
        maps = files[f"maps/{node}"].double().numpy()
        path = ~np.isnan(maps[:, -1]).all((-1, -2))
        final = maps[path, -1]
        magnitude = np.abs(final)
        ink_here = on_ink[path]
        share_on_ink = float((magnitude * ink_here).sum() / magnitude.sum())
        ink_fraction = float(ink_here.mean())
        against_off_ink = float((np.clip(-final, 0, None) * ~ink_here).sum() / np.clip(-final, 0, None).sum())
        when = files[f"commitment/{node}"].double().numpy()[path]
        weight = np.where(np.isfinite(when), magnitude, 0.0)
        per_sample = np.array([np.exp(np.average(np.log(np.where(np.isfinite(w), w, 1.0)), weights=m))
                               for w, m in zip(when, weight)])
        rows.append({"node": node, "samples": int(path.sum()), "ink": ink_fraction, "on_ink": share_on_ink,
                     "against_off_ink": against_off_ink,
                     "commit_median": float(np.median(per_sample)),
                     "commit_iqr": [float(v) for v in np.percentile(per_sample, [25, 75])],
                     "decision": decisions.get(node)})
    summary = json.loads((run_dir / "run.json").read_text())["commitments"]["bayes"]["nodes"]
    for row in rows:
        node = summary.get(row["node"]) or {}
        row["fine_first"] = None if node.get("order") is None else node["order"]["fine_first"]
        row["posterior_commit"] = node.get("median_commit_sigma")
    return {"rows": rows, "n": int(n), "sigmas": len(files["sigmas"]), "side": int(side),
            "bytes": (run_dir / "evidence.safetensors").stat().st_size, "final_from": header["final_from"]}


def block(samples: int, repeats: int, plain: tuple[float, float], with_maps: tuple[float, float], m: dict) -> str:
    lines = [BEGIN, "",
             f"**The digits model** (`probes run digits --samples {samples} --set analysis.evidence_maps=true`; "
             f"{m['n']} unconditional samples, {m['sigmas']} sigmas, maps of {m['side']} x {m['side']} positions, "
             f"final leaf from the {m['final_from']}):", "",
             "![where and when the first samples decided](evidence/digits_evidence.png)", "",
             "![per-sample commitment: ECDF per node](evidence/digits_commit_ecdf.png)",
             "![parent against child commitment](evidence/digits_commit_pairs.png)", "",
             "| node | samples | ink share of positions | share of the evidence on ink | share of the evidence "
             "*against* off ink | evidence half in: sigma per sample, median [IQR] | posterior commitment "
             "sigma (theta 0.9), median | population decision sigma | child commits before parent |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    number = lambda v: "" if v is None else f"{v:.3g}"
    for r in m["rows"]:
        fine = "" if r["fine_first"] is None else f"{r['fine_first']:.2f}"
        lines.append(f"| {r['node']} | {r['samples']} | {r['ink']:.2f} | {r['on_ink']:.2f} | "
                     f"{r['against_off_ink']:.2f} | {r['commit_median']:.3g} [{r['commit_iqr'][0]:.3g}, "
                     f"{r['commit_iqr'][1]:.3g}] | {number(r['posterior_commit'])} | "
                     f"{number(r['decision']) or 'undecided'} | {fine} |")
    rows = m["rows"]
    root = next(r for r in rows if r["node"] == "root")
    half = [r["commit_median"] for r in rows]
    decided = [r["decision"] for r in rows if r["decision"] is not None]
    posterior = [r["posterior_commit"] for r in rows if r["posterior_commit"] is not None]
    lines += ["", "What they show:", "",
              f"* **Where.** At the root, {root['on_ink']:.0%} of the evidence sits on the ink, which covers "
              f"{root['ink']:.0%} of the positions: the filter reads the strokes "
              f"{root['on_ink'] / root['ink']:.1f} times as densely as their area; the evidence *against* a "
              f"sample's branch lies {root['against_off_ink']:.0%} off the ink ({1 - root['ink']:.0%} of the "
              "positions)."]
    if decided and posterior:
        lines.append(
            f"* **When.** Half of each position's final evidence is in at sigma {min(half):.2g} to {max(half):.2g} "
            f"(per-sample medians by node), {'below' if max(half) < min(decided) else 'against'} the population's "
            f"decision sigmas ({min(decided):.2g} to {max(decided):.2g}) and the samples' posterior commitments "
            f"({min(posterior):.2g} to {max(posterior):.2g}): log-odds keep growing after the posterior has "
            "settled, so a position's evidence-half sigma marks where its evidence finishes accumulating, "
            "after the choice; where it comes first is what the map says.")
    fine = [r for r in rows if r["fine_first"] is not None]
    if fine:
        most = max(fine, key=lambda r: r["fine_first"])
        lines.append(
            f"* **For whom.** Below the root, the share of samples that commit to their child before the parent "
            f"commits ranges from {min(r['fine_first'] for r in fine):.2f} to {most['fine_first']:.2f} "
            f"({most['node']}): for many samples the fine choice is settled while the coarse one is still open, "
            "which no population curve shows.")
    lines += ["", "**Cost** (the same run without and with the maps, each in its own process on this machine, "
              f"2 CPU cores, fastest of {repeats} interleaved runs each: wall time includes loading and writing; "
              "peak memory of the process):", "",
              "| run | wall (s) | peak memory (MiB) | evidence.safetensors |", "|---|---:|---:|---:|",
              f"| without maps | {plain[0]:.1f} | {plain[1]:.0f} | |",
              f"| with maps | {with_maps[0]:.1f} | {with_maps[1]:.0f} | {m['bytes'] / 2**20:.1f} MiB |", "", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each kind; the fastest is reported")
    parser.add_argument("--dry-run", action="store_true", help="print the block instead of writing it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        timings = {False: [], True: []}
        for attempt in range(args.repeats):  # interleaved, so a busy spell of the machine hits both
            for maps in (False, True):
                out = tmp / f"{'maps' if maps else 'plain'}{attempt}"
                timings[maps].append(run(out, args.samples, maps=maps))
                if attempt:
                    shutil.rmtree(out)
        plain, with_maps = ((min(t[0] for t in timings[k]), max(t[1] for t in timings[k])) for k in (False, True))
        shutil.move(tmp / "maps0", tmp / "maps")
        m = measure(tmp / "maps")
        text = block(args.samples, args.repeats, plain, with_maps, m)
        if args.dry_run:
            print(text)
            return
        FIGURES.mkdir(exist_ok=True)
        shutil.copy(tmp / "maps" / "evidence.png", FIGURES / "digits_evidence.png")
        from probes import load
        from probes.report.commitment_plots import plot_commitment_ecdf, plot_commitment_pairs

        commits = load(tmp / "maps").commitments("bayes")
        plot_commitment_ecdf(tmp / "ecdf.png", commits)
        plot_commitment_pairs(tmp / "pairs.png", commits)
        shutil.copy(tmp / "ecdf.png", FIGURES / "digits_commit_ecdf.png")
        shutil.copy(tmp / "pairs.png", FIGURES / "digits_commit_pairs.png")
    doc = DOC.read_text()
    if BEGIN in doc:
        doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: text, doc, flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n## On the digits model\n\n" + text + "\n"
    DOC.write_text(doc)
    print(f"wrote {DOC.relative_to(ROOT)} and {FIGURES.relative_to(ROOT)}/", file=sys.stderr)


if __name__ == "__main__":
    main()
