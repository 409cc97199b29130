"""A guidance interval derived from a measurement: ``probes interval RUN [--against UNGUIDED]``.

Two rules (the reasons are in ``docs/control.md``):

* **From a guided/unguided pair** (``--against``): per taxonomy level,
  ``dI(sigma) = I_guided(cell; x_sigma) - I_unguided(cell; x_sigma)``. Guidance acts where the gap
  *grows* as sampling proceeds, i.e. where ``g(sigma) = d dI / d(-log sigma)`` is positive; its
  band is where ``g`` stays above half its peak. By the chain rule the information about level L
  is that about level 1 plus what each finer level adds, so the band is taken for each of those
  parts (``dI_l - dI_{l-1}``, l = 1..L) and the interval spans them all: before it guidance has
  nothing to act on, after it the unguided model catches up on its own.
* **From one run's decision windows**: the half-peak window of the chosen node (``--node``) or
  level cut (``--level``, default the leaf level), i.e. where the model decides. Guiding there
  steers the decision itself and leaves the early (layout) and late (detail) phases alone.

The last line printed is the recipe line ``sampling.guidance.interval: [lo, hi]``. With
``--for diffusers --steps N`` the lines before it give the same interval as the ``start``/``stop``
fractions of diffusers' ``ClassifierFreeGuidance`` guider for the run's scheduler and N steps
(:mod:`probes.diffusers_guidance`). ``--per-node`` derives a schedule instead (one window per
decided node, ``sampling.guidance.schedule``; :mod:`probes.denoisers.per_node`).

Runs and saved results (``ProbeResult.save``) load through :func:`probes.load`, which checks every
file; the curves and decision windows are computed from the posteriors, as ``probes compare``
does. How a result was sampled (conditioning, guidance scale) comes from its recipe for runs and
from what ``probes.probe`` recorded for saved results; what is not recorded is not checked.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from probes.comparison import estimator_name
from probes.diffusers_guidance import guider_fractions, load_scheduler
from probes.errors import ProbesError
from probes.fileio import read_text
from probes.recipe import recipe_from_dict
from probes.result import load

HALF = 0.5  # band threshold: the same half-peak convention as decision windows


def add_interval_commands(sub) -> None:
    p = sub.add_parser(
        "interval", help="derive a guidance interval from a run (or a guided/unguided pair)",
        description="Derive sampling.guidance.interval from where the chosen level is decided (one run) or where "
        "guidance changes the information about it (RUN guided, --against the same recipe unguided).",
    )
    p.add_argument("run", help="finished run directory (the guided one when --against is given)")
    p.add_argument("--against", metavar="UNGUIDED_RUN", help="the same recipe run without guidance")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--level", type=int, help="taxonomy level (depth of the cut; default: the leaf level)")
    which.add_argument("--node", help="internal node whose decision window to use (single-run rule)")
    p.add_argument("--estimator", help="estimator whose curves to read (default: the run's primary)")
    p.add_argument("--per-node", action="store_true",
                   help="derive a per-node schedule from RUN's decision windows (prints sampling.guidance.schedule)")
    p.add_argument("--scale", type=float, help="guidance scale of each --per-node window (default: RUN's own scale)")
    p.add_argument("--for", dest="target", choices=["diffusers"],
                   help="also give the interval as diffusers' ClassifierFreeGuidance start/stop (needs --steps)")
    p.add_argument("--steps", type=int, help="inference steps of the diffusers pipeline (--for diffusers)")
    p.add_argument("--scheduler", metavar="DIR",
                   help="diffusers scheduler folder for --for diffusers (default: RUN's model's own scheduler)")
    p.set_defaults(func=_cmd_interval)


def _cmd_interval(args) -> int:
    _check_flags(args)
    if args.per_node:
        result = derive_schedule(load(Path(args.run)), args.run, scale=args.scale, estimator=args.estimator)
    else:
        result = derive_interval(args.run, against=args.against, level=args.level, node=args.node,
                                 estimator=args.estimator)
        if args.target == "diffusers":
            lines = result["text"].splitlines()
            extra = for_diffusers(load(Path(args.run)), args.run, result["interval"], args.steps,
                                  scheduler=args.scheduler)
            result["text"] = "\n".join(lines[:-1] + extra["text"].splitlines() + lines[-1:])
    print(result["text"])
    return 0


def _check_flags(args) -> None:
    """Flags that do not go together: one line, before any file is read."""
    if args.per_node:
        for flag, given in (("--against", args.against), ("--level", args.level), ("--node", args.node),
                            ("--for", args.target)):
            if given is not None:
                raise ProbesError(f"{flag}: --per-node derives one window per node from one run; leave {flag} out")
    elif args.scale is not None:
        raise ProbesError("--scale: sets the scale of each --per-node window; add --per-node or leave it out")
    if args.target == "diffusers" and args.steps is None:
        raise ProbesError("--for diffusers: give the pipeline's number of inference steps with --steps N")
    if args.target is None and (args.steps is not None or args.scheduler is not None):
        flag = "--steps" if args.steps is not None else "--scheduler"
        raise ProbesError(f"{flag}: converts the interval for diffusers; add --for diffusers")


def _guidance(result) -> tuple[float | None, str | None]:
    """``(guidance scale, sampling condition)`` as recorded in the result's provenance (None: not
    recorded, as for a pipeline probed without ``guidance_scale``)."""
    scale = result.meta.get("guidance_scale")
    return (None if scale is None else float(scale)), result.meta.get("condition")


def derive_interval(run, against=None, level: int | None = None, node: str | None = None,
                    estimator: str | None = None) -> dict:
    """``{"interval": (lo, hi), "rule": ..., "text": ...}``; every bad input is one ProbesError line."""
    run = Path(run)
    result = load(run)
    estimator = estimator or result.primary
    scale, condition = _guidance(result)
    if condition == "none":
        raise ProbesError(f"{run}: sampled without conditioning (sampling.condition: none), so it holds no guidance "
                          "information; run the recipe with sampling.condition: leaf")
    if against is not None:
        if node is not None:
            raise ProbesError("--node: the guided/unguided rule works per level; use --level with --against")
        return _from_pair(run, result, Path(against), level, estimator, scale)
    return _from_windows(run, result, level, node, estimator)


def _check_level(level: int | None, levels: list[str], run: Path) -> str:
    depth = max(int(v) for v in levels)
    if level is None:
        return str(depth)
    if str(level) not in levels:
        raise ProbesError(f"--level {level}: {run}'s taxonomy has levels 1..{depth}")
    return str(level)


def _from_windows(run: Path, result, level, node, estimator) -> dict:
    name = _estimator(result, estimator, run)
    decisions = result.decisions(estimator=name, n_boot=0, kind="both")
    if node is not None:
        nodes = [str(n) for n in decisions["nodes"]]
        if node not in nodes:
            shown = ", ".join(nodes[:8]) + (" ..." if len(nodes) > 8 else "")
            raise ProbesError(f"--node {node!r}: not an internal node of {run}'s taxonomy (internal nodes: {shown})")
        decision, what = decisions["nodes"][node], f"node {node!r}"
    else:
        depth = _check_level(level, [str(k) for k in decisions["levels"]], run)
        decision, what = decisions["levels"][int(depth)], f"level {depth}"
    if decision is None:
        raise ProbesError(f"{run}: {what} is undecided in this run, so it has no decision window")
    lo, hi = (float(v) for v in decision.window)
    text = [f"{run}: {what} decides at sigma={decision.decision_sigma:.3g}, half-peak window "
            f"[{lo:.3g}, {hi:.3g}] ({estimator} estimator)",
            "rule: guide where the model decides (the decision window)"]
    return _result((lo, hi), "decision-window", text)


def _from_pair(run: Path, result, against: Path, level, estimator, scale: float | None) -> dict:
    plain_result = load(against)
    scale_u, _ = _guidance(plain_result)
    if scale == 1.0:
        raise ProbesError(f"{run}: has no guidance (sampling.guidance.scale 1); give the guided run first and the "
                          "unguided one with --against")
    if scale_u is not None and scale_u != 1.0 and plain_result.meta.get("guidance_interval") is None:
        raise ProbesError(f"--against {against}: is guided too (scale {scale_u:g}); give the same recipe run with "
                          "sampling.guidance.scale=1")
    guided, plain = _levels(result, estimator, run), _levels(plain_result, estimator, against)
    name = _check_level(level, list(guided), run)
    if set(plain) != set(guided):
        raise ProbesError(f"--against {against}: its taxonomy levels differ from {run}'s; pair runs of one recipe")
    sig = guided[name][0]
    if any(len(plain[k][0]) != len(sig) or not np.allclose(plain[k][0], sig, rtol=1e-9) for k in plain):
        raise ProbesError(f"--against {against}: its sigma grid differs from {run}'s; use the same sampling grid")
    # Chain rule: the information about level L is that about level 1 plus, for each finer level,
    # what it adds beyond the level above. Guidance must act wherever any of these parts grows.
    text, bands, above = [], [], np.zeros(len(sig))
    for k in sorted(guided, key=int)[: int(name)]:
        gap = np.nan_to_num(guided[k][1]) - np.nan_to_num(plain[k][1])
        lo, hi, peak, gain = gain_band(sig, gap - above)
        above = gap
        if lo is None:
            text.append(f"  level {k}: guidance adds no information here")
            continue
        bands.append((lo, hi))
        text.append(f"  level {k}{' beyond level ' + str(int(k) - 1) if int(k) > 1 else ''}: gained fastest at "
                    f"sigma={peak:.3g} ({gain:.3g} nats per unit log sigma), above half that for sigma in "
                    f"[{lo:.3g}, {hi:.3g}]")
    if not bands:
        raise ProbesError(f"{run}: guidance does not change the information about level {name} against {against}")
    lo, hi = min(b[0] for b in bands), max(b[1] for b in bands)
    guidance = "" if scale is None else f" (guidance {scale:g})"
    text.insert(0, f"{run}{guidance} vs {against}: where guidance adds information about level {name} "
                   f"({estimator} estimator)")
    text.append("rule: guide over the half-peak bands of d dI/d(-log sigma), level by level (chain rule)")
    return _result((lo, hi), "guidance-gain", text)


def gain_band(sigmas: np.ndarray, delta: np.ndarray, threshold: float = HALF):
    """Where ``delta`` (on a descending grid) grows fastest as sigma falls.

    Returns ``(lo, hi, peak_sigma, peak_rate)``: the contiguous band around the peak of
    ``g = d delta / d(-log sigma)`` where ``g >= threshold * peak`` (``None``s when ``g`` never
    becomes positive).
    """
    sigmas, delta = np.asarray(sigmas, dtype=float), np.asarray(delta, dtype=float)
    g = np.gradient(delta, -np.log(sigmas))
    if not (g > 0).any():
        return None, None, None, None
    i = int(np.argmax(g))
    above = g >= threshold * g[i]
    a, b = i, i
    while a > 0 and above[a - 1]:
        a -= 1
    while b + 1 < len(g) and above[b + 1]:
        b += 1
    # The band's edges are grid points; include the step beyond each edge, since a sampler's step
    # from sigma_k to sigma_k+1 is guided by the test on sigma_k.
    return float(sigmas[min(b + 1, len(g) - 1)]), float(sigmas[max(a - 1, 0)]), float(sigmas[i]), float(g[i])


def _result(interval: tuple[float, float], rule: str, text: list[str]) -> dict:
    lo, hi = (float(f"{v:.3g}") for v in interval)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ProbesError(f"the derived interval [{lo:g}, {hi:g}] is empty; the curves are too coarse to place it")
    text.append(f"sampling.guidance.interval: [{lo:g}, {hi:g}]")
    return {"interval": (lo, hi), "rule": rule, "text": "\n".join(text)}


# --- the results' curves ------------------------------------------------------------------------


def _estimator(result, estimator: str, source: Path) -> str:
    """The estimator's name in ``result`` (guided runs' files call posterior estimators
    ``<name>:unguided_posterior``; either name is accepted)."""
    name = estimator_name(result, estimator)
    if name not in result.estimates:
        raise ProbesError(f"{source}: no curves for estimator {estimator!r}")
    return name


def _levels(result, estimator: str, source: Path) -> dict:
    """{level depth as text: (sigma descending, mutual information)} of one estimator's curves."""
    curves = result.entropy(_estimator(result, estimator, source))
    order = np.argsort(-curves.sigmas, kind="stable")
    mutual_info = curves.mutual_information()[order]
    return {str(k): (curves.sigmas[order], mutual_info[:, j]) for j, k in enumerate(curves.level_names)}


