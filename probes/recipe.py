"""Recipes: one YAML file describes one probing run.

The schema is strict: an unknown or misspelt field is an error that names the field and, where
one is close, the field that was probably meant. Paths inside a recipe are relative to the recipe
file. See ``docs/recipes.md`` for every field.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from probes.classifiers.sections import IMAGE_CLASSIFIERS
from probes.entropy.commitments import COMMIT_THRESHOLD
from probes.entropy.decisions import MAX_BOOT
from probes.errors import ProbesError, os_errors_named, quote_library_error
from probes.families import classifier_models, family_of_kind, recipe_kinds, recipe_models
from probes.resources import RECIPES, find_shipped, is_bare_name, shipped_names
from probes.schema import MAX_SEED, NUMBER_EXPECTED, Strict
from probes.yamlio import load_yaml_file, parse_value

SAMPLERS = ("euler", "heun", "ddim", "ancestral", "euler_maruyama")

# Bounds that turn a typo (``samples: 1e12``) into one line instead of a run that never ends.
MAX_SAMPLES = 10_000_000
MAX_STEPS = 100_000
MAX_BATCH = 1 << 16
# Noise levels outside this range are typos (``1e-320`` underflows to zero in float32 and in logs).
SIGMA_RANGE = (1e-6, 1e6)
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


# Model sections, and the classifier sections only one family serves, are declared by the families
# (one file each) and collected from the registry; the image classifiers any image family reads
# its samples with are declared beside their code.
ModelConfig = Annotated[Union[tuple(recipe_models())], Field(discriminator="kind")]
CLASSIFIER_SECTIONS = (*classifier_models(), *IMAGE_CLASSIFIERS)
ClassifierConfig = Annotated[Union[CLASSIFIER_SECTIONS], Field(discriminator="kind")]


# --- sampling, estimators, analysis ------------------------------------------------------------


class GuidanceWindow(Strict):
    """One node's contrast in a per-node schedule: weight ``scale`` for sigma in ``interval``."""

    node: str = Field(min_length=1)
    interval: tuple[float, float]
    scale: float

    @field_validator("interval")
    @classmethod
    def _ordered(cls, v):
        if not (0 <= v[0] < v[1]):
            raise ValueError("interval must be [lo, hi] with 0 <= lo < hi")
        return v

    @field_validator("scale")
    @classmethod
    def _positive(cls, v):
        if not v > 0:
            raise ValueError(f"scale must be positive, got {v:g}")
        return v


class GuidanceStop(Strict):
    """Per-sample stopping: guide a sample until its filtered posterior of its leaf reaches ``threshold``."""

    threshold: float = Field(0.9, gt=0, lt=1)


class Guidance(Strict):
    """Classifier-free guidance ``D_u + scale (D_c - D_u)``, only for sigma in ``interval`` if set;
    with ``stop``, per sample until it commits to its leaf. Or, instead of ``scale``, a per-node
    ``schedule``: one contrast per node on the path to the leaf, each in its own window
    (``probes.denoisers.per_node``; ``group_weights`` and ``root`` say how a group is predicted)."""

    scale: float = 1.0
    interval: tuple[float, float] | None = None
    schedule: list[GuidanceWindow] | None = None
    group_weights: Literal["filter", "prior"] = "filter"
    root: Literal["unconditional", "group"] = "unconditional"
    stop: GuidanceStop | None = None

    @field_validator("interval")
    @classmethod
    def _ordered(cls, v):
        if v is not None and not (0 <= v[0] < v[1]):
            raise ValueError("interval must be [lo, hi] with 0 <= lo < hi")
        return v

    @model_validator(mode="after")
    def _one_kind(self):
        if self.schedule is not None:
            if not self.schedule:
                raise ValueError("schedule: give at least one {node, interval, scale} entry, or leave it out")
            if self.scale != 1.0 or self.interval is not None:
                raise ValueError("schedule: give either scale (and interval) or a per-node schedule, not both")
            if self.stop is not None:
                raise ValueError("stop: per-sample stopping works with scale (and interval), not with a schedule")
            by_node: dict[str, list] = {}
            for entry in self.schedule:
                for lo, hi in by_node.get(entry.node, []):
                    if entry.interval[0] < hi and lo < entry.interval[1]:
                        raise ValueError(f"schedule: node {entry.node!r} has overlapping windows [{lo:g}, {hi:g}] and "
                                         f"[{entry.interval[0]:g}, {entry.interval[1]:g}]")
                by_node.setdefault(entry.node, []).append(entry.interval)
        elif self.stop is not None and self.scale == 1.0:
            raise ValueError("stop: stopping guidance needs guidance (a scale other than 1)")
        return self

    @property
    def guides(self) -> bool:
        """Whether these settings change the conditional model's predictions."""
        return self.scale != 1.0 or bool(self.schedule)


