"""Stable Diffusion 1.x (eps) and 2.x (v): a UNet on a discrete DDPM schedule, CLIP prompts."""

from __future__ import annotations

from probes.adapters.base import Family


class StableDiffusion(Family):
    name = "stable-diffusion"
    pipelines = ("StableDiffusionPipeline",)
    parameterisation = "eps / v"
    conditioning = "text"
    description = "SD 1.x / 2.x UNet, discrete DDPM schedule, eps (1.x) or v (2.x) from the scheduler config"

    def denoiser(self, pipe, negative_prompt: str | None = None, **options):
        from probes.models.stable_diffusion import StableDiffusionDenoiser

        return StableDiffusionDenoiser(pipe, negative_prompt=negative_prompt, **options)