# --- a per-node schedule --------------------------------------------------------------------------


def derive_schedule(result, run, scale: float | None = None, estimator: str | None = None) -> dict:
    """``{"schedule": [{node, interval, scale}], "text": ...}`` from the half-peak decision window of
    every decided internal node of ``result`` (loaded from ``run``); the text ends with the recipe
    block ``sampling: guidance: schedule:``. ``scale`` defaults to the result's own guidance scale."""
    run = Path(run)
    recorded, condition = _guidance(result)
    if condition == "none":
        raise ProbesError(f"{run}: sampled without conditioning (sampling.condition: none); per-node guidance "
                          "guides leaf-conditional samples: run the recipe with sampling.condition: leaf")
    if scale is None:
        if recorded is None or recorded == 1.0:
            raise ProbesError(f"--per-node: {run} is not guided, so it has no scale to reuse; give one with --scale")
        scale = recorded
    if not scale > 0:
        raise ProbesError(f"--scale: a guidance scale must be positive, got {scale:g}")
    estimator = estimator or result.primary
    name = _estimator(result, estimator, run)
    decisions = result.decisions(estimator=name, n_boot=0, kind="nodes")
    schedule, text, undecided = [], [], []
    for node, decision in decisions.items():
        if decision is None:
            undecided.append(str(node))
            continue
        lo, hi = (float(f"{float(v):.3g}") for v in decision.window)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            undecided.append(str(node))
            continue
        schedule.append({"node": str(node), "interval": [lo, hi], "scale": float(scale)})
        text.append(f"  {node}: decides at sigma={decision.decision_sigma:.3g}, window [{lo:g}, {hi:g}]")
    if not schedule:
        raise ProbesError(f"{run}: no node is decided in this run, so there are no windows to guide in")
    text.insert(0, f"{run}: per-node decision windows ({estimator} estimator), guidance {scale:g} in each")
    if undecided:
        text.append(f"  undecided (no window, not guided): {', '.join(undecided)}")
    text.append("rule: guide each decision in its own window (child of the node against the node)")
    text += ["sampling:", "  guidance:", "    schedule:"]
    text += [f"      - {{node: {_yaml_word(e['node'])}, interval: [{e['interval'][0]:g}, {e['interval'][1]:g}], "
             f"scale: {e['scale']:g}}}" for e in schedule]
    return {"schedule": schedule, "rule": "per-node-windows", "text": "\n".join(text)}


