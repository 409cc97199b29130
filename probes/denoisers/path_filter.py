"""What guidance that adapts per sample needs to remember between a sampler's calls.

A sampler calls its denoiser once per step, ``D(x_i, sigma_i, cond)``, and passes nothing else.
Guidance that reacts to the path a sample has taken (a Bayes filter of its class, feedback
guidance) needs the previous step too: the state ``x_{i-1}``, its sigma and the predictions made
there. Along an ancestral step from ``s`` to ``t`` (``a = t^2 / s^2``) class y moves the state by
the Gaussian kernel ``N(a x + (1 - a) D(x; s, y), (1 - a) t^2 I)``, so the predictions of one call
and the state of the next score each class (:func:`kernel_log_likelihood`): the update the
``bayes`` estimator makes, here made while sampling.

:class:`StepMemory` keeps the last call of the trajectory a denoiser follows. A call whose sigma is
not below the last one's (a new trajectory starts at the top of the grid), or whose batch differs,
starts afresh; so one denoiser serves batch after batch, and an estimator that replays a batch's
states in order (``guided``) sees the same per-sample state the sampler saw.

The conditioning helpers build one batched call out of rows with different conditions: class ids
(``-1`` unconditional), leaf masks (all-True unconditional) or prompts (``None`` the empty prompt),
the three forms :class:`~probes.conditioning.Conditioner` produces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from probes.conditioning import Conditioner
from probes.errors import ProbesError, UnsupportedCondition


class StepMemory:
    """The last call (state, sigma, anything saved with it) of the trajectory being followed."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.x: torch.Tensor | None = None
        self.sigma: torch.Tensor | None = None
        self.saved: dict[str, Any] = {}

    def follows(self, x: torch.Tensor, sigma: torch.Tensor) -> bool:
        """Whether a call at ``(x, sigma)`` continues the remembered trajectory; if not, forget it."""
        if self.x is None or self.x.shape != x.shape or not bool((sigma < self.sigma).all()):
            self.reset()
            return False
        return True

    def remember(self, x: torch.Tensor, sigma: torch.Tensor, **saved) -> None:
        self.x, self.sigma, self.saved = x, sigma, saved


def kernel_log_likelihood(x_prev: torch.Tensor, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor,
                          d: torch.Tensor) -> torch.Tensor:
    """``log N(x; a x_prev + (1 - a) d_c, (1 - a) t^2 I)`` up to a term shared by all cells, ``[B, cells]``.

    ``x_prev``, ``x``: ``[B, ...]`` consecutive states at sigmas ``s`` and ``t`` (``[B]`` each,
    ``t < s``); ``d``: ``[cells, B, ...]`` predictions made at ``x_prev``. Float64: only differences
    between cells matter, and those are small against ``|x|^2`` for large latents.
    """
    b = x.shape[0]
    s, t = s.double().reshape(b, 1), t.double().reshape(b, 1)
    a = t**2 / s**2
    x_prev, x = x_prev.double().reshape(b, -1), x.double().reshape(b, -1)
    d = d.double().reshape(d.shape[0], b, -1)
    mean = a * x_prev + (1 - a) * d  # [cells, B, D]
    sq = ((x - mean) ** 2).sum(-1).T  # [B, cells]
    return -sq / (2 * (1 - a) * t**2)


# --- conditioning rows ---------------------------------------------------------------------------


def unconditional_like(cond, n: int | None = None):
    """The unconditional ``cond`` for ``n`` rows (default: as many as ``cond`` has), in ``cond``'s form."""
    n = len(cond) if n is None else n
    if isinstance(cond, torch.Tensor):
        if cond.dtype == torch.bool:  # leaf masks: all-True means unconditional
            return torch.ones((n, *cond.shape[1:]), dtype=torch.bool, device=cond.device)
        return torch.full((n, *cond.shape[1:]), -1, dtype=cond.dtype, device=cond.device)  # class ids
    if isinstance(cond, (list, tuple)):
        return [None] * n  # prompts: None means the empty prompt
    raise TypeError(f"cannot build the unconditional form of conditioning of type {type(cond).__name__}")


def select_rows(cond, index: torch.Tensor):
    if isinstance(cond, torch.Tensor):
        return cond[index.to(cond.device)]
    return [cond[i] for i in index.tolist()]


def concat_conds(conds: Sequence):
    """Rows of several conds of one form, in order."""
    if isinstance(conds[0], torch.Tensor):
        return torch.cat([c.to(conds[0].device) for c in conds])
    return [row for c in conds for row in c]


def _row_key(row) -> Any:
    if isinstance(row, torch.Tensor):
        return tuple(row.reshape(-1).tolist())
    return row


class LeafLookup:
    """Which leaf each row of a generation ``cond`` names (the conditioner's own output for a leaf).

    Per-sample guidance needs a sample's target leaf, but samplers pass the model's conditioning
    object; this inverts the conditioner on the leaves."""

    def __init__(self, conditioner: Conditioner, leaves: Sequence[str]):
        self.leaves = list(leaves)
        self.key_to_leaf = {}
        for i, leaf in enumerate(self.leaves):
            try:
                row = conditioner([leaf])
            except UnsupportedCondition:
                continue
            self.key_to_leaf.setdefault(_row_key(row[0]), i)

    def __call__(self, cond) -> torch.Tensor:
        """``[B]`` leaf indices of the rows of ``cond``; one line naming a row that is not a leaf's."""
        rows = cond if isinstance(cond, (list, tuple)) else list(cond)
        out = []
        for row in rows:
            leaf = self.key_to_leaf.get(_row_key(row))
            if leaf is None:
                raise ProbesError(f"per-sample guidance: a sample's conditioning {_row_key(row)!r} names no leaf of "
                                  "the taxonomy; it guides leaf-conditional samples (sampling.condition: leaf)")
            out.append(leaf)
        return torch.tensor(out, dtype=torch.long)
