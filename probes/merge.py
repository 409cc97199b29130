"""Results of several processes as one: :func:`merge_results` concatenates :class:`ProbeResult`\\ s
along samples.

Each process of a sharded job (``torchrun``, a Slurm array, several GPUs each calling
``probes.probe`` on its own prompts and seeds) gets a result over its own samples. Per-sample
posteriors do not depend on the other samples of a batch, so concatenating them gives the result
of one process probing all samples; entropy curves and decisions are then computed on the whole.
Results are refused, in one line, unless they share the taxonomy, the estimators, each estimator's
sigma grid, the prior and the provenance (family, pipeline, scheduler, estimator options). The
generator seeds the parts recorded (``meta["generator"]``) are concatenated when each part drew
sample i from its own generator i, and dropped otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch

from probes.errors import ProbesError
from probes.estimators.base import EstimatorOutput
from probes.result import ProbeResult

# Per-sample fields, concatenated along samples; the rest must agree.
_PER_SAMPLE = ("log_probs", "levels", "nodes")
_SHARED = ("prior_levels", "prior_nodes")
# Provenance that differs between parts by design: how many results were merged, and the seeds
# each part's samples were drawn from.
_PER_SAMPLE_META = ("merged_from", "generator")


def merge_results(results: Sequence[ProbeResult]) -> ProbeResult:
    """One :class:`~probes.result.ProbeResult` holding every sample of ``results``, in order.

    Call counts add up; ``output`` and ``trajectory`` (per-process objects) are not kept.
    """
    if isinstance(results, (str, bytes, ProbeResult)) or not isinstance(results, Iterable):
        raise ProbesError(f"merge_results: expected a list of ProbeResults, got {type(results).__name__}")
    results = list(results)
    if not results:
        raise ProbesError("merge_results: no results to merge")
    for k, r in enumerate(results):
        if not isinstance(r, ProbeResult):
            raise ProbesError(f"merge_results: item {k} is a {type(r).__name__}, not a ProbeResult")
    first = results[0]
    for k, r in enumerate(results[1:], start=1):
        _check_same(first, r, k)
    _check_no_repeats(results)
    estimates = {name: _merge_outputs([r.estimates[name] for r in results]) for name in first.estimates}
    meta = dict(first.meta, merged_from=sum(r.meta.get("merged_from", 1) for r in results))
    meta.pop("generator", None)
    generator = _merged_generator([r.meta.get("generator") for r in results])
    if generator is not None:
        meta["generator"] = generator
    return ProbeResult(taxonomy=first.taxonomy, estimates=estimates, meta=meta, prior=first.prior,
                       primary=first.primary, inside_weighted=first.inside_weighted)


def _merged_generator(parts: list) -> dict | None:
    """The merged result's generator seeds: the parts' in sample order when every part drew sample
    i from generator i on one device; otherwise none (one seed no longer says what was drawn)."""
    if not all(isinstance(g, dict) and g.get("per_sample") for g in parts):
        return None
    if len({g.get("device") for g in parts}) != 1:
        return None
    return {"seeds": [s for g in parts for s in g["seeds"]], "per_sample": True, "device": parts[0].get("device")}


def _same_tensor(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and torch.equal(a.cpu(), b.cpu())


def _check_same(first, other, k: int) -> None:
    where = f"merge_results: result {k} differs from result 0"
    if not first.taxonomy.same_tree(other.taxonomy):
        raise ProbesError(f"{where} in its taxonomy ({first.taxonomy.name!r} vs {other.taxonomy.name!r}); "
                          "merge results over one taxonomy")
    if list(first.estimates) != list(other.estimates):
        raise ProbesError(f"{where} in its estimators ({', '.join(first.estimates)} vs {', '.join(other.estimates)})")
    for name, out in first.estimates.items():
        theirs = other.estimates[name]
        if not _same_tensor(out.sigmas, theirs.sigmas):
            raise ProbesError(f"{where} in estimator {name!r}'s sigma grid; probe with the same scheduler, steps "
                              "and sigma_stride")
        for field in _SHARED:
            if not _same_tensor(getattr(out, field), getattr(theirs, field)):
                raise ProbesError(f"{where} in estimator {name!r}'s {field}")
        for field in (*_PER_SAMPLE, "bounds"):
            if (getattr(out, field) is None) != (getattr(theirs, field) is None):
                raise ProbesError(f"{where}: estimator {name!r} has {field} in one and not the other")
    if not _same_tensor(first.prior, other.prior):
        raise ProbesError(f"{where} in its leaf prior")
    if first.inside_weighted != other.inside_weighted:
        raise ProbesError(f"{where} in whether its samples came from the model's whole world or from the taxonomy "
                          "(inside_weighted)")
    if first.primary != other.primary:
        raise ProbesError(f"{where} in its primary estimator ({first.primary!r} vs {other.primary!r})")
    keys = [key for key in sorted(set(first.meta) | set(other.meta))
            if key not in _PER_SAMPLE_META and first.meta.get(key) != other.meta.get(key)]
    if keys:
        raise ProbesError(f"{where} in its provenance ({', '.join(keys)}: {first.meta.get(keys[0])!r} vs "
                          f"{other.meta.get(keys[0])!r})")


def _check_no_repeats(results: list[ProbeResult]) -> None:
    """The same shard twice (one result passed twice, a process's file merged twice) would count its
    samples twice: refuse results that share a sample (an identical row of per-sample estimates,
    which independent draws never give)."""
    name = next(iter(results[0].estimates))
    seen: dict[bytes, tuple[int, int]] = {}
    for k, r in enumerate(results):
        out = r.estimates[name]
        rows = out.log_probs if out.log_probs is not None else out.levels
        for i, row in enumerate(rows.detach().cpu().contiguous()):
            if torch.isnan(row).all():  # wholly unresolved (immse): says nothing of the sample
                continue
            # NaNs of one pattern have one byte pattern too; a digest, not the bytes, so that the
            # check does not hold a second copy of every result's posteriors
            key = hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest()
            if key in seen and seen[key][0] != k:
                j, first = seen[key]
                raise ProbesError(f"merge_results: sample {i} of result {k} is sample {first} of result {j} "
                                  "(the same shard twice?); merge each process's result once")
            seen.setdefault(key, (k, i))


def _merge_outputs(outs: list[EstimatorOutput]) -> EstimatorOutput:
    first = outs[0]
    per_sample = {f: None if getattr(first, f) is None else torch.cat([getattr(o, f) for o in outs])
                  for f in _PER_SAMPLE}
    bounds = None if first.bounds is None else {key: torch.cat([o.bounds[key] for o in outs]) for key in first.bounds}
    return EstimatorOutput(
        first.name, first.sigmas, **per_sample, bounds=bounds,
        denoiser_calls=sum(int(o.denoiser_calls) for o in outs),
        classifier_calls=sum(int(o.classifier_calls) for o in outs),
        prior_levels=first.prior_levels, prior_nodes=first.prior_nodes)
