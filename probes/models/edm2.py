"""EDM2 networks (Karras et al. 2024, NVlabs' ``edm2`` release) as denoisers on the sigma axis.

EDM2 already lives on this toolkit's noise axis: a released pickle holds a preconditioned network
``net(x, sigma, class_labels) -> D(x; sigma)`` trained for sigma in ``[0.002, 80]``, with
``class_labels`` one-hot ``[B, label_dim]`` (ImageNet-1k: 1000 classes in the standard sorted-wnid
order). So :class:`EDM2Denoiser` only converts class ids to one-hot rows. EDM2's class-conditional
networks have no unconditional mode: classifier-free guidance uses a second, unconditional
network (``edm2-img512-*-uncond-*.pkl``), which :class:`EDM2Denoiser` takes as ``uncond_net`` and
calls for the rows whose class id is ``-1`` (or for ``cond=None``).

``img512`` models work in Stable Diffusion VAE latents (``stabilityai/sd-vae-ft-mse``), normalised
per channel; the pickle's ``encoder`` decodes them to uint8 images. :class:`EDM2LatentDecoder`
turns ``x0`` latents into images in ``[-1, 1]`` for an image classifier, either through that
encoder or through a diffusers ``AutoencoderKL`` with the same normalisation. ``img64`` models
work on pixels in ``[-1, 1]`` and need no decoder.

Unpickling needs NVlabs' own modules (``torch_utils``, ``dnnlib``; the network code itself is
stored inside the pickle): put a checkout of https://github.com/NVlabs/edm2 on ``PYTHONPATH``.
A pickle can run arbitrary code when loaded; load only files from a source you trust.

Typical use (the run builds the same objects from a recipe's ``model: {kind: edm2}``)::

    net, encoder = load_edm2("edm2-img512-xs-2147483-0.135.pkl")
    uncond, _ = load_edm2("edm2-img512-xs-uncond-2147483-0.135.pkl")
    denoiser = EDM2Denoiser(net.to("cuda"), uncond.to("cuda"))    # D(x, sigma, class_ids)
    conditioner = edm2_conditioner(taxonomy, net.label_dim)       # leaf -> ImageNet class id
    classifier = DecodedClassifier(EDM2LatentDecoder(encoder), image_classifier)
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from probes._compat import patch_torchvision
from probes.classifiers.imagenet import imagenet_wnids
from probes.conditioning import ClassLabelConditioner
from probes.denoisers.base import Denoiser, batch_sigma
from probes.errors import ProbesError, quote_library_error
from probes.hub import download_command, hub_offline, quiet_loading_bars

#: Where NVlabs publishes the EDM2 pickles (``generate_images.py``'s ``model_root``).
RELEASE_URL = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions"
#: The code that unpickling needs.
CODE_URL = "https://github.com/NVlabs/edm2"
#: The VAE and latent normalisation of EDM2's ``StabilityVAEEncoder`` (``training/encoders.py``).
VAE_NAME = "stabilityai/sd-vae-ft-mse"
RAW_MEAN = (5.81, 3.25, 0.12, -2.15)
RAW_STD = (4.17, 4.62, 3.71, 3.28)
FINAL_MEAN = 0.0
FINAL_STD = 0.5
#: The noise range EDM2 is trained and sampled on.
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0


# --- loading ----------------------------------------------------------------------------------


def load_edm2(path: str | os.PathLike, key: str = "ema") -> tuple[torch.nn.Module, Any]:
    """Read an EDM2 network pickle: ``(network, encoder)``.

    Args:
        path: a local ``.pkl`` from NVlabs' release (URLs are refused: download the file first).
        key: which network in the pickle (``ema`` in the released post-hoc reconstructions).

    The network is returned in eval mode with gradients off, on the CPU (where the pickle put it);
    ``encoder`` is the pickle's ``encoder`` object (``StabilityVAEEncoder`` for latent models,
    ``StandardRGBEncoder`` for pixel models) or ``None``. Every failure is a one-line
    :class:`ProbesError`, a missing NVlabs module included.
    """
    text = str(path)
    if "://" in text:
        raise ProbesError(f"{text}: EDM2 pickles are read from local files; download it first "
                          f"(e.g. `wget {text}`) and give its path")
    file = Path(text).expanduser()
    if not file.is_file():
        raise ProbesError(f"{file}: no such EDM2 network pickle; download it from NVlabs' EDM2 release "
                          f"({RELEASE_URL}/{file.name})")
    try:
        with open(file, "rb") as f:
            data = pickle.load(f)
    except ModuleNotFoundError as err:
        raise ProbesError(f"{file}: unpickling needs the module {err.name!r} from NVlabs' EDM2 code; put a checkout "
                          f"of {CODE_URL} on PYTHONPATH (PYTHONPATH=/path/to/edm2)") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError) as err:
        raise ProbesError(f"{file}: not a readable EDM2 network pickle ({type(err).__name__}: "
                          f"{quote_library_error(err)})") from None
    if not isinstance(data, dict) or key not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ProbesError(f"{file}: no network {key!r} in the pickle (it holds {keys})")
    net = data[key]
    missing = [a for a in ("img_resolution", "img_channels", "label_dim") if not hasattr(net, a)]
    if not isinstance(net, torch.nn.Module) or missing:
        raise ProbesError(f"{file}: {key!r} is not an EDM2 network (no {', '.join(missing) or 'torch module'})")
    net.eval().requires_grad_(False)
    return net, data.get("encoder")


def is_pixel_space(net, encoder=None) -> bool:
    """True for networks on pixels in ``[-1, 1]`` (``img64``), False for VAE-latent ones (``img512``)."""
    if encoder is not None:
        return type(encoder).__name__ == "StandardRGBEncoder"
    return int(net.img_channels) == 3


# --- the denoiser -----------------------------------------------------------------------------


class EDM2Denoiser(Denoiser):
    """``D(x, sigma, class_ids) -> x0_hat`` for an EDM2 preconditioned network.

    Args:
        net: the network (``net(x, sigma, class_labels)`` returns ``D(x)``; ``label_dim`` 0 for an
            unconditional network).
        uncond_net: an unconditional EDM2 network (``label_dim`` 0), e.g. EDM2's guidance pickles
            ``edm2-img512-xs-uncond-*.pkl``; it answers ``cond=None`` and the rows with class id
            ``-1``, so :class:`~probes.denoisers.GuidedDenoiser` gives EDM2's guidance
            ``D_u + w (D_c - D_u)``.

    ``cond`` is ``None`` or a LongTensor ``[B]`` of class ids (``-1`` = unconditional). ``x`` may
    live anywhere: it is moved to the network's device and the result comes back on ``x``'s
    device and dtype. A class-conditional network without ``uncond_net`` refuses unconditional
    calls with a :class:`ProbesError`: EDM2 has no unconditional mode to fall back on.
    """

    sigma_min = SIGMA_MIN
    sigma_max = SIGMA_MAX

    def __init__(self, net: torch.nn.Module, uncond_net: torch.nn.Module | None = None):
        super().__init__()
        if uncond_net is not None and int(getattr(uncond_net, "label_dim", 0)) != 0:
            raise ProbesError(f"model.uncond_path: the guiding network is class-conditional (label_dim "
                              f"{uncond_net.label_dim}); give an unconditional EDM2 network "
                              "(edm2-img512-*-uncond-*.pkl); autoguidance networks are not supported")
        if uncond_net is not None and (uncond_net.img_channels, uncond_net.img_resolution) != (
                net.img_channels, net.img_resolution):
            raise ProbesError(f"model.uncond_path: the unconditional network works on "
                              f"{uncond_net.img_channels}x{uncond_net.img_resolution}^2, the main one on "
                              f"{net.img_channels}x{net.img_resolution}^2")
        self.net = net
        self.uncond_net = uncond_net
        self.label_dim = int(net.label_dim)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channels, resolution, resolution)`` of the network's states."""
        return (int(self.net.img_channels), int(self.net.img_resolution), int(self.net.img_resolution))

    @property
    def device(self) -> torch.device:
        for t in self.net.parameters():
            return t.device
        for t in self.net.buffers():
            return t.device
        return torch.device("cpu")

    def one_hot(self, class_ids: torch.Tensor) -> torch.Tensor:
        """``[B]`` class ids -> EDM2's ``class_labels`` ``[B, label_dim]`` (float32 one-hot)."""
        class_ids = torch.as_tensor(class_ids, dtype=torch.long)
        if ((class_ids < 0) | (class_ids >= self.label_dim)).any():
            bad = int(class_ids[(class_ids < 0) | (class_ids >= self.label_dim)][0])
            raise ValueError(f"class id {bad} is outside the network's {self.label_dim} classes")
        return F.one_hot(class_ids, self.label_dim).float()

    def forward(self, x: torch.Tensor, sigma, cond: Any = None) -> torch.Tensor:
        sigma = batch_sigma(sigma, x).float()
        device = self.device
        xin, sin = x.to(device), sigma.to(device)
        if self.label_dim == 0:
            if cond is not None and (torch.as_tensor(cond) >= 0).any():
                raise ProbesError("the EDM2 network is unconditional (label_dim 0) and cannot be conditioned on a "
                                  "class")
            return self.net(xin, sin, None).to(device=x.device, dtype=x.dtype)
        if cond is None:
            uncond = torch.ones(x.shape[0], dtype=torch.bool)
            ids = torch.full((x.shape[0],), -1, dtype=torch.long)
        else:
            ids = torch.as_tensor(cond, dtype=torch.long).reshape(-1).cpu()
            if ids.shape[0] != x.shape[0]:
                raise ValueError(f"got {ids.shape[0]} class ids for a batch of {x.shape[0]}")
            uncond = ids < 0
        if uncond.any() and self.uncond_net is None:
            raise ProbesError(
                "the EDM2 network is class-conditional and has no unconditional mode (EDM2 guides with a separate "
                "unconditional network): use sampling.condition: leaf with estimators that condition on leaves "
                "(bayes), or give model.uncond_path (an EDM2 edm2-img512-*-uncond-*.pkl)")
        if not uncond.any():
            out = self.net(xin, sin, self.one_hot(ids).to(device))
            return out.to(device=x.device, dtype=x.dtype)
        if uncond.all():
            return self.uncond_net(xin, sin, None).to(device=x.device, dtype=x.dtype)
        out = torch.empty_like(xin, dtype=torch.float32)
        c, u = (~uncond).nonzero().squeeze(1).to(device), uncond.nonzero().squeeze(1).to(device)
        out[c] = self.net(xin[c], sin[c], self.one_hot(ids[~uncond]).to(device)).float()
        out[u] = self.uncond_net(xin[u], sin[u], None).float()
        return out.to(device=x.device, dtype=x.dtype)