class GridFromRun(Strict):
    """Steps placed where a finished run's leaf entropy changes fast (``probes.noise.entropic_grid``)."""

    from_run: str = Field(min_length=1)
    uniform_share: float = Field(0.5, ge=0, le=1, description="share of steps spread log-uniformly")


class Sampling(Strict):
    """Which trajectories are probed.

    ``source: model`` samples from the model (noise -> image); ``source: data`` noises clean data
    forward (Gaussian mixtures: exact samples; digits: the held-out split). ``condition`` is
    ``none`` (unconditional), ``leaf`` (each sample conditioned on a leaf drawn from the prior) or
    a list of prompts for text-conditional models (``{leaf}`` inside a prompt expands per leaf).
    """

    samples: int = Field(256, gt=0, le=MAX_SAMPLES)
    batch_size: int = Field(64, gt=0, le=MAX_BATCH)
    steps: int = Field(64, ge=2, le=MAX_STEPS)
    grid: Union[Literal["geometric", "karras", "log_snr"], GridFromRun] = "geometric"
    sigma_max: float | None = Field(None, ge=SIGMA_RANGE[0], le=SIGMA_RANGE[1])
    sigma_min: float | None = Field(None, ge=SIGMA_RANGE[0], le=SIGMA_RANGE[1])
    method: Literal[SAMPLERS] = "ancestral"  # type: ignore[valid-type]
    source: Literal["model", "data"] = "model"
    condition: Union[Literal["none", "leaf"], list[str]] = "none"
    guidance: Guidance = Guidance()

    @model_validator(mode="after")
    def _sigmas_ordered(self):
        if self.sigma_max is not None and self.sigma_min is not None and self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max})")
        return self

    @model_validator(mode="after")
    def _guidance_needs_a_sampler(self):
        # source: data noises clean data forward: no sampler runs, so guidance would be silently
        # ignored (and the guided estimator would bound the entropy of a process never sampled).
        if self.source == "data" and (self.guidance.guides or self.guidance.interval is not None):
            raise ValueError("guidance needs source: model (with source: data no sampler runs, "
                             "so the samples would not be guided)")
        if (self.guidance.schedule or self.guidance.stop) and self.condition != "leaf":
            what = "a per-node schedule" if self.guidance.schedule else "per-sample stopping"
            raise ValueError(f"guidance: {what} guides each sample toward its own leaf; it needs condition: leaf")
        return self


