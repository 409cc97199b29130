"""A run: recipe in, :class:`~probes.result.ProbeResult` and run directory out.

The recipe is resolved once (:func:`probes.plan.resolve`) and the model built once
(:func:`probes.build.build`); samples are then drawn and probed in batches. Each finished batch is
written to ``batches/`` at once, so an interrupted run loses at most the batch in flight and
``--resume`` continues where it stopped. Every batch draws its randomness from its own seed (recipe
seed, batch index, estimator), so a resumed run gives exactly the numbers of an uninterrupted one.
At the end the batches become one in-memory result (posteriors, kept samples, sample quality,
costs) whose files are written into the run directory, the same files ``ProbeResult.save`` writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import probes.store as store
from probes.build import build, leaf_of_sample, with_grid
from probes.distributed import Group, current_group, env_int
from probes.entropy import decide
from probes.errors import ProbesError, os_errors_named
from probes.estimators import EstimatorOutput
from probes.estimators.base import ProbeContext, check_posteriors
from probes.estimators.evidence import EvidenceMaps
from probes.kept_samples import keep_batch, kept_from_batches
from probes.models.gmm import speciation_by_node
from probes.noise import entropic_grid, make_grid
from probes.plan import Plan, resolve
from probes.progress import Progress
from probes.quality import classifier_features, load_image_folder, measure_quality, reference_files
from probes.recipe import Recipe
from probes.report.files import write_result_files
from probes.report.rundir import name_in_files, write_run_json
from probes.result import ProbeResult, load
from probes.sampling import forward_path, sample


@os_errors_named()
def run(recipe: Recipe | str | Path, out: str | Path, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, recompute_damaged: bool = False,
        stop_after_batches: int | None = None) -> ProbeResult | None:
    """Run ``recipe`` (a :class:`~probes.recipe.Recipe`, a YAML file or a shipped recipe's name) into
    the run directory ``out``; returns the finished :class:`~probes.result.ProbeResult`.

    ``resume`` continues an unfinished run in ``out``, after checking every finished batch (a
    damaged one stops it with one line naming the file, unless ``recompute_damaged``: then it is set
    aside and computed again); ``overwrite`` replaces the run ``out`` holds (never other files,
    never through a symbolic link). ``stop_after_batches`` ends the sampling early after that many *new*
    batches and returns None, leaving an unfinished run (used to test resuming).

    Under ``torchrun`` the batches are spread over the processes (see :mod:`probes.distributed`);
    rank 0 returns the result, the other ranks None.
    """
    for name, value in (("resume", resume), ("overwrite", overwrite), ("progress", progress),
                        ("recompute_damaged", recompute_damaged)):
        if not isinstance(value, bool):
            raise ProbesError(f"run: {name} must be True or False, got {value!r}")
    if recompute_damaged and not resume:
        raise ProbesError("--recompute-damaged: only with --resume (it recomputes damaged batches of the run resumed)")
    if stop_after_batches is not None and (isinstance(stop_after_batches, bool) or not isinstance(
            stop_after_batches, int) or stop_after_batches < 0):
        raise ProbesError(f"run: stop_after_batches must be a whole number >= 0, got {stop_after_batches!r}")
    if not isinstance(out, (str, os.PathLike)) or not os.fspath(out).strip():
        raise ProbesError(f"run: out must be a directory path, got {out!r}")
    plan = resolve(recipe)
    group = current_group()
    n_batches = math.ceil(plan.sampling.samples / plan.sampling.batch_size)
    try:
        with group.stopping_says(lambda: _kept(Path(out), n_batches)):
            return _run(plan, Path(out), resume, overwrite, progress and group.is_main, recompute_damaged,
                        stop_after_batches, group)
    finally:
        group.close()


def _kept(out: Path, n_batches: int) -> str:
    """What a stopped sharded run leaves, and how to continue it (one line)."""
    done = store.finished_batch_count(out)
    return (f"{done} of {n_batches} batches are finished and kept in {out}; run the same command with --resume to "
            f"compute the other {n_batches - done}")


# --- the run directory's life cycle -----------------------------------------------------------


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> dict | None:
    """What ``out`` holds, checked against the flags before anything is built or deleted.

    Returns the marker of the run being resumed (``None`` otherwise).
    """
    _check_writable(out, overwrite)
    holds_something = out.exists() and any(out.iterdir())
    if not holds_something:
        if resume:
            raise ProbesError(f"{out}: nothing to resume (the directory is empty or missing)")
        return None
    marker = store.read_marker(out)
    legacy = marker is None and store.is_legacy_run(out)
    if marker is None and not legacy:
        if overwrite:
            raise ProbesError(f"{out}: holds files that are not a probes run; refusing to delete them")
        raise ProbesError(f"{out}: not empty and not a probes run directory; choose another --out")
    if overwrite:
        foreign = store.foreign_entries(out)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ProbesError(f"{out}: holds files probes did not write ({shown}); refusing to delete them")
        return None
    state = store.run_json_if_readable(out)
    if not resume:
        if state.get("status") == "complete":
            raise ProbesError(f"{out}: already holds a finished run; pass --overwrite to replace it or choose "
                              "another --out")
        done = store.finished_batch_count(out)
        raise ProbesError(f"{out}: holds an unfinished run ({done} batches done); pass --resume to continue it or "
                          "--overwrite to start again")
    if legacy:
        raise ProbesError(f"{out}: written by an older probes whose batch files are not read (pickles can run "
                          "code); pass --overwrite to start again")
    if not marker.get("fingerprint"):
        raise ProbesError(f"{out}/{store.MARKER}: unreadable, so this run's inputs cannot be checked; pass "
                          "--overwrite to start again")
    return marker


def _check_writable(out: Path, overwrite: bool = False) -> None:
    """``--out`` must be (or be creatable as) a directory we can write in; ``--overwrite`` never
    follows a link (it would delete what the link points to)."""
    if out.is_symlink():
        if overwrite:
            raise ProbesError(f"--out {out}: a symbolic link (to {os.readlink(out)}); --overwrite does not follow "
                              "links: give the directory itself")
        if not out.exists():
            raise ProbesError(f"--out {out}: a symbolic link to {os.readlink(out)}, which does not exist")
    if out.exists() and not out.is_dir():
        raise ProbesError(f"--out {out}: exists and is not a directory")
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ProbesError(f"--out {out}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ProbesError(f"--out {out}: cannot create files in {probe} (read-only or no permission)")


def _check_grid_source(plan: Plan, out: Path) -> None:
    """A grid read from the run directory this run writes would vanish with it (and a resume could
    not read it back)."""
    if isinstance(plan.grid, str):
        return
    if Path(plan.grid.from_run).resolve() == out.resolve():
        raise ProbesError(f"sampling.grid.from_run: {plan.grid.from_run} is --out itself; take the grid from another "
                          "run (copy this one elsewhere first)")


def _check_resumable(out: Path, marker: dict, parts: dict[str, str]) -> None:
    """Refuse to mix work made from other inputs, naming what changed."""
    if marker.get("fingerprint") == store.combined(parts):
        return
    what = {"format": "the run-directory format", "recipe": "the recipe", "seed": "the seed",
            "batch_size": "sampling.batch_size", "taxonomy": "the taxonomy's content",
            "model_files": "the model or classifier files", "device": "the device type"}
    old = marker.get("fingerprint_parts") or {}
    changed = [what[k] for k in what if old and old.get(k) != parts.get(k)] or ["the run's inputs"]
    raise ProbesError(f"{out}: {' and '.join(changed)} changed since this run started; --resume needs the same "
                      "inputs (or pass --overwrite)")


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers, so batch b's randomness does not depend on other batches."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _host_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(plan: Plan, ctx: ProbeContext) -> None:
    """Refuse a batch whose recorded trajectory (states and predictions) cannot fit in memory, and
    evidence maps that cannot fit in the host's."""
    s = plan.sampling
    per_value = torch.finfo(ctx.state_dtype).bits // 8
    need = 2 * (s.steps + 1) * s.batch_size * math.prod(ctx.shape) * per_value
    host = _host_memory()
    have = torch.cuda.mem_get_info(ctx.device)[0] if ctx.device.type == "cuda" else host
    if have is not None and need > 0.5 * have:
        raise ProbesError(f"sampling.batch_size: one batch records ~{need / 2**30:.1f} GiB of trajectory "
                          f"({s.steps} steps x {s.batch_size} samples x {math.prod(ctx.shape)} values), more than "
                          f"half of the {have / 2**30:.1f} GiB available; lower batch_size or steps")
    if plan.recipe.analysis.evidence_maps and host is not None:  # float32, on the host, until the files are written
        positions, nodes = math.prod(ctx.shape[-2:]), len(plan.taxonomy.internal_nodes)
        maps = 4 * positions * s.samples * nodes * (s.steps + 1)
        if maps > 0.5 * host:
            raise ProbesError(f"analysis.evidence_maps: the maps take ~{maps / 2**30:.1f} GiB ({s.samples} samples x "
                              f"{nodes} nodes x {s.steps + 1} sigmas x {positions} positions x 4 bytes), more than "
                              f"half of the {host / 2**30:.1f} GiB of memory; lower sampling.samples or the bayes "
                              "sigma_stride, or turn the maps off")


def sampling_grid(plan: Plan, ctx: ProbeContext) -> torch.Tensor:
    """The run's sigma grid: named (``geometric``, ``karras``, ``log_snr``) between the recipe's or the
    model's noise range, or placed by a finished run's leaf entropy (``{from_run: DIR}``)."""
    s = plan.sampling
    hi, lo = s.sigma_max or ctx.sigma_max, s.sigma_min or ctx.sigma_min
    if isinstance(plan.grid, str):
        return make_grid(plan.grid, hi, lo, s.steps)
    return grid_from_run(plan.grid.from_run, hi, lo, s.steps, plan.grid.uniform_share)


def grid_from_run(run_dir, sigma_max: float, sigma_min: float, steps: int, uniform_share: float = 0.5,
                  field: str = "sampling.grid.from_run") -> torch.Tensor:
    """:func:`probes.noise.entropic_grid` from a finished run's leaf-level entropy (its primary
    estimator), read with the checked loader compare uses."""
    try:
        curves = load(run_dir).entropy()
    except ProbesError as err:
        raise ProbesError(f"{field}: {err}") from None
    leaf = curves.level_mean()[:, -1]
    keep = np.isfinite(leaf)
    if keep.sum() < 2:
        raise ProbesError(f"{field}: {run_dir} has no leaf-level entropy curve to place steps by")
    return entropic_grid(torch.tensor(curves.sigmas[keep], dtype=torch.float64),
                         torch.tensor(leaf[keep], dtype=torch.float64), sigma_max, sigma_min, steps, uniform_share)


# --- the run ----------------------------------------------------------------------------------


def _run(plan: Plan, out: Path, resume: bool, overwrite: bool, progress: bool, recompute_damaged: bool,
         stop_after_batches, group: Group) -> ProbeResult | None:
    _check_grid_source(plan, out)
    if plan.quality_reference is not None:  # read at the end of the run: checked before it starts
        reference_files(plan.quality_reference)
    marker = group.on_main(lambda: check_out_dir(out, resume, overwrite))
    t_start = time.perf_counter()
    if group.world > 1 and plan.recipe.device in ("auto", "cuda") and torch.cuda.is_available():
        plan = dataclasses.replace(plan, device=torch.device(f"cuda:{group.local_rank % torch.cuda.device_count()}"))
    ctx = build(plan)
    _set_threads(plan, ctx, group)
    if plan.recipe.analysis.evidence_maps and len(ctx.shape) != 3:
        raise ProbesError(f"analysis.evidence_maps: the maps are per image position; this model's samples are "
                          f"{list(ctx.shape)}, not [C, H, W]")
    _check_memory(plan, ctx)
    s = plan.sampling
    fingerprint_parts = store.fingerprint_parts(plan.recipe, plan.taxonomy,
                                                plan.family.model_files(plan.model, plan.classifier),
                                                ctx.device.type)
    fingerprint = store.combined(fingerprint_parts)
    sigmas = sampling_grid(plan, ctx)
    ctx = with_grid(plan, ctx, sigmas)
    n_batches = math.ceil(s.samples / s.batch_size)
    sizes = [min(s.batch_size, s.samples - b * s.batch_size) for b in range(n_batches)]
    headers = [store.BatchHeader(fingerprint, b, sizes[b]) for b in range(n_batches)]
    payload = {
        "status": "running",
        "name": plan.name,
        "recipe": plan.recipe.model_dump(mode="json"),
        # Relative paths in the recipe are relative to its file: record both, resolved.
        "recipe_path": str(plan.recipe.source) if plan.recipe.source else None,
        "paths": plan.paths,
        "fingerprint": fingerprint,
        "seed": plan.seed,
        "sigmas": sigmas.tolist(),
        "started": store.run_json_if_readable(out).get("started") or (marker or {}).get("created")
        or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if plan.notes:
        payload["notes"] = list(plan.notes)

    def prepare() -> list[int]:
        """Rank 0: the resume checks (inputs, every finished batch), then (only now, with
        everything built and checked) any deletion or creation; a recipe that fails to build, or a
        damaged batch, leaves the old run, or nothing, behind."""
        todo, damaged, stale = list(range(n_batches)), [], []
        if marker is not None:
            _check_resumable(out, marker, fingerprint_parts)
            todo, damaged, stale = store.check_batches(out, headers,
                                                       validate=lambda r, h: batch_problem(r, h, plan, sigmas))
            if damaged and not recompute_damaged:
                path, why = damaged[0]
                more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
                raise ProbesError(f"{path}: {why}{more}; nothing was changed: pass --recompute-damaged to set the "
                                  "damaged batches aside and compute them again")
            for path, why in damaged + stale:
                _note(f"{path}: {why}; set aside as {store.set_aside(path).name} and computed again")
            if (out / "run.json").exists() and not store.run_json_if_readable(out):
                _note(f"{out / 'run.json'}: not a JSON object; written again (it records the run, the batches are "
                      "the run's state)")
        if overwrite and out.exists():
            store.remove_run(out)
        (out / store.BATCH_DIR).mkdir(parents=True, exist_ok=True)
        if marker is None:
            store.write_marker(out, fingerprint_parts, {"processes": group.world})
        elif marker.get("processes", 1) != group.world:
            _note(f"resuming a run started with {marker.get('processes', 1)} process(es) on {group.world}; "
                  "batches do not depend on the process count")
        write_run_json(out / "run.json", payload)
        if group.world > len(todo) > 0:
            _note(f"{group.world} processes for {len(todo)} batches to do: {group.world - len(todo)} will wait idle")
        return todo

    todo = group.on_main(prepare)
    mine = todo[group.rank::group.world]
    t_built = time.perf_counter() - t_start

    # With several processes the bar follows rank 0's share of the batches.
    total = len(mine) if group.world > 1 else n_batches
    t_sampling = time.perf_counter()
    with Progress(f"probing {plan.name}", total=total, done=total - len(mine), unit="batch",
                  enabled=progress) as bar:
        for count, b in enumerate(mine):
            if stop_after_batches is not None and count >= stop_after_batches:
                payload["status"] = "interrupted"
                if group.is_main:
                    write_run_json(out / "run.json", payload)
                return None
            idx = torch.arange(b * s.batch_size, min((b + 1) * s.batch_size, s.samples))
            record = _probe_batch(plan, ctx, b, idx, bar)
            store.save_batch(out, record, headers[b])
            bar.advance()
    t_sampling = time.perf_counter() - t_sampling
    group.barrier()  # every rank's batches are on disk
    if not group.is_main:
        return None

    t_analysis = time.perf_counter()
    batches = load_batches(out, n_batches, validate=lambda r, h: batch_problem(r, h, plan, sigmas))
    result = _result(plan, ctx, batches, payload)
    result.record["timings"] = {
        "build_s": round(t_built, 3),
        "probe_s_this_session": round(t_sampling, 3),
        "analysis_s": round(time.perf_counter() - t_analysis, 3),
        "total_s_this_session": round(time.perf_counter() - t_start, 3),
    }
    write_result_files(result, out)
    result.directory = out
    return result


def load_batches(out: Path, n_batches: int, validate=None) -> list[dict]:
    """The run's finished batches, each checked against the run's fingerprint, its checksum and,
    with ``validate(record, header)``, its contents."""
    fingerprint = (store.read_marker(out) or {}).get("fingerprint")
    if not fingerprint:
        raise ProbesError(f"{out}: no readable {store.MARKER} marker; the batches cannot be checked")
    batches = []
    for b in range(n_batches):
        header = store.BatchHeader(fingerprint, b)
        try:
            record = store.load_batch(store.batch_path(out, b), header)
            why = validate(record, header) if validate is not None else None
            if why:
                raise store.BatchInvalid(why)
        except store.BatchInvalid as why:
            raise ProbesError(f"{store.batch_path(out, b)}: {why}; run again with --resume --recompute-damaged to "
                              "compute it again") from None
        batches.append(record)
    return batches


def batch_problem(record: dict, header: store.BatchHeader, plan: Plan, sigmas: torch.Tensor) -> str | None:
    """What makes a batch record unfit for this run (its sample count, its estimators' grids and
    the shapes of their outputs), or None."""
    n = header.n if header.n is not None else record.get("n")
    if not isinstance(record.get("n"), int) or record["n"] != n or n < 1:
        return f"holds {record.get('n')!r} samples where its header says {n}"
    estimates = record.get("estimators")
    if not isinstance(estimates, dict):
        return "holds no estimator outputs"
    leaves, depth, nodes = len(plan.taxonomy.leaves), plan.taxonomy.max_depth, len(plan.taxonomy.internal_nodes)
    for est in plan.estimators:
        out = estimates.get(est.name)
        if not isinstance(out, dict):
            return f"holds no output of estimator {est.name!r}"
        grid = sigmas[est.grid_index(len(sigmas))]
        got = out.get("sigmas")
        if not isinstance(got, torch.Tensor) or got.shape != grid.shape or not torch.allclose(got.double(), grid,
                                                                                            rtol=1e-12, atol=0):
            return f"estimator {est.name!r} is on another sigma grid"
        # posteriors have one row per sample; entropies one per draw (immse's rows are its data pairs)
        shapes = {"log_probs": (n, len(grid), leaves), "levels": (None, len(grid), depth),
                  "nodes": (None, len(grid), nodes)}
        for key, shape in shapes.items():
            value = out.get(key)
            if value is not None and (not isinstance(value, torch.Tensor) or value.ndim != 3 or any(
                    want is not None and got != want for got, want in zip(value.shape, shape))):
                wanted = ["rows" if w is None else w for w in shape]
                return f"estimator {est.name!r}'s {key} is not {wanted} (samples, sigmas, leaves or levels)"
        if out.get("log_probs") is None and out.get("levels") is None:
            return f"estimator {est.name!r} has neither posteriors nor entropies"
        if getattr(est, "evidence", False):
            problem = _evidence_problem(out.get("evidence"), n, nodes)
            if problem:
                return f"estimator {est.name!r}'s evidence maps {problem}"
    x0 = record.get("x0")
    if x0 is not None and (not isinstance(x0, torch.Tensor) or x0.shape[0] != n):
        return "its final samples do not match its sample count"
    return None


def _evidence_problem(evidence, n: int, nodes: int) -> str | None:
    if not isinstance(evidence, dict):
        return "are missing"
    maps, child, final = evidence.get("maps"), evidence.get("child"), evidence.get("final_leaf")
    if not isinstance(maps, torch.Tensor) or maps.ndim != 5 or maps.shape[:2] != (nodes, n):
        return f"are not [{nodes} nodes, {n} samples, sigmas, H, W]"
    if not isinstance(child, torch.Tensor) or child.shape != (nodes, n):
        return f"name no child per node and sample ([{nodes}, {n}])"
    if not isinstance(final, torch.Tensor) or final.shape != (n,):
        return f"name no final leaf per sample ([{n}])"
    sigmas = evidence.get("sigmas")
    if not isinstance(sigmas, torch.Tensor) or sigmas.shape != (maps.shape[2],):
        return "have no sigma per map"
    return None


def _result(plan: Plan, ctx: ProbeContext, batches: list[dict], payload: dict) -> ProbeResult:
    """The finished batches as one result: posteriors, provenance, kept samples, quality, costs."""
    names = [e.name for e in plan.estimators]
    estimates = {}
    for name in names:
        parts = [b["estimators"][name] for b in batches]
        cat = lambda key: None if parts[0].get(key) is None else torch.cat([p[key] for p in parts])  # noqa: B023
        bounds = None
        if parts[0].get("bounds") is not None:
            bounds = {k: torch.cat([p["bounds"][k] for p in parts]) for k in parts[0]["bounds"]}
        estimates[name] = EstimatorOutput(
            name, parts[0]["sigmas"], log_probs=cat("log_probs"), levels=cat("levels"), nodes=cat("nodes"),
            denoiser_calls=sum(p["denoiser_calls"] for p in parts),
            classifier_calls=sum(p["classifier_calls"] for p in parts), bounds=bounds,
            evidence=None if parts[0].get("evidence") is None else EvidenceMaps.cat(
                [EvidenceMaps.from_record(p["evidence"], plan.taxonomy.internal_nodes) for p in parts]))
    s = plan.sampling
    meta = {"kind": "run", "name": plan.name, "seed": plan.seed, "condition": s.condition,
            "guidance_scale": float(s.guidance.scale), "guidance_interval": s.guidance.interval,
            "names_in_files": {n: name_in_files(n, s.condition, s.guidance.scale, s.guidance.schedule) for n in names},
            "sample_seeds": f"recipe seed {plan.seed}, batches of {s.batch_size}"}
    record = dict(payload, status="complete", n_samples=sum(b["n"] for b in batches), n_batches=len(batches))
    record["estimators"] = {n: {"seconds": round(sum(b["estimators"][n]["seconds"] for b in batches), 3)}
                            for n in names}
    calls = {
        # sampling_denoiser charges guided steps their second evaluation; guided_denoiser counts those
        "sampling_denoiser": sum(int(b.get("sampling_denoiser_calls", 0)) for b in batches),
        "guided_denoiser": sum(int(b.get("guided_calls", 0)) for b in batches),
    }
    record["sampling_denoiser_calls"] = calls["sampling_denoiser"]
    record["calls"] = calls
    # The class prior is known for mixtures, leaf-conditional sampling or when the recipe states
    # it; otherwise the curves estimate it as the mean posterior.
    known_prior = ctx.exact_model is not None or s.condition == "leaf" or plan.recipe.prior is not None
    leaves = [b.get("leaf") for b in batches]
    leaf = torch.cat(leaves).long() if all(v is not None for v in leaves) else None
    result = ProbeResult(taxonomy=plan.taxonomy, estimates=estimates, meta=meta,
                         prior=ctx.prior if known_prior else None, primary=plan.primary_estimator,
                         inside_weighted=ctx.inside_weighted, record=record, n_boot=plan.recipe.analysis.n_boot,
                         seed=plan.seed, leaf=leaf, commit_threshold=plan.recipe.analysis.commit_threshold)
    result.samples = kept_from_batches(batches, plan.taxonomy.leaves, ctx.classifier, ctx.decode, ctx.device)
    lines = []
    quality = _quality(plan, ctx, batches)
    if quality is not None:
        record["quality"] = quality
        lines.append(format_quality(quality, calls))
    if ctx.exact_model is not None:
        record["theory"], text = _theory(ctx, result.entropy())
        lines.append(text)
    record["summary_lines"] = lines
    return result


def _theory(ctx: ProbeContext, curves) -> tuple[dict, str]:
    """Speciation times from the mixture's covariance, next to the measured decisions: both on the
    VP-time axis (the peak of the rate against VP time, not the VP time of the log-sigma peak)."""
    theory = speciation_by_node(ctx.exact_model, ctx.taxonomy)
    measured = decide(curves, n_boot=0, axis="vp_time")["nodes"]
    lines = ["theory (t_S = 0.5 log Lambda of each node's sub-mixture, VP time) vs measured decision "
             "(peak of the rate in VP time):"]
    for node, row in theory.items():
        d = measured.get(node)
        got = f"t={d.vp_time:.3f} (sigma={d.decision_sigma:.3g})" if d is not None else "undecided"
        lines.append(f"  {node}: t_S={row['speciation_time']:.3f}, measured {got}")
    return theory, "\n".join(lines)


def _quality(plan: Plan, ctx: ProbeContext, batches: list[dict]) -> dict | None:
    """Quality of the final samples (see :mod:`probes.quality`); None when no batch kept them."""
    if not batches or any(b.get("x0") is None for b in batches):
        return None
    x0 = torch.cat([b["x0"] for b in batches])
    leaves = [b.get("leaf") for b in batches]
    leaf = torch.cat(leaves) if all(v is not None for v in leaves) and plan.sampling.condition == "leaf" else None
    return measure_quality(x0, leaf, ctx, reference_features(plan, ctx))


def reference_features(plan: Plan, ctx: ProbeContext) -> torch.Tensor | None:
    """Features of the reference data: the recipe's folder of images, else the family's own."""
    if plan.quality_reference is not None:
        images = load_image_folder(plan.quality_reference)
        image_classifier = getattr(ctx.classifier, "classifier", ctx.classifier)  # folders hold images, not latents
        if image_classifier is None:
            raise ProbesError("quality.reference: a reference folder needs a classifier (its feature space)")
        return classifier_features(image_classifier, images.to(ctx.device))
    return ctx.reference(plan.seed) if ctx.reference is not None else None


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


def _probe_batch(plan: Plan, ctx: ProbeContext, b: int, idx: torch.Tensor, bar: Progress) -> dict:
    """Draw one batch of trajectories and run every estimator on it."""
    s = plan.sampling
    g = torch.Generator().manual_seed(_seed(plan.seed, b, 0))
    record_extra = {"batch_seed": _seed(plan.seed, b, 0)}
    bar.status(f"batch {b + 1}: sampling")
    if s.source == "data":
        if ctx.data is None:
            raise ProbesError("sampling.source: this model has no data to noise forward; use 'model'")
        x0, leaf = ctx.data(len(idx), g)
        traj = forward_path(x0.to(ctx.device), ctx.sigmas, g, leaf=leaf)
    else:
        noise = torch.randn((len(idx), *ctx.shape), generator=g, dtype=ctx.state_dtype) * ctx.sigmas[0]
        cond = ctx.generation_cond(idx)
        guided_before = getattr(ctx.guided_denoiser, "extra_evaluations", 0)

        def show_step(done: int, total: int) -> None:
            bar.status(f"batch {b + 1}: sampling step {done}/{total}")

        # Estimators never read a conditional run's predictions (see below): record them only where
        # the first batch keeps a few for its x0 strips. That halves a batch's trajectory memory.
        record = True if cond is None or b == 0 else "states"
        with torch.no_grad():
            traj = sample(ctx.guided_denoiser, noise.to(ctx.device), ctx.sigmas, method=s.method, cond=cond,
                          generator=g, progress=show_step, record=record)
        traj.leaf = leaf_of_sample(s.condition, idx, ctx.prior)
        keep_batch(record_extra, traj, idx, cond, b, getattr(ctx.guided_denoiser, "extra_evaluations", 0)
                   - guided_before)
        if cond is not None:
            # Estimators must read p(leaf | x) without the condition: drop the conditional predictions.
            traj.denoised = None
    # A state goes bad one step after the prediction that made it: name that step's sigma.
    _check_finite(traj.states[1:], ctx.sigmas[:-1], f"sampling batch {b}", "the data or sampler")
    record = {"batch": b, "n": len(idx), "leaf": traj.leaf, "estimators": {}, **record_extra}
    for e, est in enumerate(plan.estimators):
        bar.status(f"batch {b + 1}: {est.name}")
        ge = torch.Generator().manual_seed(_seed(plan.seed, b, e + 1))
        t0 = time.perf_counter()
        with torch.no_grad():
            result = est.estimate(traj, ctx, ge)
        check_posteriors(result, ctx.taxonomy.leaves, f"estimator {est.name!r} (batch {b})",
                         "; finished batches are kept (fix the model or recipe, then --resume)")
        values = result.log_probs if result.log_probs is not None else result.levels
        _check_finite(values.transpose(0, 1), result.sigmas, f"estimator {est.name!r} (batch {b})", "its output",
                      allow_neg_inf=result.log_probs is not None, allow_nan=result.log_probs is None)
        record["estimators"][est.name] = {
            "sigmas": result.sigmas.cpu(),
            "log_probs": None if result.log_probs is None else result.log_probs.float().cpu(),
            "levels": None if result.levels is None else result.levels.double().cpu(),
            "nodes": None if result.nodes is None else result.nodes.double().cpu(),
            "bounds": None if result.bounds is None else {k: v.double().cpu() for k, v in result.bounds.items()},
            "denoiser_calls": int(result.denoiser_calls),
            "classifier_calls": int(result.classifier_calls),
            "seconds": time.perf_counter() - t0,
        }
        if result.evidence is not None:
            record["estimators"][est.name]["evidence"] = result.evidence.to_record(ctx.taxonomy.internal_nodes)
    record["sampling_denoiser_calls"] = int(getattr(traj, "denoiser_calls", 0))  # guided steps count twice
    return record


def _set_threads(plan: Plan, ctx: ProbeContext, group: Group) -> None:
    """Threads chosen on purpose: a model may run best on fewer (a mixture's small tensors gain
    nothing from more threads but burn CPU spinning); networks use torch's default, split between
    the processes of a sharded run on one machine."""
    if plan.recipe.threads != "auto":
        torch.set_num_threads(int(plan.recipe.threads))
    elif ctx.threads is not None:
        torch.set_num_threads(ctx.threads)
    elif group.world > 1 and ctx.device.type == "cpu":
        local = env_int("LOCAL_WORLD_SIZE", group.world)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def _note(message: str) -> None:
    print(f"probes: note: {message}", file=sys.stderr)


def _check_finite(values: torch.Tensor, sigmas: torch.Tensor, step: str, what: str, allow_neg_inf: bool = False,
                  allow_nan: bool = False) -> None:
    """One line naming the step and the first sigma where ``values`` ([S, ...]) stop being finite."""
    bad = values == float("inf")
    if not allow_neg_inf:  # -inf is a valid log-probability (zero mass), not a valid state
        bad |= values == float("-inf")
    if not allow_nan:  # immse marks levels it cannot resolve with NaN
        bad |= torch.isnan(values)
    if bad.any():
        first = int(bad.reshape(bad.shape[0], -1).any(1).nonzero()[0])
        raise ProbesError(f"{step}: {what} produced NaN/inf at sigma={float(sigmas[first]):.4g}; finished batches are "
                          "kept (fix the model or recipe, then --resume)")
