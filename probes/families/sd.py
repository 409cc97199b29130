"""Stable Diffusion 1.x (eps) and 2.x (v): a UNet on a discrete DDPM schedule, CLIP prompts.

Also the tiny Stable Diffusion pipeline built in code (random weights), which runs the whole path
anywhere: the ``sd15-tiny`` recipe and the tests.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from probes.estimators.base import ProbeContext
from probes.families.base import BuildSpec, Family, TextPipelineModel, build_pipeline
from probes.models.stable_diffusion import StableDiffusionDenoiser
from probes.models.tiny_sd import build_tiny_pipeline
from probes.schema import Strict


class StableDiffusionModel(TextPipelineModel):
    """A diffusers Stable Diffusion pipeline by hub id or local directory."""

    kind: Literal["stable-diffusion"]


class TinyStableDiffusionModel(Strict):
    """A tiny Stable Diffusion pipeline built in code (random weights): the whole path, anywhere."""

    kind: Literal["tiny-stable-diffusion"]
    seed: int = 0
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    sample_size: int = 16
    negative_prompt: str | None = None
    decode_size: int | None = Field(None, gt=0)


class StableDiffusion(Family):
    name = "stable-diffusion"
    pipelines = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
    parameterisation = "eps / v"
    conditioning = "text"
    description = "SD 1.x / 2.x UNet, discrete DDPM schedule, eps (1.x) or v (2.x) from the scheduler config"
    recipe_models = (StableDiffusionModel, TinyStableDiffusionModel)

    def build(self, spec: BuildSpec) -> ProbeContext:
        pipe = None
        if isinstance(spec.model, TinyStableDiffusionModel):
            cfg = spec.model
            pipe = build_tiny_pipeline(seed=cfg.seed, prediction_type=cfg.prediction_type, sample_size=cfg.sample_size)
        return build_pipeline(self, spec, pipe)

    def scheduler(self, model):
        if isinstance(model, TinyStableDiffusionModel):
            return build_tiny_pipeline(seed=model.seed, prediction_type=model.prediction_type,
                                       sample_size=model.sample_size).scheduler
        return super().scheduler(model)

    def denoiser(self, pipe, negative_prompt: str | None = None, **options):
        return StableDiffusionDenoiser(pipe, negative_prompt=negative_prompt, **options)
