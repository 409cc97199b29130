"""The end of a run: batches on disk -> entropy curves, decisions, files, plots, and a summary."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from probes.recipe import Recipe
from probes.taxonomy import Taxonomy

BATCH_DIR = "batches"  # finished batches of a run directory, one file each


def load_batches(out: Path, n_batches: int) -> list[dict]:
    return [torch.load(out / BATCH_DIR / f"batch_{b:05d}.pt", weights_only=False) for b in range(n_batches)]


def curves_from_batches(batches: list[dict], name: str, taxonomy: Taxonomy, prior: torch.Tensor | None):
    """One estimator's entropy curves over all batches."""
    from probes.entropy import EntropyCurves, tree_entropy

    results = [b["estimators"][name] for b in batches]
    sigmas = results[0]["sigmas"]
    if results[0]["log_probs"] is not None:
        log_probs = torch.cat([r["log_probs"] for r in results])
        return tree_entropy(log_probs, taxonomy, sigmas, prior=prior)
    return EntropyCurves.from_per_sample(
        sigmas=sigmas, taxonomy=taxonomy, levels=torch.cat([r["levels"] for r in results]),
        nodes=torch.cat([r["nodes"] for r in results]), prior=prior,
    )


def analyse_run(out: Path, recipe: Recipe, taxonomy: Taxonomy, estimator_names: list[str], n_batches: int,
                prior: torch.Tensor | None = None) -> dict:
    from probes.entropy import decide
    from probes.report import plots
    from probes.report.rundir import write_curves_csv, write_decisions_csv, write_tree

    t0 = time.perf_counter()
    batches = load_batches(out, n_batches)
    curves = {name: curves_from_batches(batches, name, taxonomy, prior) for name in estimator_names}
    decisions = {name: decide(c, n_boot=recipe.analysis.n_boot, seed=recipe.seed) for name, c in curves.items()}
    primary = recipe.primary_estimator

    write_curves_csv(out / "curves.csv", curves)
    write_decisions_csv(out / "decisions.csv", decisions)
    write_tree(out, taxonomy, decisions[primary])
    plots.plot_curves(out / "curves.png", curves)
    plots.plot_tree(out / "tree.png", taxonomy, decisions[primary])
    plots.plot_rates(out / "rates.png", curves[primary], decisions[primary])

    costs = {}
    for name in estimator_names:
        results = [b["estimators"][name] for b in batches]
        costs[name] = {
            "denoiser_calls": sum(r["denoiser_calls"] for r in results),
            "classifier_calls": sum(r["classifier_calls"] for r in results),
            "seconds": round(sum(r["seconds"] for r in results), 3),
        }
    payload = {
        "n_samples": sum(b["n"] for b in batches),
        "n_batches": n_batches,
        "primary_estimator": primary,
        "sampling_denoiser_calls": sum(b["sampling_denoiser_calls"] for b in batches),
        # Sample-evaluations: a guided step costs two; guided_denoiser counts the second ones.
        "calls": {
            "sampling_denoiser": sum(b["sampling_denoiser_calls"] for b in batches),
            "guided_denoiser": sum(b.get("guided_denoiser_calls", 0) for b in batches),
        },
        "estimators": costs,
        "decisions": {name: _decisions_to_json(d) for name, d in decisions.items()},
        "analysis_s": round(time.perf_counter() - t0, 3),
    }
    text = format_decision_tree(taxonomy, decisions[primary], title=f"{taxonomy.name}: decision-time tree "
                                f"({primary} estimator, {payload['n_samples']} samples)")
    return {"payload": payload, "text": text, "curves": curves, "decisions": decisions}


def _decisions_to_json(decisions: dict) -> dict:
    return {
        kind: {str(name): (d.to_dict() if d is not None else None) for name, d in group.items()}
        for kind, group in decisions.items()
    }


def format_decision_tree(taxonomy: Taxonomy, decisions: dict, title: str = "") -> str:
    """The taxonomy as text, each internal node with its decision sigma, window and interval."""
    nodes = decisions["nodes"]
    lines = [title] if title else []
    lines.append("node: decision sigma [half-peak window] (95% bootstrap interval)")

    def describe(n: str) -> str:
        label = taxonomy.node_attrs(n).get("label", n)
        name = n if str(label) == str(n) else f"{n} ({label})"
        if taxonomy.is_leaf(n):
            return name
        d = nodes.get(n)
        if d is None or d.decision_sigma is None:
            return f"{name}: undecided"
        edge = "  (peak at grid edge)" if getattr(d, "at_edge", False) else ""
        interval = f" ({d.interval[0]:.3g}-{d.interval[1]:.3g})" if d.interval is not None else ""
        return f"{name}: sigma={d.decision_sigma:.3g} [{d.window[0]:.3g}, {d.window[1]:.3g}]{interval}{edge}"

    def walk(n: str, prefix: str, last: bool, top: bool) -> None:
        lines.append(describe(n) if top else f"{prefix}{'└── ' if last else '├── '}{describe(n)}")
        kids = taxonomy.children(n)
        for i, c in enumerate(kids):
            walk(c, prefix if top else prefix + ("    " if last else "│   "), i == len(kids) - 1, False)

    walk(taxonomy.root, "", True, True)
    levels = decisions.get("levels", {})
    if levels:
        lines.append("level cuts: " + ", ".join(
            f"depth {k}: sigma={v.decision_sigma:.3g}" if v is not None and v.decision_sigma is not None
            else f"depth {k}: undecided" for k, v in levels.items()))
    return "\n".join(lines)
