"""``probes.probe`` swept over the schedulers and call options users sample with.

Every case runs the tiny pipeline twice, plain and probed, from the same seeds and checks:

1. the probed output equals the plain output exactly (``torch.equal``; NaN-free);
2. the recorded sigmas are the scheduler's own noise levels of the steps taken, read here from
   its tables (``scheduler.sigmas``, or ``alphas_cumprod`` at its timesteps) on the toolkit's axis;
3. the recorded clean estimates equal what the scheduler itself computes where it exposes one
   (``pred_original_sample`` / LCM's ``denoised`` in the step output, or the multistep solvers'
   converted model output ``model_outputs[-1]``), to 1e-4 absolute (float32 latents of size ~1,
   computed in float64 by the probe and float32 by the scheduler);
4. ``plugin`` (and ``bayes`` where the scheduler's kernel allows it) give finite posteriors;
5. a scheduler or setting that cannot be read is refused in one line before the pipeline runs.

The table of supported schedulers in docs/models.md is checked against the same lists.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import diffusers
import pytest
import tiny_pipelines as tp
import torch

import probes
from probes.denoisers.parameterisations import sigma_of_flow_t
from probes.errors import ProbesError
from probes.schedulers import SCHEDULERS, scheduler_kind
from probes.taxonomy import load_taxonomy

TAX = load_taxonomy("animals-vehicles")
STEPS = 4
# The scheduler computes x0 in float32 through intermediates up to 1 / sqrt(abar) (~150) times
# larger than x0, the probe in float64: they agree to ~1e-4 of the compared magnitude (~840 float32
# ulps), not to an absolute 1e-4, which is one rounding step for latents near 2000 (DiT).
X0_TOL = 1e-4
#: first-order deterministic schedulers: each step is DDIM's on the sigma axis
FIRST_ORDER_ODE = ("DDIMScheduler", "EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler")


class LinearLogits:
    """A fixed random linear map of pooled images to logits: any callable images -> logits."""

    def __init__(self, n_leaves, seed=0):
        self.w = torch.randn(3 * 16, n_leaves, generator=torch.Generator().manual_seed(seed))

    def __call__(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1) @ self.w


class SchedulerReference:
    """Wraps ``scheduler.step`` on the instance *before* the probe does: records, for every call
    that starts from a trajectory state, the scheduler's own clean estimate, and hands the caller
    what it asked for. The probe then wraps this wrapper."""

    def __init__(self, scheduler):
        self.scheduler, self.x0 = scheduler, []
        original = scheduler.step

        def step(model_output, timestep, sample, *args, return_dict=True, **kwargs):
            # a trajectory state: not a 2nd-order corrector call, not PNDM's re-take of its first step
            first = getattr(scheduler, "state_in_first_order", True) and getattr(scheduler, "counter", 0) != 1
            out = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            if first:
                x0 = getattr(out, "pred_original_sample", None)
                if x0 is None:
                    x0 = getattr(out, "denoised", None)
                if (x0 is None and getattr(scheduler.config, "algorithm_type", "") in (
                        "dpmsolver++", "sde-dpmsolver++")) or (
                        type(scheduler).__name__ == "UniPCMultistepScheduler" and scheduler.config.predict_x0):
                    x0 = scheduler.model_outputs[-1]  # the data prediction the solver itself uses
                self.x0.append(None if x0 is None else x0.clone())
            return out if return_dict else out.to_tuple()

        scheduler.step = functools.wraps(original)(step)

    def remove(self):
        del self.scheduler.step


def scheduler_grid(scheduler, n_steps: int, begin: int = 0) -> list[float]:
    """The noise levels of the ``n_steps`` steps the scheduler takes from its ``begin``-th level,
    on the toolkit's axis, from its own tables (consecutive repeats of second-order schedulers
    counted once); infinite levels (flow ``t = 1``, zero terminal SNR) left out as the probe does."""
    name = type(scheduler).__name__
    if hasattr(scheduler, "sigmas") and name not in ("DDPMScheduler", "LCMScheduler", "TCDScheduler"):
        levels = [float(s) for s in scheduler.sigmas]
    else:
        ac = scheduler.alphas_cumprod.double()
        levels = [math.inf if ac[int(t)] <= 0 else math.sqrt((1 - ac[int(t)]) / ac[int(t)])
                  for t in scheduler.timesteps]
    unique = [s for i, s in enumerate(levels) if i == 0 or s != levels[i - 1]]
    if name == "KDPM2DiscreteScheduler":  # its sigmas table interleaves the midpoints' levels
        unique = [float(s) for s in scheduler.sigmas[::2]]
    grid = unique[begin: begin + n_steps]
    if name.startswith("FlowMatch"):
        grid = [sigma_of_flow_t(t) for t in grid]
    return [s for s in grid if math.isfinite(s)]


def run_both(pipe, call, estimators=("plugin",), reference=True, probe_kwargs=None):
    """The plain output, the probe result and the scheduler's own clean estimates (same seeds)."""
    def seeded(c):
        c = dict(c)
        if "generator" not in c:
            c["generator"] = torch.Generator().manual_seed(0)
        elif isinstance(c["generator"], list):
            c["generator"] = [torch.Generator().manual_seed(g.initial_seed()) for g in c["generator"]]
        if "latents" in c:
            c["latents"] = c["latents"].clone()
        torch.manual_seed(0)  # pipelines that draw step noise without the generator
        return c

    plain = pipe(**seeded(call))
    ref = SchedulerReference(pipe.scheduler) if reference else None
    try:
        result = probes.probe(pipe, TAX, classifier=LinearLogits(len(TAX.leaves)), estimators=list(estimators),
                              **(probe_kwargs or {}), **seeded(call))
    finally:
        if ref is not None:
            ref.remove()
    return plain, result, ref


