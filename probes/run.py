"""A run: recipe in, run directory out.

Samples are processed in batches. Each finished batch is written to ``batches/`` at once, so an
interrupted run loses at most the batch in flight and ``--resume`` continues where it stopped.
Every batch draws its randomness from its own seed (recipe seed, batch index, estimator), so a
resumed run gives exactly the numbers of an uninterrupted one. The analysis (entropy curves,
decisions, files, plots) is recomputed from all batches at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from probes.analysis import BATCH_DIR, analyse_run
from probes.components import Components, build_components, leaf_of_sample
from probes.errors import ProbesError
from probes.noise import make_grid
from probes.recipe import Recipe, load_recipe


def add_run_commands(sub) -> None:
    p = sub.add_parser(
        "run", help="probe a model as a recipe says and write a run directory",
        description="Probe a model as RECIPE says: sample, estimate leaf posteriors along the noise levels, "
        "and write entropy curves, decision times and plots to --out.",
    )
    p.add_argument("recipe", help="recipe YAML file (see recipes/)")
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
    recipe = load_recipe(args.recipe, overrides=args.overrides)
    if args.samples is not None:
        recipe.sampling.samples = args.samples
    if args.device:
        recipe.device = args.device
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    result = run_recipe(recipe, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if not args.quiet:
        print(result["summary"])
        print(f"\nwrote {out}/ (run.json, curves.csv, decisions.csv, tree.json, tree.graphml, tree.nwk, *.png)")
    return 0


# --- the run directory's life cycle -----------------------------------------------------------


def recipe_fingerprint(recipe: Recipe) -> str:
    """Hash of everything that changes the numbers (the sample count may grow on resume)."""
    data = recipe.model_dump(mode="json")
    data["sampling"].pop("samples", None)
    data.pop("analysis", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def prepare_out_dir(out: Path, recipe: Recipe, resume: bool, overwrite: bool) -> Optional[dict]:
    """Check what ``out`` holds against the flags; returns the previous run.json when resuming."""
    state_file = out / "run.json"
    if out.exists() and not out.is_dir():
        raise ProbesError(f"{out}: exists and is not a directory")
    holds_something = out.exists() and any(out.iterdir())
    if not holds_something:
        if resume:
            raise ProbesError(f"{out}: nothing to resume (the directory is empty or missing)")
        return None
    if overwrite:
        if not state_file.exists():
            raise ProbesError(f"{out}: holds files that are not a probes run; refusing to delete them")
        shutil.rmtree(out)
        return None
    if not state_file.exists():
        raise ProbesError(f"{out}: not empty and not a probes run directory; choose another --out")
    state = json.loads(state_file.read_text())
    if not resume:
        if state.get("status") == "complete":
            raise ProbesError(f"{out}: already holds a finished run; pass --overwrite to replace it or choose "
                              "another --out")
        done = len(list((out / BATCH_DIR).glob("batch_*.pt")))
        raise ProbesError(f"{out}: holds an unfinished run ({done} batches done); pass --resume to continue it or "
                          "--overwrite to start again")
    if state.get("fingerprint") != recipe_fingerprint(recipe):
        raise ProbesError(f"{out}: the recipe changed since this run started; resume needs the same recipe "
                          "(or use --overwrite)")
    return state


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers, so batch b's randomness does not depend on other batches."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


# --- the run ----------------------------------------------------------------------------------


def run_recipe(recipe: Recipe | str | Path, out: str | Path, resume: bool = False, overwrite: bool = False,
               progress: bool = True, stop_after_batches: Optional[int] = None) -> dict:
    """Run a recipe into ``out``; returns the summary payload (also written as run.json).

    ``stop_after_batches`` ends the sampling early after that many *new* batches, leaving an
    unfinished run (used to test resuming).
    """
    from probes.estimators import ProbeContext, build_estimator
    from probes.report.rundir import write_run_json

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    out = Path(out)
    previous = prepare_out_dir(out, recipe, resume, overwrite)

    t_start = time.perf_counter()
    parts = build_components(recipe)
    estimators = [build_estimator(spec.name, **spec.options) for spec in recipe.estimators]
    # Only now, with everything loaded, does the directory appear: a recipe that fails to build
    # leaves nothing behind.
    (out / BATCH_DIR).mkdir(parents=True, exist_ok=True)
    s = recipe.sampling
    sigmas = make_grid(s.grid, s.sigma_max or parts.sigma_max, s.sigma_min or parts.sigma_min, s.steps)
    ctx = ProbeContext(
        taxonomy=parts.taxonomy, sigmas=sigmas, denoiser=parts.denoiser, cond_denoiser=parts.denoiser,
        conditioner=parts.conditioner, classifier=parts.classifier, prior=parts.prior, sampler=s.method,
        sample_pairs=_pair_sampler(recipe, parts, sigmas), exact_model=parts.exact_model,
        batch_size=s.batch_size,
    )
    t_built = time.perf_counter() - t_start

    payload = {
        "status": "running",
        "name": recipe.name,
        "recipe": recipe.model_dump(mode="json"),
        # Relative paths in the recipe are relative to its file: record both, resolved.
        "recipe_path": str(recipe._source) if recipe._source else None,
        "paths": recipe.resolved_paths(),
        "fingerprint": recipe_fingerprint(recipe),
        "seed": recipe.seed,
        "sigmas": sigmas.tolist(),
        "started": (previous or {}).get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
    }
    write_run_json(out / "run.json", payload)

    n_batches = math.ceil(s.samples / s.batch_size)
    todo = [b for b in range(n_batches) if not (out / BATCH_DIR / f"batch_{b:05d}.pt").exists()]
    bar = tqdm(total=n_batches * len(estimators), initial=(n_batches - len(todo)) * len(estimators),
               desc=f"probing {recipe.name}", unit="est", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    t_sampling = time.perf_counter()
    with bar:
        for count, b in enumerate(todo):
            if stop_after_batches is not None and count >= stop_after_batches:
                payload["status"] = "interrupted"
                write_run_json(out / "run.json", payload)
                return payload
            idx = torch.arange(b * s.batch_size, min((b + 1) * s.batch_size, s.samples))
            record = _probe_batch(recipe, parts, ctx, estimators, sigmas, b, idx, bar)
            _save_atomic(record, out / BATCH_DIR / f"batch_{b:05d}.pt")
    t_sampling = time.perf_counter() - t_sampling

    # The class prior is known for mixtures, leaf-conditional sampling or when the recipe states
    # it; otherwise the engine estimates it as the mean posterior.
    known_prior = parts.exact_model is not None or s.condition == "leaf" or recipe.prior is not None
    summary = analyse_run(out, recipe, parts.taxonomy, [e.name for e in estimators], n_batches,
                          prior=parts.prior if known_prior else None)
    payload.update(summary["payload"])
    if parts.exact_model is not None:
        summary["text"] += "\n" + _theory_text(payload, parts, recipe.primary_estimator)
    payload["status"] = "complete"
    payload["timings"] = {
        "build_s": round(t_built, 3),
        "probe_s_this_session": round(t_sampling, 3),
        "analysis_s": summary["payload"].pop("analysis_s"),
        "total_s_this_session": round(time.perf_counter() - t_start, 3),
    }
    write_run_json(out / "run.json", payload)
    payload["summary"] = summary["text"]
    return payload


def _theory_text(payload: dict, parts: Components, primary: str) -> str:
    """Speciation times from the mixture's covariance, next to the measured decisions."""
    from probes.models.gmm import speciation_by_node
    from probes.noise import vp_time

    theory = speciation_by_node(parts.exact_model, parts.taxonomy)
    payload["theory"] = theory
    lines = ["theory (t_S = 0.5 log Lambda of each node's sub-mixture, VP time) vs measured decision:"]
    for node, row in theory.items():
        measured = payload["decisions"][primary]["nodes"].get(node) or {}
        sigma = measured.get("decision_sigma")
        got = f"t={vp_time(sigma):.3f} (sigma={sigma:.3g})" if sigma else "undecided"
        lines.append(f"  {node}: t_S={row['speciation_time']:.3f}, measured {got}")
    return "\n".join(lines)


