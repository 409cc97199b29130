"""Zero-shot CLIP over a taxonomy's leaves (open_clip models).

Each native class becomes one text embedding: the mean of the normalised embeddings of its texts,
renormalised (open_clip's template ensembling, as in CLIP's zero-shot ImageNet evaluation). A
class's texts are each of its names inserted into every prompt template; a leaf's generation
``prompts`` are not used (they describe what to draw, and one prompt is no ensemble). Names come
from, in order: the curated ImageNet class name when the leaf's ``wnid`` is an ImageNet-1k class,
the ``label`` and ``aliases`` attributes, and when none of those is given, the WordNet lemma names
of its synset (``tabby.n.01`` -> "tabby", "tabby cat") or the node id made readable. Logits are
``logit_scale.exp() * cos(image, text)`` (about 100 x cosine for trained CLIP models), divided by
the classifier's temperature (default 1).

**The world beyond the taxonomy.** With no universe the native classes are the leaves: a closed
world in which every image belongs to some leaf. With a *universe* the classifier also scores
names outside the taxonomy, whose mass is the outside (``p(T | x) < 1``): ``universe="imagenet"``
scores all ImageNet-1k classes, each leaf owning the classes under its synset in WordNet (as the
ImageNet classifiers do; a leaf with none keeps a text of its own); a list of names adds those
names as outside classes beside the leaves.

Images come in as NCHW floats in ``[-1, 1]`` at any size; they are resized (bicubic, antialiased)
so the shorter side matches the model's input size, centre-cropped and normalised with the
model's mean and std, all on tensors (batched, on the model's device).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F

from probes._compat import patch_torchvision
from probes.classifiers.base import Classifier
from probes.classifiers.imagenet import imagenet_groups
from probes.classifiers.images import resize_center_crop
from probes.errors import ProbesError, quote_library_error
from probes.fileio import atomic_path, atomic_write_text
from probes.hub import cache_dir as probes_cache_dir
from probes.taxonomy.wordnet import imagenet_wnids
from probes.taxonomy.wordnet_data import ensure_wordnet

Template = Union[str, Callable[[str], str]]

#: Named template sets: ``imagenet`` = CLIP's 80 ImageNet templates, ``simple`` = its 7-template
#: subset, ``photo`` = the single template "a photo of a {}.".
TEMPLATE_SETS = ("imagenet", "simple", "photo")

_SYNSET = re.compile(r"^(.+)\.([nvasr])\.(\d+)$")

# In-memory cache of text embeddings, keyed like the disk cache (only for reproducible weights).
_TEXT_CACHE: dict[str, torch.Tensor] = {}


# --- leaf texts ---------------------------------------------------------------------------------


def _readable(name: str) -> str:
    m = _SYNSET.match(name)
    if m:
        name = m.group(1)
    return name.replace("_", " ").strip()


def _imagenet_names() -> dict[str, str]:
    """ImageNet-1k wnid -> curated class name (open_clip's list, sorted-wnid order)."""
    global _IMAGENET_NAMES
    if _IMAGENET_NAMES is None:
        patch_torchvision()
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        _IMAGENET_NAMES = dict(zip(imagenet_wnids(), IMAGENET_CLASSNAMES))
    return _IMAGENET_NAMES


_IMAGENET_NAMES: dict[str, str] | None = None


def _lemma_names(synset: str) -> list[str]:
    try:
        return [name.replace("_", " ") for name in ensure_wordnet().synset(synset).lemma_names()]
    except Exception:  # no WordNet here, or not a WordNet name: fall back to the id itself
        return [_readable(synset)]


def node_names(node: str, attrs: Mapping | None = None) -> list[str]:
    """Names of a taxonomy node for text prompts, most specific first (see module docstring)."""
    attrs = attrs or {}
    names: list[str] = []
    wnid = attrs.get("wnid")
    if wnid:
        try:
            curated = _imagenet_names().get(str(wnid))
        except ImportError:
            curated = None
        if curated:
            names.append(curated)
    label = attrs.get("label")
    if label and str(label) != node:
        names.append(str(label))
    names += [str(a) for a in attrs.get("aliases") or []]
    if not names:
        synset = attrs.get("synset") or (node if _SYNSET.match(node) else None)
        names += _lemma_names(str(synset)) if synset else [_readable(node)]
    seen, out = set(), []
    for name in names:
        name = name.replace("_", " ").strip()
        if name and name.lower() not in seen:
            seen.add(name.lower())
            out.append(name)
    return out


def resolve_templates(templates: str | Sequence[Template] | None) -> list[Template]:
    """A named set (:data:`TEMPLATE_SETS`), a list of ``"...{}..."`` strings / callables, or
    ``None`` (the ``imagenet`` set)."""
    patch_torchvision()
    from open_clip import zero_shot_metadata as meta

    if templates is None:
        templates = "imagenet"
    if isinstance(templates, str):
        sets = {"imagenet": list(meta.OPENAI_IMAGENET_TEMPLATES), "simple": list(meta.SIMPLE_IMAGENET_TEMPLATES),
                "photo": ["a photo of a {}."]}
        if templates in sets:
            return sets[templates]
        if "{}" in templates:
            return [templates]
        raise ProbesError(f"classifier.templates: {templates!r} is neither one of {TEMPLATE_SETS} "
                          "nor a template containing '{}'")
    out = list(templates)
    if not out:
        raise ProbesError("classifier.templates: the template list is empty")
    for t in out:
        if isinstance(t, str) and "{}" not in t:
            raise ProbesError(f"classifier.templates: template {t!r} has no '{{}}' for the class name")
        if not isinstance(t, str) and not callable(t):
            raise ProbesError(f"classifier.templates: {t!r} is not a string template")
    return out


def _fill(template: Template, name: str) -> str:
    return template.format(name) if isinstance(template, str) else template(name)


def leaf_texts(taxonomy, templates: str | Sequence[Template] | None = None) -> dict[str, list[str]]:
    """Texts per leaf of ``taxonomy``: each of its names in every template."""
    templates = resolve_templates(templates)
    return {leaf: [_fill(t, name) for name in node_names(leaf, taxonomy.node_attrs(leaf) or {}) for t in templates]
            for leaf in taxonomy.leaves}


UNIVERSES = ("imagenet",)


def universe_texts(taxonomy, universe, templates=None) -> tuple[dict[str, list[str]], list[list[int]]]:
    """Native classes of a zero-shot classifier over ``universe`` (see the module docstring):
    ``(texts per native class, native class indices per leaf)``.

    ``universe`` is ``"imagenet"`` or a list of names; names that are also a leaf's name are the
    leaf's, not outside classes.
    """
    templates = resolve_templates(templates)
    own = leaf_texts(taxonomy, templates)
    texts: dict[str, list[str]] = {}
    groups: list[list[int]] = []
    if universe == "imagenet":
        names = _imagenet_names()
        for wnid in imagenet_wnids():
            texts[f"imagenet:{wnid}"] = [_fill(t, names[wnid]) for t in templates]
        by_leaf = imagenet_groups(taxonomy)
        for leaf in taxonomy.leaves:
            if not by_leaf[leaf]:  # nothing of ImageNet under it: the leaf's own text
                texts[f"leaf:{leaf}"] = own[leaf]
                by_leaf[leaf] = [len(texts) - 1]
            groups.append(list(by_leaf[leaf]))
        return texts, groups
    if isinstance(universe, str) or not all(isinstance(n, str) and n.strip() for n in universe):
        raise ProbesError(f"classifier.universe: must be one of {', '.join(UNIVERSES)} or a list of class names")
    taken = {name.lower() for leaf in taxonomy.leaves for name in node_names(leaf, taxonomy.node_attrs(leaf) or {})}
    for i, leaf in enumerate(taxonomy.leaves):
        texts[f"leaf:{leaf}"] = own[leaf]
        groups.append([i])
    for name in universe:
        if name.strip().lower() not in taken and f"outside:{name}" not in texts:
            texts[f"outside:{name}"] = [_fill(t, name.strip()) for t in templates]
    return texts, groups


# --- tiny model config (tests, benchmarks, the tiny recipe) ------------------------------------

TINY_CLIP = "probes-tiny-clip"


def register_tiny_clip(name: str = TINY_CLIP, image_size: int = 32) -> str:
    """Register a tiny open_clip architecture (random weights only) and return its name."""
    patch_torchvision()
    import open_clip

    if name in open_clip.list_models():
        return name
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    directory = probes_cache_dir() / "open_clip_configs"
    path = atomic_write_text(directory / f"{name}.json", json.dumps(config))  # concurrent writers agree
    # open_clip re-reads every registered path on each registration, so the file stays in place.
    open_clip.add_model_config(path)
    return name


# --- the classifier -----------------------------------------------------------------------------


class ClipZeroShotClassifier(Classifier):
    """Zero-shot classification of images in ``[-1, 1]`` against one text embedding per native class.

    Args:
        model: an open_clip ``CLIP`` model (anything with ``encode_image``, ``encode_text``,
            ``logit_scale`` and ``visual``).
        tokenizer: the model's tokenizer (``open_clip.get_tokenizer(name)``).
        texts: native class -> texts (see :func:`leaf_texts`, :func:`universe_texts`); without
            ``leaves``/``groups`` the native classes are the leaves, in leaf order.
        leaves, groups: the taxonomy's leaves and the native class indices each one owns (classes
            owned by no leaf are outside the taxonomy).
        temperature: divides the logits; 1 keeps the model's own logit scale.
        cache_key: identifies the model weights for the text-embedding cache; ``None`` (random or
            unknown weights) caches nothing beyond this instance.
        cache_dir: where text embeddings are kept on disk (``None``: memory only).
        preprocess_cfg: ``size``/``mean``/``std``/``resize_mode``; defaults to the model's own.
    """

    def __init__(self, model, tokenizer, texts: Mapping[str, Sequence[str]], temperature: float = 1.0,
                 cache_key: str | None = None, cache_dir: str | os.PathLike | None = None,
                 preprocess_cfg: Mapping | None = None, text_batch_size: int = 256,
                 leaves: Sequence[str] | None = None, groups: list[list[int]] | None = None):
        super().__init__(list(texts) if leaves is None else leaves, groups, temperature)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.texts = {name: list(t) for name, t in texts.items()}
        self.native = list(self.texts)
        empty = [name for name, t in self.texts.items() if not t]
        if empty:
            raise ProbesError(f"classifier: no text for class {empty[0]!r}")
        self.text_batch_size = text_batch_size
        cfg = dict(_model_preprocess_cfg(model))
        cfg.update(preprocess_cfg or {})
        size = cfg.get("size", 224)
        self.image_size = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
        self.resize_mode = cfg.get("resize_mode", "shortest")
        self.register_buffer("mean", torch.tensor(cfg["mean"], dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"], dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.text_encoder_calls = 0
        features = self._text_features(cache_key, cache_dir)
        self.register_buffer("text_features", features, persistent=False)

    # -- text side -----------------------------------------------------------------------------

    def _cache_name(self, cache_key: str) -> str:
        payload = json.dumps([cache_key, [self.texts[name] for name in self.native]], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]

    def _text_features(self, cache_key, cache_dir) -> torch.Tensor:
        name = self._cache_name(cache_key) if cache_key is not None else None
        if name is not None and name in _TEXT_CACHE:
            return _TEXT_CACHE[name].clone()
        path = Path(cache_dir) / f"clip-text-{name}.pt" if (name and cache_dir is not None) else None
        if path is not None and path.is_file():
            try:
                features = torch.load(path, map_location="cpu", weights_only=True)
                if features.shape[0] == len(self.native):
                    _TEXT_CACHE[name] = features
                    return features.clone()
            except (OSError, RuntimeError):
                pass  # a damaged cache file is recomputed
        features = self.encode_texts()
        if name is not None:
            _TEXT_CACHE[name] = features
            if path is not None:
                with atomic_path(path) as tmp:
                    torch.save(features, tmp)
        return features.clone()

    @torch.no_grad()
    def encode_texts(self) -> torch.Tensor:
        """Per-class text embeddings ``[native classes, dim]`` (unit norm), computed with the model."""
        flat = [(i, text) for i, name in enumerate(self.native) for text in self.texts[name]]
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(flat), self.text_batch_size):
            batch = [text for _, text in flat[start:start + self.text_batch_size]]
            tokens = self.tokenizer(batch).to(device)
            self.text_encoder_calls += 1
            chunks.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        per_text = torch.cat(chunks)
        owner = torch.tensor([i for i, _ in flat])
        sums = torch.zeros(len(self.native), per_text.shape[1]).index_add_(0, owner, per_text)
        return F.normalize(sums / torch.bincount(owner, minlength=len(self.native))[:, None], dim=-1)

    # -- image side ----------------------------------------------------------------------------

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` NCHW -> the model's normalised input (resize, centre crop, mean/std)."""
        x = ((x.float() + 1) / 2).clamp(0, 1)
        x = resize_center_crop(x, self.image_size, self.resize_mode)
        return (x - self.mean) / self.std

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(x).to(self.text_features.device)
        dtype = next(self.model.visual.parameters()).dtype
        return F.normalize(self.model.encode_image(pixels.to(dtype)).float(), dim=-1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.model.logit_scale.exp().float()
        return scale * self.image_features(x) @ self.text_features.t()

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def create(cls, taxonomy, model_name: str, pretrained: str | None = None,
               templates: str | Sequence[Template] | None = None, temperature: float | None = None,
               device: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = "default",
               precision: str = "fp32", universe: str | Sequence[str] | None = None) -> ClipZeroShotClassifier:
        """Build from an open_clip architecture name and weights.

        Args:
            taxonomy: gives the leaves and their texts (:func:`leaf_texts`).
            model_name: any open_clip architecture (``ViT-B-32``, ``ViT-L-14``, ``RN50``, ...).
            pretrained: an open_clip tag (``openai``, ``laion2b_s34b_b79k``; downloaded and cached
                by open_clip) or a local checkpoint file; ``None`` = random weights.
            templates: see :func:`resolve_templates` (default: the 80 ImageNet templates).
            temperature: divides the logits (default 1: the model's own logit scale).
            cache_dir: text-embedding cache on disk; ``"default"`` = ``~/.cache/probes/clip``,
                ``None`` = none. Random weights are never cached.
            universe: ``None`` (the leaves are the whole world), ``"imagenet"`` or a list of names
                outside the taxonomy (see the module docstring).
        """
        patch_torchvision()
        import open_clip

        if model_name not in open_clip.list_models() and not model_name.startswith(("hf-hub:", "local-dir:")):
            raise ProbesError(f"classifier.model: {model_name!r} is not an open_clip architecture "
                              f"(see open_clip.list_models(), e.g. ViT-B-32)")
        cache_key = None
        if pretrained:
            pretrained = str(pretrained)
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained in tags:
                cache_key = f"{model_name}:{pretrained}"
            else:
                path = Path(pretrained).expanduser()
                if not path.is_file():
                    shown = ", ".join(tags[:6]) + (" ..." if len(tags) > 6 else "") if tags else "none"
                    raise ProbesError(f"classifier.pretrained: {pretrained!r} is neither a file nor an open_clip "
                                      f"tag for {model_name} (tags: {shown}); point it at a local checkpoint")
                pretrained = str(path)
                stat = path.stat()
                cache_key = f"{model_name}:{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
        try:
            # Random weights (no ``pretrained``) are drawn from a fixed seed so runs reproduce.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained or None,
                                                                    device=str(device), precision=precision)
            tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as err:  # open_clip and torch.load fail in many ways on a bad file or no network
            raise ProbesError(f"classifier: cannot load open_clip {model_name} with pretrained={pretrained!r} "
                              f"({type(err).__name__}: {quote_library_error(err)}); download the checkpoint and set "
                              "pretrained: /path/to/file") from None
        if cache_dir == "default":
            cache_dir = probes_cache_dir() / "clip"
        if universe is None:
            texts, leaves, groups = leaf_texts(taxonomy, templates), None, None
        else:
            (texts, groups), leaves = universe_texts(taxonomy, universe, templates), list(taxonomy.leaves)
        return cls(model, tokenizer, texts, temperature=1.0 if temperature is None else float(temperature),
                   cache_key=cache_key, cache_dir=cache_dir, leaves=leaves, groups=groups).to(device)


def _model_preprocess_cfg(model) -> dict:
    visual = getattr(model, "visual", model)
    cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    if "size" not in cfg:
        cfg["size"] = getattr(visual, "image_size", 224)
    if "mean" not in cfg or "std" not in cfg:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        cfg.setdefault("mean", getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN)
        cfg.setdefault("std", getattr(visual, "image_std", None) or OPENAI_DATASET_STD)
    return cfg