def images(output):
    if isinstance(output, tuple):
        output = output[0]
    elif hasattr(output, "images"):
        output = output.images
    if isinstance(output, list):  # PIL
        import numpy as np

        return torch.from_numpy(np.stack([np.asarray(im) for im in output]))
    return torch.as_tensor(output)


def check_case(pipe, call, estimators=("plugin",), n_steps=STEPS, begin=0, family_rows=None):
    plain, result, ref = run_both(pipe, call, estimators)
    a, b = images(plain), images(result.output)
    assert not torch.isnan(a.float()).any(), "the plain pipeline itself gave NaN"
    assert torch.equal(a, b), f"probing changed the output by {(a.float() - b.float()).abs().max()}"
    expect = scheduler_grid(pipe.scheduler, n_steps, begin)
    got = result.sigmas().tolist()
    # the scheduler's float32 tables, read as sigmas here and there: relative 1e-6 (8 float32 units)
    assert len(got) == len(expect) and all(math.isclose(g, e, rel_tol=1e-6) for g, e in zip(got, expect)), (got, expect)
    own = ref.x0[-len(got):] if ref.x0 else []
    for i, x0 in enumerate(own):
        if x0 is None:
            continue
        x0 = family_rows(x0) if family_rows else x0
        err = float((x0 - result.trajectory.denoised[i]).abs().max())
        scale = max(1.0, float(x0.abs().max()))
        assert err < X0_TOL * scale, f"step {i}: x0 differs from the scheduler's own by {err} (magnitude {scale:.3g})"
    if type(pipe.scheduler).__name__ in FIRST_ORDER_ODE and not call.get("eta") and "callback_on_step_end" not in call:
        # the scheduler's own transition, on the sigma axis, is x' = D + (sigma' / sigma)(x - D) with the
        # D it used: the recorded x0 must reproduce the next recorded state (flow Euler exposes no x0)
        traj, sig = result.trajectory, result.sigmas()
        for i in range(len(sig) - 1):
            d, x = traj.denoised[i].double(), traj.states[i].double()
            step = d + float(sig[i + 1] / sig[i]) * (x - d)
            err = float((step - traj.states[i + 1]).abs().max())
            scale = max(1.0, float(x.abs().max()), float(d.abs().max()))
            assert err < X0_TOL * scale, f"step {i}: the recorded x0 does not give the next state ({err})"
    for name in estimators:
        lp = result.log_posteriors(name)
        assert lp.shape[:2] == (result.trajectory.states.shape[1], len(got)) and torch.isfinite(lp).all(), name
    return result, ref


