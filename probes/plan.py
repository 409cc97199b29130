"""A recipe resolved once: the frozen :class:`Plan` every later step of a run reads.

Resolving does, in one place and before anything is built:

* every path of the recipe made absolute against the recipe's own folder (never the working
  directory), names and hub ids left as they are (:meth:`probes.recipe.Recipe.resolve_path`);
* the device chosen (``auto``: CUDA when there is one) and the model's dtype checked against it:
  ``float16`` on a CPU becomes ``float32``, said in one line (many CPU kernels have no float16, the
  rest run it slowly);
* the taxonomy loaded, the recipe's prior read onto its leaves, the estimators built (their
  options checked) and their grids checked against the step count;
* what the run needs of the model stated for its family (``needs_unconditional``).

Functions below take the parts of a plan they need, never the whole recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from probes.classifiers.sections import IMAGE_CLASSIFIERS
from probes.errors import ProbesError
from probes.estimators import Estimator, build_estimator
from probes.families import Family
from probes.recipe import PATH_FIELDS, Recipe, load_recipe, recipe_from_dict
from probes.schema import leaf_weights
from probes.taxonomy import Taxonomy, load_taxonomy

#: Estimators that read posteriors with the model's unconditional prediction.
UNCONDITIONAL_READERS = ("plugin", "rollout", "immse")


@dataclass(frozen=True)
class Plan:
    """A validated recipe with everything resolved (see the module docstring).

    ``model`` and ``classifier`` are the recipe's sections with paths made absolute and the dtype
    chosen for the device; ``quality_reference`` and ``grid`` likewise. ``recipe`` is the recipe as
    written (for run.json and the run's fingerprint), ``paths`` its path fields as resolved.
    """

    recipe: Recipe
    family: Family
    model: object
    classifier: object
    taxonomy: Taxonomy
    device: torch.device
    prior: torch.Tensor | None
    estimators: tuple[Estimator, ...]
    grid: object
    quality_reference: str | None
    paths: dict
    notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def seed(self) -> int:
        return self.recipe.seed

    @property
    def sampling(self):
        return self.recipe.sampling

    @property
    def primary_estimator(self) -> str:
        return self.recipe.primary_estimator

    @property
    def samples_from_taxonomy(self) -> bool:
        """Whether the samples are drawn from the taxonomy's leaves (leaf-conditional generation,
        or clean data of the leaves noised forward) rather than from the model's whole world."""
        return self.sampling.condition == "leaf" or self.sampling.source == "data"

    @property
    def needs_unconditional(self) -> str | None:
        """Why the run needs the model's unconditional prediction, or None when it does not."""
        s = self.sampling
        readers = [e.name for e in self.estimators if e.name in UNCONDITIONAL_READERS]
        if s.condition == "none":
            return "sampling.condition: none samples unconditionally"
        if s.guidance.guides:
            return "guidance mixes in the unconditional prediction"
        if readers:
            return f"estimator {readers[0]!r} reads posteriors with the unconditional model"
        return None


