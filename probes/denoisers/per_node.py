"""Per-node guidance: each decision on the path to the target guided in its own window of sigma.

For a sample conditioned on leaf y, let ``n`` run over the internal nodes on the path from the root
to y and ``c_n(y)`` be the child of ``n`` on that path. The guided prediction is::

    D(x; y) + sum_n [sigma in (lo_n, hi_n]] (w_n - 1) (D(x; c_n(y)) - D(x; n))

one contrast per node, pushing toward the target's side of that decision against the node as a
whole, only while sigma is inside the node's window. Plain classifier-free guidance
``D_y + (w - 1)(D_y - D_u)`` is the case of a single node, the root, whose children are the
leaves, with the unconditional model standing in for the root (``root="unconditional"``).

**A group's denoiser** ``D(x; g)`` (g a node, or the child of one) is, in order of preference:

* ``root="unconditional"`` and ``g`` the root: the model's unconditional prediction (one call).
  Where the taxonomy covers only part of the model's world this is the world, not the root group.
* a model that can be conditioned on ``g`` (a prompt of its own, a mixture's component mask): one
  call.
* otherwise (class-conditional models know only their leaves) the mixture over g's leaves
  ``D(x; g) = sum_{l in g} p(l | x, g) D(x; l)``, exact with the posterior restricted to g. The
  weights come from ``group_weights``:

  - ``"filter"``: a Bayes filter over g's leaves along the sample's own path, started from the
    prior (restricted to g) at the first step g is needed and fed each step the per-leaf
    predictions the mixture evaluates anyway (ancestral kernels, see
    :mod:`probes.denoisers.path_filter`). It reads the guided path as if the model had drawn it:
    an approximation, as in feedback guidance, measured in ``docs/control.md``.
  - ``"prior"``: the prior restricted to g, fixed (no filter; the mixture is then not the group's
    denoiser but a cheaper stand-in, measured alongside).
  - a callable ``f(x, sigma, leaves) -> [B, len(leaves)]`` log-weights (tests pass the exact
    posterior of a Gaussian mixture).

``extra_evaluations`` counts every evaluation beyond the one ``D(x; y)`` per sample and step (the
unconditional, group and leaf predictions of the active contrasts; the filter adds none), as
:class:`~probes.denoisers.base.GuidedDenoiser` counts its second branch; ``guided_evaluations``
``[B]`` splits that count by sample for the trajectory followed last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from probes.conditioning import Conditioner
from probes.denoisers.base import Denoiser, batch_sigma
from probes.denoisers.path_filter import LeafLookup, StepMemory, concat_conds, kernel_log_likelihood, unconditional_like
from probes.errors import ProbesError, UnsupportedCondition

GROUP_WEIGHTS = ("filter", "prior")
ROOT_STANDINS = ("unconditional", "group")


@dataclass(frozen=True)
class NodeWindow:
    """Guide the decision at ``node`` with weight ``scale`` for sigma in ``(lo, hi]``."""

    node: str
    lo: float
    hi: float
    scale: float

    def __post_init__(self):
        if not 0 <= self.lo < self.hi:
            raise ValueError(f"node {self.node!r}: the window must have 0 <= lo < hi, got ({self.lo}, {self.hi}]")
        if not self.scale > 0:
            raise ValueError(f"node {self.node!r}: the scale must be positive, got {self.scale}")

    def covers(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma > self.lo) & (sigma <= self.hi)


class PerNodeGuidedDenoiser(Denoiser):
    """``D(x; y) + sum_n [sigma in window_n] (w_n - 1)(D(x; c_n(y)) - D(x; n))`` (module docstring).

    Args:
        inner: the model's denoiser, taking the conditioner's ``cond`` (unconditional rows as
            :func:`~probes.denoisers.path_filter.unconditional_like` writes them).
        taxonomy: the tree whose internal nodes the windows name.
        conditioner: taxonomy nodes -> ``cond``; generation ``cond`` rows must be its leaves'.
        windows: :class:`NodeWindow` s, any number per internal node (non-overlapping).
        prior: ``[L]`` the prior over the taxonomy's leaves (mixture weights, filter start).
        group_weights: ``"filter"``, ``"prior"`` or a callable (module docstring).
        root: ``"unconditional"`` (the unconditional model stands for the root) or ``"group"``.

    Raises :class:`~probes.errors.ProbesError` (one line, naming the node) for a window on a node
    that is not an internal node of the taxonomy, or on a group the model can be conditioned
    neither on nor through all of its leaves.
    """

    def __init__(self, inner: Denoiser, taxonomy, conditioner: Conditioner | None, windows: Sequence[NodeWindow],
                 prior: torch.Tensor, group_weights: str | Callable = "filter", root: str = "unconditional"):
        super().__init__()
        if not callable(group_weights) and group_weights not in GROUP_WEIGHTS:
            raise ProbesError(f"group_weights must be one of {', '.join(GROUP_WEIGHTS)} or a callable, "
                              f"got {group_weights!r}")
        if root not in ROOT_STANDINS:
            raise ProbesError(f"root must be one of {', '.join(ROOT_STANDINS)}, got {root!r}")
        if conditioner is None:
            raise ProbesError("per-node guidance: the model cannot be conditioned on the taxonomy's nodes")
        self.inner, self.taxonomy, self.conditioner = inner, taxonomy, conditioner
        self.windows = list(windows)
        self.group_weights, self.root = group_weights, root
        self.leaves = list(taxonomy.leaves)
        self.leaf_index = {leaf: i for i, leaf in enumerate(self.leaves)}
        self.prior = torch.as_tensor(prior, dtype=torch.float64)
        self.sigma_min, self.sigma_max = inner.sigma_min, inner.sigma_max
        self.extra_evaluations = 0
        self.lookup = LeafLookup(conditioner, self.leaves)
        self.how: dict[str, str] = {}
        internal = set(taxonomy.internal_nodes)
        for w in self.windows:
            if w.node not in internal:
                what = "a leaf" if w.node in taxonomy else "not a node of the taxonomy"
                raise ProbesError(f"per-node guidance: node {w.node!r} is {what}; windows go on internal nodes")
            self._plan(w.node)
            for child in taxonomy.children(w.node):
                self._plan(child)
        # terms[leaf] = [(window index, child on the path, node)] for the windows on the leaf's path
        self.terms = {leaf: [(k, self._child_toward(w.node, leaf), w.node) for k, w in enumerate(self.windows)
                             if w.node in set(taxonomy.ancestors(leaf))] for leaf in self.leaves}
        self.memory = StepMemory()
        self._filters: dict[str, dict] = {}
        self.guided_evaluations: torch.Tensor | None = None

    # --- how each group is predicted -------------------------------------------------------------

    def _supported(self, node: str) -> bool:
        try:
            self.conditioner([node])
        except UnsupportedCondition:
            return False
        return True

    def _plan(self, group: str) -> None:
        if group in self.how:
            return
        if self.taxonomy.is_leaf(group):
            if not self._supported(group):
                raise ProbesError(f"per-node guidance: the model cannot be conditioned on leaf {group!r}")
            self.how[group] = "leaf"
        elif group == self.taxonomy.root and self.root == "unconditional":
            self.how[group] = "unconditional"
        elif self._supported(group):
            self.how[group] = "direct"
        else:
            missing = [leaf for leaf in self.taxonomy.leaves_under(group) if not self._supported(leaf)]
            if missing:
                raise ProbesError(f"per-node guidance: the model can be conditioned neither on node {group!r} nor on "
                                  f"its leaf {missing[0]!r}, so it has no denoiser for that group")
            self.how[group] = "mixture"

    def _child_toward(self, node: str, leaf: str) -> str:
        path = [*self.taxonomy.ancestors(leaf), leaf]
        return path[path.index(node) + 1]

    def _needs(self, group: str, target: str) -> list:
        """Predictions a group's denoiser needs beyond ``D(x; target)``: node names, or None (unconditional)."""
        how = self.how[group]
        if group == target:
            return []
        if how == "unconditional":
            return [None]
        if how in ("direct", "leaf"):
            return [group]
        return [leaf for leaf in self.taxonomy.leaves_under(group) if leaf != target]

    # --- the guided prediction ---------------------------------------------------------------------

    def forward(self, x, sigma, cond=None):
        if cond is None or not self.windows:
            return self.inner(x, sigma, cond)
        sigma = batch_sigma(sigma, x)
        if not self.memory.follows(x, sigma):
            self._filters = {}
            self.guided_evaluations = torch.zeros(x.shape[0], dtype=torch.long)
        target = self.lookup(cond)
        active = torch.stack([w.covers(sigma) for w in self.windows], 1).cpu()  # [B, windows]
        # Rows with the same target and the same active windows need the same predictions: a job.
        jobs: dict[tuple, list[int]] = {}
        for row, (leaf, flags) in enumerate(zip(target.tolist(), active.tolist())):
            terms = tuple(t for t in self.terms[self.leaves[leaf]] if flags[t[0]])
            if terms:
                jobs.setdefault((self.leaves[leaf], terms), []).append(row)
        if not jobs:
            self.memory.remember(x, sigma)
            return self.inner(x, sigma, cond)
        # One batched call: every row's own prediction D(x; y), then each job's extra ones.
        xs, sigmas, conds, slots = [x], [sigma], [cond], {}
        offset = x.shape[0]
        for (leaf, terms), rows in jobs.items():
            names = []
            for _k, child, node in terms:
                for name in self._needs(child, leaf) + self._needs(node, leaf):
                    if name not in names:
                        names.append(name)
            idx = torch.tensor(rows, device=x.device)
            for name in names:
                xs.append(x[idx])
                sigmas.append(sigma[idx])
                conds.append(unconditional_like(cond, len(rows)) if name is None
                             else self.conditioner([name] * len(rows)))
                slots[(leaf, terms, name)] = slice(offset, offset + len(rows))
                offset += len(rows)
            self.guided_evaluations[rows] += len(names)
        both = self.inner(torch.cat(xs), torch.cat(sigmas), concat_conds(conds))
        self.extra_evaluations += offset - x.shape[0]
        own = both[: x.shape[0]]
        out = own.clone()
        filters_now: dict[str, dict] = {}
        for (leaf, terms), rows in jobs.items():
            idx = torch.tensor(rows, device=x.device)

            def pred(name, leaf=leaf, terms=terms, idx=idx):
                return own[idx] if name == leaf else both[slots[(leaf, terms, name)]]

            total = torch.zeros_like(own[idx])
            for k, child, node in terms:
                d_child = self._group(child, leaf, x, sigma, idx, pred, filters_now)
                d_node = self._group(node, leaf, x, sigma, idx, pred, filters_now)
                total += (self.windows[k].scale - 1) * (d_child - d_node)
            out[idx] = own[idx] + total
        self._filters = filters_now
        self.memory.remember(x, sigma)
        return out

    def _group(self, group: str, target: str, x, sigma, idx, pred, filters_now) -> torch.Tensor:
        """``D(x; group)`` for rows ``idx`` (all conditioned on leaf ``target``)."""
        how = self.how[group]
        if group == target:
            return pred(target)
        if how == "unconditional":
            return pred(None)
        if how in ("direct", "leaf"):
            return pred(group)
        members = self.taxonomy.leaves_under(group)
        preds = torch.stack([pred(leaf) for leaf in members])  # [members, rows, ...]
        log_w = self._log_weights(group, members, x, sigma, idx, preds, filters_now)
        w = torch.softmax(log_w, dim=1).T.to(preds.dtype)  # [members, rows]
        return (w.reshape(w.shape + (1,) * (preds.ndim - 2)) * preds).sum(0)

    def _log_weights(self, group: str, members: list[str], x, sigma, idx, preds, filters_now) -> torch.Tensor:
        """``[rows, members]`` unnormalised log-weights of the group's mixture."""
        log_prior = self.prior[[self.leaf_index[leaf] for leaf in members]].log().to(x.device)
        rows = len(idx)
        if callable(self.group_weights):
            return self.group_weights(x[idx], sigma[idx], members).double().to(x.device)
        if self.group_weights == "prior":
            return log_prior.expand(rows, -1)
        # The filter: per-leaf log-likelihoods accumulated along the path from the first step the
        # group was needed; rows that needed it at the previous step carry on, others start afresh.
        batch = x.shape[0]
        now = filters_now.get(group)
        if now is None:
            now = filters_now[group] = {
                "loglik": torch.zeros(batch, len(members), dtype=torch.float64, device=x.device),
                "preds": torch.zeros((len(members), *x.shape), dtype=preds.dtype, device=x.device),
                "has": torch.zeros(batch, dtype=torch.bool, device=x.device)}
        loglik = torch.zeros(rows, len(members), dtype=torch.float64, device=x.device)
        before = self._filters.get(group)
        if before is not None:
            carry = before["has"][idx]
            if carry.any():
                prev = idx[carry]
                ll = kernel_log_likelihood(self.memory.x[prev], x[prev], self.memory.sigma[prev], sigma[prev],
                                           before["preds"][:, prev])
                loglik[carry] = before["loglik"][prev] + ll
        now["loglik"][idx], now["preds"][:, idx], now["has"][idx] = loglik, preds, True
        return log_prior + loglik
