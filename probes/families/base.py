"""What a model family is: its recipe sections, how it is built for a run, how its pipelines are read.

A family is one file in :mod:`probes.families` holding a :class:`Family` subclass (k-diffusion's
``external.py`` in spirit: each family is a small class around one model's conventions):

* its recipe ``model:`` sections (``recipe_models``; pydantic models with a ``kind`` literal) and
  the classifier sections only it serves (``classifier_models``, e.g. the mixture's exact one);
* :meth:`Family.build`: a :class:`BuildSpec` (the resolved parts of a recipe this family reads) ->
  the :class:`~probes.estimators.base.ProbeContext` fields the family knows (denoiser,
  conditioner, classifier, the shape of a sample, its noise range, reference data for quality);
* for diffusers pipelines (:func:`probes.probe`): :meth:`Family.denoiser` (``D`` on the
  pipeline's latents, plain and unguided), :meth:`Family.decoder` (latents -> images in
  ``[-1, 1]``), :meth:`Family.conditioner` (taxonomy nodes -> ``cond``), :meth:`Family.step_rows`.

Nothing outside a family's file knows its name; the registry (:mod:`probes.families`) maps the
recipe's ``model.kind`` to the family.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from probes.classifiers.sections import build_image_classifier
from probes.denoisers.base import Denoiser
from probes.diffusers_guidance import load_scheduler
from probes.estimators.base import ProbeContext
from probes.models.stable_diffusion import DecodedClassifier, LatentDecoder, load_pipeline, prompt_conditioner
from probes.schema import Strict
from probes.taxonomy import Taxonomy

DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class BuildSpec:
    """The resolved parts of a recipe a family builds from (paths absolute, dtype chosen for the
    device): its ``model`` section, the ``classifier`` section (or None), the taxonomy, the device,
    the recipe's prior over the leaves (None: the family's own), and, when the run needs the
    model's unconditional prediction, why (``needs_unconditional``; None when it does not)."""

    model: Any
    classifier: Any
    taxonomy: Taxonomy
    device: torch.device
    prior: torch.Tensor | None = None
    needs_unconditional: str | None = None


def uniform_prior(taxonomy: Taxonomy) -> torch.Tensor:
    return torch.full((len(taxonomy.leaves),), 1.0 / len(taxonomy.leaves), dtype=torch.float64)


