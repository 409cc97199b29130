"""The shipped digits model: a class-conditional diffusers ``UNet2DModel`` on 8x8 digits (eps, DDPM)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import torch
from pydantic import Field

from probes.diffusers_guidance import load_scheduler
from probes.estimators.base import ProbeContext
from probes.families.base import BuildSpec, Family, uniform_prior
from probes.models import digits
from probes.models.train_digits import add_train_command
from probes.quality import classifier_features
from probes.schema import Strict


class DigitsModel(Strict):
    """The embedded class-conditional UNet on 8x8 digits (``path`` defaults to the shipped one)."""

    kind: Literal["digits"]
    path: str | None = None


class DigitsClassifierConfig(Strict):
    """The shipped digit classifier; ``temperature: calibrate`` fits it on the held-out digits."""

    kind: Literal["digits"]
    path: str | None = None
    temperature: Union[Literal["calibrate"], Annotated[float, Field(gt=0)]] = 1.0


class Digits(Family):
    name = "digits"
    parameterisation = "eps"
    conditioning = "class"
    description = "the shipped 8x8 digits UNet (pixels in [-1, 1]), discrete DDPM schedule"
    recipe_models = (DigitsModel,)
    classifier_models = (DigitsClassifierConfig,)
    image_classifiers = False  # 8x8 grey digits: only the digits classifier reads them

    def build(self, spec: BuildSpec) -> ProbeContext:
        taxonomy, device, cfg = spec.taxonomy, spec.device, spec.classifier
        denoiser = digits.load_digits_denoiser(spec.model.path)
        classifier = None
        if cfg is not None:
            temperature = 1.0 if cfg.temperature == "calibrate" else cfg.temperature
            classifier = digits.load_digits_classifier(taxonomy, path=cfg.path, temperature=temperature)
        x_test, y_test = digits.load_digits_split("test")
        conditioner = digits.digits_conditioner(taxonomy)
        # Held-out digits that are leaves, labelled by leaf index (the taxonomy's order, not the digit).
        leaf_index = {digit: i for i, digit in enumerate(conditioner.class_of_leaf[leaf] for leaf in taxonomy.leaves)}
        keep = torch.tensor([int(d) in leaf_index for d in y_test])
        x_inside = x_test[keep]
        y_inside = torch.tensor([leaf_index[int(d)] for d in y_test[keep]], dtype=torch.long)
        if cfg is not None and cfg.temperature == "calibrate":
            classifier.calibrate(x_inside, y_inside)  # the temperature, fitted on held-out leaves' digits

        def data(n, g):
            idx = torch.randint(len(x_inside), (n,), generator=g)
            return x_inside[idx], y_inside[idx]

        reference = None
        if classifier is not None:
            clean = classifier.to(device)

            def reference(seed: int) -> torch.Tensor:  # all held-out digits, in the classifier's features
                return classifier_features(clean, x_test.to(device))

        # The model was trained on the ten digits in near-equal numbers: a taxonomy over fewer of them
        # leaves the rest of its world outside, with about that share of its unconditional samples.
        n_outside = digits.NUM_DIGITS - len(leaf_index)
        return ProbeContext(
            taxonomy=taxonomy, denoiser=denoiser.to(device), conditioner=conditioner,
            classifier=classifier.to(device) if classifier else None, prior=uniform_prior(taxonomy), shape=(1, 8, 8),
            sigma_max=80.0, sigma_min=0.02, data=data, device=device, partial_taxonomy=n_outside > 0,
            outside_mass=n_outside / digits.NUM_DIGITS, decode=lambda x: x, reference=reference)

    def model_files(self, model, classifier) -> list[str]:
        return sorted(set(super().model_files(model, classifier)) | {str(digits.DEFAULT_DIR)})

    def scheduler(self, model):
        return load_scheduler(Path(model.path) if model.path else digits.DEFAULT_DIR)

    def add_commands(self, train_commands) -> None:
        add_train_command(train_commands, self.name)

    def denoiser(self, path=None):
        return digits.load_digits_denoiser(path)

    def decoder(self, model=None, call_kwargs: dict | None = None, decode_size=None):
        return lambda x: x

    def conditioner(self, model, taxonomy):
        return digits.digits_conditioner(taxonomy)