def resolve(recipe: Recipe | str | Path, overrides: list[str] | None = None) -> Plan:
    """The :class:`Plan` of a recipe (a :class:`~probes.recipe.Recipe`, a file or a shipped name)."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides=overrides)
    elif overrides:
        raise ProbesError("overrides apply to a recipe file; pass them to load_recipe")
    else:
        recipe = revalidated(recipe)
    family = recipe.family
    device = resolve_device(recipe.device)
    notes = []
    model = _with_paths(recipe, "model", recipe.model)
    if getattr(model, "dtype", None) == "float16" and device.type == "cpu":
        notes.append("model.dtype float16 on a CPU is very slow or unsupported; running in float32 "
                     "(float16 is for GPUs)")
        model = model.model_copy(update={"dtype": "float32"})
    classifier = None if recipe.classifier is None else _with_paths(recipe, "classifier", recipe.classifier)
    _check_classifier(family, recipe)
    taxonomy = load_taxonomy(recipe.resolve_path(recipe.taxonomy))
    taxonomy.require_a_choice()
    s = recipe.sampling
    if any(spec.name == "guided" for spec in recipe.estimators) and s.condition != "leaf":
        raise ProbesError("estimators: 'guided' scores each sample's conditioning leaf; "
                          "it needs sampling.condition: leaf")
    if isinstance(s.condition, list) and family.conditioning != "text":
        raise ProbesError("sampling.condition: prompt lists need a text-conditional model")
    if s.condition == "none" and s.guidance.guides:
        raise ProbesError("sampling.guidance: guidance needs conditional sampling (sampling.condition)")
    estimators = tuple(build_estimator(spec.name, **_options(spec, recipe)) for spec in recipe.estimators)
    for est in estimators:  # every grid has sampling.steps sigmas: checked before the model is loaded
        est.check_grid(s.steps)
    grid = s.grid
    if not isinstance(grid, str):
        grid = grid.model_copy(update={"from_run": recipe.resolve_path(grid.from_run)})
    reference = recipe.quality.reference
    plan = Plan(recipe=recipe, family=family, model=model, classifier=classifier, taxonomy=taxonomy, device=device,
                prior=_prior(recipe.prior, taxonomy), estimators=estimators, grid=grid,
                quality_reference=None if reference is None else recipe.resolve_path(reference),
                paths=recipe.resolved_paths(), notes=tuple(notes))
    return plan


def revalidated(recipe: Recipe) -> Recipe:
    """A recipe object checked again: fields changed in code after it was loaded (``recipe.sampling.
    samples = 0``) are held to the schema like the file's own, with one line naming the field."""
    fresh = recipe_from_dict(recipe.model_dump(mode="python"), source=str(recipe.source or "recipe"))
    fresh._source, fresh._base_dir = recipe._source, recipe._base_dir
    return fresh


def _check_classifier(family: Family, recipe: Recipe) -> None:
    """One line when the classifier section is not one that reads this family's samples."""
    if recipe.classifier is None:
        return
    accepted = (*family.classifier_models, *(IMAGE_CLASSIFIERS if family.image_classifiers else ()))
    if type(recipe.classifier) not in accepted:
        kinds = ", ".join(repr(c.model_fields["kind"].annotation.__args__[0]) for c in accepted) or "none"
        raise ProbesError(f"classifier.kind: {recipe.classifier.kind!r} does not read samples of model.kind "
                          f"{recipe.model.kind!r}; use {kinds}")


def _with_paths(recipe: Recipe, section: str, value):
    """A recipe section with its path fields resolved against the recipe's folder."""
    update = {}
    for dotted in PATH_FIELDS:
        head, _, name = dotted.partition(".")
        current = getattr(value, name, None) if head == section else None
        if isinstance(current, str):
            update[name] = recipe.resolve_path(current)
    return value.model_copy(update=update) if update else value


def _options(spec, recipe) -> dict:
    """An estimator's options; ``analysis.evidence_maps`` turns on the Bayes filter's maps."""
    options = spec.options
    if spec.name == "bayes" and recipe.analysis.evidence_maps:
        if options.get("track") is not None:
            raise ProbesError("analysis.evidence_maps: the maps need the full Bayes filter; drop the bayes "
                              "estimator's track option")
        options["evidence"] = True
    return options


def _prior(prior, taxonomy: Taxonomy) -> torch.Tensor | None:
    """The recipe's ``prior`` over the leaves (None: the family's own)."""
    leaves = taxonomy.leaves
    if prior is None:
        return None
    if prior == "uniform":
        return torch.full((len(leaves),), 1.0 / len(leaves), dtype=torch.float64)
    w = leaf_weights(prior, leaves, "prior")
    return w / w.sum()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ProbesError(f"device: unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProbesError(f"device: {name!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ProbesError(f"device: {name!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ProbesError(f"device: {name!r} requested but Apple's MPS backend is not available here")
    return device