def _yaml_word(text: str) -> str:
    """A node name as a YAML flow scalar: bare when it reads back as the same string."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", text) and text.lower() not in (
            "true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"):
        return text
    return json.dumps(text)


# --- the interval for diffusers -------------------------------------------------------------------


def for_diffusers(result, run, interval: tuple[float, float], steps: int, scheduler=None) -> dict:
    """The guided steps of ``interval`` for a diffusers pipeline with ``steps`` inference steps on
    ``scheduler`` (a folder, a scheduler object, or ``None``: the run's model's own scheduler):
    ``ClassifierFreeGuidance(start=, stop=)`` fractions, the callback, and the sigma interval those
    steps cover. ``{"start", "stop", "sigma_interval", "text"}``."""
    run = Path(run)
    if scheduler is None:
        scheduler = _run_scheduler(result, run)
    elif isinstance(scheduler, (str, Path)):
        scheduler = load_scheduler(scheduler)
    lo, hi = interval
    f = guider_fractions(lo, hi, scheduler, steps)
    name = type(scheduler).__name__
    if f["first"] == f["end"]:
        raise ProbesError(f"--for diffusers: no step of {name} with {steps} steps has sigma in ({lo:g}, {hi:g}] "
                          f"(its sigmas run from {f['sigmas'][0]:.3g} to {f['sigmas'][-1]:.3g}); take more steps")
    below, top = f["sigma_interval"]
    text = [f"for diffusers: {name} with {steps} steps guides steps {f['first']} to {f['end'] - 1} "
            f"(of 0..{steps - 1}), sigma {top:.3g} down to {f['sigmas'][f['end'] - 1]:.3g}",
            f"  modular pipelines: ClassifierFreeGuidance(start={f['start']:g}, stop={f['stop']:g})",
            f"  standard pipelines: callback_on_step_end=probes.guidance_window({lo:g}, {hi:g}) (the first step "
            "follows the call's guidance_scale)",
            f"  the same steps on this schedule: sigma in ({below:.4g}, {top:.4g}]"]
    return {"start": f["start"], "stop": f["stop"], "sigma_interval": f["sigma_interval"], "text": "\n".join(text)}


def _run_scheduler(result, run: Path):
    """The diffusers scheduler of the model a run sampled, or one line asking for --scheduler."""
    ask = "give a scheduler folder with --scheduler DIR"
    if result.meta.get("kind") != "run":
        recorded = result.meta.get("scheduler")
        what = f"records its scheduler's class ({recorded}) but not its configuration" if recorded else \
            "records no scheduler"
        raise ProbesError(f"{run}: {what}; {ask}")
    state = json.loads(read_text(run / "run.json", "run.json"))
    recipe = recipe_from_dict(state.get("recipe"), source=str(run / "run.json"))
    paths = state.get("paths") if isinstance(state.get("paths"), dict) else {}
    resolved = {field.split(".", 1)[1]: value for field, value in paths.items() if field.startswith("model.")}
    model = recipe.model.model_copy(update={k: v for k, v in resolved.items() if k in type(recipe.model).model_fields})
    kind = recipe.model.kind
    scheduler = recipe.family.scheduler(model)
    if scheduler is not None:
        return scheduler
    raise ProbesError(f"{run}: its model ({kind}) has no local diffusers scheduler to read; {ask}")
