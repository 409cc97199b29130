"""Adapters against the schedulers' own arithmetic, on tiny random-weight pipelines of every family.

Two checks per pipeline, both against numbers the pipeline computes itself:

1. the clean estimate the toolkit reads from a step (model output + sigma + the family's
   parameterisation) equals the scheduler's own ``pred_original_sample`` (DDIM, DDPM, Euler, Euler
   ancestral), ``convert_model_output`` (DPM-Solver++), or for flow matching reproduces the
   scheduler's ``prev_sample`` as ``(1 - t') x0 + t' n`` with ``n = (x_t - (1 - t) x0) / t``;
2. the family's denoiser ``D(x_sigma, sigma, cond)``, called on the recorded state with the
   call's conditioning, equals the pipeline's own estimate when guidance is off.

Tolerances: conversions are done in float64 from float32 tensors, so (1) holds to 1e-5 relative
to the tensor's scale; (2) recomputes a float32 network whose timestep comes back from sigma
through a float32 log-sigma interpolation (``t`` differs from the integer timestep by ~1e-4), so
it holds to 2e-3 of the scale.
"""

import math

import pytest
import tiny_pipelines as tp
import torch
from tolerances import magnitude

from probes.denoisers.parameterisations import flow_t
from probes.families import FAMILIES, family_of
from probes.schedulers import read_step, scheduler_kind


def _record(pipe, call):
    """Run ``pipe(**call)`` with ``step`` wrapped; return [(sigma, x, x0, reference, native, out)]."""
    family, kind = family_of(pipe), scheduler_kind(pipe.scheduler)
    original, seen = pipe.scheduler.step, []

    def step(model_output, timestep, sample, *args, **kwargs):
        rows = lambda t: family.step_rows(t, call)
        native_index = getattr(pipe.scheduler, "step_index", None)
        sigma, x, x0 = read_step(pipe.scheduler, kind, rows(model_output), timestep, rows(sample))
        reference = None
        if type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler":
            if pipe.scheduler.step_index is None:  # what step() does first; the reference needs it now
                pipe.scheduler._init_step_index(timestep)
            reference = pipe.scheduler.convert_model_output(model_output, sample=sample)
        result = original(model_output, timestep, sample, *args, **kwargs)
        if reference is None:
            fields = result if isinstance(result, tuple) else (result.prev_sample, getattr(
                result, "pred_original_sample", None))
            reference = fields[1] if len(fields) > 1 else None
        prev = result[0] if isinstance(result, tuple) else result.prev_sample
        seen.append(dict(sigma=sigma, x=x, x0=x0, ref=None if reference is None else rows(reference),
                         sample=rows(sample), prev=rows(prev), index=native_index, timestep=timestep))
        return result

    pipe.scheduler.step = step
    try:
        out = pipe(**call)
    finally:
        del pipe.scheduler.step
    return seen, out


def _gen():
    return torch.Generator().manual_seed(0)


#: every pipeline family's case (tests/tiny_pipelines.py), plus SD 2.x's v-prediction
CASES = {name: (name, case.call, case.cond) for name, case in tp.FAMILY_CASES.items()}
CASES["stable-diffusion-v"] = ("stable-diffusion", dict(prompt=["a cat", "a dog"]), lambda b: ["a cat", "a dog"])


def _swap(pipe, name, **config):
    import diffusers

    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **config)
    return pipe


def _pipe(case):
    if case == "stable-diffusion-v":
        if "sd-v" not in tp._pipes:
            tp._pipes["sd-v"] = tp.tiny_sd("v_prediction")
        return tp._pipes["sd-v"]
    return tp.family_pipe(case)


@pytest.mark.parametrize("case", list(CASES))
def test_step_reading_matches_the_schedulers_own_estimate(case):
    pipe = _pipe(case)
    seen, _ = _record(pipe, dict(CASES[case][1], num_inference_steps=3, guidance_scale=1.0, generator=_gen(),
                                 output_type="latent"))
    finite = [s for s in seen if math.isfinite(s["sigma"])]
    assert len(finite) >= 2
    layout = scheduler_kind(pipe.scheduler).layout
    for s in finite:
        if layout == "flow":
            t = flow_t(s["sigma"])
            sched = pipe.scheduler
            t_next = float(sched.sigmas[s["index"] + 1])
            noise = (s["sample"].double() - (1 - t) * s["x0"].double()) / t
            expect = (1 - t_next) * s["x0"].double() + t_next * noise
            # float64 here, float32 in the scheduler: 1e-5 of the magnitude compared (84 float32
            # units, relative and absolute; measured < 1)
            assert torch.allclose(expect.float(), s["prev"], rtol=1e-5, atol=1e-5 * magnitude(s["prev"]))
        else:
            assert s["ref"] is not None
            # x0 in float32 two ways (the scheduler's formula and the step reading's), through
            # intermediates larger than x0: 1e-5 of the magnitude compared (measured < 1 float32 unit)
            assert torch.allclose(s["x0"], s["ref"].float(), rtol=1e-5, atol=1e-5 * magnitude(s["ref"])), case


