"""Denoisers: ``D(x, sigma, cond) -> x0_hat`` on the sigma axis, whatever the model's native form."""

from probes.denoisers.base import Denoiser, GuidedDenoiser, batch_sigma
from probes.denoisers.discrete import DiscreteScheduleDenoiser

__all__ = ["Denoiser", "DiscreteScheduleDenoiser", "GuidedDenoiser", "batch_sigma"]
