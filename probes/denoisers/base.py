"""The denoiser interface every model is wrapped into.

A denoiser maps a noisy input ``x = x0 + sigma * n`` (variance-exploding scale, whatever the model
was trained on) to its estimate of the clean ``x0``. ``cond`` is the model's own conditioning
object for a batch (class ids, prompts, a leaf mask for a mixture), or ``None`` for unconditional.
Mapping taxonomy nodes to ``cond`` is the job of a :class:`probes.conditioning.Conditioner`.
"""

from __future__ import annotations

from typing import Any

import torch

from probes.errors import ProbesError


def batch_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """Sigma as a float tensor of shape ``[batch]`` on ``x``'s device (scalars are broadcast)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                            device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape [{x.shape[0]}], got {tuple(sigma.shape)}")
    return sigma


def expand_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a ``[batch]`` tensor to broadcast against ``x``."""
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1))).to(x.dtype)


class Denoiser(torch.nn.Module):
    """Base class: subclasses implement :meth:`forward` and set ``sigma_min``/``sigma_max``."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def forward(self, x: torch.Tensor, sigma, cond: Any = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class GuidedDenoiser(Denoiser):
    """Classifier-free guidance ``D_u + w (D_c - D_u)``, optionally only for sigma in ``(lo, hi]``.

    ``w = 1`` is the plain conditional model; ``w = 0`` the unconditional one. Outside the guidance
    interval the conditional prediction is used (as in Kynkaanniemi et al. 2024). With ``cond=None``
    the unconditional prediction is returned unguided.

    A guided evaluation costs two model evaluations per sample (conditional and unconditional);
    ``extra_evaluations`` counts the second ones (sample-evaluations, like every call count), so
    samplers and run reports can charge guidance its real cost.
    """

    def __init__(self, inner: Denoiser, scale: float, interval: tuple[float, float] | None = None):
        super().__init__()
        self.inner = inner
        self.scale = float(scale)
        self.interval = interval
        self.sigma_min, self.sigma_max = inner.sigma_min, inner.sigma_max
        self.extra_evaluations = 0

    def forward(self, x, sigma, cond=None):
        if cond is None or self.scale == 1.0:
            return self.inner(x, sigma, cond)
        sigma = batch_sigma(sigma, x)
        if self.interval is None:
            inside = torch.ones_like(sigma, dtype=torch.bool)
        else:
            lo, hi = self.interval
            inside = (sigma > lo) & (sigma <= hi)
        if not inside.any():  # outside the interval: the conditional model alone, no extra call
            return self.inner(x, sigma, cond)
        if not inside.all():
            out = self.inner(x, sigma, cond).clone()
            keep = inside.nonzero().squeeze(1)
            out[keep] = self._guided(x[keep], sigma[keep], _select(cond, keep))
            return out
        return self._guided(x, sigma, cond)

    def _guided(self, x, sigma, cond):
        # One batched call for both branches, as diffusers pipelines do.
        self.extra_evaluations += x.shape[0]
        both = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), _pair(cond))
        uncond, condl = both.chunk(2)
        return uncond + self.scale * (condl - uncond)


def _select(cond, index: torch.Tensor):
    if isinstance(cond, torch.Tensor):
        return cond[index.to(cond.device)]
    return [cond[i] for i in index.tolist()]


def _pair(cond):
    """Conditioning for ``cat([x, x])``: unconditional first, then ``cond``."""
    if isinstance(cond, torch.Tensor):
        if cond.dtype == torch.bool:  # leaf masks: all-True means unconditional
            return torch.cat([torch.ones_like(cond), cond])
        return torch.cat([torch.full_like(cond, -1), cond])  # class ids: -1 means unconditional
    if isinstance(cond, (list, tuple)):
        return [None] * len(cond) + list(cond)  # prompts: None means the empty prompt
    raise TypeError(f"cannot build unconditional pair for conditioning of type {type(cond).__name__}")


#: A clean estimate beyond this magnitude is no image or data point of any model (pixels and
#: latents are O(1), mixtures' means O(1e6) at most): it would overflow squares in the filters and
#: the distances of the quality measures long before it meant anything.
MAX_PREDICTION = 1e30


class FiniteCheck:
    """Calls a denoiser and stops at the first output that is not a clean estimate of its input:
    another shape, NaN or inf, or beyond :data:`MAX_PREDICTION`, naming that call's sigma.

    Checking outputs where they are produced (not the states a step later) puts the blame on
    the right noise level, and catches every consumer alike: samplers and all estimators.
    """

    def __init__(self, denoiser, what: str = "the model's denoiser"):
        self.denoiser, self.what = denoiser, what

    @property
    def extra_evaluations(self) -> int:
        """The wrapped denoiser's count of guidance's extra evaluations (samplers charge them)."""
        return getattr(self.denoiser, "extra_evaluations", 0)

    def __call__(self, x: torch.Tensor, sigma, cond: Any = None) -> torch.Tensor:
        out = self.denoiser(x, sigma, cond)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ProbesError(f"{self.what} returned {shape} for inputs {list(x.shape)} at sigma="
                              f"{float(batch_sigma(sigma, x)[0]):.4g}; a denoiser returns one clean estimate per input")
        bad = ~torch.isfinite(out) | (out.abs() > MAX_PREDICTION)
        if bool(bad.any()):
            rows = bad.reshape(out.shape[0], -1).any(1)
            at = float(batch_sigma(sigma, x)[rows.nonzero()[0, 0]])
            what = "NaN/inf" if not bool(torch.isfinite(out).all()) else f"values beyond {MAX_PREDICTION:g}"
            raise ProbesError(f"{self.what} returned {what} at sigma={at:.4g}; finished batches are kept "
                              "(fix the model or recipe, then --resume)")
        return out
