"""Reading a diffusers scheduler's steps on the sigma axis, and which estimators each allows.

Each supported scheduler keeps its state in one layout (``vp``, ``ve`` or ``flow``, see
:func:`probes.denoisers.parameterisations.to_sigma_axis`) and takes one kind of step:

* ``deterministic``: the step from ``x_i`` to ``x_{i+1}`` adds no noise (DDIM with eta 0, Euler,
  DPM-Solver, UniPC, flow-matching Euler): there is no Gaussian kernel for ``bayes`` to invert;
* ``ancestral``: ``x_{i+1} ~ N(a x_i + (1 - a) D, (1 - a) sigma_{i+1}^2)`` with
  ``a = sigma_{i+1}^2 / sigma_i^2`` on the sigma axis (DDPM's posterior step, Euler ancestral):
  exactly the kernel ``bayes`` inverts;
* ``other-noise``: steps that add fresh noise on another kernel (LCM, TCD, SDE DPM-Solver, DDIM
  with ``eta > 0``, DDPM with a learned variance): no ``bayes`` either.

``plugin`` (the pipeline's own x0 prediction, classified) and ``rollout`` (stochastic completions
with the family's denoiser) work on every supported scheduler. ``exact`` needs a Gaussian mixture
and ``immse`` labelled data, neither of which a pipeline has.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from probes.denoisers.parameterisations import sigma_of_flow_t, to_sigma_axis, x0_from_output
from probes.errors import ProbesError


@dataclass(frozen=True)
class SchedulerKind:
    layout: str  # vp | ve | flow
    kernel: str  # deterministic | ancestral | other-noise (fresh noise, but not bayes's kernel)


#: scheduler class name -> how its steps read. Second-order schedulers (Heun, KDPM2) call the
#: model twice per step: only the first call of each step sees a state of the trajectory
#: (:func:`is_trajectory_step`). The docs' table of supported schedulers is checked against this.
SCHEDULERS: dict[str, SchedulerKind] = {
    "DDIMScheduler": SchedulerKind("vp", "deterministic"),
    "DDPMScheduler": SchedulerKind("vp", "ancestral"),
    "PNDMScheduler": SchedulerKind("vp", "deterministic"),
    "DPMSolverMultistepScheduler": SchedulerKind("vp", "deterministic"),
    "DPMSolverSinglestepScheduler": SchedulerKind("vp", "deterministic"),
    "UniPCMultistepScheduler": SchedulerKind("vp", "deterministic"),
    "DEISMultistepScheduler": SchedulerKind("vp", "deterministic"),
    "LCMScheduler": SchedulerKind("vp", "other-noise"),
    "TCDScheduler": SchedulerKind("vp", "other-noise"),
    "LMSDiscreteScheduler": SchedulerKind("ve", "deterministic"),
    "EulerDiscreteScheduler": SchedulerKind("ve", "deterministic"),
    "EulerAncestralDiscreteScheduler": SchedulerKind("ve", "ancestral"),
    "HeunDiscreteScheduler": SchedulerKind("ve", "deterministic"),
    "KDPM2DiscreteScheduler": SchedulerKind("ve", "deterministic"),
    "FlowMatchEulerDiscreteScheduler": SchedulerKind("flow", "deterministic"),
    "FlowMatchHeunDiscreteScheduler": SchedulerKind("flow", "deterministic"),
}

PIPELINE_ESTIMATORS = {"deterministic": ("plugin", "rollout"), "ancestral": ("plugin", "rollout", "bayes")}


def scheduler_kind(scheduler, call_kwargs: dict | None = None) -> SchedulerKind:
    """How ``scheduler``'s steps read, for a pipeline called with ``call_kwargs``; one line refusing
    the schedulers and settings whose steps cannot be read on the sigma axis."""
    name = type(scheduler).__name__
    if name not in SCHEDULERS:
        raise ProbesError(f"scheduler {name} is not supported for probing; use one of {', '.join(SCHEDULERS)} "
                          f"(pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config))")
    kind = SCHEDULERS[name]
    config = scheduler.config
    if name == "PNDMScheduler" and not config.get("skip_prk_steps", False):
        raise ProbesError("PNDMScheduler with skip_prk_steps=False (Runge-Kutta warm-up steps) is not supported for "
                          "probing; use PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)")
    if config.get("thresholding", False):
        raise ProbesError(f"{name} with thresholding=True (dynamic thresholding of its clean estimate) is not "
                          f"supported for probing; use {name}.from_config(pipe.scheduler.config, thresholding=False)")
    if name == "DDPMScheduler" and config.get("variance_type", "fixed_small") != "fixed_small":
        return SchedulerKind(kind.layout, "other-noise")  # a different kernel: not bayes's
    if name == "DPMSolverMultistepScheduler" and str(config.get("algorithm_type", "")).startswith("sde"):
        return SchedulerKind(kind.layout, "other-noise")
    if name == "FlowMatchEulerDiscreteScheduler" and config.get("stochastic_sampling", False):
        return SchedulerKind(kind.layout, "other-noise")
    if name == "DDIMScheduler" and float((call_kwargs or {}).get("eta") or 0.0) > 0:
        return SchedulerKind(kind.layout, "other-noise")  # DDIM with eta > 0 adds noise, not on bayes's kernel
    return kind


def check_estimators(scheduler, names, call_kwargs: dict | None = None) -> SchedulerKind:
    """One line refusing estimators the scheduler's steps cannot serve."""
    kind = scheduler_kind(scheduler, call_kwargs)
    allowed = PIPELINE_ESTIMATORS.get(kind.kernel, ("plugin", "rollout"))
    bad = [n for n in names if n not in allowed]
    if bad:
        why = {"bayes": f"{type(scheduler).__name__} ({kind.kernel} steps) has no ancestral Gaussian kernel for "
                        "bayes to invert; use DDPMScheduler or EulerAncestralDiscreteScheduler",
               "exact": "exact needs a Gaussian mixture, not a pipeline",
               "immse": "immse needs labelled data pairs, not a pipeline"}
        reasons = "; ".join(why.get(n, f"{n!r} is not an estimator for pipelines") for n in bad)
        raise ProbesError(f"estimators {', '.join(bad)} cannot probe this pipeline: {reasons} "
                          f"(allowed here: {', '.join(allowed)})")
    return kind