# --- conditioning -----------------------------------------------------------------------------


def edm2_conditioner(taxonomy, label_dim: int = 1000) -> ClassLabelConditioner:
    """Leaf -> the network's class id; internal nodes raise ``UnsupportedCondition`` when asked.

    A leaf's ``index`` attribute is its class id as is; otherwise its ``wnid`` is looked up in
    ImageNet-1k's standard order (sorted wnids, the order EDM2's ImageNet labels use).
    """
    wnid_index = None
    mapping = {}
    for leaf in taxonomy.leaves:
        attrs = taxonomy.node_attrs(leaf) or {}
        if attrs.get("index") is not None:
            idx = int(attrs["index"])
        elif attrs.get("wnid"):
            if label_dim != 1000:
                raise ProbesError(f"taxonomy leaf {leaf!r}: the network has {label_dim} classes, not ImageNet-1k's "
                                  "1000; give every leaf an 'index' attribute (its class id)")
            if wnid_index is None:
                wnid_index = {w: i for i, w in enumerate(imagenet_wnids())}
            if attrs["wnid"] not in wnid_index:
                raise ProbesError(f"taxonomy leaf {leaf!r}: wnid {attrs['wnid']} is not an ImageNet-1k class, so the "
                                  "EDM2 network cannot be conditioned on it")
            idx = wnid_index[attrs["wnid"]]
        else:
            raise ProbesError(f"taxonomy leaf {leaf!r} names no class of the EDM2 network; give it a 'wnid' "
                              "(ImageNet-1k) or an 'index' attribute")
        if not 0 <= idx < label_dim:
            raise ProbesError(f"taxonomy leaf {leaf!r}: index {idx} is not a class of the network (0..{label_dim - 1})")
        mapping[leaf] = idx
    return ClassLabelConditioner(mapping)


