"""The embedded default model: a class-conditional diffusion model and a classifier on 8x8 digits.

Both are trained by :mod:`probes.models.train_digits` on scikit-learn's digits (1,797 images of
8x8 pixels, values 0..16, 10 classes) and ship with the package, ``data/digits/`` (``probes/data/digits`` in a wheel):

- ``unet/`` and ``scheduler/``: a diffusers ``UNet2DModel`` and ``DDPMScheduler`` saved with
  ``save_pretrained``, so ``UNet2DModel.from_pretrained(path / "unet")`` loads them as any diffusers
  model. The UNet takes ``class_labels`` 0..9 for the digits and :data:`NULL_CLASS` (10) for "no
  label" (classifier-free guidance); it predicts the noise (epsilon) of a 1000-step linear schedule.
- ``classifier/``: a small CNN (:class:`DigitClassifier`) as safetensors plus a JSON config.
- ``SHA256SUMS``: checksums of every shipped file, verified on load.

Images are ``[N, 1, 8, 8]`` floats in ``[-1, 1]`` (pixel value ``v`` in 0..16 maps to ``v / 8 - 1``).
Taxonomy leaves map to digits by their ``index`` attribute, or by their name when it is a digit.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from probes._compat import patch_torchvision
from probes.classifiers.base import Classifier, leaf_groups
from probes.conditioning import ClassLabelConditioner
from probes.denoisers.base import GuidedDenoiser
from probes.denoisers.discrete import DiscreteScheduleDenoiser
from probes.errors import ProbesError
from probes.hub import quiet_loading_bars
from probes.resources import shipped_path

NUM_DIGITS = 10
NULL_CLASS = 10  #: the UNet's class id for "unconditional"
DEFAULT_DIR = shipped_path("data", "digits")
CHECKSUM_FILE = "SHA256SUMS"
UNET_FILES = ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json")
CLASSIFIER_FILES = ("classifier/config.json", "classifier/model.safetensors")


# --------------------------------------------------------------------------------------------- data

def load_digits_split(split: str = "train", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ``(x [N, 1, 8, 8] float32 in [-1, 1], y [N] long)``.

    The split is a deterministic stratified 80/20 split (1,437 train / 360 test images for seed 0).
    """
    if split not in ("train", "test"):
        raise ProbesError(f"digits split must be 'train' or 'test', got {split!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    idx_train, idx_test = train_test_split(
        range(len(data.target)), test_size=0.2, stratify=data.target, random_state=seed)
    idx = sorted(idx_train if split == "train" else idx_test)
    x = torch.tensor(data.images[idx], dtype=torch.float32)[:, None] / 8 - 1
    y = torch.tensor(data.target[idx], dtype=torch.long)
    return x, y


# ---------------------------------------------------------------------------------------- checksums

def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(directory: str | Path, files: Sequence[str]) -> Path:
    """Write ``directory/SHA256SUMS`` (``sha256sum`` format) for ``files`` relative to it."""
    directory = Path(directory)
    lines = [f"{sha256_file(directory / f)}  {f}" for f in sorted(files)]
    out = directory / CHECKSUM_FILE
    out.write_text("\n".join(lines) + "\n")
    return out


def read_checksums(directory: str | Path) -> dict[str, str]:
    """``{relative path: hex digest}`` from ``directory/SHA256SUMS``."""
    path = Path(directory) / CHECKSUM_FILE
    if not path.is_file():
        raise ProbesError(f"{path}: checksum file is missing; the digits model directory is incomplete")
    sums = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ProbesError(f"{path}:{n}: expected '<sha256>  <file>', got {line!r}")
        sums[parts[1].strip().lstrip("*")] = parts[0].lower()
    return sums


