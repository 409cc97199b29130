"""Discrete-time (DDPM-family) models on the sigma axis.

A DDPM model is trained on ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``; dividing by
``sqrt(abar_t)`` gives the variance-exploding form with ``sigma_t = sqrt((1 - abar_t) / abar_t)``.
So the model input is ``x_sigma / sqrt(1 + sigma^2)`` and its output (eps, v or x0) converts to
``x0_hat``. Sigmas between schedule entries map to fractional timesteps by linear interpolation in
log sigma, as k-diffusion's ``DiscreteSchedule`` does; diffusers UNets accept float timesteps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from probes.denoisers.base import Denoiser, batch_sigma, expand_like
from probes.noise import sigmas_from_alphas_cumprod

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class DiscreteScheduleDenoiser(Denoiser):
    """Wrap ``model_fn(x_in, t, cond) -> output`` of a DDPM-style model into ``D(x, sigma, cond)``.

    Args:
        model_fn: the network call on the model's own input scale and timestep.
        alphas_cumprod: the training schedule's ``abar_t``, index = timestep.
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample`` (diffusers' names).

    A zero-terminal-SNR schedule (``rescale_betas_zero_snr``: ``abar_T = 0``) puts its last
    timestep at ``sigma = inf``, which no grid can start from; the schedule then ends at its largest
    finite sigma (``sigma_max``), the timestep below pure noise.
    """

    def __init__(self, model_fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
                 alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")
        self.model_fn = model_fn
        self.prediction_type = prediction_type
        sigmas = sigmas_from_alphas_cumprod(torch.as_tensor(alphas_cumprod))
        finite = int(torch.isfinite(sigmas).sum())
        if finite < 2 or not torch.isfinite(sigmas[:finite]).all():
            raise ValueError("alphas_cumprod must be positive except at the last timesteps (zero terminal SNR)")
        sigmas = sigmas[:finite]  # timesteps keep their indices: only infinite ones at the end go
        self.register_buffer("log_sigmas", sigmas.log().float(), persistent=False)
        self.sigma_min, self.sigma_max = float(sigmas[0]), float(sigmas[-1])

    @property
    def sigmas(self) -> torch.Tensor:
        """The schedule's sigmas, ascending with the timestep."""
        return self.log_sigmas.exp()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of each sigma (clamped to the schedule's range)."""
        log_sigma = sigma.float().log().clamp(self.log_sigmas[0], self.log_sigmas[-1])
        idx = torch.searchsorted(self.log_sigmas, log_sigma.contiguous()).clamp(1, len(self.log_sigmas) - 1)
        lo, hi = self.log_sigmas[idx - 1], self.log_sigmas[idx]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1).float() + w

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        lo = t.floor().long().clamp(0, len(self.log_sigmas) - 1)
        hi = (lo + 1).clamp(max=len(self.log_sigmas) - 1)
        w = t - lo
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()

    def forward(self, x, sigma, cond=None):
        sigma = batch_sigma(sigma, x)
        s = expand_like(sigma, x)
        c_in = 1 / (1 + s**2).sqrt()
        out = self.model_fn(x * c_in, self.sigma_to_t(sigma), cond)
        out = out.to(x.dtype)
        if self.prediction_type == "epsilon":
            return x - s * out
        if self.prediction_type == "v_prediction":
            # x_vp = a x0 + b eps, v = a eps - b x0, with a = c_in, b = s c_in  =>  x0 = a x_vp - b v
            return c_in * (x * c_in) - s * c_in * out
        return out