def check_step_targets(scheduler) -> None:
    """One line refusing a grid whose steps do not land on its next timestep (call after
    ``set_timesteps``, before the first step).

    DDIM and PNDM step from ``t`` to ``t - num_train_timesteps // num_inference_steps`` whatever
    their timesteps; with ``timestep_spacing="linspace"`` (or custom timesteps) that is not the next
    timestep, so each state would be read at a noise level it is not at. Diffusers' own rounding
    of ``trailing`` grids misses by one training timestep at most; that is tolerated."""
    name = type(scheduler).__name__
    if name not in ("DDIMScheduler", "PNDMScheduler") or not getattr(scheduler, "num_inference_steps", None):
        return
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    ts = [int(t) for t in scheduler.timesteps]
    ts = [t for i, t in enumerate(ts) if i == 0 or t != ts[i - 1]]
    worst = max((abs((a - stride) - b) for a, b in itertools.pairwise(ts)), default=0)
    if worst > 1:
        spacing = scheduler.config.get("timestep_spacing", "leading")
        raise ProbesError(f"{name} with timestep_spacing={spacing!r} and {scheduler.num_inference_steps} steps moves "
                          f"each state to t - {stride}, not to its next timestep (off by up to {worst}), so its states "
                          "are not at their timesteps' noise levels; use timestep_spacing='leading' or 'trailing'")


def is_trajectory_step(scheduler) -> bool:
    """Whether the ``step`` call about to run starts from a state of the sampling trajectory.

    Second-order schedulers (Heun, KDPM2, flow-matching Heun) call ``step`` twice per noise level;
    the second call sees the first-order prediction at the next level, not the trajectory's state.
    PNDM without Runge-Kutta steps re-takes its first step (its second call) the same way."""
    if not getattr(scheduler, "state_in_first_order", True):
        return False
    if type(scheduler).__name__ == "PNDMScheduler":
        return scheduler.counter != 1
    return True