class EstimatorSpec(BaseModel):
    """An estimator by name plus its options (checked by the estimator itself)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Analysis(Strict):
    n_boot: int = Field(200, ge=0, le=MAX_BOOT)
    primary: str | None = Field(None, description="estimator whose decisions label tree.json")
    commit_threshold: float = Field(COMMIT_THRESHOLD, gt=0.5, lt=1,
                                    description="q(child | node) a sample must keep to the end to have committed")
    evidence_maps: bool = Field(False, description="the bayes estimator's per-position evidence maps "
                                "(evidence.safetensors; 4 H W bytes per sample, internal node and sigma)")


class Quality(Strict):
    """Sample quality: ``reference`` is a folder of images to measure the Frechet distance against
    (models without built-in reference data: Stable Diffusion, EDM2)."""

    reference: str | None = None


class Recipe(Strict):
    name: str = Field("run", pattern=NAME_PATTERN.pattern, description="letters, digits and ._+- (names runs/<name>)")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = Field("auto", pattern=DEVICE_PATTERN.pattern, description="auto, cpu, cuda, cuda:N or mps")
    threads: Union[Literal["auto"], Annotated[int, Field(ge=1, le=1024)]] = Field(
        "auto", description="CPU threads for torch; auto: 1 for Gaussian mixtures, else torch's default")
    taxonomy: str
    prior: Union[Literal["uniform"], dict[str, float], None] = None
    model: ModelConfig
    classifier: ClassifierConfig | None = None
    sampling: Sampling = Sampling()
    estimators: list[EstimatorSpec] = Field(default_factory=lambda: [EstimatorSpec(name="plugin")], min_length=1)
    analysis: Analysis = Analysis()
    quality: Quality = Quality()

    @field_validator("estimators", mode="before")
    @classmethod
    def _names_to_specs(cls, v):
        if isinstance(v, (str, dict)):
            v = [v]
        if isinstance(v, tuple):  # the Python API's sequences
            v = list(v)
        if not isinstance(v, list):
            raise ValueError(f"expected a list of estimator names or {{name: ..., options}}, got {v!r}")
        return [{"name": e} if isinstance(e, str) else e for e in v]

    @model_validator(mode="after")
    def _primary_is_listed(self):
        names = [e.name for e in self.estimators]
        if len(set(names)) != len(names):
            raise ValueError(f"estimators are listed twice: {names}")
        if self.analysis.primary is not None and self.analysis.primary not in names:
            raise ValueError(f"analysis.primary {self.analysis.primary!r} is not among the estimators {names}")
        if self.analysis.evidence_maps and "bayes" not in names:
            raise ValueError("analysis.evidence_maps: the maps are the bayes estimator's; add bayes to estimators")
        if "bayes" in names and self.sampling.source == "model" and self.sampling.method != "ancestral":
            # The Bayes update scores each step with the ancestral (DDPM posterior) Gaussian kernel.
            raise ValueError(f"the bayes estimator needs sampling.method: ancestral (or sampling.source: data), "
                             f"not {self.sampling.method!r}")
        return self

    @property
    def family(self):
        """The model family serving ``model.kind``."""
        return family_of_kind(self.model.kind)

    @property
    def primary_estimator(self) -> str:
        return self.analysis.primary or self.estimators[0].name

    # Set by load_recipe: the recipe file, and the folder relative paths are resolved against.
    _source: Path | None = None
    _base_dir: Path = Path(".")

    @property
    def source(self) -> Path | None:
        """The recipe file this recipe was read from (None for one built in code)."""
        return self._source

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
        try:
            beside = (self._base_dir / path).resolve()
        except (RuntimeError, OSError) as err:  # a symbolic link that loops back onto itself
            raise ProbesError(f"{self._base_dir / path}: cannot be resolved ({quote_library_error(err)})") from None
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


# Suffixes that make a bare value a file name rather than a hub id (``owner/model-1.0`` is a hub id).
FILE_SUFFIXES = (".yaml", ".yml", ".json", ".graphml", ".nwk", ".newick", ".pt", ".pth", ".pkl", ".ckpt", ".bin",
                 ".safetensors", ".npz", ".txt")


def _reads_as_path(value: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; ``./x``, ``a/b/c``, ``x.yaml``, ``x.pt`` are paths."""
    return (value.startswith((".", "~")) or value.count("/") > 1 or value.endswith("/")
            or Path(value).suffix.lower() in FILE_SUFFIXES)