def verify_checksums(directory: str | Path, files: Sequence[str]) -> None:
    """Check ``files`` (relative to ``directory``) against its ``SHA256SUMS``; ProbesError if not."""
    directory = Path(directory)
    sums = read_checksums(directory)
    for f in files:
        path = directory / f
        if not path.is_file():
            raise ProbesError(f"{path}: file is missing; retrain with 'probes train digits --out {directory}'")
        if f not in sums:
            raise ProbesError(f"{path}: no checksum listed in {directory / CHECKSUM_FILE}")
        if sha256_file(path) != sums[f]:
            raise ProbesError(f"{path}: SHA-256 does not match {directory / CHECKSUM_FILE}; the file is corrupted or "
                              "was replaced")


def _model_dir(path) -> Path:
    directory = Path(path) if path is not None else DEFAULT_DIR
    if not directory.is_dir():
        raise ProbesError(f"{directory}: digits model directory not found")
    return directory


# ------------------------------------------------------------------------------- taxonomy -> digits

def leaf_digit(taxonomy, leaf: str) -> int | None:
    """The digit a taxonomy leaf stands for: its ``index`` attribute, else its name as an int."""
    value = taxonomy.node_attrs(leaf).get("index")
    if value is None:
        value = leaf
    try:
        digit = int(value)
    except (TypeError, ValueError):
        return None
    return digit if 0 <= digit < NUM_DIGITS and str(digit) == str(value).strip() else None


def digits_conditioner(taxonomy) -> ClassLabelConditioner:
    """Leaf name -> the UNet's class id; internal nodes raise ``UnsupportedCondition`` when asked."""
    mapping = {}
    for leaf in taxonomy.leaves:
        digit = leaf_digit(taxonomy, leaf)
        if digit is None:
            raise ProbesError(
                f"taxonomy leaf {leaf!r} does not name a digit 0-9; give it an 'index' attribute or a digit name")
        mapping[leaf] = digit
    return ClassLabelConditioner(mapping)


# ---------------------------------------------------------------------------------------- denoiser

class UNetClassFn(torch.nn.Module):
    """``model_fn(x_in, t, cond)`` over a class-conditional UNet; ``cond`` -1 or None is the null class."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x_in: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        labels = class_labels(cond, x_in.shape[0], x_in.device)
        return self.unet(x_in, t, class_labels=labels).sample


def class_labels(cond: Any, batch: int, device=None) -> torch.Tensor:
    """Conditioning (None, an int, a sequence or a tensor of digit ids) as UNet class labels ``[batch]``."""
    if cond is None:
        return torch.full((batch,), NULL_CLASS, dtype=torch.long, device=device)
    labels = torch.as_tensor(cond, device=device).long()
    if labels.ndim == 0:
        labels = labels.expand(batch)
    if labels.shape != (batch,):
        raise ValueError(f"digit conditioning must have shape [{batch}], got {tuple(labels.shape)}")
    if ((labels < -1) | (labels > NULL_CLASS)).any():
        raise ValueError(f"digit class ids must be in -1..{NULL_CLASS}, got {labels.tolist()}")
    return torch.where(labels < 0, torch.full_like(labels, NULL_CLASS), labels)


def load_digits_denoiser(path: str | Path | None = None) -> DiscreteScheduleDenoiser:
    """The shipped digits UNet as ``D(x, sigma, cond)``; ``cond`` is digit ids (-1 = unconditional).

    Weights are checked against ``SHA256SUMS`` first. The returned module is in eval mode with
    frozen parameters (gradients with respect to ``x`` still flow).
    """
    directory = _model_dir(path)
    verify_checksums(directory, UNET_FILES)
    patch_torchvision()
    from diffusers import DDPMScheduler, UNet2DModel

    with quiet_loading_bars():
        unet = UNet2DModel.from_pretrained(directory / "unet")
        scheduler = DDPMScheduler.from_pretrained(directory / "scheduler")
    unet.eval().requires_grad_(False)
    denoiser = DiscreteScheduleDenoiser(UNetClassFn(unet), scheduler.alphas_cumprod,
                                        scheduler.config.prediction_type)
    return denoiser.eval()


# -------------------------------------------------------------------------------------- classifier

class DigitNet(torch.nn.Module):
    """A small CNN over 8x8 digits: 3 conv layers (8x8 -> 4x4 -> 2x2) and a 2-layer head."""

    def __init__(self, width: int = 32, hidden: int = 128):
        super().__init__()
        w = width
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, w, 3, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(w, 2 * w, 3, padding=1), torch.nn.GELU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(2 * w, 2 * w, 3, padding=1), torch.nn.GELU(), torch.nn.MaxPool2d(2),
        )
        self.head = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Dropout(0.2), torch.nn.Linear(2 * w * 4, hidden), torch.nn.GELU(),
            torch.nn.Linear(hidden, NUM_DIGITS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitClassifier(Classifier):
    """The digits CNN as a :class:`~probes.classifiers.base.Classifier` (native classes: digits 0..9).

    Inputs are NCHW in ``[-1, 1]``; other sizes are resized to 8x8 and colour is averaged to grey.
    With ``leaves=None`` the leaves are the digits ``"0"`` .. ``"9"``.
    """

    def __init__(self, leaves: Sequence[str] | None = None, groups: list[list[int]] | None = None,
                 temperature: float = 1.0, width: int = 32, hidden: int = 128):
        super().__init__([str(d) for d in range(NUM_DIGITS)] if leaves is None else leaves, groups, temperature)
        self.config = {"width": width, "hidden": hidden}
        self.net = DigitNet(width, hidden)

    def _grey8(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"DigitClassifier expects NCHW images, got shape {tuple(x.shape)}")
        if x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-2:] != (8, 8):
            x = F.interpolate(x, size=(8, 8), mode="area" if x.shape[-1] > 8 else "bilinear")
        return x.float()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._grey8(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's hidden layer ``[batch, hidden]``: the feature space of Frechet distances."""
        return self.net.head[:-1](self.net.features(self._grey8(x)))