# -- 1. schedulers swapped into Stable Diffusion ------------------------------------------------------

#: (label, scheduler class, from_config overrides, prediction type of the tiny UNet, fast?)
SD_SCHEDULERS = [
    ("DDIM", "DDIMScheduler", {}, "epsilon", True),
    ("DDIM trailing zero-SNR v", "DDIMScheduler", dict(timestep_spacing="trailing", rescale_betas_zero_snr=True),
     "v_prediction", True),
    ("DDPM", "DDPMScheduler", {}, "epsilon", True),
    ("DDPM v", "DDPMScheduler", {}, "v_prediction", False),
    ("PNDM", "PNDMScheduler", dict(skip_prk_steps=True), "epsilon", True),
    ("LMS", "LMSDiscreteScheduler", {}, "epsilon", False),
    ("Euler", "EulerDiscreteScheduler", {}, "epsilon", True),
    ("Euler trailing", "EulerDiscreteScheduler", dict(timestep_spacing="trailing"), "epsilon", False),
    ("Euler leading v", "EulerDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1),
     "v_prediction", False),
    ("Euler ancestral", "EulerAncestralDiscreteScheduler", {}, "epsilon", True),
    ("Heun", "HeunDiscreteScheduler", {}, "epsilon", True),
    ("KDPM2", "KDPM2DiscreteScheduler", {}, "epsilon", False),
    ("DPM++ 2M", "DPMSolverMultistepScheduler", {}, "epsilon", True),
    ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", dict(use_karras_sigmas=True), "epsilon", False),
    ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++"), "epsilon", False),
    ("DPM++ singlestep", "DPMSolverSinglestepScheduler", {}, "epsilon", False),
    ("UniPC", "UniPCMultistepScheduler", {}, "epsilon", True),
    ("UniPC v", "UniPCMultistepScheduler", {}, "v_prediction", False),
    ("DEIS", "DEISMultistepScheduler", {}, "epsilon", False),
    ("LCM", "LCMScheduler", {}, "epsilon", True),
    ("TCD", "TCDScheduler", {}, "epsilon", False),
]


def _sd(prediction_type, scheduler_name, overrides):
    pipe = tp.family_pipe("stable-diffusion") if prediction_type == "epsilon" else _sd_v()
    saved = pipe.scheduler
    pipe.scheduler = getattr(diffusers, scheduler_name).from_config(
        saved.config, prediction_type=prediction_type, **overrides)
    return pipe, saved


_V = {}


def _sd_v():
    if "v" not in _V:
        _V["v"] = tp.tiny_sd("v_prediction")
    return _V["v"]


@pytest.mark.parametrize("label,scheduler_name,overrides,prediction_type", [
    pytest.param(*case[:4], id=case[0], marks=() if case[4] else pytest.mark.slow) for case in SD_SCHEDULERS])
def test_sd_schedulers(label, scheduler_name, overrides, prediction_type):
    pipe, saved = _sd(prediction_type, scheduler_name, overrides)
    try:
        kind = scheduler_kind(pipe.scheduler)
        estimators = ("plugin", "bayes") if kind.kernel == "ancestral" else ("plugin",)
        call = dict(prompt=["a cat", "a dog"], num_inference_steps=STEPS, guidance_scale=5.0, output_type="pt")
        check_case(pipe, call, estimators)
        if kind.kernel != "ancestral":
            with pytest.raises(ProbesError, match="no ancestral Gaussian kernel") as err:
                probes.probe(pipe, TAX, estimators=["bayes"], **call)
            assert "\n" not in str(err.value) and scheduler_name in str(err.value)
    finally:
        pipe.scheduler = saved