class Family:
    """One model family. Class attributes:

    * ``name``: registry key, shown in docs and ``probes.probe``'s provenance;
    * ``pipelines``: diffusers pipeline class names served (empty for non-diffusers models);
    * ``parameterisation``: ``eps``, ``v``, ``x0``, ``flow`` or ``exact`` (documentation tables);
    * ``conditioning``: ``text``, ``class`` or ``mask`` (how taxonomy nodes become ``cond``);
    * ``flow``: whether the family's noise law is rectified flow (its pipelines need flow schedulers);
    * ``recipe_models``: the recipe ``model:`` sections this family reads (each with a ``kind``);
    * ``classifier_models``: classifier sections only this family serves;
    * ``image_classifiers``: whether the image classifiers of :mod:`probes.classifiers.sections`
      (zero-shot CLIP, ImageNet networks) read its decoded samples.
    """

    name: ClassVar[str] = ""
    pipelines: ClassVar[tuple[str, ...]] = ()
    parameterisation: ClassVar[str] = ""
    conditioning: ClassVar[str] = "text"
    flow: ClassVar[bool] = False
    description: ClassVar[str] = ""
    recipe_models: ClassVar[tuple[type, ...]] = ()
    classifier_models: ClassVar[tuple[type, ...]] = ()
    image_classifiers: ClassVar[bool] = True

    # -- a recipe run ------------------------------------------------------------------------------

    def build(self, spec: BuildSpec) -> ProbeContext:
        """The run's context as far as the model goes (diffusers families: :func:`build_pipeline`)."""
        if self.pipelines:
            return build_pipeline(self, spec)
        raise NotImplementedError(f"family {self.name} cannot be built from a recipe")

    def model_files(self, model, classifier) -> list[str]:
        """Files and folders the run's numbers depend on (the run directory's fingerprint): every
        string of the two sections that names an existing path (paths are resolved already)."""
        found: list[str] = []

        def walk(value):
            if isinstance(value, dict):
                for v in value.values():
                    walk(v)
            elif isinstance(value, str) and value and "\n" not in value and os.path.exists(value):
                found.append(value)

        for section in (model, classifier):
            if section is not None:
                walk(section.model_dump(mode="json"))
        return sorted(set(found))

    def scheduler(self, model):
        """The diffusers scheduler of the model a recipe section names, where it is on disk (a
        diffusers folder with ``scheduler/``), else None: what ``probes interval --for diffusers``
        converts sigmas to steps with."""
        for field in ("model", "path"):
            folder = getattr(model, field, None)
            if isinstance(folder, str) and (Path(folder) / "scheduler" / "scheduler_config.json").is_file():
                return load_scheduler(Path(folder))
        return None

    def add_commands(self, train_commands) -> None:
        """Register family-specific subcommands under ``probes train`` (none by default)."""

    # -- a user's pipeline (probes.probe) ----------------------------------------------------------

    def latent_shape(self, pipe) -> tuple[int, ...]:
        """The shape of one sample's state (the network's input at the pipeline's default size)."""
        net = getattr(pipe, "unet", None) or pipe.transformer
        size = net.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        return (net.config.in_channels, h, w)

    def denoiser(self, pipe, **options) -> Denoiser:
        raise NotImplementedError

    def options_from_call(self, call_kwargs: dict) -> dict:
        """Options of :meth:`denoiser` that follow the user's pipeline call (image size, say)."""
        return {}

    def decoder(self, pipe, call_kwargs: dict | None = None,
                decode_size: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        return LatentDecoder(pipe.vae, decode_size=decode_size)

    def conditioner(self, pipe, taxonomy):
        return prompt_conditioner(taxonomy)

    def step_rows(self, tensor: torch.Tensor, call_kwargs: dict) -> torch.Tensor:
        """The rows of a scheduler step's tensors that are samples (all, unless the pipeline
        hands its scheduler both branches of guidance)."""
        return tensor

    def shares_step_noise(self, pipe, call_kwargs: dict) -> bool:
        """Whether two calls of the pipeline with equally seeded generators draw the same step noise
        (so two such probes hold paired samples)."""
        return True

    def __repr__(self) -> str:
        return f"<family {self.name}: {self.description}>"


class PipelineModel(Strict):
    """Recipe section of a diffusers pipeline family: ``model`` is a hub id or a local folder."""

    model: str
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    decode_size: int | None = Field(None, gt=0, description="latent side length before decoding")


class TextPipelineModel(PipelineModel):
    negative_prompt: str | None = None


def build_pipeline(family: Family, spec: BuildSpec, pipe=None) -> ProbeContext:
    """A diffusers family's context: its pipeline (loaded from ``spec.model.model`` unless given),
    the plain denoiser, the guidance base (negative prompt), its conditioner and a decoded image
    classifier."""
    cfg = spec.model
    if pipe is None:
        pipe = load_pipeline(cfg.model, dtype=cfg.dtype, device=str(spec.device), pipeline=family.pipelines)
    pipe = pipe.to(spec.device)
    denoiser = family.denoiser(pipe)
    negative = getattr(cfg, "negative_prompt", None)
    classifier = decode = None
    if spec.classifier is not None:
        decode = family.decoder(pipe, {}, decode_size=cfg.decode_size)
        classifier = DecodedClassifier(decode, build_image_classifier(spec.classifier, spec.taxonomy, spec.device))
    return ProbeContext(
        taxonomy=spec.taxonomy, denoiser=denoiser, conditioner=family.conditioner(pipe, spec.taxonomy),
        guidance_base=family.denoiser(pipe, negative_prompt=negative) if negative else None,
        classifier=classifier, prior=uniform_prior(spec.taxonomy), shape=family.latent_shape(pipe),
        sigma_max=denoiser.sigma_max, sigma_min=denoiser.sigma_min, device=spec.device, decode=decode)


__all__ = ["DTYPES", "BuildSpec", "Family", "PipelineModel", "TextPipelineModel", "build_pipeline", "uniform_prior"]
