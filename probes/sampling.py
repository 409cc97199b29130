"""Samplers on the sigma grid, the :class:`Trajectory` they record, and forward (data) paths.

All samplers work on the variance-exploding axis ``x_sigma = x0 + sigma * n`` with a denoiser
``D(x, sigma, cond) -> x0_hat``. A grid is descending and holds no zero (see :mod:`probes.noise`);
every sampler ends with the step from the smallest grid sigma to ``sigma = 0``, which is
``x0 = D(x_last)`` for all methods.

Methods (``i -> i+1`` is one step from ``s = sigma_i`` to ``t = sigma_{i+1}``, ``D = D(x_i; s)``):

* ``euler``: probability-flow ODE, ``x + (t - s) (x - D) / s``.
* ``heun``: second-order ODE (EDM's Heun step), Euler on the last step to 0.
* ``ddim``: deterministic DDIM, ``D + (t / s)(x - D)``. On the VE axis this *is* ``euler``.
* ``ancestral``: the DDPM posterior step ``a x + (1 - a) D + sqrt(1 - a) t z`` with ``a = t^2 / s^2``:
  the Gaussian kernel the ``bayes`` estimator inverts.
* ``euler_maruyama``: reverse VE SDE, ``x + (s^2 - t^2)(D - x) / s^2 + sqrt(s^2 - t^2) z``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from probes.errors import ProbesError

METHODS = ("euler", "heun", "ddim", "ancestral", "euler_maruyama")
STOCHASTIC_METHODS = ("ancestral", "euler_maruyama")


@dataclass
class Trajectory:
    """States of a batch along a sigma grid.

    Attributes:
        sigmas: ``[S]`` the grid (descending, no zero).
        states: ``[S, B, ...]`` x at each grid sigma; ``states[0]`` is the start. ``None`` when
            sampled with ``record=False``.
        denoised: ``[S, B, ...]`` ``D(states[i], sigmas[i], cond)`` as computed while sampling
            (free for the plug-in estimator), or ``None`` (forward paths, ``record=False``).
        x0: ``[B, ...]`` the end point at ``sigma = 0``.
        method: the sampler's name, or ``"forward"`` for noised data.
        cond: the generation conditioning passed to the denoiser (``None``: unconditional).
        leaf: ``[B]`` known leaf indices (data paths, class-conditional generation) or ``None``.
        denoiser_calls: sample-evaluations spent (a call on a batch of B counts B).
    """

    sigmas: torch.Tensor
    states: torch.Tensor | None
    denoised: torch.Tensor | None
    x0: torch.Tensor
    method: str
    cond: Any = None
    leaf: torch.Tensor | None = None
    denoiser_calls: int = 0

    @property
    def batch_size(self) -> int:
        return self.x0.shape[0]


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ProbesError(f"unknown sampler {method!r}; expected one of {', '.join(METHODS)}")


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device and moved to x's,
    so a CPU generator drives a GPU run and both give the same numbers."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def _run(denoiser, x, sigmas, method, cond, generator, record, progress):
    """The sampling loop. Returns ``(states, denoised, x0, denoiser_calls)``."""
    check_method(method)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1 or len(sigmas) < 1:
        raise ProbesError("sampler: sigmas must be a non-empty 1-D grid")
    n, b = len(sigmas), x.shape[0]
    if record not in (True, False, "states"):
        raise ProbesError(f"sampler: record must be True, False or 'states', not {record!r}")
    states = torch.empty((n, *x.shape), dtype=x.dtype, device=x.device) if record else None
    denoised = torch.empty_like(states) if record is True else None
    calls = 0
    extra_before = getattr(denoiser, "extra_evaluations", 0)  # guidance's second branch
    bar = _progress_bar(progress, n, method)
    for i in range(n):
        s = float(sigmas[i])
        t = float(sigmas[i + 1]) if i + 1 < n else 0.0
        d = denoiser(x, s, cond)
        calls += b
        if states is not None:
            states[i] = x
        if denoised is not None:
            denoised[i] = d
        if t == 0.0:
            x = d  # the last step of every method lands on the denoised estimate
        elif method in ("euler", "ddim", "heun"):
            # euler and ddim are the same update; ddim's form shows the eps-prediction view.
            x_next = d + (t / s) * (x - d)
            if method == "heun":
                d2 = denoiser(x_next, t, cond)
                calls += b
                slope = 0.5 * ((x - d) / s + (x_next - d2) / t)
                x_next = x + (t - s) * slope
            x = x_next
        elif method == "ancestral":
            a = t**2 / s**2
            x = a * x + (1 - a) * d + (1 - a) ** 0.5 * t * _noise(x, generator)
        else:  # euler_maruyama
            var = s**2 - t**2
            x = x + (var / s**2) * (d - x) + var**0.5 * _noise(x, generator)
        if bar is not None:
            bar(i + 1, n)
    calls += getattr(denoiser, "extra_evaluations", 0) - extra_before
    return states, denoised, x, calls


def _progress_bar(progress, total: int, method: str) -> Callable[[int, int], None] | None:
    """``progress``: None/False (silent), True (a tqdm bar) or a callable ``f(done, total)``."""
    if not progress:
        return None
    if callable(progress):
        return progress
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"sampling ({method})", leave=False)

    def update(done, n):
        bar.update(1)
        if done == n:
            bar.close()

    return update


@torch.no_grad()
def sample(denoiser, noise: torch.Tensor, sigmas: torch.Tensor, method: str = "euler", cond: Any = None,
           generator: torch.Generator | None = None, record: bool | str = True, progress=None,
           leaf: torch.Tensor | None = None) -> Trajectory:
    """Sample from ``noise`` (x at ``sigmas[0]``, already scaled by it) down to ``sigma = 0``.

    Args:
        denoiser: ``D(x, sigma, cond) -> x0_hat``.
        noise: the starting state ``[B, ...]``.
        sigmas: descending grid without the final zero.
        method: one of :data:`METHODS`.
        cond: the model's conditioning object for the batch, passed to every call.
        generator: seeds the noise of stochastic methods (runs reproduce with the same seed).
        record: keep ``states`` and ``denoised`` (``[S, B, ...]`` each); ``"states"`` keeps the
            states only (half the memory, for callers that do not read the predictions); off to save
            memory.
        progress: None/False, True (tqdm bar) or a callable ``f(steps_done, total)``.
        leaf: known leaf indices ``[B]`` to store on the trajectory (class-conditional generation).
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    states, denoised, x0, calls = _run(denoiser, noise, sigmas, method, cond, generator, record, progress)
    return Trajectory(sigmas=sigmas, states=states, denoised=denoised, x0=x0, method=method, cond=cond,
                      leaf=leaf, denoiser_calls=calls)


