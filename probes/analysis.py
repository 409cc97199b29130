"""The end of a run: batches on disk -> entropy curves, decisions, files, plots, and a summary."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from probes.recipe import Recipe
from probes.store import BATCH_DIR  # noqa: F401  (re-exported: the batches folder's name)
from probes.taxonomy import Taxonomy


def load_batches(out: Path, n_batches: int) -> list[dict]:
    """The run's finished batches, each checked against the run's fingerprint and its checksum."""
    from probes.errors import ProbesError
    from probes.store import MARKER, BatchHeader, BatchInvalid, batch_path, load_batch, read_marker

    fingerprint = (read_marker(out) or {}).get("fingerprint")
    if not fingerprint:
        raise ProbesError(f"{out}: no readable {MARKER} marker; the batches cannot be checked")
    batches = []
    for b in range(n_batches):
        try:
            batches.append(load_batch(batch_path(out, b), BatchHeader(fingerprint, b)))
        except BatchInvalid as why:
            raise ProbesError(f"{batch_path(out, b)}: {why}; run again with --resume to recompute it") from None
    return batches


def result_from_batches(batches: list[dict], taxonomy: Taxonomy, estimator_names: list[str],
                        prior: torch.Tensor | None, primary: str, meta: dict | None = None,
                        inside_weighted: bool = True):
    """The finished batches of a run as one :class:`~probes.result.ProbeResult`."""
    from probes.estimators import EstimatorOutput
    from probes.result import ProbeResult

    def cat(results, key):
        return None if results[0].get(key) is None else torch.cat([r[key] for r in results])

    estimates = {}
    for name in estimator_names:
        results = [b["estimators"][name] for b in batches]
        bounds = None
        if results[0].get("bounds") is not None:
            bounds = {k: torch.cat([r["bounds"][k] for r in results]) for k in results[0]["bounds"]}
        estimates[name] = EstimatorOutput(
            name, results[0]["sigmas"], log_probs=cat(results, "log_probs"), levels=cat(results, "levels"),
            nodes=cat(results, "nodes"), denoiser_calls=sum(r["denoiser_calls"] for r in results),
            classifier_calls=sum(r["classifier_calls"] for r in results), bounds=bounds)
    return ProbeResult(taxonomy=taxonomy, estimates=estimates, prior=prior, primary=primary, meta=meta or {},
                       inside_weighted=inside_weighted)


def reported_name(name: str, recipe: Recipe) -> str:
    """The estimator's name in curves.csv / decisions.csv. In guided leaf-conditional runs only
    ``guided`` measures the entropy of the run's own process; the others read the unguided model's
    posterior at guided states, a different quantity, and are reported under that name."""
    return name_in_files(name, recipe.sampling.condition, recipe.sampling.guidance.scale)


def name_in_files(name: str, condition: str, guidance_scale: float) -> str:
    """:func:`reported_name` from the sampling settings alone (as a run.json records them)."""
    guided_run = condition == "leaf" and guidance_scale != 1.0
    if guided_run and name != "guided":
        return f"{name}:unguided_posterior"
    return name


def analyse_run(out: Path, recipe: Recipe, taxonomy: Taxonomy, estimator_names: list[str], n_batches: int,
                prior: torch.Tensor | None = None) -> dict:
    t0 = time.perf_counter()
    batches = load_batches(out, n_batches)
    primary = recipe.primary_estimator
    from probes.components import samples_from_taxonomy

    result = result_from_batches(batches, taxonomy, estimator_names, prior, primary,
                                 inside_weighted=not samples_from_taxonomy(recipe))
    curves, decisions = result.write(out, n_boot=recipe.analysis.n_boot, seed=recipe.seed,
                                     names={n: reported_name(n, recipe) for n in estimator_names})

    costs = {}
    for name, estimate in result.estimates.items():
        costs[name] = {
            "denoiser_calls": estimate.denoiser_calls,
            "classifier_calls": estimate.classifier_calls,
            "seconds": round(sum(b["estimators"][name]["seconds"] for b in batches), 3),
        }
    payload = {
        "n_samples": result.n_samples,
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
    text = result.summary(decisions[primary])
    return {"payload": payload, "text": text, "curves": curves, "decisions": decisions, "batches": batches,
            "result": result}


def _decisions_to_json(decisions: dict) -> dict:
    return {
        kind: {str(name): (d.to_dict() if d is not None else None) for name, d in group.items()}
        for kind, group in decisions.items()
    }
