"""``rollout``: average the classifier over stochastic completions from ``x_sigma`` to ``sigma = 0``."""

from __future__ import annotations

import math

import torch

from probes.entropy.engine import tree_entropy
from probes.errors import ProbesError
from probes.estimators.base import Counter, Estimator, EstimatorOutput, ProbeContext, chunks, needs_states
from probes.noise import karras_grid
from probes.sampling import STOCHASTIC_METHODS, check_method, sample_from

BIAS_CORRECTIONS = ("jackknife", "none")


# Upper bounds of the integer options: beyond them a run cannot fit in memory or finish.
MAX_OPTION = {"k": 4096, "substeps": 1000, "steps": 100_000}


class RolloutEstimator(Estimator):
    """``p(y | x_sigma) ~ (1/K) sum_k p(y | x0^(k))`` with ``x0^(k)`` completions of the trajectory.

    Since ``p(y | x_sigma) = E[p(y | x0) | x_sigma]``, the average of *probabilities* is unbiased for
    a calibrated classifier and an exact sampler. Its entropy is not: the entropy of a K-sample
    average is biased low by about ``(L_eff - 1) / (2K)`` nats where the posterior is spread over
    ``L_eff`` leaves and the clean classifier is confident. With ``bias_correction="jackknife"``
    (the default) every level entropy and node contribution is jackknifed over the K completions,
    ``K H(mean of all K) - (K - 1) mean_k H(mean without completion k)``, which removes the 1/K
    term (the estimator then outputs per-sample entropies as well as the averaged posteriors; a
    per-sample value may fall slightly outside ``[0, log L]``, its mean over samples does not).

    Completions run on their own short grid: ``steps`` points from ``sigma_i`` down to the run's
    smallest sigma, spaced as EDM's schedule with exponent ``rho`` (fewer where the run's grid has
    fewer points left), so a completion from any sigma costs at most ``steps`` denoiser calls.
    ``steps=None`` completes on the run's own grid tail, each interval split into ``substeps``
    log-uniform steps (cost ``K * (substeps * (S - 1 - i) + 1)`` at grid point i).

    The jackknife leaves an ``O(1/K^2)`` residual, largest where the clean classifier is certain
    and the posterior is spread (the completions' labels are then multinomial counts, about
    ``K / L`` per leaf): on 4 leaves at a uniform posterior it is +0.033 nats at K = 8 and +0.011 at
    K = 16, whatever the completion sampler. Hence the default K = 16: with the completions' own
    discretisation error (up to +0.022 nats at these defaults) it is within 0.03 nats of the exact
    entropies on the measured 4-leaf mixtures, where K = 8 is not (``docs/estimators.md``).

    Args:
        k: completions per sample and grid point (at least 2 for the jackknife).
        method: completion sampler (stochastic: ``euler_maruyama``, the default, or ``ancestral``,
            whose few-step completions are under-dispersed); ``None`` uses ``ctx.sampler`` when it
            is stochastic and ``ancestral`` otherwise.
        steps: points of each completion's own grid, or ``None`` for the run's grid tail.
        rho: spacing exponent of the completion grid (1 is uniform in sigma; larger values move points
            to small sigma, tending to log-uniform; 7 is EDM's sampling default).
        substeps: with ``steps=None``, split every run-grid interval into this many steps.
        bias_correction: ``jackknife`` or ``none``.

    Completions are unconditional (``cond=None``) even on conditionally generated trajectories:
    like every estimator, rollout reads the posterior of the unconditional model at the states.

    Needs: ``ctx.denoiser`` (called with ``cond=None``, so guidance never acts in completions),
    ``ctx.classifier``, a trajectory with recorded states.
    """

    name = "rollout"

    def __init__(self, k: int = 16, method: str | None = "euler_maruyama", steps: int | None = 32, rho: float = 2.0,
                 substeps: int = 1, bias_correction: str = "jackknife", sigma_stride: int = 1):
        super().__init__(sigma_stride)
        for key, value in (("k", k), ("substeps", substeps)) + ((("steps", steps),) if steps is not None else ()):
            if int(value) != value or value < 1:
                raise ProbesError(f"estimator 'rollout': {key} must be a positive integer, got {value}")
            if value > MAX_OPTION[key]:  # a typo that would allocate k completions of every sample at once
                raise ProbesError(f"estimator 'rollout': {key} must be at most {MAX_OPTION[key]:,}, got {value}")
        if steps is not None and steps < 2:
            raise ProbesError(f"estimator 'rollout': steps must be at least 2 (or null for the run's grid), "
                              f"got {steps}")
        if not rho > 0:
            raise ProbesError(f"estimator 'rollout': rho must be positive, got {rho}")
        if bias_correction not in BIAS_CORRECTIONS:
            raise ProbesError(f"estimator 'rollout': bias_correction must be one of {', '.join(BIAS_CORRECTIONS)}, "
                              f"got {bias_correction!r}")
        if bias_correction == "jackknife" and k < 2:
            raise ProbesError("estimator 'rollout': the jackknife needs k >= 2 (or bias_correction: none)")
        self.k, self.substeps = int(k), int(substeps)
        self.steps = None if steps is None else int(steps)
        self.rho = float(rho)
        self.method = method
        self.bias_correction = bias_correction

    def completion_grid(self, sigmas: torch.Tensor, i: int) -> torch.Tensor:
        """The descending grid a completion from grid point ``i`` of ``sigmas`` runs on."""
        if self.steps is None:
            return refine_grid(sigmas, self.substeps)[i * self.substeps:]
        n = min(self.steps, len(sigmas) - i)
        if n < 2:
            return sigmas[i:]
        return karras_grid(float(sigmas[i]), float(sigmas[-1]), n, rho=self.rho)

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
        jackknife = self.bias_correction == "jackknife"
        out = levels = nodes = None
        for j, i in enumerate(idx):
            tail = self.completion_grid(traj.sigmas, i)
            for rows in chunks(batch, ctx.batch_size // k):
                x = states[i, rows]
                xk = x.repeat(k, *([1] * (x.ndim - 1)))  # [k * b, ...], completion-major
                x0 = sample_from(denoiser, xk, tail, method, None, generator)
                with torch.no_grad():
                    lp = classifier(x0).double().cpu().reshape(k, x.shape[0], -1)
                mean = torch.logsumexp(lp, dim=0) - math.log(k)
                if out is None:
                    out = torch.empty(batch, len(idx), lp.shape[-1], dtype=torch.float32)
                out[rows, j] = mean.float()
                if jackknife:
                    lv, nd = _jackknife(lp, mean, ctx.taxonomy, tree_entropy, ctx.inside_weighted)
                    if levels is None:
                        levels = torch.empty(batch, len(idx), lv.shape[-1], dtype=torch.float64)
                        nodes = torch.empty(batch, len(idx), nd.shape[-1], dtype=torch.float64)
                    levels[rows, j], nodes[rows, j] = lv, nd
        return EstimatorOutput(self.name, traj.sigmas[idx], log_probs=out, levels=levels, nodes=nodes,
                               denoiser_calls=denoiser.calls, classifier_calls=classifier.calls)


def _jackknife(lp: torch.Tensor, mean: torch.Tensor, taxonomy, tree_entropy,
               inside_weighted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Jackknifed level entropies ``[b, D]`` and node contributions ``[b, K]`` from the K
    completions' classifier log-probs ``lp [K, b, L]`` and their average ``mean [b, L]``.

    Where the classifier's world is larger than the taxonomy, a completion may land outside it, and
    the renormalised entropy ``H(. | x, T)`` of a K-average rests on the completions that landed
    inside. Inside-weighted means (``E[p(T|x) H] / E[p(T|x)]``) are then corrected through their
    numerator: the jackknife acts on ``p_T H``, a smooth function of the K-average that is 0 where
    no completion landed inside, and the value returned is that over the sample's ``p_T``, so the
    engine's weighted mean is ``sum (p_T H)_jack / sum p_T``. (Jackknifing ``H`` alone left the
    covariance of ``p_T`` and ``H`` in the weighted mean and dropped, as NaN, every sample with one
    inside completion: at K = 8 with 60% of completions inside, +0.033 nats against +0.012 now,
    ``tests/test_independent_oracles.py``.) For plain means (samples
    from the taxonomy) ``H`` itself is jackknifed; a sample with a leave-one-out average that has no
    inside mass keeps its uncorrected value.
    """
    k = lp.shape[0]
    # leave-one-out averages: log((sum_all - p_k) / (K - 1)), computed stably from log-probs
    loo = torch.stack([torch.logsumexp(torch.cat([lp[:m], lp[m + 1:]]), dim=0) for m in range(k)]) - math.log(k - 1)
    stacked = torch.cat([mean[None], loo])  # [1 + K, b, L]: one tree_entropy call for all of them
    # the K + 1 posteriors per sample go where sigmas usually are (labels only)
    c = tree_entropy(stacked.permute(1, 0, 2), taxonomy, torch.arange(k + 1, 0, -1, dtype=torch.float64), prior=None)
    lv, nd = torch.as_tensor(c.levels), torch.as_tensor(c.nodes)  # [b, 1 + K, D], [b, 1 + K, K_nodes]
    inside = torch.logsumexp(stacked, dim=-1).exp().T.clamp(max=1.0)  # [b, 1 + K]: p_T of each average
    plain_lv = k * lv[:, 0] - (k - 1) * lv[:, 1:].mean(1)
    plain_nd = k * nd[:, 0] - (k - 1) * nd[:, 1:].mean(1)
    if inside_weighted:
        weighted_lv = inside[..., None] * torch.nan_to_num(lv, nan=0.0)
        weighted_nd = inside[..., None] * torch.nan_to_num(nd, nan=0.0)
        p_t = inside[:, :1]
        nan = torch.tensor(float("nan"), dtype=lv.dtype)

        def per_inside(w):  # the jackknifed p_T H over the sample's p_T; NaN with no inside mass
            return torch.where(p_t > 0, (k * w[:, 0] - (k - 1) * w[:, 1:].mean(1)) / p_t.clamp(min=1e-300), nan)

        jack_lv, jack_nd = per_inside(weighted_lv), per_inside(weighted_nd)
        # samples whose completions all stayed inside keep the plain jackknife's exact arithmetic
        closed = (inside >= 1 - 1e-3).all(1, keepdim=True)
        return torch.where(closed, plain_lv, jack_lv), torch.where(closed, plain_nd, jack_nd)
    return (torch.where(torch.isfinite(plain_lv), plain_lv, lv[:, 0]),
            torch.where(torch.isfinite(plain_nd), plain_nd, nd[:, 0]))


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