# -- 2. refusals, one line, before sampling ------------------------------------------------------------

REFUSED = [
    ("PNDM with Runge-Kutta steps", "PNDMScheduler", dict(skip_prk_steps=False), "skip_prk_steps=False"),
    ("DDIM thresholding", "DDIMScheduler", dict(thresholding=True), "thresholding=True"),
    ("DDIM linspace", "DDIMScheduler", dict(timestep_spacing="linspace"), "moves each state to t - 250"),
    ("KDPM2 ancestral", "KDPM2AncestralDiscreteScheduler", {}, "KDPM2AncestralDiscreteScheduler is not supported"),
    ("EDM Euler", "EDMEulerScheduler", {}, "EDMEulerScheduler is not supported"),
]


@pytest.mark.parametrize("label,scheduler_name,overrides,line", [pytest.param(*c, id=c[0]) for c in REFUSED])
def test_unsupported_schedulers_are_refused_before_sampling(label, scheduler_name, overrides, line):
    pipe, saved = _sd("epsilon", scheduler_name, overrides)
    calls = []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ProbesError, match=re.escape(line)) as err:
            probes.probe(pipe, TAX, classifier=LinearLogits(len(TAX.leaves)), prompt="a cat", num_inference_steps=4)
        assert "\n" not in str(err.value) and not calls, "refused after the model ran"
    finally:
        pipe.scheduler = saved
        pipe.unet._forward_hooks.clear()


def test_ddim_with_eta_samples_fresh_noise_and_refuses_bayes():
    pipe = tp.family_pipe("stable-diffusion")
    call = dict(prompt=["a cat"], num_inference_steps=STEPS, output_type="pt", eta=1.0)
    result, _ = check_case(pipe, call)
    assert result.meta["scheduler_kernel"] == "other-noise"
    with pytest.raises(ProbesError, match="other-noise steps"):
        probes.probe(pipe, TAX, estimators=["bayes"], **call)


# -- 3. call options on Stable Diffusion -------------------------------------------------------------

def _step_end_callback(seen):
    def callback(pipe, i, t, kwargs):
        seen.append(i)
        return {"latents": kwargs["latents"] * 0.9}  # a user's callback that edits the latents
    return callback


CALLS = [
    ("num_images_per_prompt 2", dict(prompt="a cat", num_images_per_prompt=2), True),
    ("prompt list + negative", dict(prompt=["a cat", "a dog"], negative_prompt=["blurry", "dark"]), True),
    ("no CFG", dict(prompt="a cat", guidance_scale=1.0), True),
    ("guidance_rescale", dict(prompt="a cat", guidance_rescale=0.7), False),
    ("output np", dict(prompt="a cat", output_type="np"), False),
    ("output pil", dict(prompt="a cat", output_type="pil"), False),
    ("output latent, return_dict False", dict(prompt="a cat", output_type="latent", return_dict=False), True),
    ("generator list", dict(prompt=["a cat", "a dog"],
                            generator=[torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)]), True),
    ("latents passed", dict(prompt="a cat",
                            latents=torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))), True),
]


@pytest.mark.parametrize("label,call", [pytest.param(*c[:2], id=c[0], marks=() if c[2] else pytest.mark.slow)
                                        for c in CALLS])
def test_sd_call_options(label, call):
    pipe = tp.family_pipe("stable-diffusion")
    check_case(pipe, dict(dict(num_inference_steps=STEPS, guidance_scale=5.0, output_type="pt"), **call))


