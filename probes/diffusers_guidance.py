"""A guidance interval on the sigma axis, handed to diffusers.

Two ways diffusers users guide only in part of the sampling:

* **Standard pipelines** (``StableDiffusionPipeline`` and its kin): diffusers' documented dynamic
  guidance pattern, a ``callback_on_step_end`` that switches classifier-free guidance off (the
  pipeline's ``_guidance_scale`` to 1, the prompt embeddings to their conditional half) and, here,
  back on (the unconditional half restored). :func:`guidance_window` returns one that guides a step
  exactly when the scheduler's sigma for it lies in ``(lo, hi]``. A callback runs after each step
  and decides the next one; the *first* step follows the call itself (``guidance_scale > 1``:
  guided), since diffusers runs no callback before it. For a window below the first step's sigma
  that is one guided step more than the window asks for (``first_step_outside`` says so after the
  call); the modular guider below has no such step.
* **Modular pipelines**: the ``ClassifierFreeGuidance`` guider's ``start``/``stop`` fractions:
  step ``i`` of ``N`` is guided when ``int(start N) <= i < int(stop N)``.
  :func:`guider_fractions` turns ``(lo, hi]`` into the fractions for a scheduler and a step count,
  and gives the sigma interval those steps actually cover.

Sigmas are the toolkit's (variance-exploding) axis: a VP scheduler's step at ``abar_t`` is at
``sigma = sqrt((1 - abar_t) / abar_t)``, a flow-matching step at time ``t`` at ``t / (1 - t)``.
diffusers is imported only when a scheduler or pipeline is handed in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from probes._compat import patch_torchvision
from probes.denoisers.parameterisations import sigma_of_flow_t
from probes.errors import ProbesError
from probes.schedulers import scheduler_kind

#: the tensors a Stable Diffusion 1.x / 2.x callback swaps; SDXL adds ``add_text_embeds`` and
#: ``add_time_ids``, SD 3 ``pooled_prompt_embeds`` (diffusers' own CFG cutoff callbacks list the same).
SD_TENSOR_INPUTS = ("prompt_embeds",)


def _inside(sigma: float, lo: float, hi: float) -> bool:
    return lo < sigma <= hi


def _check_window(lo: float, hi: float) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if not 0 <= lo < hi:
        raise ProbesError(f"guidance window: need 0 <= lo < hi, got ({lo:g}, {hi:g}]")
    return lo, hi


def step_sigma(scheduler, index: int) -> float:
    """The sigma at which ``scheduler`` (after ``set_timesteps``) calls the model at step ``index``."""
    kind = scheduler_kind(scheduler)
    if hasattr(scheduler, "sigmas") and len(getattr(scheduler, "sigmas", ())) > index:
        native = float(scheduler.sigmas[index])
    else:
        abar = float(scheduler.alphas_cumprod[int(scheduler.timesteps[index])])
        native = math.inf if abar <= 0 else math.sqrt((1 - abar) / abar)
    return sigma_of_flow_t(native) if kind.layout == "flow" else native


def scheduler_step_sigmas(scheduler, steps: int) -> list[float]:
    """The sigma of each of ``steps`` model calls of a copy of ``scheduler`` (one call per step)."""
    if int(steps) != steps or steps < 1:
        raise ProbesError(f"--steps: need a positive number of steps, got {steps}")
    scheduler_kind(scheduler)  # one line for schedulers whose steps cannot be read on the sigma axis
    copy = type(scheduler).from_config(scheduler.config)
    copy.set_timesteps(int(steps))
    if len(copy.timesteps) != steps:
        raise ProbesError(f"{type(scheduler).__name__} calls the model {len(copy.timesteps)} times for {steps} steps "
                          "(a second-order or warm-up step): the guider's step fractions would not count its steps; "
                          "use a first-order scheduler (DDIM, Euler, DPM-Solver, UniPC)")
    return [step_sigma(copy, i) for i in range(int(steps))]


def _fraction(i: int, steps: int) -> float:
    """A short decimal ``f`` with ``int(f * steps) == i`` (what the guider computes)."""
    for digits in range(2, 12):
        f = math.ceil(i / steps * 10**digits) / 10**digits  # at or just above i / steps
        if int(f * steps) == i:
            return f
    return (i + 0.5) / steps


def guider_fractions(lo: float, hi: float, scheduler, steps: int) -> dict:
    """``ClassifierFreeGuidance(start=, stop=)`` for guidance in ``(lo, hi]`` on ``scheduler`` with ``steps``.

    Returns ``{"start", "stop", "first", "end", "sigmas", "sigma_interval"}``: the guided steps are
    ``first .. end - 1`` (none when ``first == end``), and ``sigma_interval`` is the interval
    ``(sigma_end, sigma_first]`` they cover on this schedule (``sigma_end`` 0 when they run to the
    last step): guiding there gives the same steps.
    """
    lo, hi = _check_window(lo, hi)
    sigmas = scheduler_step_sigmas(scheduler, steps)
    inside = [i for i, s in enumerate(sigmas) if _inside(s, lo, hi)]
    if not inside:
        return {"start": 0.0, "stop": 0.0, "first": 0, "end": 0, "sigmas": sigmas, "sigma_interval": None}
    first, end = inside[0], inside[-1] + 1  # sigmas fall with the step: the inside steps are contiguous
    below = sigmas[end] if end < len(sigmas) else 0.0
    return {"start": _fraction(first, steps), "stop": _fraction(end, steps), "first": first, "end": end,
            "sigmas": sigmas, "sigma_interval": (below, sigmas[first])}


def load_scheduler(path: str | Path):
    """A diffusers scheduler from a folder holding ``scheduler_config.json`` (or a pipeline folder
    with a ``scheduler/`` subfolder); one line naming the path when there is none."""
    path = Path(path).expanduser()
    for candidate in (path, path / "scheduler"):
        config_file = candidate / "scheduler_config.json" if candidate.is_dir() else candidate
        if config_file.is_file() and config_file.suffix == ".json":
            break
    else:
        raise ProbesError(f"--scheduler {path}: no scheduler_config.json there (nor in {path / 'scheduler'})")
    try:
        config = json.loads(config_file.read_text())
        name = config["_class_name"]
    except (ValueError, KeyError, TypeError):
        raise ProbesError(f"--scheduler {config_file}: not a diffusers scheduler config (no _class_name)") from None
    patch_torchvision()
    import diffusers

    cls = getattr(diffusers, str(name), None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ProbesError(f"--scheduler {config_file}: diffusers has no scheduler {name!r}")
    return cls.from_config(config)


class GuidanceWindowCallback:
    """A ``callback_on_step_end`` guiding a standard pipeline only for sigma in ``(lo, hi]``.

    Call the pipeline with the guidance scale it should use inside the window (``> 1``) and this
    object's ``tensor_inputs``::

        window = probes.guidance_window(0.28, 5.42)
        pipe(prompt, guidance_scale=7.5, callback_on_step_end=window,
             callback_on_step_end_tensor_inputs=window.tensor_inputs)

    After each step it sets the next step's guidance: on when that step's sigma is in the window
    (the pipeline's scale, the unconditional embeddings put back in front), off otherwise (scale
    1, conditional embeddings only: one model evaluation per image). ``guided_steps`` lists the
    steps that were guided in the last call, ``first_step_outside`` whether its first step was
    guided although outside the window (see the module note).
    """

    def __init__(self, lo: float, hi: float, tensor_inputs=SD_TENSOR_INPUTS):
        self.lo, self.hi = _check_window(lo, hi)
        self.tensor_inputs = list(tensor_inputs)
        self._reset()

    def _reset(self):
        self.scale = None
        self.unconditional: dict = {}
        self.guided_steps: list[int] = []
        self.first_step_outside = False

    def __call__(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        scheduler = pipe.scheduler
        if step_index == 0:
            self._reset()
            if pipe.guidance_scale <= 1:
                raise ProbesError("guidance_window: call the pipeline with the guidance scale to use inside the window "
                                  f"(guidance_scale > 1, got {pipe.guidance_scale:g})")
            missing = [k for k in self.tensor_inputs if k not in callback_kwargs]
            if missing:
                raise ProbesError(f"guidance_window: the callback was not given {missing[0]!r}; pass "
                                  "callback_on_step_end_tensor_inputs=window.tensor_inputs")
            self.scale = pipe.guidance_scale
            self.guided_steps.append(0)
            self.first_step_outside = not _inside(step_sigma(scheduler, 0), self.lo, self.hi)
        nxt = step_index + 1
        if nxt >= len(scheduler.timesteps):
            return callback_kwargs
        guided_now = pipe.do_classifier_free_guidance
        want = _inside(step_sigma(scheduler, nxt), self.lo, self.hi)
        if want and not guided_now:
            for key in self.tensor_inputs:
                callback_kwargs[key] = _cat(self.unconditional[key], callback_kwargs[key])
            pipe._guidance_scale = self.scale
        elif guided_now and not want:
            for key in self.tensor_inputs:
                self.unconditional[key], callback_kwargs[key] = callback_kwargs[key].chunk(2)
            pipe._guidance_scale = 1.0
        if want:
            self.guided_steps.append(nxt)
        return callback_kwargs


def _cat(unconditional, conditional):
    return torch.cat([unconditional.to(conditional.device), conditional])


def guidance_window(lo: float, hi: float, tensor_inputs=SD_TENSOR_INPUTS) -> GuidanceWindowCallback:
    """A ``callback_on_step_end`` that guides a standard diffusers pipeline only for sigma in
    ``(lo, hi]`` (:class:`GuidanceWindowCallback`); ``tensor_inputs`` names the embeddings the
    pipeline doubles for guidance (:data:`SD_TENSOR_INPUTS` for Stable Diffusion 1.x/2.x)."""
    return GuidanceWindowCallback(lo, hi, tensor_inputs)
