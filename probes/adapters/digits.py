"""The shipped digits model: a class-conditional diffusers ``UNet2DModel`` on 8x8 digits (eps, DDPM)."""

from __future__ import annotations

from probes.adapters.base import Family


class Digits(Family):
    name = "digits"
    parameterisation = "eps"
    conditioning = "class"
    description = "the shipped 8x8 digits UNet (pixels in [-1, 1]), discrete DDPM schedule"

    def denoiser(self, path=None):
        from probes.models.digits import load_digits_denoiser

        return load_digits_denoiser(path)

    def decoder(self, model=None, call_kwargs: dict | None = None):
        return lambda x: x

    def conditioner(self, model, taxonomy):
        from probes.models.digits import digits_conditioner

        return digits_conditioner(taxonomy)