def test_a_users_step_end_callback_is_still_called_and_its_latents_honoured():
    pipe = tp.family_pipe("stable-diffusion")
    seen_plain, seen_probe = [], []
    common = dict(prompt="a cat", num_inference_steps=STEPS, output_type="pt",
                  generator=torch.Generator().manual_seed(0))
    plain = pipe(**common, callback_on_step_end=_step_end_callback(seen_plain)).images
    untouched = pipe(**dict(common, generator=torch.Generator().manual_seed(0))).images
    result = probes.probe(pipe, TAX, classifier=LinearLogits(len(TAX.leaves)),
                          **dict(common, generator=torch.Generator().manual_seed(0)),
                          callback_on_step_end=_step_end_callback(seen_probe))
    assert seen_probe == seen_plain == list(range(STEPS))
    assert torch.equal(result.output.images, plain) and not torch.equal(plain, untouched)
    # the recorded state of step 1 is the latents the callback returned after step 0, on the sigma axis
    assert result.trajectory.states.shape[0] == STEPS


@pytest.mark.parametrize("scheduler_name,key", [("DPMSolverMultistepScheduler", "timesteps"),
                                                ("EulerDiscreteScheduler", "sigmas")])
def test_custom_timesteps_and_sigmas(scheduler_name, key):
    pipe, saved = _sd("epsilon", scheduler_name, {})
    try:
        values = [999, 700, 400, 100] if key == "timesteps" else [14.0, 5.0, 1.5, 0.3]
        # Euler reads a custom sigma list as levels including the last one it steps to
        taken = values if key == "timesteps" else values[:-1]
        result, _ = check_case(pipe, {"prompt": "a cat", key: values, "output_type": "pt"}, n_steps=len(taken))
        if key == "sigmas":
            # the given sigmas pass through the scheduler's float32 tables: relative 1e-6 (8 float32 units)
            assert torch.allclose(result.sigmas(), torch.tensor(taken, dtype=torch.float64), rtol=1e-6, atol=0)
    finally:
        pipe.scheduler = saved


@pytest.mark.parametrize("scheduler_name", ["DDIMScheduler", "EulerDiscreteScheduler"])
def test_img2img_strength_probes_the_partial_schedule(scheduler_name):
    base, saved = _sd("epsilon", scheduler_name, {})
    try:
        pipe = diffusers.StableDiffusionImg2ImgPipeline(**base.components)
        pipe.set_progress_bar_config(disable=True)
        image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))  # a picture in [0, 1]
        steps, strength = 8, 0.5
        call = dict(prompt="a cat", image=image, strength=strength, num_inference_steps=steps, output_type="pt")
        taken = int(steps * strength)
        result, _ = check_case(pipe, call, n_steps=taken, begin=steps - taken)
        assert len(result.sigmas()) == taken
    finally:
        base.scheduler = saved



def test_a_stride_is_checked_against_the_steps_img2img_takes():
    # strength 0.125 of 8 steps takes one step: a one-sigma trajectory, whatever the stride
    base, saved = _sd("epsilon", "DDIMScheduler", {})
    try:
        pipe = diffusers.StableDiffusionImg2ImgPipeline(**base.components)
        pipe.set_progress_bar_config(disable=True)
        image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
        result = probes.probe(pipe, TAX, classifier=LinearLogits(len(TAX.leaves)),
                              estimators=[probes.estimators.build_estimator("plugin", sigma_stride=8)],
                              prompt="a cat", image=image, strength=0.125, num_inference_steps=8, output_type="pt")
        assert len(result.sigmas()) == 1
    finally:
        base.scheduler = saved

# -- 4. the other families with their real schedulers swapped in ---------------------------------------

def _family_call(case, **extra):
    spec = tp.FAMILY_CASES[case]
    guidance = {} if spec.guidance is None else {"guidance_scale": spec.guidance}
    return {**spec.call, "num_inference_steps": STEPS, "output_type": "pt", **guidance, **extra}


