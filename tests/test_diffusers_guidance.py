"""A guidance interval handed to diffusers (probes.diffusers_guidance): the guider's start/stop
fractions against diffusers' own guider, and the step callback on the tiny Stable Diffusion
pipeline against a denoising loop written out here, step by step."""

import math
import re

import pytest
import torch
from tiny_pipelines import SD_SCHEDULE

import probes
from probes.cli import main
from probes.diffusers_guidance import guidance_window, guider_fractions
from probes.errors import ProbesError
from probes.models.tiny_sd import build_tiny_pipeline

PROMPT = "a photo of a cat"
SCALE = 4.0
STEPS = 12

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline(seed=0)


def _ddim_sigmas(scheduler, steps):
    """Each step's sigma from the training schedule's abar at its timestep (VP: sqrt((1 - abar) / abar))."""
    from diffusers import DDIMScheduler

    copy = DDIMScheduler.from_config(scheduler.config)
    copy.set_timesteps(steps)
    abar = copy.alphas_cumprod[copy.timesteps.long()].double()
    return ((1 - abar) / abar).sqrt().tolist(), copy


def _reference(pipe, lo, hi, steps=STEPS, seed=0):
    """The pipeline's loop written out: CFG where a step's sigma is in (lo, hi] (and at the first
    step, which follows the call), the conditional model alone elsewhere. Latents after each step."""
    sigmas, scheduler = _ddim_sigmas(pipe.scheduler, steps)
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    latents = pipe.prepare_latents(1, 4, size, size, cond.dtype, "cpu", torch.Generator().manual_seed(seed))
    out = []
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            if i == 0 or lo < sigmas[i] <= hi:
                u, c = pipe.unet(torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])).sample \
                    .chunk(2)
                eps = u + SCALE * (c - u)
            else:
                eps = pipe.unet(latents, t, encoder_hidden_states=cond).sample
            latents = scheduler.step(eps, t, latents).prev_sample
            out.append(latents)
    return out, sigmas


def _with_window(pipe, window, steps=STEPS, seed=0):
    states = []

    def record_then_window(p, i, t, kwargs):
        states.append(kwargs["latents"].clone())
        return window(p, i, t, kwargs)

    pipe(PROMPT, num_inference_steps=steps, guidance_scale=SCALE, generator=torch.Generator().manual_seed(seed),
         output_type="latent", callback_on_step_end=record_then_window,
         callback_on_step_end_tensor_inputs=["latents", *window.tensor_inputs])
    return states


@pytest.mark.parametrize("lo, hi", [(0.0, math.inf), (0.5, 3.0), (0.0, 1.0)])
def test_the_window_callback_guides_exactly_the_steps_inside(pipe, lo, hi):
    window = probes.guidance_window(lo, hi)
    got = _with_window(pipe, window)
    expected, sigmas = _reference(pipe, lo, hi)
    inside = [i for i, s in enumerate(sigmas) if lo < s <= hi]
    assert window.guided_steps == sorted(set(inside) | {0})
    assert window.first_step_outside == (0 not in inside)
    for step, (a, b) in enumerate(zip(got, expected)):
        # Tolerance: float32 resolution of latents of size ~1 (the same UNet calls in the same batches).
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {step}")


def test_a_window_around_every_step_is_plain_cfg(pipe):
    window = guidance_window(0.0, 1e6)
    got = _with_window(pipe, window)[-1]
    plain = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=SCALE, generator=torch.Generator().manual_seed(0),
                 output_type="latent").images
    assert torch.equal(got, plain)


