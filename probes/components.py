"""From a recipe to the objects a run needs: taxonomy, denoisers, conditioner, classifier, data.

Each model kind has one builder below; it is the only place that knows how that family is loaded.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from probes.classifiers.base import Classifier
from probes.conditioning import Conditioner
from probes.denoisers.base import Denoiser
from probes.denoisers.generation import generation_denoiser
from probes.errors import ProbesError
from probes.recipe import Recipe
from probes.taxonomy import Taxonomy, load_taxonomy

DataSampler = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Components:
    """Everything a run probes with.

    ``denoiser`` is the model's plain (unconditional, unguided) denoiser: estimators read posteriors
    with it, so they never see the condition a sample was generated from. ``generator`` is what
    draws the trajectories (conditional and guided when the recipe says so).
    """

    taxonomy: Taxonomy
    denoiser: Denoiser
    generator: Denoiser
    conditioner: Conditioner | None
    classifier: Classifier | None
    prior: torch.Tensor
    shape: tuple[int, ...]
    sigma_max: float
    sigma_min: float
    exact_model: Any = None
    # What classifier-free guidance calls (``None``: ``denoiser``). Stable Diffusion's negative
    # prompt lives here: it replaces the unconditional branch of guidance, not the plain model
    # that posteriors are read with.
    guidance_base: Denoiser | None = None
    data: DataSampler | None = None
    generation_cond: Callable[[torch.Tensor], Any] = field(default=lambda idx: None)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # The model's world beyond the taxonomy: whether it has classes that are not leaves, and the
    # probability of those under its unconditional law (where the family knows it).
    partial_taxonomy: bool = False
    outside_mass: float = 0.0


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


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """``float16`` on a CPU runs at a small fraction of float32's speed (minutes per step for SD
    1.5): use float32 there, and say so in one line."""
    if dtype == "float16" and device.type == "cpu":
        print("probes: note: model.dtype float16 on CPU is very slow; using float32 (float16 is for GPUs)",
              file=sys.stderr)
        return "float32"
    return dtype


def build_components(recipe: Recipe) -> Components:
    taxonomy = load_taxonomy(recipe.resolve_path(recipe.taxonomy))
    taxonomy.require_a_choice()
    device = resolve_device(recipe.device)
    from probes.adapters import family_of_kind

    if any(spec.name == "guided" for spec in recipe.estimators) and recipe.sampling.condition != "leaf":
        raise ProbesError("estimators: 'guided' scores each sample's conditioning leaf; "
                          "it needs sampling.condition: leaf")
    parts = family_of_kind(recipe.model.kind).build(recipe, taxonomy, device)
    parts.prior = _prior(recipe, taxonomy, parts.prior)
    parts.generator = _generator(recipe, parts)
    parts.generation_cond = _generation_cond(recipe, parts)
    return parts


# --- shared pieces ----------------------------------------------------------------------------


def _prior(recipe: Recipe, taxonomy: Taxonomy, default: torch.Tensor) -> torch.Tensor:
    leaves = taxonomy.leaves
    if recipe.prior is None:
        return default
    if recipe.prior == "uniform":
        return torch.full((len(leaves),), 1.0 / len(leaves), dtype=torch.float64)
    w = _leaf_weights(recipe.prior, leaves, "prior")
    return w / w.sum()


def _leaf_weights(weights: dict[str, float], leaves: list[str], field: str,
                  what: str = "a leaf of the taxonomy") -> torch.Tensor:
    """A ``{leaf: weight}`` recipe mapping as a tensor in leaf order (missing leaves weigh 0)."""
    unknown = sorted(set(weights) - set(leaves))
    if unknown:
        raise ProbesError(f"{field}: {unknown[0]!r} is not {what}")
    w = torch.tensor([float(weights.get(leaf, 0.0)) for leaf in leaves], dtype=torch.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ProbesError(f"{field}: weights must be non-negative and not all zero")
    return w


def uniform_prior(taxonomy: Taxonomy) -> torch.Tensor:
    return torch.full((len(taxonomy.leaves),), 1.0 / len(taxonomy.leaves), dtype=torch.float64)


def _generator(recipe: Recipe, parts: Components) -> Denoiser:
    guidance = recipe.sampling.guidance
    if recipe.sampling.condition == "none":
        if guidance.guides:
            raise ProbesError("sampling.guidance: guidance needs conditional sampling (sampling.condition)")
        return parts.denoiser
    base = parts.guidance_base or parts.denoiser
    return generation_denoiser(base, parts.conditioner, parts.taxonomy, parts.prior, guidance,
                               method=recipe.sampling.method, outside_mass=parts.outside_mass)


def _generation_cond(recipe: Recipe, parts: Components) -> Callable[[torch.Tensor], Any]:
    """Conditioning for samples with global indices ``idx`` (leaves drawn from the prior; prompts cycle)."""
    condition = recipe.sampling.condition
    leaves = parts.taxonomy.leaves
    if condition == "none":
        return lambda idx: None
    if condition == "leaf":
        if parts.conditioner is None:
            raise ProbesError("sampling.condition: this model cannot be conditioned on leaves")
        parts.conditioner([leaves[0]])  # fail now, not in the middle of the run
        return lambda idx: parts.conditioner([leaves[i] for i in leaves_from_prior(idx, parts.prior).tolist()])
    from probes.adapters import family_of_kind

    if family_of_kind(recipe.model.kind).conditioning != "text":
        raise ProbesError("sampling.condition: prompt lists need a text-conditional model")
    prompts = []
    for prompt in condition:
        if "{leaf}" in prompt:
            prompts += [leaf_prompt(prompt, parts.taxonomy, leaf) for leaf in leaves]
        else:
            prompts.append(prompt)
    return lambda idx: [prompts[i % len(prompts)] for i in idx.tolist()]


def leaf_prompt(template: str, taxonomy: Taxonomy, leaf: str) -> str:
    """A ``{leaf}`` prompt for one leaf: the taxonomy's curated prompt for it (its first
    ``prompts`` entry) when it has one, else ``template`` with the leaf's label in place of
    ``{leaf}`` (and "a" before a vowel made "an")."""
    attrs = taxonomy.node_attrs(leaf)
    if attrs.get("prompts"):
        return attrs["prompts"][0]
    label = str(attrs.get("label") or leaf)
    if label[:1].lower() in "aeiou":
        template = re.sub(r"\b([Aa]) \{leaf\}", r"\1n {leaf}", template)
    return template.replace("{leaf}", label)


def samples_from_taxonomy(recipe: Recipe) -> bool:
    """Whether a run's samples are drawn from the taxonomy's leaves (leaf-conditional generation, or
    clean data of the leaves noised forward) rather than from the model's whole world."""
    return recipe.sampling.condition == "leaf" or recipe.sampling.source == "data"


