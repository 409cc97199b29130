"""EDM2 (NVlabs) network pickles: already denoisers on the sigma axis (EDM preconditioning).

The "pipeline" here is the loaded network (see :func:`probes.models.edm2.load_edm2`), optionally
with an unconditional network for guidance; the loading, conditioning and latent decoding code
lives in :mod:`probes.models.edm2`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from probes.adapters.base import Family
from probes.schema import Strict


class EDM2Model(Strict):
    """An EDM2 network pickle from NVlabs' release (unpickling needs their code on PYTHONPATH)."""

    kind: Literal["edm2"]
    path: str
    uncond_path: str | None = Field(None, description="unconditional network: plain reads and guidance")
    key: str = "ema"
    vae: str | None = Field(None, description="diffusers VAE (hub id or folder) instead of the pickle's encoder")
    decode_size: int | None = Field(None, gt=0, description="latent side length before decoding")


class EDM2(Family):
    name = "edm2"
    parameterisation = "x0 (EDM precond)"
    conditioning = "class"
    description = "NVlabs EDM2 pickles (ImageNet-512 latents or pixels), D(x, sigma) directly"
    recipe_models = (EDM2Model,)

    def build(self, recipe, taxonomy, device):
        from probes.components import build_edm2

        return build_edm2(recipe, taxonomy, device)

    def denoiser(self, net, uncond_net=None):
        from probes.models.edm2 import EDM2Denoiser

        return EDM2Denoiser(net, uncond_net)

    def decoder(self, net, call_kwargs: dict | None = None, decode_size=None, encoder=None):
        from probes.models.edm2 import EDM2LatentDecoder, is_pixel_space

        if is_pixel_space(net, encoder):
            return lambda x: x.float().clamp(-1, 1)
        return EDM2LatentDecoder(encoder, decode_size=decode_size)

    def conditioner(self, net, taxonomy):
        from probes.models.edm2 import edm2_conditioner

        return edm2_conditioner(taxonomy, label_dim=int(net.label_dim))