@torch.no_grad()
def sample_from(denoiser, x: torch.Tensor, sigmas_tail: torch.Tensor, method: str = "ancestral",
                cond: Any = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Complete a trajectory: ``x`` is at ``sigmas_tail[0]``; returns ``x0 [B, ...]`` (nothing recorded).

    The cost is ``len(sigmas_tail)`` denoiser calls per sample (``2 len - 1`` for heun).
    """
    return _run(denoiser, x, sigmas_tail, method, cond, generator, False, None)[2]


@torch.no_grad()
def forward_path(x0: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None,
                 leaf: torch.Tensor | None = None) -> Trajectory:
    """Noise clean data along the grid with Brownian increments.

    ``x`` at the smallest sigma is ``x0 + sigma_min z``; going up, each state adds independent noise
    of variance ``sigma_i^2 - sigma_{i+1}^2``. So each state is ``x0 + sigma_i n_i`` and the joint law
    of the path is that of the ideal reverse process (what ``bayes`` needs), not just its marginals.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1 or len(sigmas) < 1 or (sigmas[1:] >= sigmas[:-1]).any() or sigmas[-1] <= 0:
        raise ProbesError("forward_path: sigmas must be a descending 1-D grid of positive values")
    states = torch.empty((len(sigmas), *x0.shape), dtype=x0.dtype, device=x0.device)
    x = x0 + float(sigmas[-1]) * _noise(x0, generator)
    states[-1] = x
    for i in range(len(sigmas) - 2, -1, -1):
        x = x + float(sigmas[i] ** 2 - sigmas[i + 1] ** 2) ** 0.5 * _noise(x0, generator)
        states[i] = x
    return Trajectory(sigmas=sigmas, states=states, denoised=None, x0=x0, method="forward", leaf=leaf)