# --- latents -> images ------------------------------------------------------------------------


def latent_normalisation(raw_mean: Sequence[float] = RAW_MEAN, raw_std: Sequence[float] = RAW_STD,
                         final_mean: float = FINAL_MEAN, final_std: float = FINAL_STD) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, bias)`` with ``final = raw * scale + bias``, as EDM2's ``StabilityVAEEncoder`` sets them."""
    scale = np.float32(final_std) / np.asarray(raw_std, dtype=np.float32)
    bias = np.float32(final_mean) - np.asarray(raw_mean, dtype=np.float32) * scale
    return scale, bias


class EDM2LatentDecoder(torch.nn.Module):
    """EDM2 ``x0`` latents -> images in ``[-1, 1]`` (NCHW float32), for image classifiers.

    ``EDM2LatentDecoder(encoder)`` decodes with the pickle's own encoder (its ``decode`` returns
    uint8 images; the encoder loads ``stabilityai/sd-vae-ft-mse`` through the hub on first use).
    :meth:`from_vae` decodes with a diffusers ``AutoencoderKL`` you already have and EDM2's
    normalisation constants. ``decode_size``, if set, area-resizes latents larger than it before
    decoding (64x64 latents at ``decode_size=32`` give 256-pixel images at about a quarter of the
    cost).
    """

    def __init__(self, encoder=None, *, vae=None, scale=None, bias=None, decode_size: int | None = None):
        super().__init__()
        if (encoder is None) == (vae is None):
            raise ValueError("give exactly one of encoder or vae")
        self.encoder = encoder
        self.vae = vae
        self.decode_size = decode_size
        if vae is not None:
            if scale is None or bias is None:
                scale, bias = latent_normalisation()
            self.register_buffer("scale", torch.as_tensor(np.asarray(scale), dtype=torch.float32).view(1, -1, 1, 1),
                                 persistent=False)
            self.register_buffer("bias", torch.as_tensor(np.asarray(bias), dtype=torch.float32).view(1, -1, 1, 1),
                                 persistent=False)
        self.calls = 0

    @classmethod
    def from_vae(cls, vae, raw_mean: Sequence[float] = RAW_MEAN, raw_std: Sequence[float] = RAW_STD,
                 final_mean: float = FINAL_MEAN, final_std: float = FINAL_STD,
                 decode_size: int | None = None) -> EDM2LatentDecoder:
        """Decode with ``vae`` (``stabilityai/sd-vae-ft-mse`` for the released models) and the
        per-channel normalisation ``final = (raw - raw_mean) / raw_std * final_std + final_mean``."""
        scale, bias = latent_normalisation(raw_mean, raw_std, final_mean, final_std)
        return cls(vae=vae, scale=scale, bias=bias, decode_size=decode_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.decode_size is not None and min(x.shape[-2:]) > self.decode_size:
            h, w = x.shape[-2:]
            f = self.decode_size / min(h, w)
            x = F.interpolate(x, size=(round(h * f), round(w * f)), mode="area")
        self.calls += 1
        if self.encoder is not None:
            return self.encoder.decode(x).float() / 127.5 - 1
        raw = (x.to(self.scale.device) - self.bias) / self.scale
        # EDM2 runs the VAE on pixels in [0, 1] (not SD's [-1, 1]) and without SD's 0.18215 factor.
        image = self.vae.decode(raw.to(self.vae.dtype), return_dict=False)[0]
        return image.float().clamp(0, 1) * 2 - 1


def load_vae(name: str, device: str | torch.device = "cpu", local_files_only: bool | None = None):
    """A diffusers ``AutoencoderKL`` from a hub id or a folder (a VAE folder, or a pipeline folder
    with ``vae/``); one-line :class:`ProbesError` when it cannot be had without a download."""
    offline = hub_offline(local_files_only)
    path = Path(name).expanduser()
    kwargs = {}
    if path.exists():
        if (path / "vae" / "config.json").is_file():
            kwargs["subfolder"] = "vae"
        elif not (path / "config.json").is_file():
            raise ProbesError(f"model.vae {name!r}: {path} is not a diffusers VAE folder (no config.json)")
        source = str(path)
    else:
        source = name
    patch_torchvision()
    from diffusers import AutoencoderKL

    try:
        with quiet_loading_bars():
            vae = AutoencoderKL.from_pretrained(source, local_files_only=offline, **kwargs)
    except (OSError, ValueError) as err:
        raise ProbesError(f"model.vae {name!r} could not be loaded ({quote_library_error(err)}); download it first, "
                          f"e.g. `{download_command(VAE_NAME, '/weights/sd-vae-ft-mse')}`, and set "
                          "model.vae to that folder") from None
    return vae.eval().requires_grad_(False).to(device)


def init_encoder(encoder, device: torch.device) -> None:
    """Load the pickle encoder's VAE now (it downloads ``stabilityai/sd-vae-ft-mse`` once), so that
    a missing VAE fails before sampling starts."""
    init = getattr(encoder, "init", None)
    if init is None:
        return
    try:
        init(device)
    except Exception as err:  # hub and cache errors of diffusers / huggingface_hub, by many names
        name = getattr(encoder, "vae_name", VAE_NAME)
        raise ProbesError(f"model: the EDM2 pickle's encoder could not load its VAE {name!r} ({type(err).__name__}: "
                          f"{quote_library_error(err)}); download it once with network access, or set model.vae to a "
                          "local copy") from None
