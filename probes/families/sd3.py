"""Stable Diffusion 3: an MMDiT transformer trained with rectified flow (velocity prediction).

The transformer takes the flow time as ``1000 t`` (the scheduler's timesteps), token embeddings
(CLIP-L, CLIP-G and T5, concatenated) and pooled CLIP embeddings.
"""

from __future__ import annotations

from typing import Literal

from probes.denoisers.parameterisations import FlowDenoiser
from probes.families.base import Family, TextPipelineModel
from probes.families.text import TextDenoiser


class SD3Model(TextPipelineModel):
    """Stable Diffusion 3 / 3.5 pipeline (hub id or diffusers folder)."""

    kind: Literal["sd3"]


class StableDiffusion3(Family):
    name = "sd3"
    pipelines = ("StableDiffusion3Pipeline",)
    parameterisation = "flow"
    conditioning = "text"
    flow = True
    description = "SD 3 / 3.5 MMDiT, rectified flow, timestep 1000 t"
    recipe_models = (SD3Model,)

    def denoiser(self, pipe, negative_prompt: str | None = None):
        transformer = pipe.transformer
        scale = float(pipe.scheduler.config.num_train_timesteps)

        def encode(texts):
            embeds, _, pooled, _ = pipe.encode_prompt(texts, texts, texts, device=transformer.device,
                                                      do_classifier_free_guidance=False)
            return {"embeds": embeds.to(transformer.dtype), "pooled": pooled.to(transformer.dtype)}

        def network(x_t, t, emb):
            return transformer(hidden_states=x_t.to(transformer.dtype), timestep=(scale * t).to(x_t.device),
                               encoder_hidden_states=emb["embeds"], pooled_projections=emb["pooled"],
                               return_dict=False)[0]

        return TextDenoiser(FlowDenoiser, encode, network, negative_prompt)