def _probe_batch(recipe: Recipe, parts: Components, ctx, estimators, sigmas, b: int, idx: torch.Tensor, bar) -> dict:
    """Draw one batch of trajectories and run every estimator on it."""
    from probes.sampling import forward_path, sample

    s = recipe.sampling
    g = torch.Generator().manual_seed(_seed(recipe.seed, b, 0))
    bar.set_postfix_str(f"batch {b + 1}: sampling")
    guided_before = getattr(parts.generator, "extra_evaluations", 0)
    if s.source == "data":
        if parts.data is None:
            raise ProbesError("sampling.source: this model has no data to noise forward; use 'model'")
        x0, leaf = parts.data(len(idx), g)
        traj = forward_path(x0.to(parts.device), sigmas, g, leaf=leaf)
    else:
        noise = torch.randn((len(idx), *parts.shape), generator=g, dtype=_dtype(parts)) * sigmas[0]
        cond = parts.generation_cond(idx)

        def show_step(done: int, total: int) -> None:
            bar.set_postfix_str(f"batch {b + 1}: sampling step {done}/{total}")

        with torch.no_grad():
            traj = sample(parts.generator, noise.to(parts.device), sigmas, method=s.method, cond=cond, generator=g,
                          progress=show_step)
        traj.leaf = leaf_of_sample(recipe, parts.taxonomy, idx)
        if cond is not None:
            # Estimators must read p(leaf | x) without the condition: drop the conditional predictions.
            traj.denoised = None
    _check_finite(traj.states, sigmas, f"sampling batch {b}", "the model's denoiser")
    record = {"batch": b, "n": len(idx), "leaf": traj.leaf, "estimators": {}}
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
            "denoiser_calls": int(result.denoiser_calls),
            "classifier_calls": int(result.classifier_calls),
            "seconds": time.perf_counter() - t0,
        }
        bar.update(1)
    record["sampling_denoiser_calls"] = int(getattr(traj, "denoiser_calls", 0))  # guided steps count twice
    record["guided_denoiser_calls"] = int(getattr(parts.generator, "extra_evaluations", 0) - guided_before)
    return record


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
            traj = sample(parts.denoiser, noise.to(parts.device), sigmas, method=recipe.sampling.method, cond=cond,
                          generator=g)
        return traj.x0, leaf

    return draw


class _CallableModule(type(sys)):
    """``probes.run(recipe, out)`` calls :func:`run_recipe`. The package attribute ``probes.run``
    is this module once it is imported (Python's import system sets it), so the top-level API
    function and the module have to be one object."""

    def __call__(self, *args, **kwargs) -> dict:
        return run_recipe(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
