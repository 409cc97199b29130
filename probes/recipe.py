"""Recipes: one YAML file describes one probing run.

The schema is strict: an unknown or misspelt field is an error that names the field and, where
one is close, the field that was probably meant. Paths inside a recipe are relative to the recipe
file. See ``docs/recipes.md`` for every field.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from probes.errors import ProbesError

SAMPLERS = ("euler", "heun", "ddim", "ancestral", "euler_maruyama")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# --- models -----------------------------------------------------------------------------------


class GMMHierarchy(Strict):
    """Means built down the taxonomy: children sit ``separations[depth-1]`` from their parent."""

    separations: list[float]
    axis_aligned: bool = False
    share_level_axes: bool = False
    seed: int = 0


class GMMModel(Strict):
    """A Gaussian mixture over the taxonomy's leaves (exact posteriors and denoisers)."""

    kind: Literal["gmm"]
    dim: Optional[int] = Field(None, gt=0)
    std: float = Field(1.0, gt=0)
    weights: Optional[dict[str, float]] = None
    means: Optional[dict[str, list[float]]] = None
    hierarchy: Optional[GMMHierarchy] = None

    @model_validator(mode="after")
    def _one_source_of_means(self):
        if (self.means is None) == (self.hierarchy is None):
            raise ValueError("give exactly one of 'means' (per leaf) or 'hierarchy'")
        if self.hierarchy is not None and self.dim is None:
            raise ValueError("'hierarchy' needs 'dim'")
        return self


class DigitsModel(Strict):
    """The embedded class-conditional UNet on 8x8 digits (``path`` defaults to the shipped one)."""

    kind: Literal["digits"]
    path: Optional[str] = None


class StableDiffusionModel(Strict):
    """A diffusers Stable Diffusion pipeline by hub id or local directory."""

    kind: Literal["stable-diffusion"]
    model: str
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    negative_prompt: Optional[str] = None
    decode_size: Optional[int] = Field(None, gt=0, description="latent side length before decoding")


class TinyStableDiffusionModel(Strict):
    """A tiny Stable Diffusion pipeline built in code (random weights): the whole path, anywhere."""

    kind: Literal["tiny-stable-diffusion"]
    seed: int = 0
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    sample_size: int = 16
    negative_prompt: Optional[str] = None
    decode_size: Optional[int] = Field(None, gt=0)


class EDM2Model(Strict):
    """An EDM2 network pickle from NVlabs' release (unpickling needs their code on PYTHONPATH)."""

    kind: Literal["edm2"]
    path: str
    uncond_path: Optional[str] = Field(None, description="unconditional network: plain reads and guidance")
    key: str = "ema"
    vae: Optional[str] = Field(None, description="diffusers VAE (hub id or folder) instead of the pickle's encoder")
    decode_size: Optional[int] = Field(None, gt=0, description="latent side length before decoding")


ModelConfig = Annotated[
    Union[GMMModel, DigitsModel, StableDiffusionModel, TinyStableDiffusionModel, EDM2Model],
    Field(discriminator="kind"),
]

# --- classifiers ------------------------------------------------------------------------------


class ExactClassifierConfig(Strict):
    """The mixture's exact clean posterior (Gaussian-mixture models only)."""

    kind: Literal["exact"]


class DigitsClassifierConfig(Strict):
    """The shipped digit classifier; ``temperature: calibrate`` fits it on the held-out digits."""

    kind: Literal["digits"]
    path: Optional[str] = None
    temperature: Union[Literal["calibrate"], Annotated[float, Field(gt=0)]] = 1.0


class ClipClassifierConfig(Strict):
    """Zero-shot open_clip: ``model`` is an architecture name, ``pretrained`` a tag or a file."""

    kind: Literal["clip"]
    model: str = "ViT-B-32"
    pretrained: Optional[str] = None
    templates: Union[Literal["imagenet", "simple"], list[str]] = "simple"
    temperature: Optional[float] = Field(None, gt=0)


class ImageNetClassifierConfig(Strict):
    """An ImageNet-1k classifier whose 1000 classes are gathered onto WordNet leaves."""

    kind: Literal["imagenet"]
    name: str = "efficientnet_lite0"
    source: Literal["timm", "torchvision", "efficientnet_lite0"] = "efficientnet_lite0"
    pretrained: Union[bool, str] = True
    temperature: float = Field(1.0, gt=0)