def leaf_of_sample(recipe: Recipe, taxonomy: Taxonomy, idx: torch.Tensor,
                   prior: torch.Tensor | None = None) -> torch.Tensor | None:
    """The known leaf of each generated sample (leaf-conditional sampling), else ``None``."""
    if recipe.sampling.condition == "leaf":
        return leaves_from_prior(idx, len(taxonomy.leaves) if prior is None else prior)
    return None


GOLDEN = (math.sqrt(5) - 1) / 2


def leaves_from_prior(idx: torch.Tensor, prior) -> torch.Tensor:
    """Leaf index of each sample with global index ``idx``, drawn from ``prior`` (an ``[L]`` tensor,
    or ``L`` for uniform) so that the run's label frequencies are the prior's.

    A uniform prior cycles through the leaves (exact frequencies every L samples). Otherwise leaves
    are the prior's quantiles at the golden-ratio sequence ``frac((i + 1/2) * 0.618...)``: a
    deterministic, per-index draw (resume-safe, batch-independent) whose frequencies match the prior
    to ``O(log N / N)``, closer than i.i.d. draws (``O(N^-1/2)``).
    """
    if isinstance(prior, int) or bool(torch.allclose(prior, prior.mean().expand_as(prior), atol=1e-12)):
        return idx % (prior if isinstance(prior, int) else len(prior))
    u = torch.frac((idx.double() + 0.5) * GOLDEN)
    cdf = torch.cumsum(prior.double(), 0)
    return torch.searchsorted(cdf / cdf[-1], u, right=True).clamp(max=len(prior) - 1)


# --- model families ---------------------------------------------------------------------------


