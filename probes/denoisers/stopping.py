"""Guidance that follows each sample: stop once it has committed, or adapt the scale (feedback guidance).

Both read the two predictions classifier-free guidance already spends, ``D_c = D(x; target)`` and
``D_u = D(x)``, as evidence about the sample's class, with the Gaussian kernel of ancestral steps
(:mod:`probes.denoisers.path_filter`), so they need ``method: ancestral`` and no extra calls.

**Stopping** (:class:`StoppingGuidedDenoiser`). A Bayes filter of two cells, the target leaf and
*the rest* of the model's world, starts at the target's prior where guidance starts. The rest's
kernel comes from the mixture identity ``D_u = q D_c + (1 - q) D_rest`` with ``q`` the filtered
posterior of the target (as the ``bayes`` estimator builds its outside cell). Each step adds the
log-likelihood ratio of the new state under the two kernels. Once ``q >= threshold`` the sample
has committed: guidance stops for it for good (its filter stops with it, so the unconditional
call is saved from then on) and it is sampled by the conditional model alone.

**Feedback guidance** (:class:`FeedbackGuidedDenoiser`, Koulischer et al., *Feedback Guidance of
Diffusion Models*, 2025). The model's conditional law is taken to be corrupted linearly by the
unconditional one, ``p_model(x | c) = pi p(x | c) + (1 - pi) p(x)``; guiding toward the clean
``p(x | c)`` then takes the state-dependent scale ``lambda = r / (r - (1 - pi))`` with
``r = p(c | x) / p(c)`` tracked along the path. From ``log r = 0`` at the start, each step adds
``tau (log N(x'; mu_c) - log N(x'; mu_u)) + delta`` (the kernel log-likelihood ratio tempered by
``tau``, and a constant drift ``delta < 0`` that raises guidance where the evidence is weak), and
``log r`` is clipped to ``[log r_min, 3]`` with ``r_min`` the ratio at which ``lambda`` reaches
``max_scale``. :func:`fbg_parameters` derives ``delta`` and ``tau`` from the paper's ``t0`` and
``t1`` as its appendix does. Every step spends both calls, as constant guidance does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from probes.denoisers.base import Denoiser, batch_sigma, expand_like
from probes.denoisers.path_filter import (
    StepMemory,
    concat_conds,
    kernel_log_likelihood,
    select_rows,
    unconditional_like,
)

# Smallest rest mass the mixture identity divides by (the filter stops long before it matters).
_MIN_REST = 1e-4
# FBG's upper clip of log r (the paper's value): the scale never falls far below 1.
_MAX_LOG_RATIO = 3.0


def _inside(sigma: torch.Tensor, interval) -> torch.Tensor:
    if interval is None:
        return torch.ones_like(sigma, dtype=torch.bool)
    lo, hi = interval
    return (sigma > lo) & (sigma <= hi)


def _paired_call(inner, x, sigma, cond, rows: torch.Tensor):
    """``(D(x; cond) for every row, D(x) for ``rows``)`` in one batched call."""
    if len(rows) == 0:
        return inner(x, sigma, cond), x.new_zeros((0, *x.shape[1:]))
    both = inner(torch.cat([x, x[rows]]), torch.cat([sigma, sigma[rows]]),
                 concat_conds([cond, unconditional_like(select_rows(cond, rows))]))
    return both[: x.shape[0]], both[x.shape[0]:]


class StoppingGuidedDenoiser(Denoiser):
    """Classifier-free guidance ``D_u + w (D_c - D_u)`` per sample until it commits to its target.

    Args:
        inner: the conditional/unconditional denoiser (``cond`` rows of a leaf; unconditional rows as
            :func:`~probes.denoisers.path_filter.unconditional_like` writes them).
        scale: the guidance weight ``w`` while guiding.
        threshold: the filtered posterior of the target at which a sample stops being guided.
        target_prior: ``f(cond) -> [B]`` the prior of each row's target in the model's world (its
            share of the unconditional model's samples), where the filter starts.
        interval: guide (and filter) only for sigma in ``(lo, hi]``; ``None``: from the first step.

    ``extra_evaluations`` counts the unconditional calls (one per guided sample and step), as
    :class:`~probes.denoisers.base.GuidedDenoiser` does. For the trajectory followed last,
    ``guided_steps [B]`` counts each sample's guided steps and ``stop_sigma [B]`` is the sigma of
    the step at which it stopped (NaN: never).
    """

    def __init__(self, inner: Denoiser, scale: float, threshold: float,
                 target_prior: Callable[[object], torch.Tensor], interval: tuple[float, float] | None = None):
        super().__init__()
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.inner, self.scale, self.threshold, self.interval = inner, float(scale), float(threshold), interval
        self.target_prior = target_prior
        self.sigma_min, self.sigma_max = inner.sigma_min, inner.sigma_max
        self.extra_evaluations = 0
        self.memory = StepMemory()
        self.guided_steps = self.stop_sigma = self.log_odds = self.stopped = None

    def forward(self, x, sigma, cond=None):
        if cond is None or self.scale == 1.0:
            return self.inner(x, sigma, cond)
        sigma = batch_sigma(sigma, x)
        if not self.memory.follows(x, sigma):
            prior = self.target_prior(cond).double().to(x.device)
            self.log_odds = (prior / (1 - prior)).log()
            self.stopped = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            self.guided_steps = torch.zeros(x.shape[0], dtype=torch.long)
            self.stop_sigma = torch.full((x.shape[0],), math.nan, dtype=torch.float64)
        else:
            self._observe(x, sigma)
        active = _inside(sigma, self.interval) & ~self.stopped
        rows = active.nonzero().squeeze(1)
        d_c, d_u = _paired_call(self.inner, x, sigma, cond, rows)
        self.extra_evaluations += len(rows)
        self.guided_steps[rows.cpu()] += 1
        self.memory.remember(x, sigma, rows=rows, d_c=d_c[rows], d_u=d_u)
        out = d_c.clone()
        out[rows] = d_u + self.scale * (d_c[rows] - d_u)
        return out

    def _observe(self, x, sigma):
        """Filter the rows guided at the previous step with the state they reached."""
        rows = self.memory.saved["rows"]
        if len(rows) == 0:
            return
        d_c, d_u = self.memory.saved["d_c"], self.memory.saved["d_u"]
        q = expand_like(torch.sigmoid(self.log_odds[rows]), d_c).double()
        d_rest = (d_u.double() - q * d_c.double()) / (1 - q).clamp_min(_MIN_REST)
        ll = kernel_log_likelihood(self.memory.x[rows], x[rows], self.memory.sigma[rows], sigma[rows],
                                   torch.stack([d_c.double(), d_rest]))
        self.log_odds[rows] += ll[:, 0] - ll[:, 1]
        done = torch.sigmoid(self.log_odds[rows]) >= self.threshold
        newly = rows[done & ~self.stopped[rows]]
        self.stopped[newly] = True
        self.stop_sigma[newly.cpu()] = sigma[newly].double().cpu()

    @property
    def posterior(self) -> torch.Tensor | None:
        """The filtered posterior of each sample's target, as it stands (``[B]``)."""
        return None if self.log_odds is None else torch.sigmoid(self.log_odds)


class FeedbackGuidedDenoiser(Denoiser):
    """Feedback guidance (FBG): the scale ``lambda = r / (r - (1 - pi))`` from the tracked ``log r``.

    Args:
        inner: as for :class:`StoppingGuidedDenoiser`.
        pi: the mixing factor of the paper's corruption model (close to 1).
        max_scale: ``lambda_max``, the largest scale (sets the lower clip of ``log r``).
        offset: ``delta``, the drift of ``log r`` per step (negative).
        temperature: ``tau``, the weight of each step's log-likelihood ratio.

    ``extra_evaluations`` counts the unconditional calls (every sample, every step); ``scales``
    holds each sample's scale at the last step of the trajectory followed last.
    """

    def __init__(self, inner: Denoiser, pi: float, max_scale: float, offset: float, temperature: float):
        super().__init__()
        if not 0 < pi < 1:
            raise ValueError(f"pi must be in (0, 1), got {pi}")
        if not max_scale > 1:
            raise ValueError(f"max_scale must exceed 1, got {max_scale}")
        self.inner, self.pi, self.max_scale = inner, float(pi), float(max_scale)
        self.offset, self.temperature = float(offset), float(temperature)
        self.min_log_ratio = math.log((1 - self.pi) * self.max_scale / (self.max_scale - 1))
        self.sigma_min, self.sigma_max = inner.sigma_min, inner.sigma_max
        self.extra_evaluations = 0
        self.memory = StepMemory()
        self.log_ratio = None

    def scale_of(self, log_ratio: torch.Tensor) -> torch.Tensor:
        r = log_ratio.exp()
        return r / (r - (1 - self.pi))

    @property
    def scales(self) -> torch.Tensor | None:
        return None if self.log_ratio is None else self.scale_of(self.log_ratio)

    def forward(self, x, sigma, cond=None):
        if cond is None:
            return self.inner(x, sigma, cond)
        sigma = batch_sigma(sigma, x)
        if not self.memory.follows(x, sigma):
            self.log_ratio = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        else:
            saved = self.memory.saved
            ll = kernel_log_likelihood(self.memory.x, x, self.memory.sigma, sigma,
                                       torch.stack([saved["d_c"], saved["d_u"]]))
            step = self.temperature * (ll[:, 0] - ll[:, 1]) + self.offset
            self.log_ratio = (self.log_ratio + step).clamp(self.min_log_ratio, _MAX_LOG_RATIO)
        rows = torch.arange(x.shape[0], device=x.device)
        d_c, d_u = _paired_call(self.inner, x, sigma, cond, rows)
        self.extra_evaluations += x.shape[0]
        self.memory.remember(x, sigma, d_c=d_c, d_u=d_u)
        lam = expand_like(self.scale_of(self.log_ratio), d_c)
        return d_u + lam * (d_c - d_u)


def fbg_parameters(sigmas, pi: float, t0: float, t1: float, reference_scale: float = 3.0,
                   alpha: float = 10.0) -> tuple[float, float]:
    """``(delta, tau)`` of feedback guidance on a sampling grid, from the paper's ``t0`` and ``t1``.

    Positions are fractions of the ``N`` steps counted from the clean end (1: the first step).
    ``delta`` makes the drift alone bring the scale to ``reference_scale`` after ``(1 - t0) N``
    steps: ``delta = log((1 - pi) l / (l - 1)) / ((1 - t0) N)``. ``tau = |2 v(t1) delta / alpha|``
    with ``v(t1)`` the transition variance ``(1 - a) sigma_next^2`` of the step at position ``t1``
    (linear between neighbouring steps), so there one step's evidence weighs ``alpha`` drifts.
    ``reference_scale = 3`` and ``alpha = 10`` are the paper's constants.
    """
    sig = [float(s) for s in sigmas]
    n = len(sig)
    delta = math.log((1 - pi) * reference_scale / (reference_scale - 1)) / ((1 - t0) * n)
    # Transition variances counted from the clean end; the last step (to sigma 0) has none.
    variances = [0.0] + [(1 - sig[k + 1] ** 2 / sig[k] ** 2) * sig[k + 1] ** 2 for k in reversed(range(n - 1))]
    pos = min(max(t1 * n, 0.0), n - 1.0)
    low = min(int(pos), n - 2) if n > 1 else 0
    frac = pos - low
    v = (1 - frac) * variances[low] + frac * variances[min(low + 1, n - 1)]
    return delta, abs(2 * v * delta / alpha)
