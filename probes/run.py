"""A run: recipe in, run directory out.

Samples are processed in batches. Each finished batch is written to ``batches/`` at once, so an
interrupted run loses at most the batch in flight and ``--resume`` continues where it stopped.
Every batch draws its randomness from its own seed (recipe seed, batch index, estimator), so a
resumed run gives exactly the numbers of an uninterrupted one. The analysis (entropy curves,
decisions, files, plots) is recomputed from all batches at the end.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from probes.analysis import analyse_run
from probes.components import Components, build_components, leaf_of_sample, samples_from_taxonomy
from probes.denoisers.base import FiniteCheck
from probes.distributed import env_int
from probes.errors import ProbesError
from probes.noise import make_grid
from probes.outcomes import outcomes_of_run
from probes.recipe import DEVICE_PATTERN, Recipe, load_recipe
from probes.report.html import write_run_report


def add_run_commands(sub) -> None:
    p = sub.add_parser(
        "run", help="probe a model as a recipe says and write a run directory",
        description="Probe a model as RECIPE says: sample, estimate leaf posteriors along the noise levels, "
        "and write entropy curves, decision times and plots to --out.",
    )
    p.add_argument("recipe", help="a recipe YAML file, or the name of a shipped recipe "
                                  "(digits, gmm-hierarchy, sd15, ...: probes/recipes/)")
    p.add_argument("--out", "-o", help="run directory (default: runs/<recipe name>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set sampling.guidance.scale=3 (repeatable)")
    p.add_argument("--samples", type=int, help="override sampling.samples")
    p.add_argument("--device", help="override the recipe's device (cpu, cuda, auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    overrides = list(args.overrides)
    # The flags are overrides like any other, so the recipe's checks apply; errors name the flag.
    if args.samples is not None:
        if args.samples < 1:
            raise ProbesError(f"--samples: must be a positive integer, got {args.samples}")
        overrides.append(f"sampling.samples={args.samples}")
    if args.device is not None:
        if not DEVICE_PATTERN.match(args.device):
            raise ProbesError(f"--device: {args.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
        overrides.append(f"device={args.device}")
    recipe = load_recipe(args.recipe, overrides=overrides)
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    result = run_recipe(recipe, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if not args.quiet:
        print(result["summary"])
        print(f"\nwrote {out}/ (report.html, run.json, curves.csv, decisions.csv, samples.csv, tree.*, *.png)")
    return 0


# --- the run directory's life cycle -----------------------------------------------------------


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> dict | None:
    """What ``out`` holds, checked against the flags before anything is built or deleted.

    Returns the marker of the run being resumed (``None`` otherwise).
    """
    from probes import store

    _check_writable(out)
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


def _check_writable(out: Path) -> None:
    """``--out`` must be (or be creatable as) a directory we can write in."""
    if out.is_symlink() and not out.exists():
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


def _check_grid_source(recipe: Recipe, out: Path) -> None:
    """A grid read from the run directory this run writes would vanish with it (and a resume could
    not read it back)."""
    grid = recipe.sampling.grid
    if isinstance(grid, str):
        return
    source = Path(recipe.resolve_path(grid.from_run))
    if source.resolve() == out.resolve():
        raise ProbesError(f"sampling.grid.from_run: {grid.from_run} is --out itself; take the grid from another run "
                          "(copy this one elsewhere first)")


def _check_resumable(out: Path, marker: dict, parts: dict[str, str]) -> None:
    """Refuse to mix work made from other inputs, naming what changed."""
    from probes import store

    if marker.get("fingerprint") == store.combined(parts):
        return
    what = {"format": "the run-directory format", "recipe": "the recipe", "seed": "the seed",
            "batch_size": "sampling.batch_size", "taxonomy": "the taxonomy's content",
            "model_files": "the model or classifier files", "device": "the device type"}
    old = marker.get("fingerprint_parts") or {}
    changed = [what[k] for k in what if old and old.get(k) != parts.get(k)] or ["the run's inputs"]
    raise ProbesError(f"{out}: {' and '.join(changed)} changed since this run started; --resume needs the same "
                      "inputs (or pass --overwrite)")


def model_files(recipe: Recipe) -> list[str]:
    """Files and folders the recipe's model and classifier are read from (for the fingerprint)."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, str) and value and "\n" not in value:
            resolved = recipe.resolve_path(value)
            if os.path.exists(resolved):
                found.append(resolved)

    walk(recipe.model.model_dump(mode="json"))
    if recipe.classifier is not None:
        walk(recipe.classifier.model_dump(mode="json"))
    if recipe.model.kind == "digits" or (recipe.classifier is not None and recipe.classifier.kind == "digits"):
        from probes.models.digits import DEFAULT_DIR

        found.append(str(DEFAULT_DIR))
    return sorted(set(found))


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers, so batch b's randomness does not depend on other batches."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _check_memory(recipe: Recipe, parts: Components) -> None:
    """Refuse a batch whose recorded trajectory (states and predictions) cannot fit in memory."""
    s = recipe.sampling
    per_value = 8 if _dtype(parts) == torch.float64 else 4
    need = 2 * (s.steps + 1) * s.batch_size * math.prod(parts.shape) * per_value
    if parts.device.type == "cuda":
        have = torch.cuda.mem_get_info(parts.device)[0]
    else:
        try:
            have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
    if need > 0.5 * have:
        raise ProbesError(f"sampling.batch_size: one batch records ~{need / 2**30:.1f} GiB of trajectory "
                          f"({s.steps} steps x {s.batch_size} samples x {math.prod(parts.shape)} values), more than "
                          f"half of the {have / 2**30:.1f} GiB available; lower batch_size or steps")