def load_digits_classifier(taxonomy=None, path: str | Path | None = None,
                           temperature: float = 1.0) -> DigitClassifier:
    """The shipped digits classifier scoring ``taxonomy.leaves`` (default: the 10 digits).

    Each leaf maps to one digit by its ``index`` attribute or its name; a leaf that maps to no digit
    raises the standard "does not cover" :class:`ProbesError`.
    """
    directory = _model_dir(path)
    verify_checksums(directory, CLASSIFIER_FILES)
    from safetensors.torch import load_file

    config = json.loads((directory / "classifier" / "config.json").read_text())
    if taxonomy is None:
        leaves, groups = None, None
    else:
        leaves = list(taxonomy.leaves)
        native = {}
        for leaf in leaves:
            digit = leaf_digit(taxonomy, leaf)
            if digit is not None:
                native[leaf] = [digit]
        groups = leaf_groups(leaves, native)
    clf = DigitClassifier(leaves, groups, temperature, width=config["width"], hidden=config["hidden"])
    clf.net.load_state_dict(load_file(directory / "classifier" / "model.safetensors"))
    return clf.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------- sampling

@torch.no_grad()
def sample_digits(denoiser, labels: Any, steps: int = 50, guidance: float = 1.0,
                  generator: torch.Generator | None = None, rho: float = 7.0) -> torch.Tensor:
    """Draw ``[N, 1, 8, 8]`` digits with a deterministic DDIM (Euler) sampler on a Karras sigma grid.

    ``labels`` are digit ids ``[N]`` (-1 = unconditional); ``guidance`` is the classifier-free
    guidance scale (1 = the conditional model). Kept here for the quality report and tests; the
    toolkit's general samplers live in :mod:`probes.sampling`.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    model = GuidedDenoiser(denoiser, guidance) if guidance != 1.0 else denoiser
    lo, hi = denoiser.sigma_min, denoiser.sigma_max
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    x = torch.randn(len(labels), 1, 8, 8, generator=generator) * sigmas[0]
    all_null = bool((labels < 0).all())
    for s, s_next in itertools.pairwise(sigmas):
        x0 = model(x, float(s), None if all_null else labels)
        x = x0 + (s_next / s).float() * (x - x0)
    return x
