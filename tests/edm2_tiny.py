"""Tiny stand-ins for EDM2's pickled objects (importable, so instances pickle and unpickle).

:class:`TinyPrecond` has the interface of ``training.networks_edm2.Precond``: the attributes
``img_resolution``, ``img_channels``, ``label_dim``, ``sigma_data`` and
``forward(x, sigma, class_labels=None, force_fp32=False, return_logvar=False) -> D(x)`` with the
same preconditioning (``c_skip``, ``c_out``, ``c_in``, ``c_noise = log(sigma) / 4``) around a
one-layer network. The encoders mirror ``training.encoders``: ``decode`` returns uint8 images.
"""

from __future__ import annotations

import pickle

import torch


class TinyPrecond(torch.nn.Module):
    def __init__(self, img_resolution: int = 8, img_channels: int = 3, label_dim: int = 1000,
                 sigma_data: float = 0.5, seed: int = 0):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = False
        self.sigma_data = sigma_data
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(img_channels + 1, img_channels, 3, padding=1)
        self.conv.weight.data = torch.randn(self.conv.weight.shape, generator=g) * 0.2
        self.conv.bias.data.zero_()
        self.emb_label = None
        if label_dim:
            self.emb_label = torch.nn.Linear(label_dim, img_channels, bias=False)
            self.emb_label.weight.data = torch.randn(self.emb_label.weight.shape, generator=g)
        self.calls = 0

    def forward(self, x, sigma, class_labels=None, force_fp32=False, return_logvar=False):
        self.calls += 1
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        h = torch.cat([c_in * x, c_noise.expand(x.shape[0], 1, *x.shape[2:])], dim=1)
        f = self.conv(h)
        if class_labels is not None:
            f = f + self.emb_label(class_labels)[:, :, None, None]
        return c_skip * x + c_out * torch.tanh(f)


class StandardRGBEncoder:
    """Pixels in [-1, 1] <-> uint8, as ``training.encoders.StandardRGBEncoder``."""

    def init(self, device):
        pass

    def decode(self, x):
        return (x.to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)


class TinyLatentEncoder:
    """4-channel latents -> uint8 RGB at twice the size (a fixed linear map), with EDM2's
    ``scale``/``bias`` attributes."""

    def __init__(self, scale=(0.1, 0.2, 0.3, 0.4), bias=(0.0, -0.1, 0.1, 0.2)):
        import numpy as np

        self.scale = np.asarray(scale, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.init_calls = 0

    def init(self, device):
        self.init_calls += 1

    def decode(self, x):
        mix = torch.tensor([[0.5, 0.2, 0.1, 0.0], [0.0, 0.5, 0.2, 0.1], [0.1, 0.0, 0.5, 0.2]])
        rgb = torch.einsum("oc,bchw->bohw", mix, x.float())
        rgb = torch.nn.functional.interpolate(rgb, scale_factor=2, mode="nearest")
        return ((rgb + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8)


def write_pickle(path, net, encoder=None, key: str = "ema"):
    """Write ``{key: net, "encoder": encoder}`` like NVlabs' post-hoc reconstructions."""
    data = {key: net}
    if encoder is not None:
        data["encoder"] = encoder
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path
