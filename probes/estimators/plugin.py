"""``plugin``: a clean classifier applied to the denoiser's estimate, ``p(y | D(x_sigma; sigma))``."""

from __future__ import annotations

import torch

from probes.estimators.base import Counter, Estimator, EstimatorOutput, ProbeContext, chunks, needs_states


class PluginEstimator(Estimator):
    """``log p(y | x_sigma) ~ classifier(D(x_sigma; sigma))``.

    Cheap (one classifier call per point; the denoiser call is free when an unconditional
    trajectory recorded ``denoised``), but biased: ``p(y | E[x0 | x]) != E[p(y | x0) | x]`` (Jensen gap).
    It is typically
    overconfident at intermediate sigma, where ``D`` is a sharp-looking average of several classes.
    A classifier temperature, if any, belongs to the classifier.

    Like every estimator, it reads the posterior of the *unconditional* model at the trajectory's
    states: the recorded ``denoised`` is reused only when the trajectory was generated without
    ``cond``; otherwise ``ctx.denoiser(x, sigma, None)`` is called.

    Needs: ``ctx.classifier``; ``ctx.denoiser`` unless an unconditional trajectory recorded ``denoised``.
    """

    name = "plugin"

    def estimate(self, traj, ctx: ProbeContext, generator=None) -> EstimatorOutput:
        classifier = Counter(ctx.require("classifier", self.name, "it classifies the denoised estimate"))
        states = needs_states(traj, self.name)
        reuse = traj.denoised is not None and traj.cond is None
        denoiser = None if reuse else Counter(ctx.require(
            "denoiser", self.name, "the trajectory has no recorded unconditional denoised states"))
        idx = self.grid_index(len(traj.sigmas))
        batch = states.shape[1]
        out = None
        with torch.no_grad():
            for j, i in enumerate(idx):
                for rows in chunks(batch, ctx.batch_size):
                    if reuse:
                        d = traj.denoised[i, rows]
                    else:
                        d = denoiser(states[i, rows], float(traj.sigmas[i]), None)
                    lp = classifier(d)
                    if out is None:
                        out = torch.empty(batch, len(idx), lp.shape[-1], dtype=torch.float32)
                    out[rows, j] = lp.float().cpu()
        return EstimatorOutput(self.name, traj.sigmas[idx], log_probs=out,
                               denoiser_calls=0 if reuse else denoiser.calls, classifier_calls=classifier.calls)
