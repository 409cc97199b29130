"""Recipe sections of the image classifiers every image family can read its samples with, and their
build: zero-shot open_clip (``kind: clip``) and ImageNet-1k networks gathered onto WordNet leaves
(``kind: imagenet``). Families with classifiers of their own declare those in their own file."""

from __future__ import annotations

from typing import Literal, Union

import torch
from pydantic import Field

from probes.classifiers.base import Classifier
from probes.classifiers.clip import TINY_CLIP, ClipZeroShotClassifier, register_tiny_clip
from probes.classifiers.imagenet import ImageNetClassifier
from probes.schema import Strict


class ClipClassifierConfig(Strict):
    """Zero-shot open_clip: ``model`` is an architecture name, ``pretrained`` a tag or a file."""

    kind: Literal["clip"]
    model: str = "ViT-B-32"
    pretrained: str | None = None
    templates: Union[Literal["imagenet", "simple"], list[str]] = "simple"
    temperature: float | None = Field(None, gt=0)
    universe: Union[Literal["imagenet"], list[str], None] = Field(
        None, description="classes outside the taxonomy: imagenet (all 1000) or a list of names")


class ImageNetClassifierConfig(Strict):
    """An ImageNet-1k classifier whose 1000 classes are gathered onto WordNet leaves."""

    kind: Literal["imagenet"]
    name: str = "efficientnet_lite0"
    source: Literal["timm", "torchvision", "efficientnet_lite0"] = "efficientnet_lite0"
    pretrained: Union[bool, str] = True
    temperature: float = Field(1.0, gt=0)


IMAGE_CLASSIFIERS = (ClipClassifierConfig, ImageNetClassifierConfig)


def build_image_classifier(cfg: ClipClassifierConfig | ImageNetClassifierConfig, taxonomy,
                           device: torch.device) -> Classifier:
    """The classifier a section describes, over ``taxonomy``'s leaves (paths in it already resolved)."""
    if isinstance(cfg, ClipClassifierConfig):
        if cfg.model == TINY_CLIP:
            register_tiny_clip()
        return ClipZeroShotClassifier.create(taxonomy, cfg.model, pretrained=cfg.pretrained, templates=cfg.templates,
                                             temperature=cfg.temperature, device=str(device), universe=cfg.universe)
    return ImageNetClassifier.create(taxonomy, cfg.name, source=cfg.source, pretrained=cfg.pretrained,
                                     temperature=cfg.temperature).to(device)
