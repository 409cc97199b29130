"""The shipped digits model: a class-conditional diffusers ``UNet2DModel`` on 8x8 digits (eps, DDPM)."""

from __future__ import annotations

from typing import Literal

from probes.adapters.base import Family
from probes.schema import Strict


class DigitsModel(Strict):
    """The embedded class-conditional UNet on 8x8 digits (``path`` defaults to the shipped one)."""

    kind: Literal["digits"]
    path: str | None = None


class Digits(Family):
    name = "digits"
    parameterisation = "eps"
    conditioning = "class"
    description = "the shipped 8x8 digits UNet (pixels in [-1, 1]), discrete DDPM schedule"
    recipe_models = (DigitsModel,)

    def build(self, recipe, taxonomy, device):
        from probes.components import build_digits

        return build_digits(recipe, taxonomy, device)

    def denoiser(self, path=None):
        from probes.models.digits import load_digits_denoiser

        return load_digits_denoiser(path)

    def decoder(self, model=None, call_kwargs: dict | None = None, decode_size=None):
        return lambda x: x

    def conditioner(self, model, taxonomy):
        from probes.models.digits import digits_conditioner

        return digits_conditioner(taxonomy)
