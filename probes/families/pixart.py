"""PixArt-alpha / PixArt-Sigma: a DiT-style transformer with T5 text conditioning.

Trained on SD's discrete schedule with eps prediction and a learned variance: the transformer's
output has twice the latent channels and the first half is eps (as the pipelines read it).
"""

from __future__ import annotations

from typing import Literal

from probes.denoisers.discrete import DiscreteScheduleDenoiser
from probes.families.base import Family, TextPipelineModel
from probes.families.text import TextDenoiser


class PixArtModel(TextPipelineModel):
    """PixArt-alpha / Sigma pipeline (hub id or diffusers folder)."""

    kind: Literal["pixart"]


class PixArt(Family):
    name = "pixart"
    pipelines = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")
    parameterisation = "eps"
    conditioning = "text"
    description = "PixArt-alpha / Sigma transformer, T5 prompts, discrete DDPM schedule, learned variance"
    recipe_models = (PixArtModel,)

    def denoiser(self, pipe, negative_prompt: str | None = None):
        transformer = pipe.transformer
        channels = transformer.config.in_channels

        def encode(texts):
            embeds, mask, _, _ = pipe.encode_prompt(texts, do_classifier_free_guidance=False,
                                                    device=transformer.device)
            return {"embeds": embeds.to(transformer.dtype), "mask": mask}

        def network(x_in, t, emb):
            out = transformer(x_in.to(transformer.dtype), encoder_hidden_states=emb["embeds"],
                              encoder_attention_mask=emb["mask"], timestep=t.to(x_in.device),
                              added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
            return out[:, :channels]  # learned variance: the second half is not eps

        prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
        return TextDenoiser(lambda fn: DiscreteScheduleDenoiser(fn, pipe.scheduler.alphas_cumprod, prediction).to(
            transformer.device), encode, network, negative_prompt)