def build_gmm(recipe: Recipe, taxonomy: Taxonomy, device) -> Components:
    """A mixture over the taxonomy's leaves, or over more components: ``model.means`` may name
    components that are not leaves (the model's world beyond the taxonomy); ``model.weights`` then
    weighs all of them, and the run's prior over the leaves is the inside weights renormalised."""
    from probes.models.gmm import GaussianMixture

    cfg = recipe.model
    leaves = list(taxonomy.leaves)
    outside = [] if cfg.means is None else [name for name in cfg.means if name not in set(leaves)]
    inner = [name for name in outside if name in set(taxonomy.internal_nodes)]
    if inner:
        raise ProbesError(f"model.means: {inner[0]!r} is an internal node of the taxonomy; a component outside "
                          "the taxonomy needs a name of its own")
    components = leaves + outside
    weights = None
    if cfg.weights is not None:
        what = "a leaf of the taxonomy or a component in model.means" if outside else "a leaf of the taxonomy"
        weights = _leaf_weights(cfg.weights, components, "model.weights", what)
    if recipe.prior is not None:
        # One prior per run: the mixture's weights are the run's prior, so sampling, the exact
        # posterior, the filters and the mutual information all use the same one.
        prior = _prior(recipe, taxonomy, None)
        if outside and weights is None:
            raise ProbesError("prior: this mixture has components outside the taxonomy; give model.weights over "
                              "all of them instead (the prior over the leaves is their inside part)")
        if weights is not None:
            inside = weights[: len(leaves)]
            if not torch.allclose(inside / inside.sum(), prior, atol=1e-9):
                raise ProbesError("prior: differs from model.weights; a mixture's weights are its prior, give one "
                                  "of them")
        else:
            weights = prior
    if cfg.means is not None:
        missing = [leaf for leaf in leaves if leaf not in cfg.means]
        if missing:
            raise ProbesError(f"model.means: no mean for leaf {missing[0]!r}")
        rows = [cfg.means[name] for name in components]
        if len({len(r) for r in rows}) != 1 or (cfg.dim is not None and len(rows[0]) != cfg.dim):
            raise ProbesError("model.means: every mean must have the same length (model.dim)")
        gmm = GaussianMixture.from_means(components, torch.tensor(rows, dtype=torch.float64), cfg.std, weights)
    else:
        h = cfg.hierarchy
        if len(h.separations) < taxonomy.max_depth:
            raise ProbesError(f"model.hierarchy.separations: need one per level ({taxonomy.max_depth}), "
                              f"got {len(h.separations)}")
        try:
            gmm = GaussianMixture.hierarchical(taxonomy, cfg.dim, h.separations, std=cfg.std, seed=h.seed,
                                               axis_aligned=h.axis_aligned, share_level_axes=h.share_level_axes)
        except ProbesError as err:  # the mixture's own words; the recipe's field in front
            raise ProbesError(f"model.hierarchy: {err}") from None
        if weights is not None:
            gmm = GaussianMixture.from_means(leaves, gmm.means, cfg.std, weights)
    outside_mass = float(1.0 - gmm.weights[: len(leaves)].sum()) if outside else 0.0
    if outside and outside_mass >= 1.0:
        raise ProbesError("model.weights: the taxonomy's leaves have no weight; give them some")
    inside = gmm.restricted(leaves)  # the law of x given that its class is a leaf
    classifier = None
    if recipe.classifier is not None:
        if recipe.classifier.kind != "exact":
            raise ProbesError("classifier.kind: Gaussian-mixture models use the 'exact' classifier")
        classifier = gmm.classifier(leaves)
    scale = float(gmm.largest_eigenvalue()) ** 0.5
    return Components(
        taxonomy=taxonomy, denoiser=gmm.denoiser(), generator=None, conditioner=gmm.conditioner(taxonomy),
        classifier=classifier, prior=inside.weights.double(), shape=(gmm.dim,), sigma_max=20.0 * scale,
        sigma_min=0.02 * cfg.std, exact_model=gmm, data=lambda n, g: inside.sample(n, generator=g), device=device,
        partial_taxonomy=bool(outside), outside_mass=outside_mass,
    )