def native_sigma(scheduler, timestep) -> float:
    """The scheduler's own noise level for the step it is about to take at ``timestep``: the
    entry of ``scheduler.sigmas`` (flow time for flow schedulers) or, for schedulers without a
    sigma table, ``sqrt((1 - abar_t) / abar_t)``. Call before ``step`` (it reads the step index)."""
    if hasattr(scheduler, "sigmas") and hasattr(scheduler, "step_index"):
        return float(scheduler.sigmas[step_index(scheduler, timestep)])
    abar = float(scheduler.alphas_cumprod[int(timestep)])
    return math.inf if abar <= 0 else math.sqrt((1 - abar) / abar)


def step_index(scheduler, timestep) -> int:
    """The index into ``scheduler.sigmas`` of the step about to be taken at ``timestep``: its
    ``step_index`` once stepping has begun; before the first step, where ``step()`` will start
    (its ``begin_index`` when a pipeline set one, else the timestep's own index), read with the
    schedulers' public methods and without changing the scheduler."""
    if scheduler.step_index is not None:
        return int(scheduler.step_index)
    if getattr(scheduler, "begin_index", None) is not None:
        return int(scheduler.begin_index)
    return int(scheduler.index_for_timestep(timestep))


def read_step(scheduler, kind: SchedulerKind, model_output: torch.Tensor, timestep, sample: torch.Tensor):
    """``(sigma, x_sigma, x0_hat)`` of one scheduler step on the toolkit's axis."""
    native = native_sigma(scheduler, timestep)
    sigma = sigma_of_flow_t(native) if kind.layout == "flow" else native
    prediction = "flow" if kind.layout == "flow" else scheduler.config.get("prediction_type", "epsilon")
    if math.isinf(sigma):
        return sigma, None, None
    x = to_sigma_axis(sample.double(), sigma, kind.layout).float()
    x0 = x0_from_output(model_output.double(), sample.double(), sigma, kind.layout, prediction).float()
    if hasattr(scheduler, "get_scalings_for_boundary_condition_discrete"):  # LCM's consistency parameterisation
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(timestep)
        x0 = (float(c_out) * x0.double() + float(c_skip) * sample.double()).float()  # LCM keeps vp states
    if scheduler.config.get("clip_sample"):  # the scheduler clips its estimate before using it
        bound = float(scheduler.config.get("clip_sample_range", 1.0))
        x0 = x0.clamp(-bound, bound)
    return sigma, x, x0


#: what the docs' table says of a scheduler beyond its layout and kernel.
NOTES: dict[str, str] = {
    "DDIMScheduler": "`eta > 0` adds fresh noise (other-noise: no bayes); `thresholding=True` and `linspace` "
                     "spacing (its steps miss the next timestep) refused",
    "DDPMScheduler": "ancestral with `variance_type=\"fixed_small\"`, other-noise with a learned variance (DiT)",
    "PNDMScheduler": "`skip_prk_steps=True` only (SD 1.x's config); its re-taken first step is read once; "
                     "`linspace` spacing refused as for DDIM",
    "DPMSolverMultistepScheduler": "`sde-dpmsolver++` is other-noise; Karras sigmas and custom `timesteps` "
                                   "read as given",
    "LCMScheduler": "the clean estimate includes LCM's `c_skip`/`c_out` boundary condition (its `denoised`)",
    "TCDScheduler": "fresh noise with `eta` (gamma) > 0",
    "HeunDiscreteScheduler": "two model calls a step: the corrector call is not a trajectory state",
    "KDPM2DiscreteScheduler": "two model calls a step: the midpoint call is not a trajectory state",
    "FlowMatchEulerDiscreteScheduler": "`shift`, `use_dynamic_shifting` (Flux's `mu`) and custom `sigmas`; "
                                       "`stochastic_sampling` is other-noise",
    "FlowMatchHeunDiscreteScheduler": "two model calls a step: the corrector call is not a trajectory state",
}


def schedulers_table() -> str:
    """The Markdown table of supported schedulers in docs/models.md (``python -m probes.schedulers``)."""
    rows = ["| scheduler | state layout | step | estimators | notes |", "|---|---|---|---|---|"]
    for name, kind in SCHEDULERS.items():
        allowed = PIPELINE_ESTIMATORS.get(kind.kernel, ("plugin", "rollout"))
        rows.append(f"| {name} | {kind.layout} | {kind.kernel} | {', '.join(allowed)} | {NOTES.get(name, '')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(schedulers_table())