@pytest.mark.parametrize("scheduler", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                       "DPMSolverMultistepScheduler", "DDPMScheduler"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_discrete_schedulers_eps_and_v(scheduler, prediction):
    pipe = _swap(tp.tiny_sd(prediction), scheduler, prediction_type=prediction)
    seen, _ = _record(pipe, dict(prompt=["a cat"], num_inference_steps=3, guidance_scale=1.0, generator=_gen(),
                                 output_type="latent"))
    assert len(seen) == 3
    for s in seen:
        # x0 in float32 two ways, as above: 1e-5 of the magnitude compared
        assert torch.allclose(s["x0"], s["ref"].float(), rtol=1e-5, atol=1e-5 * magnitude(s["ref"]))


@pytest.mark.parametrize("case", list(CASES))
def test_family_denoiser_reproduces_the_pipelines_estimate(case):
    pipe = _pipe(case)
    call = dict(CASES[case][1], num_inference_steps=3, guidance_scale=1.0, generator=_gen(), output_type="latent")
    seen, _ = _record(pipe, call)
    family = family_of(pipe)
    assert family.name == CASES[case][0]
    denoiser = family.denoiser(pipe, **family.options_from_call(call))
    for s in seen:
        if not math.isfinite(s["sigma"]):
            continue
        with torch.no_grad():
            d = denoiser(s["x"], s["sigma"], CASES[case][2](s["x"].shape[0]))
        # the family's denoiser calls the network again with its time input recomputed from sigma
        # (float64 here, the scheduler's float32 table there): 1e-4 of the magnitude (840 float32
        # units; measured 16)
        assert torch.allclose(d, s["x0"], rtol=1e-5, atol=1e-4 * magnitude(s["x0"])), (case, s["sigma"])


def test_every_pipeline_family_has_a_case():
    """A family added to the registry with pipelines must get a tiny pipeline in tiny_pipelines.py."""
    assert set(tp.FAMILY_CASES) == {f.name for f in FAMILIES.values() if f.pipelines}


# --- conventions probes reproduces itself, checked against diffusers' own helpers ---------------
# diffusers keeps these helpers private (underscore names): probes does not call them, it computes
# the same conventions; these tests fail loudly when a diffusers release changes a convention or
# moves the helper (the versions they were written against: diffusers 0.42).


def test_sdxl_time_ids_are_the_pipeline_s():
    from probes.families.sdxl import add_time_ids

    pipe = tp.family_pipe("sdxl")
    unet = pipe.unet
    projection = pipe.text_encoder_2.config.projection_dim
    assert hasattr(pipe, "_get_add_time_ids"), "diffusers moved SDXL's _get_add_time_ids"
    theirs = pipe._get_add_time_ids((16, 24), (0, 0), (16, 24), dtype=unet.dtype,
                                    text_encoder_projection_dim=projection)
    assert torch.equal(add_time_ids(unet, (16, 24), projection), theirs)
    with pytest.raises(ValueError, match="added embeddings of width"):
        add_time_ids(unet, (16, 24), projection + 1)


def test_flux_packing_and_position_ids_are_the_pipeline_s():
    from probes.families.flux import image_ids, unpack

    pipe = tp.family_pipe("flux")
    assert hasattr(pipe, "_prepare_latent_image_ids") and hasattr(pipe, "_unpack_latents"), \
        "diffusers moved Flux's latent packing helpers"
    theirs = pipe._prepare_latent_image_ids(1, 3, 5, torch.device("cpu"), torch.float32)
    assert torch.equal(image_ids(3, 5, torch.device("cpu"), torch.float32), theirs)
    packed = torch.randn(2, 6, 16)  # 2 x 3 patches of 4 channels, for a 48 x 96 pixel image at scale 8
    assert torch.equal(unpack(packed, 32, 48, 8), pipe._unpack_latents(packed, 32, 48, 8))
    # and unpacking inverts diffusers' packing
    latents = torch.randn(2, 4, 4, 6)
    packed = pipe._pack_latents(latents, 2, 4, 4, 6)
    assert torch.equal(unpack(packed, 32, 48, 8), latents)


def test_scheduler_steps_are_located_with_public_methods_only():
    """``schedulers.step_index`` reads where ``step()`` will start without touching private state."""
    import diffusers

    from probes.schedulers import step_index

    scheduler = diffusers.EulerDiscreteScheduler()
    scheduler.set_timesteps(10)
    for k, t in enumerate(scheduler.timesteps):
        fresh = diffusers.EulerDiscreteScheduler()
        fresh.set_timesteps(10)
        assert step_index(fresh, t) == k and fresh.step_index is None  # unchanged by the reading
    scheduler.set_begin_index(3)
    assert step_index(scheduler, scheduler.timesteps[0]) == 3