def build_digits(recipe: Recipe, taxonomy: Taxonomy, device) -> Components:
    from probes.models import digits

    path = recipe.resolve_path(recipe.model.path) if recipe.model.path else None
    denoiser = digits.load_digits_denoiser(path) if path else digits.load_digits_denoiser()
    classifier = None
    cfg = recipe.classifier
    if cfg is not None:
        if cfg.kind != "digits":
            raise ProbesError("classifier.kind: the digits model is read with the 'digits' classifier")
        kwargs = {"temperature": 1.0 if cfg.temperature == "calibrate" else cfg.temperature}
        if cfg.path:
            kwargs["path"] = recipe.resolve_path(cfg.path)
        classifier = digits.load_digits_classifier(taxonomy, **kwargs)
    x_test, y_test = digits.load_digits_split("test")
    if cfg is not None and cfg.temperature == "calibrate":
        # Fit the temperature on the held-out digits that belong to a leaf of the taxonomy.
        leaf_of_digit = {digits.leaf_digit(taxonomy, leaf): i for i, leaf in enumerate(taxonomy.leaves)}
        keep = torch.tensor([int(d) in leaf_of_digit for d in y_test])
        labels = torch.tensor([leaf_of_digit[int(d)] for d in y_test[keep]])
        classifier.calibrate(x_test[keep], labels)

    conditioner = digits.digits_conditioner(taxonomy)
    # Held-out digits that are leaves, labelled by leaf index (the taxonomy's order, not the digit).
    leaf_index = {digit: i for i, digit in enumerate(conditioner.class_of_leaf[leaf] for leaf in taxonomy.leaves)}
    keep = torch.tensor([int(d) in leaf_index for d in y_test])
    x_inside = x_test[keep]
    y_inside = torch.tensor([leaf_index[int(d)] for d in y_test[keep]], dtype=torch.long)

    def data(n, g):
        idx = torch.randint(len(x_inside), (n,), generator=g)
        return x_inside[idx], y_inside[idx]

    # The model was trained on the ten digits in near-equal numbers: a taxonomy over fewer of them
    # leaves the rest of its world outside, with about that share of its unconditional samples.
    n_outside = digits.NUM_DIGITS - len(leaf_index)
    return Components(
        taxonomy=taxonomy, denoiser=denoiser.to(device), generator=None,
        conditioner=conditioner, classifier=classifier.to(device) if classifier else None,
        prior=uniform_prior(taxonomy), shape=(1, 8, 8), sigma_max=80.0, sigma_min=0.02, data=data, device=device,
        partial_taxonomy=n_outside > 0, outside_mass=n_outside / digits.NUM_DIGITS,
    )


def build_stable_diffusion(recipe: Recipe, taxonomy: Taxonomy, device) -> Components:
    from probes.models import stable_diffusion as sd

    cfg = recipe.model
    if cfg.kind == "tiny-stable-diffusion":
        from probes.models.tiny_sd import build_tiny_pipeline

        pipe = build_tiny_pipeline(seed=cfg.seed, prediction_type=cfg.prediction_type, sample_size=cfg.sample_size)
    else:
        pipe = sd.load_pipeline(recipe.resolve_path(cfg.model), dtype=resolve_dtype(cfg.dtype, device),
                                device=str(device))
    pipe = pipe.to(device)
    denoiser = sd.StableDiffusionDenoiser(pipe)
    guidance_base = (sd.StableDiffusionDenoiser(pipe, negative_prompt=cfg.negative_prompt) if cfg.negative_prompt
                     else None)
    classifier = None
    if recipe.classifier is not None:
        clean_classifier = image_classifier(recipe, taxonomy, device)
        classifier = sd.DecodedClassifier(sd.LatentDecoder(pipe.vae, decode_size=cfg.decode_size), clean_classifier)
    latent = pipe.unet.config.sample_size
    return Components(
        taxonomy=taxonomy, denoiser=denoiser, generator=None, conditioner=sd.prompt_conditioner(taxonomy),
        guidance_base=guidance_base,
        classifier=classifier, prior=uniform_prior(taxonomy), shape=(pipe.unet.config.in_channels, latent, latent),
        sigma_max=denoiser.sigma_max, sigma_min=denoiser.sigma_min, device=device,
    )


# Estimators that read posteriors with the plain (unconditional) denoiser.
_UNCONDITIONAL_READERS = ("plugin", "rollout", "immse")


