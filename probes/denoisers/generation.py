"""The denoiser a run generates with, from its guidance settings (``sampling.guidance`` of a recipe).

* no guidance (scale 1, no schedule): the conditional model itself;
* ``scale`` (and ``interval``): classifier-free guidance, :class:`~probes.denoisers.base.GuidedDenoiser`;
* ``scale`` with ``stop``: the same, per sample until it commits,
  :class:`~probes.denoisers.stopping.StoppingGuidedDenoiser`;
* ``schedule``: one contrast per node in its own window,
  :class:`~probes.denoisers.per_node.PerNodeGuidedDenoiser`.

Every problem with the settings against the model and taxonomy is one line naming the field, here,
before any sampling.
"""

from __future__ import annotations

import torch

from probes.conditioning import Conditioner
from probes.denoisers.base import Denoiser, GuidedDenoiser
from probes.denoisers.path_filter import LeafLookup
from probes.denoisers.per_node import NodeWindow, PerNodeGuidedDenoiser
from probes.denoisers.stopping import StoppingGuidedDenoiser
from probes.errors import ProbesError

FIELD = "sampling.guidance"


def generation_denoiser(base: Denoiser, conditioner: Conditioner | None, taxonomy, prior: torch.Tensor, guidance,
                        method: str = "ancestral", outside_mass: float = 0.0) -> Denoiser:
    """The generation denoiser for a ``guidance`` section (:class:`probes.recipe.Guidance` or any
    object with its fields).

    Args:
        base: what guidance calls (the model's denoiser, or its negative-prompt variant).
        conditioner: taxonomy nodes -> the model's ``cond``.
        taxonomy: the run's taxonomy (schedules name its nodes).
        prior: ``[L]`` the prior over the taxonomy's leaves.
        method: the sampler; filters along the path read ancestral steps.
        outside_mass: the share of the model's world outside the taxonomy (the stopping filter's
            target prior is ``(1 - outside_mass) prior[y]``).
    """
    schedule = getattr(guidance, "schedule", None)
    stop = getattr(guidance, "stop", None)
    if schedule:
        return _per_node(base, conditioner, taxonomy, prior, guidance, schedule, method)
    if guidance.scale == 1.0:
        return base
    if stop is not None:
        if method != "ancestral":
            raise ProbesError(f"{FIELD}.stop: the stopping filter reads ancestral steps; use sampling.method: "
                              f"ancestral, not {method!r}")
        lookup = _lookup(conditioner, taxonomy, f"{FIELD}.stop")
        leaf_prior = (1 - outside_mass) * torch.as_tensor(prior, dtype=torch.float64)
        return StoppingGuidedDenoiser(base, guidance.scale, stop.threshold, lambda cond: leaf_prior[lookup(cond)],
                                      guidance.interval)
    return GuidedDenoiser(base, guidance.scale, guidance.interval)


def _lookup(conditioner, taxonomy, field: str) -> LeafLookup:
    if conditioner is None:
        raise ProbesError(f"{field}: the model cannot be conditioned on the taxonomy's leaves")
    return LeafLookup(conditioner, taxonomy.leaves)


def _per_node(base, conditioner, taxonomy, prior, guidance, schedule, method) -> PerNodeGuidedDenoiser:
    field = f"{FIELD}.schedule"
    internal = set(taxonomy.internal_nodes)
    for k, entry in enumerate(schedule):
        if entry.node not in internal:
            what = "a leaf; windows go on internal nodes" if entry.node in taxonomy else "not a node of the taxonomy"
            shown = ", ".join(taxonomy.internal_nodes[:8]) + (" ..." if len(internal) > 8 else "")
            raise ProbesError(f"{field}[{k}].node: {entry.node!r} is {what} (internal nodes: {shown})")
    if conditioner is None:
        raise ProbesError(f"{field}: the model cannot be conditioned on the taxonomy's nodes, so it has no "
                          "per-node contrasts")
    windows = [NodeWindow(e.node, float(e.interval[0]), float(e.interval[1]), float(e.scale)) for e in schedule]
    weights = getattr(guidance, "group_weights", "filter")
    try:
        denoiser = PerNodeGuidedDenoiser(base, taxonomy, conditioner, windows, prior, group_weights=weights,
                                         root=getattr(guidance, "root", "unconditional"))
    except ProbesError as err:
        raise ProbesError(f"{field}: {str(err).removeprefix('per-node guidance: ')}") from None
    if weights == "filter" and method != "ancestral" and "mixture" in denoiser.how.values():
        raise ProbesError(f"{FIELD}.group_weights: 'filter' weighs a group's leaves with a filter of ancestral steps; "
                          f"use sampling.method: ancestral (not {method!r}) or group_weights: prior")
    return denoiser