def test_window_misuse_is_one_line(pipe):
    with pytest.raises(ProbesError, match=r"need 0 <= lo < hi, got \(2, 1\]"):
        guidance_window(2.0, 1.0)
    window = guidance_window(0.5, 3.0)
    with pytest.raises(ProbesError, match="guidance_scale > 1, got 1"):
        pipe(PROMPT, num_inference_steps=3, guidance_scale=1.0, output_type="latent", callback_on_step_end=window,
             callback_on_step_end_tensor_inputs=window.tensor_inputs)
    with pytest.raises(ProbesError, match="callback_on_step_end_tensor_inputs=window.tensor_inputs"):
        pipe(PROMPT, num_inference_steps=3, guidance_scale=SCALE, output_type="latent", callback_on_step_end=window)


@pytest.mark.parametrize("name", ["DDIMScheduler", "EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler"])
@pytest.mark.parametrize("steps", [7, 30])
def test_guider_fractions_enable_diffusers_guider_on_the_steps_inside(name, steps):
    import diffusers
    from diffusers.guiders import ClassifierFreeGuidance

    cls = getattr(diffusers, name)
    scheduler = cls() if name.startswith("Flow") else cls(**SD_SCHEDULE)
    copy = cls.from_config(scheduler.config)
    copy.set_timesteps(steps)
    if name == "DDIMScheduler":
        abar = copy.alphas_cumprod[copy.timesteps.long()].double()
        sigmas = ((1 - abar) / abar).sqrt().tolist()
    elif name.startswith("Flow"):
        sigmas = [t / (1 - t) if t < 1 else math.inf for t in copy.sigmas[:steps].double().tolist()]
    else:
        sigmas = copy.sigmas[:steps].double().tolist()
    for lo, hi in [(0.0, 1e6), (0.3, 2.0), (1.0, 1.5), (50.0, 60.0), (0.0, 0.01)]:
        f = guider_fractions(lo, hi, scheduler, steps)
        guider = ClassifierFreeGuidance(guidance_scale=SCALE, start=f["start"], stop=f["stop"])
        enabled = []
        for i, t in enumerate(copy.timesteps):
            guider.set_state(step=i, num_inference_steps=steps, timestep=t)
            if guider._is_cfg_enabled():
                enabled.append(i)
        assert enabled == [i for i, s in enumerate(sigmas) if lo < s <= hi], (lo, hi)
        if enabled:  # the equivalent interval guides the same steps
            below, top = f["sigma_interval"]
            assert [i for i, s in enumerate(sigmas) if below < s <= top] == enabled


def test_interval_for_diffusers_prints_the_guider_fractions(guidance_runs, tmp_path, capsys):
    from diffusers import DDIMScheduler

    folder = tmp_path / "scheduler"
    DDIMScheduler(**SD_SCHEDULE).save_config(str(folder))
    run = str(guidance_runs / "w1")
    assert main(["interval", run, "--node", "root"]) == 0
    plain = capsys.readouterr().out.splitlines()
    assert main(["interval", run, "--node", "root", "--for", "diffusers", "--steps", "25", "--scheduler",
                 str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == plain[-1] and lines[-1].startswith("sampling.guidance.interval:")
    lo, hi = (float(v) for v in re.search(r"\[(.*), (.*)\]", lines[-1]).groups())
    f = guider_fractions(lo, hi, DDIMScheduler(**SD_SCHEDULE), 25)
    assert f"ClassifierFreeGuidance(start={f['start']:g}, stop={f['stop']:g})" in "\n".join(lines)
    assert f"probes.guidance_window({lo:g}, {hi:g})" in "\n".join(lines)


@pytest.mark.parametrize("args, message", [
    (["--for", "diffusers"], "--for diffusers: give the pipeline's number of inference steps with --steps N"),
    (["--for", "diffusers", "--steps", "20"], "has no local diffusers scheduler to read; give a scheduler folder"),
    (["--steps", "20"], "--steps: converts the interval for diffusers; add --for diffusers"),
    (["--for", "diffusers", "--steps", "20", "--scheduler", "no/such/dir"], "--scheduler no/such/dir: no "),
])
def test_bad_diffusers_flags_are_one_line(guidance_runs, capsys, args, message):
    assert main(["interval", str(guidance_runs / "w1"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
