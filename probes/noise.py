"""The noise axis: sigma of the variance-exploding process ``x_sigma = x0 + sigma * n``.

Everything inside the toolkit is indexed by sigma. These helpers convert to the other common axes
and build sigma grids. Grids are *descending* (sampling order, noisiest first) and contain no zero;
samplers append the final ``sigma = 0`` themselves.
"""

from __future__ import annotations

import math

import torch


def vp_time(sigma):
    """Ornstein-Uhlenbeck / VP time ``t = 0.5 * log(1 + sigma^2)``."""
    if isinstance(sigma, torch.Tensor):
        return 0.5 * torch.log1p(sigma**2)
    return 0.5 * math.log1p(sigma**2)


def sigma_from_vp_time(t):
    """Inverse of :func:`vp_time`."""
    if isinstance(t, torch.Tensor):
        return torch.sqrt(torch.expm1(2 * t))
    return math.sqrt(math.expm1(2 * t))


def log_snr(sigma):
    """Log signal-to-noise ratio ``lambda = -2 log sigma``."""
    if isinstance(sigma, torch.Tensor):
        return -2 * torch.log(sigma)
    return -2 * math.log(sigma)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Sigmas of a discrete DDPM schedule: ``sigma_k = sqrt((1 - abar_k) / abar_k)``."""
    ac = alphas_cumprod.double()
    return ((1 - ac) / ac).sqrt()


def geometric_grid(sigma_max: float, sigma_min: float, steps: int) -> torch.Tensor:
    """``steps`` sigmas evenly spaced in log sigma, descending from sigma_max to sigma_min."""
    if not (sigma_max > sigma_min > 0) or steps < 2:
        raise ValueError("geometric_grid needs sigma_max > sigma_min > 0 and steps >= 2")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), steps, dtype=torch.float64)


def karras_grid(sigma_max: float, sigma_min: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """The EDM (Karras et al. 2022) schedule, descending, without the final zero."""
    if not (sigma_max > sigma_min > 0) or steps < 2:
        raise ValueError("karras_grid needs sigma_max > sigma_min > 0 and steps >= 2")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def log_snr_grid(sigma_max: float, sigma_min: float, steps: int) -> torch.Tensor:
    """``steps`` sigmas evenly spaced in log-SNR ``lambda = -2 log sigma``, descending in sigma.

    Since lambda is linear in log sigma, this is the geometric grid (up to rounding): the rates
    against log sigma and log-SNR are sampled equally well on it. It is named for users who think
    in log-SNR (VP / DDPM schedules: ``lambda = log(abar / (1 - abar))``, the same quantity).
    """
    if not (sigma_max > sigma_min > 0) or steps < 2:
        raise ValueError("log_snr_grid needs sigma_max > sigma_min > 0 and steps >= 2")
    lam = torch.linspace(log_snr(sigma_max), log_snr(sigma_min), steps, dtype=torch.float64)
    return torch.exp(-lam / 2)


GRIDS = ("geometric", "karras", "log_snr")


def entropic_grid(sigmas: torch.Tensor, entropy: torch.Tensor, sigma_max: float, sigma_min: float, steps: int,
                  uniform_share: float = 0.5) -> torch.Tensor:
    """Steps placed where a measured entropy changes fast (entropic time, after Stancevic & Ambrogioni).

    ``entropy`` is a measured conditional entropy ``H(Y | x_sigma)`` on ``sigmas`` (any order). Step
    density in ``u = log sigma`` is ``uniform_share`` times the log-uniform density plus the rest in
    proportion to ``|dH/du|``; the steps sit at equal quantiles of that density, from sigma_max to
    sigma_min. ``uniform_share = 1`` is the geometric grid; ``0`` is pure entropic time, which leaves
    no steps where the class is already settled (detail still forms there, so some are kept).
    """
    if not (sigma_max > sigma_min > 0) or steps < 2:
        raise ValueError("entropic_grid needs sigma_max > sigma_min > 0 and steps >= 2")
    order = torch.argsort(sigmas.double())
    u_meas = torch.log(sigmas.double()[order])
    h = entropy.double()[order]
    fine = torch.linspace(math.log(sigma_min), math.log(sigma_max), 2048, dtype=torch.float64)
    rate = torch.zeros_like(fine)
    if len(u_meas) >= 2:
        slope = (h[1:] - h[:-1]).abs() / (u_meas[1:] - u_meas[:-1])  # per measured interval
        cell = torch.searchsorted(u_meas, fine, right=True) - 1
        inside = (cell >= 0) & (cell < len(slope))
        rate[inside] = slope[cell[inside]]
    span = float(fine[-1] - fine[0])
    density = uniform_share / span + (1 - uniform_share) * (rate / float(torch.trapezoid(rate, fine))
                                                            if rate.sum() > 0 else 1 / span)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(0.5 * (density[1:] + density[:-1])
                                                                         * (fine[1:] - fine[:-1]), 0)])
    cdf = cdf / cdf[-1]
    targets = torch.linspace(1, 0, steps, dtype=torch.float64)  # descending: sigma_max first
    idx = torch.searchsorted(cdf, targets).clamp(1, len(cdf) - 1)
    c0, c1 = cdf[idx - 1], cdf[idx]
    w = ((targets - c0) / (c1 - c0).clamp_min(1e-300)).clamp(0, 1)
    u = fine[idx - 1] + w * (fine[idx] - fine[idx - 1])
    grid = torch.exp(u)
    grid[0], grid[-1] = sigma_max, sigma_min
    return grid


def make_grid(kind: str, sigma_max: float, sigma_min: float, steps: int) -> torch.Tensor:
    """Grid by name: ``geometric`` (log-uniform), ``karras`` or ``log_snr`` (log-SNR-uniform). A
    recipe's ``{from_run: DIR}`` is placed by :func:`entropic_grid` from that run's curves
    (:func:`probes.runner.sampling_grid`)."""
    if kind == "geometric":
        return geometric_grid(sigma_max, sigma_min, steps)
    if kind == "karras":
        return karras_grid(sigma_max, sigma_min, steps)
    if kind == "log_snr":
        return log_snr_grid(sigma_max, sigma_min, steps)
    raise ValueError(f"unknown sigma grid {kind!r}; expected one of {', '.join(GRIDS)}")
