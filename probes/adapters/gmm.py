"""Gaussian mixtures: exact denoisers and posteriors (the toolkit's ground truth)."""

from __future__ import annotations

from probes.adapters.base import Family


class GaussianMixtureFamily(Family):
    name = "gmm"
    parameterisation = "exact"
    conditioning = "mask"
    description = "Gaussian mixtures: exact D(x, sigma, leaves) and exact posteriors"

    def denoiser(self, mixture):
        return mixture.denoiser()

    def decoder(self, mixture, call_kwargs: dict | None = None):
        return lambda x: x

    def conditioner(self, mixture, taxonomy):
        return mixture.conditioner(taxonomy)
