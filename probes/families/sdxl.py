"""Stable Diffusion XL: SD's discrete schedule, two CLIP encoders and ``added_cond_kwargs``.

The UNet takes pooled text embeddings and six size/crop numbers (``time_ids``) besides the token
embeddings; the defaults are what the pipeline uses for an uncropped image at its default size.
"""

from __future__ import annotations

from typing import Literal

import torch

from probes.denoisers.discrete import DiscreteScheduleDenoiser
from probes.families.base import Family, TextPipelineModel
from probes.families.text import TextDenoiser


class SDXLModel(TextPipelineModel):
    """Stable Diffusion XL pipeline (hub id or diffusers folder)."""

    kind: Literal["sdxl"]


class StableDiffusionXL(Family):
    name = "sdxl"
    pipelines = ("StableDiffusionXLPipeline",)
    parameterisation = "eps / v"
    conditioning = "text"
    description = "SDXL UNet with added_cond_kwargs (pooled text, time ids), discrete DDPM schedule"
    recipe_models = (SDXLModel,)

    def options_from_call(self, call_kwargs: dict) -> dict:
        return {"height": call_kwargs.get("height"), "width": call_kwargs.get("width")}

    def denoiser(self, pipe, negative_prompt: str | None = None, height: int | None = None,
                 width: int | None = None):
        size = pipe.default_sample_size * pipe.vae_scale_factor
        hw = (height or size, width or size)
        unet = pipe.unet
        projection_dim = (pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None
                          else unet.config.projection_class_embeddings_input_dim
                          - 6 * unet.config.addition_time_embed_dim)
        time_ids = add_time_ids(unet, hw, projection_dim)

        def encode(texts):
            embeds, _, pooled, _ = pipe.encode_prompt(texts, device=unet.device, do_classifier_free_guidance=False)
            return {"embeds": embeds.to(unet.dtype), "pooled": pooled.to(unet.dtype)}

        def network(x_in, t, emb):
            added = {"text_embeds": emb["pooled"], "time_ids": time_ids.to(x_in.device).expand(x_in.shape[0], -1)}
            return unet(x_in.to(unet.dtype), t.to(x_in.device), encoder_hidden_states=emb["embeds"],
                        added_cond_kwargs=added, return_dict=False)[0]

        prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
        return TextDenoiser(lambda fn: DiscreteScheduleDenoiser(fn, pipe.scheduler.alphas_cumprod, prediction).to(
            unet.device), encode, network, negative_prompt)


def add_time_ids(unet, size: tuple[int, int], projection_dim: int) -> torch.Tensor:
    """SDXL's micro-conditioning ``[1, 6]`` for an uncropped image of ``size`` (height, width):
    original size, crop corner (0, 0), target size, as the pipeline builds it; refused in one line
    when the UNet's added-embedding width says otherwise."""
    ids = [*size, 0, 0, *size]
    width = unet.config.addition_time_embed_dim * len(ids) + projection_dim
    expected = unet.config.projection_class_embeddings_input_dim
    if expected != width:
        raise ValueError(f"the SDXL UNet expects added embeddings of width {expected}, not {width}: its config "
                         "does not match its text encoders")
    return torch.tensor([ids], dtype=unet.dtype)
