"""DiT: a class-conditional transformer on ImageNet-1k latents (the partner of WordNet taxonomies).

Discrete DDPM schedule (linear betas), eps prediction with a learned variance (the second half of
the output channels). Class 1000 is the null class (``DiTPipeline`` hard-codes it). With
``guidance_scale > 1`` the pipeline hands its scheduler both halves of its guided batch (equal
rows); :meth:`DiT.step_rows` keeps the first.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from probes.denoisers.base import Denoiser
from probes.denoisers.discrete import DiscreteScheduleDenoiser
from probes.families.base import Family, PipelineModel
from probes.models.edm2 import edm2_conditioner
from probes.schedulers import scheduler_kind

NULL_CLASS = 1000


def class_ids(cond: Any, batch: int, device) -> torch.Tensor:
    """``cond`` (None, an int, a list of ``int | None`` or a tensor; ``None``/``-1`` = unconditional)
    -> class ids ``[batch]`` with the null class for unconditional rows."""
    if cond is None:
        return torch.full((batch,), NULL_CLASS, dtype=torch.long, device=device)
    if isinstance(cond, int):
        cond = [cond] * batch
    if not isinstance(cond, torch.Tensor):
        cond = torch.tensor([NULL_CLASS if c is None else int(c) for c in cond])
    ids = cond.to(device=device, dtype=torch.long)
    return torch.where(ids < 0, torch.full_like(ids, NULL_CLASS), ids)


class DiTDenoiser(Denoiser):
    def __init__(self, pipe):
        super().__init__()
        transformer = pipe.transformer
        channels = transformer.config.in_channels

        def network(x_in, t, cond):
            ids = class_ids(cond, x_in.shape[0], x_in.device)
            out = transformer(x_in.to(transformer.dtype), timestep=t.to(x_in.device), class_labels=ids,
                              return_dict=False)[0]
            return out[:, :channels] if out.shape[1] == 2 * channels else out

        prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
        self.inner = DiscreteScheduleDenoiser(network, pipe.scheduler.alphas_cumprod, prediction).to(transformer.device)
        self.sigma_min, self.sigma_max = self.inner.sigma_min, self.inner.sigma_max

    def forward(self, x, sigma, cond=None):
        return self.inner(x, sigma, cond)


class DiTModel(PipelineModel):
    """DiT pipeline (hub id or diffusers folder), ImageNet-1k classes."""

    kind: Literal["dit"]


class DiT(Family):
    name = "dit"
    pipelines = ("DiTPipeline",)
    parameterisation = "eps"
    conditioning = "class"
    description = "DiT class-conditional transformer (ImageNet-1k, null class 1000), discrete DDPM schedule"
    recipe_models = (DiTModel,)

    def denoiser(self, pipe):
        return DiTDenoiser(pipe)

    def conditioner(self, pipe, taxonomy):
        return edm2_conditioner(taxonomy, label_dim=1000)  # the same ImageNet-1k class indices

    def shares_step_noise(self, pipe, call_kwargs: dict) -> bool:
        # DiTPipeline calls scheduler.step without the call's generator: a scheduler that adds noise
        # at each step draws it from torch's global generator, so equal seeds do not pair two calls.
        return scheduler_kind(pipe.scheduler, call_kwargs).kernel == "deterministic"

    def step_rows(self, tensor, call_kwargs):
        guided = float(call_kwargs.get("guidance_scale", 4.0)) > 1
        return tensor[: tensor.shape[0] // 2] if guided else tensor
