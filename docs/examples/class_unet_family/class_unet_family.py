"""A probes model family from outside the probes package: class-conditional diffusers UNets.

Any folder holding ``unet/`` (a ``UNet2DModel`` trained with ``class_labels``) and ``scheduler/``
(its DDPM-family scheduler config), both written by diffusers' ``save_pretrained``, becomes a
recipe's model::

    model: {kind: class-unet, path: ./my-unet, null_class: 10}

Each taxonomy leaf names its class by an ``index`` attribute (or by a name that is a number).
``null_class`` is the class id the UNet was trained with for "no label"; without one the model has
no unconditional prediction, so runs must condition on leaves and read posteriors with ``bayes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from probes.conditioning import ClassLabelConditioner
from probes.denoisers.discrete import DiscreteScheduleDenoiser
from probes.errors import ProbesError
from probes.estimators.base import ProbeContext
from probes.families.base import BuildSpec, Family, uniform_prior
from probes.schema import Strict


class ClassUNetModel(Strict):
    """The recipe's ``model:`` section of this family."""

    kind: Literal["class-unet"]
    path: str
    null_class: int | None = None


class ClassUNet(Family):
    name = "class-unet"
    parameterisation = "eps / v / x0"
    conditioning = "class"
    description = "a class-conditional diffusers UNet2DModel folder (unet/ + scheduler/), pixels in [-1, 1]"
    recipe_models = (ClassUNetModel,)

    def build(self, spec: BuildSpec) -> ProbeContext:
        from diffusers import DDPMScheduler, UNet2DModel  # the heavy import only when a run needs it

        cfg, folder = spec.model, Path(spec.model.path)
        if not (folder / "unet").is_dir() or not (folder / "scheduler").is_dir():
            raise ProbesError(f"model.path: {folder} holds no unet/ and scheduler/ (diffusers' save_pretrained)")
        if cfg.null_class is None and spec.needs_unconditional:
            raise ProbesError(f"model.null_class: the UNet has no unconditional prediction, but "
                              f"{spec.needs_unconditional}")
        unet = UNet2DModel.from_pretrained(folder / "unet").eval().requires_grad_(False).to(spec.device)
        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")

        def network(x_in, t, cond):  # cond: class ids per sample, -1 (or None) meaning "no label"
            n = x_in.shape[0]
            labels = torch.full((n,), -1) if cond is None else torch.as_tensor(cond).long().expand(n)
            labels = torch.where(labels < 0, -1 if cfg.null_class is None else cfg.null_class, labels)
            return unet(x_in, t, class_labels=labels.to(x_in.device)).sample

        denoiser = DiscreteScheduleDenoiser(network, scheduler.alphas_cumprod, scheduler.config.prediction_type)
        classes = {}
        for leaf in spec.taxonomy.leaves:
            index = spec.taxonomy.node_attrs(leaf).get("index", leaf)
            if not str(index).isdigit():
                raise ProbesError(f"taxonomy leaf {leaf!r}: give it an 'index' attribute (its class id)")
            classes[leaf] = int(index)
        size = unet.config.sample_size
        return ProbeContext(
            taxonomy=spec.taxonomy, denoiser=denoiser.to(spec.device), conditioner=ClassLabelConditioner(classes),
            prior=uniform_prior(spec.taxonomy), shape=(unet.config.in_channels, size, size),
            sigma_max=denoiser.sigma_max, sigma_min=denoiser.sigma_min, device=spec.device, decode=lambda x: x)
