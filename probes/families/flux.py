"""Flux: a rectified-flow transformer on *packed* latents (2x2 latent patches as tokens).

The toolkit's state is the packed latent ``[B, tokens, 4 C]`` itself: the sigma-axis conversions
act elementwise, so nothing needs unpacking until decoding. The transformer takes the flow time
``t`` (the scheduler's timestep / 1000), T5 token embeddings, pooled CLIP embeddings, position ids
for text and image tokens, and for guidance-distilled models (FLUX.1-dev) the guidance scale.
"""

from __future__ import annotations

from typing import Literal

import torch

from probes.denoisers.parameterisations import FlowDenoiser
from probes.families.base import Family, TextPipelineModel
from probes.families.text import TextDenoiser
from probes.models.stable_diffusion import LatentDecoder


def _size(pipe, call_kwargs) -> tuple[int, int]:
    default = pipe.default_sample_size * pipe.vae_scale_factor
    return int(call_kwargs.get("height") or default), int(call_kwargs.get("width") or default)


def image_ids(rows: int, cols: int, device, dtype) -> torch.Tensor:
    """Flux's position ids of the image tokens ``[rows * cols, 3]``: ``(0, row, col)`` in row-major
    order, the order in which packing lays out the 2x2 latent patches."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)


def unpack(z: torch.Tensor, height: int, width: int, vae_scale_factor: int) -> torch.Tensor:
    """Packed latents ``[B, tokens, 4 C]`` -> ``[B, C, h, w]`` for an image of ``height x width``
    pixels: each token holds one 2x2 patch of the ``h x w`` latent, channels first within it."""
    b, _, channels = z.shape
    h = 2 * (int(height) // (vae_scale_factor * 2))
    w = 2 * (int(width) // (vae_scale_factor * 2))
    z = z.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, channels // 4, h, w)


class FluxModel(TextPipelineModel):
    """Flux pipeline (hub id or diffusers folder)."""

    kind: Literal["flux"]


class Flux(Family):
    name = "flux"
    pipelines = ("FluxPipeline",)
    parameterisation = "flow"
    conditioning = "text"
    flow = True
    description = "Flux transformer on packed latents, rectified flow, timestep t, optional guidance embedding"
    recipe_models = (FluxModel,)

    def options_from_call(self, call_kwargs: dict) -> dict:
        return {"height": call_kwargs.get("height"), "width": call_kwargs.get("width"),
                "guidance_scale": call_kwargs.get("guidance_scale", 3.5)}

    def denoiser(self, pipe, negative_prompt: str | None = None, height: int | None = None,
                 width: int | None = None, guidance_scale: float = 3.5):
        transformer = pipe.transformer
        height, width = _size(pipe, {"height": height, "width": width})
        factor = pipe.vae_scale_factor * 2
        ids = image_ids(height // factor, width // factor, transformer.device, transformer.dtype)
        guided = bool(transformer.config.guidance_embeds)

        def encode(texts):
            embeds, pooled, _ = pipe.encode_prompt(texts, texts, device=transformer.device)
            return {"embeds": embeds.to(transformer.dtype), "pooled": pooled.to(transformer.dtype)}

        def network(x_t, t, emb):
            b = x_t.shape[0]
            text_ids = torch.zeros(emb["embeds"].shape[1], 3, device=x_t.device, dtype=transformer.dtype)
            guidance = torch.full((b,), float(guidance_scale), device=x_t.device) if guided else None
            return transformer(hidden_states=x_t.to(transformer.dtype), timestep=t.to(x_t.device), guidance=guidance,
                               pooled_projections=emb["pooled"], encoder_hidden_states=emb["embeds"],
                               txt_ids=text_ids, img_ids=ids, return_dict=False)[0]

        return TextDenoiser(FlowDenoiser, encode, network, negative_prompt)

    def latent_shape(self, pipe):
        height, width = _size(pipe, {})
        factor = pipe.vae_scale_factor * 2
        return ((height // factor) * (width // factor), pipe.transformer.config.in_channels)

    def decoder(self, pipe, call_kwargs: dict | None = None, decode_size: int | None = None):
        height, width = _size(pipe, call_kwargs or {})
        decode = LatentDecoder(pipe.vae, decode_size=decode_size)

        def unpack_and_decode(z):
            return decode(unpack(z, height, width, pipe.vae_scale_factor))

        return unpack_and_decode
