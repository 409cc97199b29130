"""``rollout``: average the classifier over stochastic completions from ``x_sigma`` to ``sigma = 0``."""

from __future__ import annotations

import math

import torch

from probes.errors import ProbesError
from probes.estimators.base import Counter, Estimator, EstimatorOutput, ProbeContext, chunks, needs_states
from probes.sampling import STOCHASTIC_METHODS, check_method, sample_from


class RolloutEstimator(Estimator):
    """``p(y | x_sigma) ~ (1/K) sum_k p(y | x0^(k))`` with ``x0^(k)`` completions of the trajectory.

    Since ``p(y | x_sigma) = E[p(y | x0) | x_sigma]``, the average of *probabilities* (log-mean-exp
    of log-probs) is unbiased for a calibrated classifier and an exact sampler; the entropy of the
    estimate is biased low, by up to about ``(L_eff - 1) / (2K)`` nats (Miller-Madow) where the
    posterior is spread over ``L_eff`` leaves and the clean classifier is confident.
    The completion sampler adds its own discretisation error (measured in ``docs/estimators.md``:
    coarse ``ancestral`` completions are under-dispersed and overconfident); ``substeps`` refines
    the completion grid. Cost per grid point i: ``K * (substeps * (S - 1 - i) + 1)`` denoiser calls
    and ``K`` classifier calls per sample; thin with ``sigma_stride``.

    Args:
        k: completions per sample and grid point.
        method: completion sampler (stochastic: ``ancestral`` or ``euler_maruyama``); ``None``
            uses ``ctx.sampler`` when it is stochastic and ``ancestral`` otherwise.
        substeps: completions split every grid interval into this many log-uniform steps.

    Completions are unconditional (``cond=None``) even on conditionally generated trajectories:
    like every estimator, rollout reads the posterior of the unconditional model at the states.

    Needs: ``ctx.denoiser`` (called with ``cond=None``, so guidance never acts in completions),
    ``ctx.classifier``, a trajectory with recorded states.
    """

    name = "rollout"

    def __init__(self, k: int = 8, method: str | None = None, substeps: int = 1, sigma_stride: int = 1):
        super().__init__(sigma_stride)
        for key, value in (("k", k), ("substeps", substeps)):
            if int(value) != value or value < 1:
                raise ProbesError(f"estimator 'rollout': {key} must be a positive integer, got {value}")
        self.k, self.substeps = int(k), int(substeps)
        self.method = method

    def estimate(self, traj, ctx: ProbeContext, generator=None) -> EstimatorOutput:
        method = self.method or (ctx.sampler if ctx.sampler in STOCHASTIC_METHODS else "ancestral")
        check_method(method)
        if method not in STOCHASTIC_METHODS:
            raise ProbesError(f"estimator 'rollout' needs a stochastic completion sampler "
                              f"({' or '.join(STOCHASTIC_METHODS)}); {method!r} would give K identical completions")
        denoiser = Counter(ctx.require("denoiser", self.name, "it completes trajectories to sigma = 0"))
        classifier = Counter(ctx.require("classifier", self.name, "it classifies the completions"))
        states = needs_states(traj, self.name)
        idx = self.grid_index(len(traj.sigmas))
        batch, k = states.shape[1], self.k
        out = None
        fine = refine_grid(traj.sigmas, self.substeps)
        for j, i in enumerate(idx):
            tail = fine[i * self.substeps:]
            for rows in chunks(batch, ctx.batch_size // k):
                x = states[i, rows]
                xk = x.repeat(k, *([1] * (x.ndim - 1)))  # [k * b, ...], completion-major
                x0 = sample_from(denoiser, xk, tail, method, None, generator)
                with torch.no_grad():
                    lp = classifier(x0).float().cpu().reshape(k, x.shape[0], -1)
                if out is None:
                    out = torch.empty(batch, len(idx), lp.shape[-1], dtype=torch.float32)
                out[rows, j] = torch.logsumexp(lp, dim=0) - math.log(k)
        return EstimatorOutput(self.name, traj.sigmas[idx], log_probs=out,
                               denoiser_calls=denoiser.calls, classifier_calls=classifier.calls)


def refine_grid(sigmas: torch.Tensor, substeps: int) -> torch.Tensor:
    """Split each interval of a descending grid into ``substeps`` log-uniform steps.

    Grid point i of the input is point ``i * substeps`` of the output.
    """
    if substeps == 1:
        return sigmas
    logs = sigmas.log()
    frac = torch.arange(substeps, dtype=torch.float64) / substeps
    inner = logs[:-1, None] + frac[None, :] * (logs[1:] - logs[:-1])[:, None]
    return torch.cat([inner.reshape(-1), logs[-1:]]).exp()
