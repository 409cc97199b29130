"""Parameterisations: a model's native prediction -> ``D(x, sigma, cond)`` on the sigma axis.

Every family of models is one of a few parameterisations; the toolkit's axis is always the
variance-exploding ``x_sigma = x0 + sigma * n`` (see :mod:`probes.noise`):

* **discrete DDPM** (``eps``, ``v``, ``x0``): the model sees ``x_vp = x_sigma / sqrt(1 + sigma^2)`` at
  the timestep whose ``sigma_t = sqrt((1 - abar_t) / abar_t)`` matches
  (:class:`~probes.denoisers.DiscreteScheduleDenoiser`);
* **continuous sigma** (``eps``, ``v``, ``x0``, k-diffusion / EDM style): the model sees
  ``x_sigma * c_in`` and ``sigma`` itself (:class:`SigmaDenoiser`);
* **flow matching** (rectified flow): ``x_t = (1 - t) x0 + t n`` with ``t = sigma / (1 + sigma)``,
  so ``x_t = x_sigma / (1 + sigma)``; the velocity ``v = n - x0`` gives ``x0 = x_t - t v``
  (:class:`FlowDenoiser`).

The same formulas read a pipeline's own states (:func:`x0_from_output`): diffusers schedulers keep
latents in one of three layouts, ``vp`` (DDIM, DDPM, DPM-Solver, UniPC), ``ve`` (Euler family,
k-diffusion's layout) or ``flow``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from probes.denoisers.base import Denoiser, batch_sigma, expand_like
from probes.denoisers.discrete import PREDICTION_TYPES, DiscreteScheduleDenoiser
from probes.errors import ProbesError

__all__ = [
    "PREDICTION_TYPES",
    "DiscreteScheduleDenoiser",
    "FlowDenoiser",
    "SigmaDenoiser",
    "flow_t",
    "sigma_of_flow_t",
    "to_sigma_axis",
    "x0_from_output",
]

STATE_LAYOUTS = ("vp", "ve", "flow")


def flow_t(sigma):
    """Flow time of a sigma: ``t = sigma / (1 + sigma)`` (``inf`` -> 1)."""
    if isinstance(sigma, torch.Tensor):
        return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1 + sigma))
    return 1.0 if math.isinf(sigma) else sigma / (1 + sigma)


def sigma_of_flow_t(t):
    """Inverse of :func:`flow_t`: ``sigma = t / (1 - t)`` (``t = 1`` -> ``inf``)."""
    if isinstance(t, torch.Tensor):
        return t / (1 - t)
    return math.inf if t >= 1 else t / (1 - t)


def x0_from_output(output: torch.Tensor, state: torch.Tensor, sigma: float, layout: str,
                   prediction_type: str) -> torch.Tensor:
    """The clean estimate from a model's native output at a pipeline state.

    Args:
        output: the model output the scheduler receives (after guidance).
        state: the scheduler's ``sample`` in its own layout.
        sigma: the state's sigma on the toolkit's axis (for ``flow``: ``t / (1 - t)``).
        layout: ``vp`` (``sqrt(abar) x0 + sqrt(1 - abar) n``), ``ve`` (``x0 + sigma n``) or ``flow``.
        prediction_type: ``epsilon``, ``v_prediction``, ``sample`` or (``flow`` only) ``flow``.
    """
    out, x = output.double(), state.double()
    if layout == "flow":
        if prediction_type != "flow":
            raise ProbesError(f"flow-matching states need a velocity prediction, not {prediction_type!r}")
        return (x - flow_t(sigma) * out).to(state.dtype)
    if prediction_type not in PREDICTION_TYPES:
        raise ProbesError(f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
    alpha = 1 / math.sqrt(1 + sigma**2)
    if layout == "ve":  # the model saw x * alpha (scale_model_input)
        x = x * alpha
    elif layout != "vp":
        raise ValueError(f"layout must be one of {STATE_LAYOUTS}")
    if prediction_type == "epsilon":
        x0 = (x - sigma * alpha * out) / alpha
    elif prediction_type == "v_prediction":
        x0 = alpha * x - sigma * alpha * out
    else:
        x0 = out
    return x0.to(state.dtype)


def to_sigma_axis(state: torch.Tensor, sigma: float, layout: str) -> torch.Tensor:
    """A scheduler state in its own layout -> ``x_sigma = x0 + sigma n``."""
    if layout == "ve":
        return state
    if layout == "vp":
        return state * math.sqrt(1 + sigma**2)
    if layout == "flow":
        return state * (1 + sigma)  # x_t / (1 - t) with 1 - t = 1 / (1 + sigma)
    raise ValueError(f"layout must be one of {STATE_LAYOUTS}")


class SigmaDenoiser(Denoiser):
    """Continuous-sigma models (k-diffusion's ``DiscreteEpsDDPMDenoiser`` without the table):
    ``model_fn(x * c_in, sigma, cond)`` returns eps, v or x0 with ``c_in = 1 / sqrt(1 + sigma^2)``."""

    def __init__(self, model_fn: Callable, prediction_type: str = "epsilon", sigma_min: float = 0.002,
                 sigma_max: float = 80.0):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ProbesError(f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
        self.model_fn, self.prediction_type = model_fn, prediction_type
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def forward(self, x, sigma, cond=None):
        sigma = batch_sigma(sigma, x)
        s = expand_like(sigma, x)
        c_in = 1 / (1 + s**2).sqrt()
        out = self.model_fn(x * c_in, sigma, cond).to(x.dtype)
        if self.prediction_type == "epsilon":
            return x - s * out
        if self.prediction_type == "v_prediction":
            return c_in * (x * c_in) - s * c_in * out
        return out


class FlowDenoiser(Denoiser):
    """Rectified-flow models: ``model_fn(x_t, t, cond) -> v`` with ``t`` in ``[0, 1]``.

    ``D(x_sigma, sigma) = x_t - t v`` with ``t = sigma / (1 + sigma)`` and ``x_t = x_sigma (1 - t)``.
    ``model_fn`` is the family's network call; it scales ``t`` to its own timestep convention
    (SD 3 takes ``1000 t``, Flux ``t``).
    """

    sigma_min, sigma_max = 1e-3, 1e3

    def __init__(self, model_fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]):
        super().__init__()
        self.model_fn = model_fn

    def forward(self, x, sigma, cond=None):
        sigma = batch_sigma(sigma, x).double()
        t = sigma / (1 + sigma)
        x_t = x * expand_like(1 - t, x)
        v = self.model_fn(x_t, t.float(), cond).to(x.dtype)
        return x_t - expand_like(t, x) * v
