"""``exact``: the analytic posterior of a Gaussian-mixture model (the ground truth for tests)."""

from __future__ import annotations

import torch

from probes.errors import ProbesError
from probes.estimators.base import Estimator, EstimatorOutput, ProbeContext, needs_states


class ExactEstimator(Estimator):
    """``log p(y | x_sigma)`` from ``ctx.exact_model.log_posterior``; no network calls.

    The mixture may have components outside the taxonomy: the leaves' columns of its posterior
    then sum to the inside mass ``p(T | x)``.

    Needs: ``ctx.exact_model`` (a :class:`probes.models.gmm.GaussianMixture` with a component per
    leaf of the taxonomy) and a trajectory with recorded states.
    """

    name = "exact"

    def estimate(self, traj, ctx: ProbeContext, generator=None) -> EstimatorOutput:
        model = ctx.require("exact_model", self.name,
                            "the analytic posterior is only known for a Gaussian-mixture model")
        if not hasattr(model, "log_posterior"):
            raise ProbesError(f"estimator 'exact' needs a model with log_posterior(x, sigma); "
                              f"got {type(model).__name__}")
        missing = [leaf for leaf in ctx.taxonomy.leaves if leaf not in set(model.leaves)]
        if missing:
            raise ProbesError(f"estimator 'exact': taxonomy leaf {missing[0]!r} is not a component of the model")
        columns = [list(model.leaves).index(leaf) for leaf in ctx.taxonomy.leaves]
        states = needs_states(traj, self.name)
        idx = self.grid_index(len(traj.sigmas))
        log_probs = torch.stack([model.log_posterior(states[i], float(traj.sigmas[i]))[:, columns] for i in idx],
                                dim=1)
        return EstimatorOutput(self.name, traj.sigmas[idx], log_probs=log_probs.float().cpu())