@os_errors_named()
def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe; errors are one line naming the file and field.

    ``overrides`` are ``dotted.key=value`` strings (values parsed as YAML) applied before
    validation, e.g. ``sampling.guidance.scale=3``.
    """
    path = find_recipe(path)
    data = load_yaml_file(path, "recipe")
    for override in overrides or []:
        apply_override(data, override, source=str(path))
    recipe = recipe_from_dict(data, source=str(path))
    recipe._source = path.resolve()
    recipe._base_dir = recipe._source.parent
    return recipe


def find_recipe(path: str | Path) -> Path:
    """A recipe file by path, or a shipped recipe by name (``digits``, ``sd15``)."""
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
    value = parse_value(raw, f"--set {key.strip()}")
    parts = key.strip().split(".")
    if not isinstance(data, dict):
        raise ProbesError(f"{source}: a recipe must be a YAML mapping")
    if any(not part for part in parts):
        raise ProbesError(f"--set {override!r}: empty field name in {key.strip()!r}")
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
    errors = err.errors()
    first = errors[0]
    if first["type"] == "literal_error" and isinstance(first["input"], dict):
        # A mapping where a union takes a word or a section: the section's own problem is the one meant.
        first = next((e for e in errors if e["type"] != "literal_error"), first)
    loc = [str(p) for p in first["loc"] if str(p) not in _section_names()]
    if first["type"] == NUMBER_EXPECTED:  # raised for the section, about one of its fields
        loc.append(first["ctx"]["field"])
    # Discriminated unions put the chosen kind into the location: drop it for readability.
    loc = [p for p in loc if p not in {*recipe_kinds(), *_classifier_kinds()}]
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
        message = f"missing 'kind'; expected one of {_kinds(first['loc'])}"
    elif first["type"] == "string_pattern_mismatch" and loc and loc[-1] in _PATTERN_HINTS:
        message = f"{first['input']!r} is not allowed: {_PATTERN_HINTS[loc[-1]]}"
    more = len(err.errors()) - 1
    return f"{field}: {message}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


_PATTERN_HINTS = {
    "name": "use letters, digits and . _ + - (it names the run directory)",
    "device": "expected auto, cpu, cuda, cuda:N or mps",
}


def _classifier_kinds() -> list[str]:
    return [c.model_fields["kind"].annotation.__args__[0] for c in CLASSIFIER_SECTIONS]


def _kinds(loc) -> str:
    """The kinds a discriminated union at ``loc`` accepts (model or classifier)."""
    union = {"model": ModelConfig, "classifier": ClassifierConfig}.get(str(loc[0]) if loc else "")
    if union is None:
        return "a kind"
    members = union.__origin__.__args__ if hasattr(union, "__origin__") else ()
    kinds = [m.model_fields["kind"].annotation.__args__[0] for m in members if "kind" in getattr(m, "model_fields", {})]
    return ", ".join(map(repr, kinds)) or "a kind"


def _sections() -> tuple:
    annotations = [f.annotation for m in recipe_models() for f in m.model_fields.values()]
    nested = {a for ann in annotations for a in (ann, *getattr(ann, "__args__", ()))
              if isinstance(a, type) and issubclass(a, Strict)}
    return (Recipe, Sampling, GridFromRun, Guidance, GuidanceWindow, GuidanceStop, Analysis, Quality, *nested,
            *recipe_models(), *CLASSIFIER_SECTIONS)


def _section_names() -> set[str]:
    """Class names pydantic puts into the location of an error inside a union member."""
    return {model.__name__ for model in _sections()}


def _closest_field(_title: str, loc: list[str]) -> str | None:
    """Best guess for a misspelt key, searching every field name in the schema."""
    bad = loc[-1]
    names = set()
    for model in _sections():
        names.update(model.model_fields)
    match = difflib.get_close_matches(bad, sorted(names), n=1, cutoff=0.6)
    return match[0] if match else None