# --- the run ----------------------------------------------------------------------------------


def run_recipe(recipe: Recipe | str | Path, out: str | Path, resume: bool = False, overwrite: bool = False,
               progress: bool = True, stop_after_batches: int | None = None) -> dict:
    """Run a recipe into ``out``; returns the summary payload (also written as run.json).

    ``stop_after_batches`` ends the sampling early after that many *new* batches, leaving an
    unfinished run (used to test resuming).

    Under ``torchrun`` the batches are spread over the processes (see :mod:`probes.distributed`);
    every rank returns, rank 0 with the full payload, the others with ``{"status": "complete"}``.
    """
    from probes.distributed import current_group

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    group = current_group()
    n_batches = math.ceil(recipe.sampling.samples / recipe.sampling.batch_size)
    try:
        with group.stopping_says(lambda: _kept(Path(out), n_batches)):
            return _run(recipe, Path(out), resume, overwrite, progress and group.is_main, stop_after_batches, group)
    finally:
        group.close()


def _kept(out: Path, n_batches: int) -> str:
    """What a stopped sharded run leaves, and how to continue it (one line)."""
    from probes import store

    done = store.finished_batch_count(out)
    return (f"{done} of {n_batches} batches are finished and kept in {out}; run the same command with --resume to "
            f"compute the other {n_batches - done}")


