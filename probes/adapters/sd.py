"""Stable Diffusion 1.x (eps) and 2.x (v): a UNet on a discrete DDPM schedule, CLIP prompts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from probes.adapters.base import Family
from probes.schema import Strict


class StableDiffusionModel(Strict):
    """A diffusers Stable Diffusion pipeline by hub id or local directory."""

    kind: Literal["stable-diffusion"]
    model: str
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    negative_prompt: str | None = None
    decode_size: int | None = Field(None, gt=0, description="latent side length before decoding")


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

    def build(self, recipe, taxonomy, device):
        from probes.components import build_stable_diffusion

        return build_stable_diffusion(recipe, taxonomy, device)

    def denoiser(self, pipe, negative_prompt: str | None = None, **options):
        from probes.models.stable_diffusion import StableDiffusionDenoiser

        return StableDiffusionDenoiser(pipe, negative_prompt=negative_prompt, **options)
