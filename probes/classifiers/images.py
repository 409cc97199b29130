"""Image preprocessing shared by the image classifiers (CLIP, ImageNet): tensors in, tensors out."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_center_crop(x: torch.Tensor, size: tuple[int, int], mode: str = "shortest") -> torch.Tensor:
    """Tensor version of the usual eval transform for ``[0, 1]`` images (result clamped to [0, 1]).

    ``shortest``: scale so the image covers ``size``, then centre-crop; ``squash``: resize to
    ``size`` directly; ``longest``: scale so the image fits inside ``size``, pad with zeros
    (black) to ``size``.
    """
    h, w = x.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return x
    if mode == "squash":
        return F.interpolate(x, size=(th, tw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    scale = max(th / h, tw / w) if mode != "longest" else min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    if mode == "longest":
        top, left = (th - nh) // 2, (tw - nw) // 2
        return F.pad(x, (left, tw - nw - left, top, th - nh - top))
    top, left = (nh - th) // 2, (nw - tw) // 2
    return x[..., top:top + th, left:left + tw]