def build_edm2(recipe: Recipe, taxonomy: Taxonomy, device) -> Components:
    from probes.models import edm2
    from probes.models.stable_diffusion import DecodedClassifier

    cfg = recipe.model
    net, encoder = edm2.load_edm2(recipe.resolve_path(cfg.path), key=cfg.key)
    uncond = edm2.load_edm2(recipe.resolve_path(cfg.uncond_path), key=cfg.key)[0] if cfg.uncond_path else None
    if uncond is None and net.label_dim:
        # EDM2's class-conditional networks have no unconditional mode: say so before sampling.
        readers = [e.name for e in recipe.estimators if e.name in _UNCONDITIONAL_READERS]
        why = ("sampling.condition: none samples unconditionally" if recipe.sampling.condition == "none" else
               "guidance mixes in the unconditional prediction" if recipe.sampling.guidance.scale != 1.0 else
               f"estimator {readers[0]!r} reads posteriors with the unconditional model" if readers else None)
        if why:
            raise ProbesError(f"model.uncond_path: the EDM2 network {cfg.path} is class-conditional and has no "
                              f"unconditional mode, but {why}; give model.uncond_path (an EDM2 "
                              "edm2-img512-*-uncond-*.pkl) or use sampling.condition: leaf with the bayes estimator")
    denoiser = edm2.EDM2Denoiser(net.to(device), uncond.to(device) if uncond is not None else None)
    classifier = None
    if recipe.classifier is not None:
        clean_classifier = image_classifier(recipe, taxonomy, device)
        if edm2.is_pixel_space(net, encoder):
            if cfg.vae is not None:
                raise ProbesError(f"model.vae: {cfg.path} works on pixels, not VAE latents; remove model.vae")
            classifier = clean_classifier
        else:
            if cfg.vae is not None:
                vae = edm2.load_vae(recipe.resolve_path(cfg.vae), device=device)  # a folder or a hub id
                scale, bias = getattr(encoder, "scale", None), getattr(encoder, "bias", None)
                decoder = edm2.EDM2LatentDecoder(vae=vae, scale=scale, bias=bias, decode_size=cfg.decode_size)
            elif encoder is not None:
                edm2.init_encoder(encoder, device)
                decoder = edm2.EDM2LatentDecoder(encoder, decode_size=cfg.decode_size)
            else:
                raise ProbesError(f"model.vae: {cfg.path} works in VAE latents but holds no encoder; set model.vae to "
                                  f"{edm2.VAE_NAME} (a hub id or a local copy)")
            classifier = DecodedClassifier(decoder, clean_classifier)
    conditioner = edm2.edm2_conditioner(taxonomy, net.label_dim) if net.label_dim else None
    # A class-conditional network knows label_dim classes, trained in about equal numbers (ImageNet):
    # leaves that name fewer of them leave the rest of its world, and that share of its samples, outside.
    n_inside = len(set(conditioner.class_of_leaf.values())) if conditioner is not None else 0
    n_outside = net.label_dim - n_inside if conditioner is not None else 0
    return Components(
        taxonomy=taxonomy, denoiser=denoiser, generator=None, conditioner=conditioner,
        classifier=classifier, prior=uniform_prior(taxonomy), shape=denoiser.shape, sigma_max=edm2.SIGMA_MAX,
        sigma_min=edm2.SIGMA_MIN, device=device, partial_taxonomy=n_outside > 0,
        outside_mass=n_outside / net.label_dim if conditioner is not None else 0.0,
    )


def image_classifier(recipe: Recipe, taxonomy: Taxonomy, device) -> Classifier:
    cfg = recipe.classifier
    if cfg.kind == "clip":
        from probes.classifiers.clip import TINY_CLIP, ClipZeroShotClassifier, register_tiny_clip

        if cfg.model == TINY_CLIP:
            register_tiny_clip()
        pretrained = recipe.resolve_path(cfg.pretrained) if cfg.pretrained else None  # a tag or a file
        return ClipZeroShotClassifier.create(taxonomy, cfg.model, pretrained=pretrained, templates=cfg.templates,
                                             temperature=cfg.temperature, device=str(device), universe=cfg.universe)
    if cfg.kind == "imagenet":
        from probes.classifiers.imagenet import ImageNetClassifier

        pretrained = cfg.pretrained
        if isinstance(pretrained, str):
            pretrained = recipe.resolve_path(pretrained)
        return ImageNetClassifier.create(taxonomy, cfg.name, source=cfg.source, pretrained=pretrained,
                                         temperature=cfg.temperature).to(device)
    raise ProbesError(f"classifier.kind: {cfg.kind!r} does not classify images of this model")