def _run(recipe: Recipe, out: Path, resume: bool, overwrite: bool, progress: bool, stop_after_batches, group) -> dict:
    from probes import store
    from probes.estimators import ProbeContext, build_estimator
    from probes.report.rundir import write_run_json

    _check_grid_source(recipe, out)
    if recipe.quality.reference is not None:  # read at the end of the run: checked before it starts
        from probes.quality import reference_files

        reference_files(recipe.resolve_path(recipe.quality.reference))
    marker = group.on_main(lambda: check_out_dir(out, resume, overwrite))
    t_start = time.perf_counter()
    estimators = [build_estimator(spec.name, **spec.options) for spec in recipe.estimators]
    for est in estimators:  # every grid has sampling.steps sigmas: checked before the model is loaded
        est.check_grid(recipe.sampling.steps)
    if group.world > 1 and recipe.device in ("auto", "cuda") and torch.cuda.is_available():
        recipe = recipe.model_copy(update={"device": f"cuda:{group.local_rank % torch.cuda.device_count()}"})
    parts = build_components(recipe)
    _set_threads(recipe, parts, group)
    _check_memory(recipe, parts)
    fingerprint_parts = store.fingerprint_parts(recipe, parts.taxonomy, model_files(recipe), parts.device.type)
    fingerprint = store.combined(fingerprint_parts)
    s = recipe.sampling
    sigmas = make_grid(s.grid, s.sigma_max or parts.sigma_max, s.sigma_min or parts.sigma_min, s.steps,
                       resolve=recipe.resolve_path)
    n_batches = math.ceil(s.samples / s.batch_size)
    sizes = [min(s.batch_size, s.samples - b * s.batch_size) for b in range(n_batches)]
    headers = [store.BatchHeader(fingerprint, b, sizes[b]) for b in range(n_batches)]
    payload = {
        "status": "running",
        "name": recipe.name,
        "recipe": recipe.model_dump(mode="json"),
        # Relative paths in the recipe are relative to its file: record both, resolved.
        "recipe_path": str(recipe._source) if recipe._source else None,
        "paths": recipe.resolved_paths(),
        "fingerprint": fingerprint,
        "seed": recipe.seed,
        "sigmas": sigmas.tolist(),
        "started": store.run_json_if_readable(out).get("started") or (marker or {}).get("created")
        or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    def prepare() -> list[int]:
        """Rank 0: the resume check, then (only now, with everything built and checked) any deletion
        or creation; a recipe that fails to build leaves the old run, or nothing, behind."""
        if marker is not None:
            _check_resumable(out, marker, fingerprint_parts)
        if overwrite and out.exists():
            store.remove_run(out)
        (out / store.BATCH_DIR).mkdir(parents=True, exist_ok=True)
        if marker is None:
            store.write_marker(out, fingerprint_parts, {"processes": group.world})
        elif marker.get("processes", 1) != group.world:
            _note(f"resuming a run started with {marker.get('processes', 1)} process(es) on {group.world}; "
                  "batches do not depend on the process count")
        write_run_json(out / "run.json", payload)
        todo = store.check_batches(out, headers, report=_note)
        if group.world > len(todo) > 0:
            _note(f"{group.world} processes for {len(todo)} batches to do: {group.world - len(todo)} will wait idle")
        return todo

    todo = group.on_main(prepare)
    mine = todo[group.rank::group.world]
    checked = FiniteCheck(parts.denoiser)
    ctx = ProbeContext(
        taxonomy=parts.taxonomy, sigmas=sigmas, denoiser=checked, cond_denoiser=checked,
        conditioner=parts.conditioner, classifier=parts.classifier, prior=parts.prior, sampler=s.method,
        sample_pairs=_pair_sampler(recipe, parts, sigmas), exact_model=parts.exact_model,
        batch_size=s.batch_size, guided_denoiser=FiniteCheck(parts.generator),
        outside_mass=0.0 if samples_from_taxonomy(recipe) else parts.outside_mass,
        partial_taxonomy=parts.partial_taxonomy, inside_weighted=not samples_from_taxonomy(recipe),
    )
    t_built = time.perf_counter() - t_start

    # With several processes the bar follows rank 0's share of the batches.
    total = len(mine) if group.world > 1 else n_batches
    bar = tqdm(total=total * len(estimators), initial=(total - len(mine)) * len(estimators),
               desc=f"probing {recipe.name}", unit="est", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    t_sampling = time.perf_counter()
    with bar:
        for count, b in enumerate(mine):
            if stop_after_batches is not None and count >= stop_after_batches:
                payload["status"] = "interrupted"
                if group.is_main:
                    write_run_json(out / "run.json", payload)
                return payload
            idx = torch.arange(b * s.batch_size, min((b + 1) * s.batch_size, s.samples))
            record = _probe_batch(recipe, parts, ctx, estimators, sigmas, b, idx, bar)
            store.save_batch(out, record, headers[b])
    t_sampling = time.perf_counter() - t_sampling
    group.barrier()  # every rank's batches are on disk
    if not group.is_main:
        return {"status": "complete", "rank": group.rank}

    # The class prior is known for mixtures, leaf-conditional sampling or when the recipe states
    # it; otherwise the engine estimates it as the mean posterior.
    known_prior = parts.exact_model is not None or s.condition == "leaf" or recipe.prior is not None
    summary = analyse_run(out, recipe, parts.taxonomy, [e.name for e in estimators], n_batches,
                          prior=parts.prior if known_prior else None)
    payload.update(summary["payload"])
    payload.update(outcomes_of_run(out, recipe, parts, summary))  # quality, calls, samples.csv, previews
    if parts.exact_model is not None:
        primary = recipe.primary_estimator
        summary["text"] += "\n" + _theory_text(payload, parts, primary, summary["curves"][primary])
    payload["status"] = "complete"
    payload["timings"] = {
        "build_s": round(t_built, 3),
        "probe_s_this_session": round(t_sampling, 3),
        "analysis_s": summary["payload"].pop("analysis_s"),
        "total_s_this_session": round(time.perf_counter() - t_start, 3),
    }
    write_run_json(out / "run.json", payload)
    write_run_report(out)
    payload["summary"] = summary["text"]
    return payload


def _theory_text(payload: dict, parts: Components, primary: str, curves) -> str:
    """Speciation times from the mixture's covariance, next to the measured decisions: both on the
    VP-time axis (the peak of the rate against VP time, not the VP time of the log-sigma peak)."""
    from probes.entropy import decide
    from probes.models.gmm import speciation_by_node

    theory = speciation_by_node(parts.exact_model, parts.taxonomy)
    payload["theory"] = theory
    measured = decide(curves, n_boot=0, axis="vp_time")["nodes"]
    lines = ["theory (t_S = 0.5 log Lambda of each node's sub-mixture, VP time) vs measured decision "
             "(peak of the rate in VP time):"]
    for node, row in theory.items():
        d = measured.get(node)
        got = f"t={d.vp_time:.3f} (sigma={d.decision_sigma:.3g})" if d is not None else "undecided"
        lines.append(f"  {node}: t_S={row['speciation_time']:.3f}, measured {got}")
    return "\n".join(lines)


def _probe_batch(recipe: Recipe, parts: Components, ctx, estimators, sigmas, b: int, idx: torch.Tensor, bar) -> dict:
    """Draw one batch of trajectories and run every estimator on it."""
    from probes.report.samples import keep_samples
    from probes.sampling import forward_path, sample

    s = recipe.sampling
    g = torch.Generator().manual_seed(_seed(recipe.seed, b, 0))
    record_extra = {"batch_seed": _seed(recipe.seed, b, 0)}
    bar.set_postfix_str(f"batch {b + 1}: sampling")
    if s.source == "data":
        if parts.data is None:
            raise ProbesError("sampling.source: this model has no data to noise forward; use 'model'")
        x0, leaf = parts.data(len(idx), g)
        traj = forward_path(x0.to(parts.device), sigmas, g, leaf=leaf)
    else:
        noise = torch.randn((len(idx), *parts.shape), generator=g, dtype=_dtype(parts)) * sigmas[0]
        cond = parts.generation_cond(idx)
        guided_before = getattr(parts.generator, "extra_evaluations", 0)

        def show_step(done: int, total: int) -> None:
            bar.set_postfix_str(f"batch {b + 1}: sampling step {done}/{total}")

        # Estimators never read a conditional run's predictions (see below): record them only where
        # the first batch keeps a few for its x0 strips. That halves a batch's trajectory memory.
        record = True if cond is None or b == 0 else "states"
        with torch.no_grad():
            traj = sample(FiniteCheck(parts.generator), noise.to(parts.device), sigmas, method=s.method, cond=cond,
                          generator=g, progress=show_step, record=record)
        traj.leaf = leaf_of_sample(recipe, parts.taxonomy, idx, parts.prior)
        keep_samples(record_extra, traj, idx, cond, b, getattr(parts.generator, "extra_evaluations", 0) - guided_before)
        if cond is not None:
            # Estimators must read p(leaf | x) without the condition: drop the conditional predictions.
            traj.denoised = None
    # A state goes bad one step after the prediction that made it: name that step's sigma.
    _check_finite(traj.states[1:], sigmas[:-1], f"sampling batch {b}", "the data or sampler")
    record = {"batch": b, "n": len(idx), "leaf": traj.leaf, "estimators": {}, **record_extra}
    for e, est in enumerate(estimators):
        bar.set_postfix_str(f"batch {b + 1}: {est.name}")
        ge = torch.Generator().manual_seed(_seed(recipe.seed, b, e + 1))
        t0 = time.perf_counter()
        with torch.no_grad():
            result = est.estimate(traj, ctx, ge)
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
        bar.update(1)
    record["sampling_denoiser_calls"] = int(getattr(traj, "denoiser_calls", 0))  # guided steps count twice
    return record


def _set_threads(recipe: Recipe, parts: Components, group) -> None:
    """Threads chosen on purpose: a mixture's small tensors gain nothing from more threads but
    burn CPU spinning (and slow everything else on a shared machine); networks use torch's default,
    split between the processes of a sharded run on one machine."""
    if recipe.threads != "auto":
        torch.set_num_threads(int(recipe.threads))
    elif parts.exact_model is not None:
        torch.set_num_threads(1)
    elif group.world > 1 and parts.device.type == "cpu":
        local = env_int("LOCAL_WORLD_SIZE", group.world)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def _note(message: str) -> None:
    print(f"probes: note: {message}", file=sys.stderr)


def _dtype(parts: Components) -> torch.dtype:
    return torch.float64 if parts.exact_model is not None else torch.float32


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


def _pair_sampler(recipe: Recipe, parts: Components, sigmas: torch.Tensor):
    """Clean samples with a known leaf, for the I-MMSE estimator.

    Exact mixtures and ``source: data`` draw from the data; otherwise each pair is generated by
    the model conditioned on a leaf drawn from the prior.
    """
    if parts.data is not None and (parts.exact_model is not None or recipe.sampling.source == "data"):
        return parts.data
    if parts.conditioner is None:
        return None
    from probes.sampling import sample

    leaves = parts.taxonomy.leaves

    def draw(n: int, g: torch.Generator):
        leaf = torch.multinomial(parts.prior.float(), n, replacement=True, generator=g)
        noise = torch.randn((n, *parts.shape), generator=g, dtype=_dtype(parts)) * sigmas[0]
        cond = parts.conditioner([leaves[i] for i in leaf.tolist()])
        with torch.no_grad():
            traj = sample(FiniteCheck(parts.denoiser), noise.to(parts.device), sigmas, method=recipe.sampling.method,
                          cond=cond, generator=g)
        return traj.x0, leaf

    return draw


class _CallableModule(type(sys)):
    """``probes.run(recipe, out)`` calls :func:`run_recipe`. The package attribute ``probes.run``
    is this module once it is imported (Python's import system sets it), so the top-level API
    function and the module have to be one object."""

    def __call__(self, *args, **kwargs) -> dict:
        return run_recipe(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
