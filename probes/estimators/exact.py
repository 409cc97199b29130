"""``exact``: the analytic posterior of a Gaussian-mixture model (the ground truth for tests)."""

from __future__ import annotations

import torch

from probes.errors import ProbesError
from probes.estimators.base import Estimator, EstimatorOutput, ProbeContext, needs_states


class ExactEstimator(Estimator):
    """``log p(y | x_sigma)`` from ``ctx.exact_model.log_posterior``; no network calls.

    Needs: ``ctx.exact_model`` (a :class:`probes.models.gmm.GaussianMixture` over the taxonomy's
    leaves) and a trajectory with recorded states.
    """

    name = "exact"

    def estimate(self, traj, ctx: ProbeContext, generator=None) -> EstimatorOutput:
        model = ctx.require("exact_model", self.name,
                            "the analytic posterior is only known for a Gaussian-mixture model")
        if not hasattr(model, "log_posterior"):
            raise ProbesError(f"estimator 'exact' needs a model with log_posterior(x, sigma); "
                              f"got {type(model).__name__}")
        if list(model.leaves) != list(ctx.taxonomy.leaves):
            raise ProbesError("estimator 'exact': the model's leaves differ from the taxonomy's leaves")
        states = needs_states(traj, self.name)
        idx = self.grid_index(len(traj.sigmas))
        log_probs = torch.stack([model.log_posterior(states[i], float(traj.sigmas[i])) for i in idx], dim=1)
        return EstimatorOutput(self.name, traj.sigmas[idx], log_probs=log_probs.float().cpu())
