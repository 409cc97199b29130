"""What a run produced besides its curves: sample quality, denoiser calls, and the kept samples.

Called once at the end of a run, with the batches the analysis read; adds to run.json

* ``quality``: see :mod:`probes.quality` (absent when the run kept no final samples);
* ``calls``: ``sampling_denoiser`` (sample-evaluations spent drawing the trajectories, the
  unconditional branch of guidance included) and ``guided_denoiser`` (the extra unconditional
  evaluations classifier-free guidance spent; 0 without guidance);

and writes ``samples.csv``, ``previews/`` and ``strips/`` (see :mod:`probes.report.samples`).
"""

from __future__ import annotations

from pathlib import Path


def outcomes_of_run(out: Path, recipe, parts, summary: dict) -> dict:
    from probes.quality import run_quality
    from probes.report.samples import write_sample_files

    batches = summary["batches"]  # read and checked once, by the analysis
    guided = sum(int(b.get("guided_calls", 0)) for b in batches)
    payload = {"calls": {
        # sampling_denoiser_calls already charges guided steps their second evaluation
        "sampling_denoiser": sum(int(b.get("sampling_denoiser_calls", 0)) for b in batches),
        "guided_denoiser": guided,
    }}
    quality = run_quality(batches, recipe, parts)
    if quality is not None:
        payload["quality"] = quality
        summary["text"] += "\n" + format_quality(quality, payload["calls"])
    write_sample_files(out, batches, parts, recipe)
    return payload


def format_quality(quality: dict, calls: dict) -> str:
    parts = []
    if "conditional_accuracy" in quality:
        parts.append("conditional accuracy " + ", ".join(
            f"level {k}: {v:.3f}" for k, v in quality["conditional_accuracy"].items()))
    if "frechet_distance" in quality:
        parts.append(f"Frechet distance {quality['frechet_distance']:.4g} (vs {quality['frechet_reference_n']} "
                     "reference samples)")
    parts.append(f"guided denoiser calls {calls['guided_denoiser']}")
    return "sample quality: " + "; ".join(parts)