FAMILY_SCHEDULERS = [
    ("sdxl", "EulerDiscreteScheduler", {}, True),
    ("sdxl", "DPMSolverMultistepScheduler", dict(use_karras_sigmas=True), False),
    ("sdxl", "EulerAncestralDiscreteScheduler", {}, False),
    ("sd3", "FlowMatchEulerDiscreteScheduler", {}, True),
    ("sd3", "FlowMatchEulerDiscreteScheduler", dict(shift=1.0), False),
    ("sd3", "FlowMatchHeunDiscreteScheduler", {}, True),
    ("flux", "FlowMatchEulerDiscreteScheduler", {}, True),  # dynamic shifting (mu from the image size)
    ("flux", "FlowMatchEulerDiscreteScheduler", dict(use_dynamic_shifting=False, shift=3.0), False),
    ("pixart", "DPMSolverMultistepScheduler", {}, True),
    ("pixart", "DDIMScheduler", {}, False),
    ("dit", "DDPMScheduler", {}, True),
    ("dit", "DDIMScheduler", {}, False),
    ("dit", "DPMSolverMultistepScheduler", {}, False),
]


def _dit_rows(x0):
    return x0[: x0.shape[0] // 2]  # DiTPipeline hands its scheduler both halves of the guided batch


@pytest.mark.parametrize("case,scheduler_name,overrides", [
    pytest.param(*c[:3], id=f"{c[0]}-{c[1]}{'-' + str(c[2]) if c[2] else ''}", marks=() if c[3] else pytest.mark.slow)
    for c in FAMILY_SCHEDULERS])
def test_family_schedulers(case, scheduler_name, overrides):
    pipe = tp.family_pipe(case)
    saved = pipe.scheduler
    pipe.scheduler = getattr(diffusers, scheduler_name).from_config(saved.config, **overrides)
    try:
        kind = scheduler_kind(pipe.scheduler)
        bayes = kind.kernel == "ancestral"
        check_case(pipe, _family_call(case), ("plugin", "bayes") if bayes else ("plugin",),
                   family_rows=_dit_rows if case == "dit" else None)
    finally:
        pipe.scheduler = saved


def test_flux_custom_sigmas():
    pipe = tp.family_pipe("flux")
    values = [1.0, 0.75, 0.5, 0.25]
    result, _ = check_case(pipe, _family_call("flux", sigmas=values), n_steps=len(values))
    assert len(result.sigmas()) == len(values) - 1  # t = 1 is infinite sigma: the prior, left out


def test_no_cfg_on_dit_and_sd3():
    for case in ("dit", "sd3"):
        pipe = tp.family_pipe(case)
        check_case(pipe, _family_call(case) | {"guidance_scale": 1.0})


# -- 5. the docs' table -------------------------------------------------------------------------------

def test_the_docs_table_of_schedulers_is_the_registry():
    from probes.schedulers import schedulers_table

    doc = (Path(__file__).parents[1] / "docs" / "models.md").read_text()
    assert schedulers_table() in doc, "docs/models.md: regenerate the table with python -m probes.schedulers"
    tested = {c[1] for c in SD_SCHEDULERS} | {c[1] for c in FAMILY_SCHEDULERS}
    assert set(SCHEDULERS) <= tested, f"supported but never swept: {set(SCHEDULERS) - tested}"


@pytest.mark.slow
def test_sdxl_denoising_end_probes_the_steps_taken():
    pipe = tp.family_pipe("sdxl")
    plain, result, _ = run_both(pipe, _family_call("sdxl", denoising_end=0.5, output_type="latent"))
    assert torch.equal(images(plain), images(result.output))
    got = result.sigmas().tolist()
    # the scheduler's float32 tables: relative 1e-6 (8 float32 units)
    assert 0 < len(got) < STEPS and got == pytest.approx(scheduler_grid(pipe.scheduler, len(got)), rel=1e-6)