ClassifierConfig = Annotated[
    Union[ExactClassifierConfig, DigitsClassifierConfig, ClipClassifierConfig, ImageNetClassifierConfig],
    Field(discriminator="kind"),
]

# --- sampling, estimators, analysis ------------------------------------------------------------


class Guidance(Strict):
    """Classifier-free guidance ``D_u + scale (D_c - D_u)``, only for sigma in ``interval`` if set."""

    scale: float = 1.0
    interval: Optional[tuple[float, float]] = None

    @field_validator("interval")
    @classmethod
    def _ordered(cls, v):
        if v is not None and not (0 <= v[0] < v[1]):
            raise ValueError("interval must be [lo, hi] with 0 <= lo < hi")
        return v


class Sampling(Strict):
    """Which trajectories are probed.

    ``source: model`` samples from the model (noise -> image); ``source: data`` noises clean data
    forward (Gaussian mixtures: exact samples; digits: the held-out split). ``condition`` is
    ``none`` (unconditional), ``leaf`` (each sample conditioned on a leaf, cycling through them) or
    a list of prompts for text-conditional models (``{leaf}`` inside a prompt expands per leaf).
    """

    samples: int = Field(256, gt=0)
    batch_size: int = Field(64, gt=0)
    steps: int = Field(64, ge=2)
    grid: Literal["geometric", "karras"] = "geometric"
    sigma_max: Optional[float] = Field(None, gt=0)
    sigma_min: Optional[float] = Field(None, gt=0)
    method: Literal[SAMPLERS] = "ancestral"  # type: ignore[valid-type]
    source: Literal["model", "data"] = "model"
    condition: Union[Literal["none", "leaf"], list[str]] = "none"
    guidance: Guidance = Guidance()


class EstimatorSpec(BaseModel):
    """An estimator by name plus its options (checked by the estimator itself)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Analysis(Strict):
    n_boot: int = Field(200, ge=0)
    primary: Optional[str] = Field(None, description="estimator whose decisions label tree.json")


class Recipe(Strict):
    name: str = "run"
    seed: int = 0
    device: str = "auto"
    taxonomy: str
    prior: Union[Literal["uniform"], dict[str, float], None] = None
    model: ModelConfig
    classifier: Optional[ClassifierConfig] = None
    sampling: Sampling = Sampling()
    estimators: list[EstimatorSpec] = Field(default_factory=lambda: [EstimatorSpec(name="plugin")], min_length=1)
    analysis: Analysis = Analysis()

    @field_validator("estimators", mode="before")
    @classmethod
    def _names_to_specs(cls, v):
        if isinstance(v, (str, dict)):
            v = [v]
        return [{"name": e} if isinstance(e, str) else e for e in v]

    @model_validator(mode="after")
    def _primary_is_listed(self):
        names = [e.name for e in self.estimators]
        if len(set(names)) != len(names):
            raise ValueError(f"estimators are listed twice: {names}")
        if self.analysis.primary is not None and self.analysis.primary not in names:
            raise ValueError(f"analysis.primary {self.analysis.primary!r} is not among the estimators {names}")
        if "bayes" in names and self.sampling.source == "model" and self.sampling.method != "ancestral":
            # The Bayes update scores each step with the ancestral (DDPM posterior) Gaussian kernel.
            raise ValueError(f"the bayes estimator needs sampling.method: ancestral (or sampling.source: data), "
                             f"not {self.sampling.method!r}")
        return self

    @property
    def primary_estimator(self) -> str:
        return self.analysis.primary or self.estimators[0].name

    # Set by load_recipe: the recipe file, and the folder relative paths are resolved against.
    _source: Optional[Path] = None
    _base_dir: Path = Path(".")

    def resolve_path(self, value: str) -> str:
        """Every path in a recipe is relative to the recipe file (never the working directory).

        ``wordnet:`` specs and absolute paths pass through; ``~`` expands. A value that names no
        file beside the recipe and reads as a name rather than a path (``digits-shape``, a hub id
        ``owner/model``) is returned as is, for the shipped-name or hub lookup that follows.
        """
        if ":" in value.split("/")[0]:
            return value
        path = Path(value).expanduser()
        if path.is_absolute():
            return str(path)
        beside = (self._base_dir / path).resolve()
        if beside.exists() or _reads_as_path(value):
            return str(beside)
        return value

    def resolved_paths(self) -> dict[str, str]:
        """``{dotted field: resolved value}`` for the recipe's path fields that are set (run.json)."""
        out = {}
        for dotted in PATH_FIELDS:
            section, _, name = dotted.rpartition(".")
            holder = getattr(self, section) if section else self
            value = getattr(holder, name, None) if holder is not None else None
            if isinstance(value, str):
                out[dotted] = self.resolve_path(value)
        return out


