"""A result's files: everything a run directory holds but its batches, written from memory.

:func:`write_result_files` takes a result object (:class:`probes.result.ProbeResult`; read through
its public attributes and methods only) and writes the files ``docs/outputs.md`` lists:
the tables (``curves.csv``, ``decisions.csv``), the decision-time tree (``tree.json``,
``tree.graphml``, ``tree.nwk``), the figures (``curves``, ``rates``, ``tree``; PNG and PDF), the
posteriors and taxonomy that :func:`probes.load` reads back, ``run.json``, ``summary.txt``, the
kept samples (``samples.csv``, ``previews/``, ``strips/``) and ``report.html`` built from the same
in-memory result. ``probes run``, ``probes.run(...)``, ``probes.probe(...).save()`` and
``probes.load(...).save()`` all write through here, so their file sets are the same.
"""

from __future__ import annotations

import json
from pathlib import Path

from probes.report import plots
from probes.report.evidence_maps import EVIDENCE_FILE, plot_evidence, write_evidence
from probes.report.html import write_run_report
from probes.report.rundir import (
    atomic_write_text,
    write_commitments_csv,
    write_curves_csv,
    write_decisions_csv,
    write_run_json,
    write_tree,
)
from probes.report.samples import write_samples
from probes.store import write_record
from probes.taxonomy.export import to_node_link

POSTERIORS_FILE = "posteriors.safetensors"
TAXONOMY_FILE = "taxonomy.json"
CURVES_FILE = "curves.csv"
DECISIONS_FILE = "decisions.csv"
#: Files every saved result and finished run directory holds (``docs/outputs.md``).
RESULT_FILES = ("run.json", "summary.txt", "curves.csv", "decisions.csv", "commitments.csv", "tree.json",
                "tree.graphml", "tree.nwk", "curves.png", "curves.pdf", "rates.png", "rates.pdf", "tree.png",
                "tree.pdf", POSTERIORS_FILE, TAXONOMY_FILE, "report.html")
#: Files written where the result holds evidence maps (``analysis.evidence_maps``).
EVIDENCE_FILES = (EVIDENCE_FILE, "evidence.png", "evidence.pdf")
#: Files written where the result kept samples (image models: previews; x0 strips where predictions were kept).
SAMPLE_FILES = ("samples.csv", "previews", "strips")


def write_result_files(result, out: Path, status: str = "complete") -> list[str]:
    """Write ``result``'s files into ``out`` (created); returns the names written.

    ``run.json`` is written last with ``status``: a reader who finds it complete finds every other
    file complete too.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = result.names_in_files
    curves = {n: result.entropy(n) for n in result.estimates}
    by_axis = {n: result.decisions_by_axis(n) for n in result.estimates}
    decisions = {n: d["log_sigma"] for n, d in by_axis.items()}
    primary = result.primary
    write_curves_csv(out / "curves.csv", {names[n]: c for n, c in curves.items()})
    write_decisions_csv(out / "decisions.csv", {names[n]: d for n, d in by_axis.items()})
    write_tree(out, result.taxonomy, decisions[primary])
    plots.write_figures(out, result.taxonomy, curves, decisions[primary], primary=primary)
    atomic_write_text(out / TAXONOMY_FILE, json.dumps(to_node_link(result.taxonomy), indent=1) + "\n")
    # safetensors, not pickle: loading a result directory can never run code.
    estimates = {n: {k: v for k, v in vars(e).items() if k != "evidence"} for n, e in result.estimates.items()}
    write_record(out / POSTERIORS_FILE, {"estimates": estimates,
                                         "prior": result.prior, "primary": primary, "leaf": result.leaf,
                                         "inside_weighted": result.inside_weighted}, {"kind": "posteriors"})
    commits = {n: result.commitments(n) for n, e in result.estimates.items() if e.log_probs is not None}
    write_commitments_csv(out / "commitments.csv", {names[n]: c for n, c in commits.items()})
    written = [*RESULT_FILES, *write_samples(out, result.samples)]
    evidence = result.evidence_maps()
    if evidence is not None:
        estimator, maps = evidence
        write_evidence(out / EVIDENCE_FILE, estimator, maps, result.taxonomy)
        pictures = result.samples.previews if result.samples is not None else None
        plot_evidence(out / "evidence", maps, result.taxonomy, pictures)
        written += EVIDENCE_FILES
    atomic_write_text(out / "summary.txt", result.summary(decisions[primary]) + "\n")
    write_run_report(out / "report.html", result, curves, decisions, commits.get(primary))
    write_run_json(out / "run.json", run_json(result, decisions, status, commits))
    return written


def run_json(result, decisions: dict, status: str = "complete", commits: dict | None = None) -> dict:
    """``run.json`` of a result: its record (a run's recipe, timings, calls, quality), provenance,
    sample count, estimator costs, the log-sigma decisions of every estimator and the summaries of
    its samples' commitments."""
    costs = {}
    recorded = result.record.get("estimators") if isinstance(result.record.get("estimators"), dict) else {}
    for name, e in result.estimates.items():
        costs[name] = {**(recorded.get(name) or {}), "denoiser_calls": e.denoiser_calls,
                       "classifier_calls": e.classifier_calls}
    payload = {k: v for k, v in result.record.items() if k != "summary_lines"}
    payload.update({
        "kind": result.meta.get("kind", "probe"),
        "status": status,
        "meta": result.meta,
        "n_samples": result.n_samples,
        "primary_estimator": result.primary,
        "bootstrap_seed": result.seed,
        "n_boot": result.n_boot,
        "estimators": costs,
        "decisions": {name: _decisions_to_json(d) for name, d in decisions.items()},
        "commit_threshold": result.commit_threshold,
        "commitments": {name: c.summary(n_boot=result.n_boot, seed=result.seed)
                        for name, c in (commits or {}).items()},
    })
    return payload


def _decisions_to_json(decisions: dict) -> dict:
    return {
        kind: {str(name): (d.to_dict() if d is not None else None) for name, d in group.items()}
        for kind, group in decisions.items()
    }