# Recipe fields that hold a path (or a name or hub id that may be one); all resolve as above.
PATH_FIELDS = ("taxonomy", "model.path", "model.model", "model.uncond_path", "model.vae", "classifier.path",
               "classifier.pretrained")


def _reads_as_path(value: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; ``./x``, ``a/b/c``, ``x.yaml``, ``x.pt`` are paths."""
    return value.startswith((".", "~")) or value.count("/") > 1 or value.endswith("/") or bool(Path(value).suffix)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe; errors are one line naming the file and field.

    ``overrides`` are ``dotted.key=value`` strings (values parsed as YAML) applied before
    validation, e.g. ``sampling.guidance.scale=3``.
    """
    path = find_recipe(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ProbesError(f"{path}: invalid YAML{where}: {getattr(err, 'problem', err)}") from None
    for override in overrides or []:
        apply_override(data, override, source=str(path))
    recipe = recipe_from_dict(data, source=str(path))
    recipe._source = path.resolve()
    recipe._base_dir = recipe._source.parent
    return recipe


def find_recipe(path: str | Path) -> Path:
    """A recipe file by path, or a shipped recipe by name (``digits``, ``sd15``)."""
    from probes.resources import RECIPES, find_shipped, is_bare_name, shipped_names

    path = Path(path)
    if path.is_file():
        return path
    shipped = find_shipped(RECIPES, str(path)) if is_bare_name(str(path)) else None
    if shipped is not None:
        return shipped
    known = ", ".join(shipped_names(RECIPES)) or "none"
    raise ProbesError(f"{path}: no such recipe file or shipped recipe (shipped: {known})")


def apply_override(data: dict, override: str, source: str = "recipe") -> None:
    """Set ``a.b.c=value`` in a recipe mapping (the value is read as YAML: numbers, lists, null)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ProbesError(f"--set {override!r}: expected key=value, e.g. sampling.guidance.scale=3")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ProbesError(f"--set {override!r}: the value is not valid YAML") from None
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ProbesError(f"{source}: --set {key}: {part!r} is not a mapping in the recipe")
        node = node[part]
    node[parts[-1]] = value


def recipe_from_dict(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise ProbesError(f"{source}: a recipe must be a YAML mapping")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise ProbesError(f"{source}: {describe_validation_error(err)}") from None


def describe_validation_error(err: ValidationError) -> str:
    """The first problem as ``field.path: message``, with a did-you-mean for misspelt fields."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    # Discriminated unions put the chosen kind into the location: drop it for readability.
    loc = [p for p in loc if p not in {"gmm", "digits", "stable-diffusion", "tiny-stable-diffusion", "edm2", "exact",
                                       "clip", "imagenet"}]
    field = ".".join(loc) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
        hint = _closest_field(err.title, loc)
        if hint:
            message += f" (did you mean {hint!r}?)"
    elif first["type"] == "union_tag_invalid":
        message = f"unknown kind {first['input'].get('kind')!r}; expected one of {first['ctx']['expected_tags']}"
    elif first["type"] == "union_tag_not_found":
        message = f"missing 'kind'; expected one of {first['ctx']['expected_tags'] if 'ctx' in first else 'a kind'}"
    more = len(err.errors()) - 1
    return f"{field}: {message}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def _closest_field(_title: str, loc: list[str]) -> Optional[str]:
    """Best guess for a misspelt key, searching every field name in the schema."""
    bad = loc[-1]
    names = set()
    for model in (Recipe, Sampling, Guidance, Analysis, GMMModel, GMMHierarchy, DigitsModel, StableDiffusionModel,
                  TinyStableDiffusionModel, EDM2Model, ExactClassifierConfig, DigitsClassifierConfig,
                  ClipClassifierConfig, ImageNetClassifierConfig):
        names.update(model.model_fields)
    match = difflib.get_close_matches(bad, sorted(names), n=1, cutoff=0.6)
    return match[0] if match else None
