"""``bayes``: the online Bayes filter for ``p(y | x_sigma)`` along an ancestral trajectory."""

from __future__ import annotations

import math

import torch

from probes.errors import ProbesError, UnsupportedCondition
from probes.estimators.base import Counter, Estimator, EstimatorOutput, ProbeContext, chunks, needs_states
from probes.estimators.evidence import EvidenceRecorder

# Trajectories whose step i -> i+1 is (to first order) the Gaussian kernel N(mu_y, (1 - a) t^2 I).
KERNEL_METHODS = ("ancestral", "forward")
OUTSIDE_KERNELS = ("auto", "complement", "unconditional")
# Smallest filtered outside mass the complement kernel divides by (see BayesEstimator).
_MIN_OUTSIDE = 1e-4
# The tracked filter's defaults (measured in docs/estimators.md): on the digits model a tail of
# 1e-4 froze digits the network's filter later revives (0.006 nats off the full filter; 1e-6: 0.0007).
DEFAULT_TAIL = 1e-6
DEFAULT_MOVE = 0.02
# Most steps one stage of the tracked filter looks ahead, and most state values (units x steps x D)
# one piece of a stage's look-ahead holds (64 MB in float32).
_HORIZON = 64
_STAGE_ELEMENTS = 1 << 24


class BayesEstimator(Estimator):
    """Filter ``log p(y | x_i)`` step by step with class-conditional denoisers.

    Start at the prior at ``sigmas[0]``. For a step from ``s`` to ``t`` with ``a = t^2 / s^2``, the
    kernel of ``x_{i+1}`` given ``x_i`` and class y is ``N(a x_i + (1 - a) D(x_i; s, y), (1 - a) t^2)``,
    so (``Y -> x_{i+1} -> x_i`` is Markov along the reverse chain)::

        log p(y | x_{i+1}) = log p(y | x_i) - |x_{i+1} - mu_y|^2 / (2 (1 - a) t^2) + const.

    Exact in the small-step limit; the error of a finite grid shrinks as the grid is refined.
    Valid only for trajectories made of such Gaussian steps: ``ancestral`` samples and ``forward``
    data paths. Cost: ``L`` denoiser calls per sample per step (no classifier); ``sigma_stride``
    thins the output only (the filter needs every step).

    **The model's world beyond the taxonomy.** When the samples may come from outside the taxonomy
    (``ctx.outside_mass > 0``: unconditional samples of a model with classes that are not leaves)
    the filter carries one more cell, *outside*, with prior ``ctx.outside_mass``; the leaves' output
    columns then sum to the inside mass ``p(T | x)``. Its kernel is the model conditioned on the
    outside classes when the conditioner can say so (mixtures: the complement mask, exact).
    Otherwise it is built from the unconditional model by the mixture identity
    ``D(x) = sum_y p(y | x) D(x; y) + p(out | x) D(x; out)``, solved for ``D(x; out)`` with the
    filter's current posterior (``complement``; along the reverse chain the filtered posterior *is*
    ``p(y | x_i)``, the sampled states before it carry no more information about the class).
    ``unconditional`` lets the unconditional model stand in for the outside as it is, the
    choice of the seed paper: its prediction averages inside and outside classes, and
    ``docs/estimators.md`` measures what that costs. Cost: one more call per step.

    **Tracking** (``track``). The full filter costs ``L`` calls per sample and step, yet once a
    sample's posterior has concentrated most kernels change nothing, and while it has not, most
    splits barely move. With ``track`` set, the posterior is filtered down the taxonomy node by
    node (:func:`tracked_log_posterior`): each node's split among its children is a filter of its
    own, run only while the node holds more than ``tail`` of the mass and only among the children
    holding all but ``tail`` of it (at most ``track`` kernels; past that the rest is one cell
    solved from the node's own prediction), in stages whose kernels are re-evaluated once the leaf
    posterior has moved by ``move`` (total variation). ``docs/estimators.md`` measures cost and
    accuracy.

    Args:
        outside: ``auto`` (the exact outside kernel where the conditioner has one, else
            ``complement``), ``complement`` or ``unconditional``.
        track: most kernels a node's filter evaluates per sample and stage; ``None`` (default):
            the full filter, every leaf at every step.
        tail: with ``track``: the mass a node's filter leaves unevaluated (children that hold it
            keep their mass; a node holding no more than it is not filtered). Default ``1e-6``.
        move: with ``track``: how far (total variation of the leaf posterior) a stage may move
            before the kernels are evaluated again; ``0`` evaluates them at every step. Default
            ``0.02``.
        evidence: also return per-position evidence maps (``EstimatorOutput.evidence``, an
            :class:`~probes.estimators.evidence.EvidenceMaps`): for each sample and internal node
            above its final leaf, where in the image the filter gathered the evidence for the
            child the sample ends in. Needs image-shaped states ``[B, C, H, W]`` and the full
            filter (no ``track``). Memory: ``4 H W`` bytes per sample, node and output sigma.

    Needs: ``ctx.cond_denoiser``, ``ctx.conditioner`` able to condition on every leaf, ``ctx.prior``.
    """

    name = "bayes"

    def __init__(self, outside: str = "auto", sigma_stride: int = 1, track: int | None = None,
                 tail: float | None = None, move: float | None = None, evidence: bool = False):
        super().__init__(sigma_stride)
        if outside not in OUTSIDE_KERNELS:
            raise ProbesError(f"estimator 'bayes': outside must be one of {', '.join(OUTSIDE_KERNELS)}, "
                              f"got {outside!r}")
        if track is not None and (isinstance(track, bool) or not isinstance(track, int) or track < 2):
            raise ProbesError(f"estimator 'bayes': track must be an integer >= 2 (most kernels per node and "
                              f"stage) or null (the full filter), got {track!r}")
        for option, value, limit in (("tail", tail, "[0, 1)"), ("move", move, "[0, 1]")):
            if value is None:
                continue
            if track is None:
                raise ProbesError(f"estimator 'bayes': {option} applies to the tracked filter only; set track too")
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or not 0 <= value <= 1 or (option == "tail" and value == 1):
                raise ProbesError(f"estimator 'bayes': {option} must be a number in {limit}, got {value!r}")
        if not isinstance(evidence, bool):
            raise ProbesError(f"estimator 'bayes': evidence must be true or false, got {evidence!r}")
        if evidence and track is not None:
            raise ProbesError("estimator 'bayes': evidence maps are drawn from the full filter's per-leaf kernels; "
                              "drop track to have them")
        self.outside = outside
        self.evidence = evidence
        self.track = track
        self.tail = DEFAULT_TAIL if tail is None else float(tail)
        self.move = DEFAULT_MOVE if move is None else float(move)

    def estimate(self, traj, ctx: ProbeContext, generator=None) -> EstimatorOutput:
        if traj is not None and traj.method not in KERNEL_METHODS:
            raise ProbesError(
                f"estimator 'bayes' inverts the Gaussian kernel of ancestral steps (variance (1 - a) sigma_next^2); "
                f"a {traj.method!r} trajectory has "
                f"{'no' if traj.method in ('euler', 'heun', 'ddim') else 'a different'} "
                f"step noise: sample with method='ancestral' or use forward paths")
        if self.track is not None and ctx.outside_mass > 0:
            raise ProbesError("estimator 'bayes': track needs a taxonomy that covers the samples' world "
                              f"(outside_mass is {ctx.outside_mass:g}); drop track to filter the outside cell")
        denoiser = Counter(ctx.require("cond_denoiser", self.name, "it needs class-conditional predictions"))
        conditioner = ctx.require("conditioner", self.name, "it conditions the denoiser on every leaf")
        idx = self.grid_index(len(traj.sigmas))
        recorder = None
        if self.evidence:
            states = needs_states(traj, self.name)
            if states.ndim != 5:
                raise ProbesError(f"estimator 'bayes': evidence maps need image-shaped states [B, C, H, W]; "
                                  f"these are {list(states.shape[2:])}")
            recorder = EvidenceRecorder(ctx.taxonomy, states.shape[2:], idx, traj.sigmas, states.shape[1],
                                        leaf=traj.leaf)
        if self.track is None:
            out = filter_log_posterior(traj, denoiser, conditioner, ctx, idx, self.name, outside=self.outside,
                                       recorder=recorder)
        else:
            out = tracked_log_posterior(traj, denoiser, conditioner, ctx, idx, self.name, self.track, self.tail,
                                        self.move)
        return EstimatorOutput(self.name, traj.sigmas[idx], log_probs=out, denoiser_calls=denoiser.calls,
                               evidence=None if recorder is None else recorder.result())


def filter_log_posterior(traj, denoiser, conditioner, ctx: ProbeContext, idx: list[int], name: str,
                         outside: str = "auto", recorder=None) -> torch.Tensor:
    """``log p(leaf | x_0..x_i)`` ``[B, len(idx), L]`` along the trajectory, from ``ctx.prior`` at
    ``sigmas[0]``, with the per-leaf Gaussian kernels of ``denoiser(x, s, conditioner(leaf))``
    (plus an outside cell when ``ctx.outside_mass > 0``, see :class:`BayesEstimator`).

    With the plain conditional denoiser this is :class:`BayesEstimator`; with the guided denoiser
    of a guided run it is the exact posterior given the whole path of that run's own chain.
    ``recorder`` (an :class:`~probes.estimators.evidence.EvidenceRecorder`, states ``[S, B, C, H, W]``)
    is given each step's per-position increments before the update and each chunk's end.
    """
    states = needs_states(traj, name)
    leaves = list(ctx.taxonomy.leaves)
    n_leaves, n_sigmas, batch = len(leaves), len(traj.sigmas), states.shape[1]
    with_outside = ctx.outside_mass > 0
    n_cells = n_leaves + int(with_outside)
    sig = traj.sigmas.tolist()
    col = {i: j for j, i in enumerate(idx)}
    out = torch.empty(batch, len(idx), n_leaves, dtype=torch.float32)
    prior = ctx.prior
    if with_outside:
        prior = torch.cat([(1 - ctx.outside_mass) * prior, prior.new_tensor([ctx.outside_mass])])
    log_prior = prior.log().to(states.device)
    # The states' own precision (float32 for networks): the centred kernel scores below lose
    # nothing to it; the running log-posterior [b, cells] is float64.
    work = states.dtype if states.dtype in (torch.float32, torch.float64) else torch.float32
    for rows in chunks(batch, ctx.batch_size // n_cells):
        b = rows.stop - rows.start
        cond = conditioner([leaf for leaf in leaves for _ in range(b)])  # leaf-major, matches repeat
        cond_outside = _outside_cond(conditioner, b, outside) if with_outside else None
        complement = with_outside and cond_outside is None and outside != "unconditional"
        lp = log_prior.expand(b, n_cells).clone()
        if 0 in col:
            out[rows, col[0]] = lp[:, :n_leaves].float().cpu()
        for i in range(n_sigmas - 1):
            s, t = sig[i], sig[i + 1]
            a, var = t**2 / s**2, (1 - t**2 / s**2) * t**2
            x = states[i, rows]
            with torch.no_grad():
                d = denoiser(x.repeat(n_leaves, *([1] * (x.ndim - 1))), s, cond)
                d = d.to(work).reshape(n_leaves, b, -1)
                if with_outside:
                    d_out = denoiser(x, s, cond_outside).reshape(b, -1)
                    if complement:  # D(x; out) from D(x) = sum_y p(y|x) D(x; y) + p(out|x) D(x; out)
                        q = lp.exp()  # [b, cells]; a division by q_out: float64
                        inside = torch.einsum("lb,lbd->bd", q[:, :n_leaves].T, d.double())
                        d_out = (d_out.double() - inside) / q[:, n_leaves:].clamp_min(_MIN_OUTSIDE)
                    d = torch.cat([d, d_out.to(work).reshape(1, b, -1)])
            score = _kernel_scores(x.to(work).reshape(b, -1), states[i + 1, rows].to(work).reshape(b, -1), d, a)
            if recorder is not None:
                parts = _position_scores(x.to(work), states[i + 1, rows].to(work), d, a)
                recorder.step(rows, i, -parts.double() / (2 * var), lp)
            lp = torch.log_softmax(lp - score.double().T / (2 * var), dim=-1)
            if i + 1 in col:
                out[rows, col[i + 1]] = lp[:, :n_leaves].float().cpu()
        if recorder is not None:
            recorder.chunk_done(rows, lp)
    return out


def _kernel_scores(x: torch.Tensor, x_next: torch.Tensor, d: torch.Tensor, a: float) -> torch.Tensor:
    """``|x_next - mu_y|^2`` up to a term shared by every cell, ``[cells, b]``, with
    ``mu_y = a x + (1 - a) d_y`` (``x``, ``x_next`` ``[b, D]``, ``d`` ``[cells, b, D]``).

    Centred on the cells' mean prediction: with ``e = x_next - mean_y mu_y`` and
    ``delta_y = d_y - mean_y d_y``, ``|x_next - mu_y|^2 = |e|^2 - 2 (1 - a) <e, delta_y> +
    (1 - a)^2 |delta_y|^2``, and ``|e|^2`` cancels in the softmax. Summing the full squares of a
    16k-dimensional latent in float32 loses the small differences between cells (0.016 in
    ``log p`` at SD 1.5 size, ``benchmarks/bench_float64.py``); the centred terms keep them
    (within 3e-6 of float64 arithmetic), so no float64 is needed in the loop.
    """
    d_bar = d.mean(0)
    delta = d - d_bar
    e = x_next - (a * x + (1 - a) * d_bar)
    return -2 * (1 - a) * (e * delta).sum(-1) + (1 - a) ** 2 * (delta * delta).sum(-1)


def _position_scores(x: torch.Tensor, x_next: torch.Tensor, d: torch.Tensor, a: float) -> torch.Tensor:
    """:func:`_kernel_scores` with the channels summed and the positions kept: ``[cells, b, H W]`` for
    states ``x``, ``x_next`` ``[b, C, H, W]`` and predictions ``d`` ``[cells, b, C H W]``. The term
    dropped at each position is shared by every cell, so differences between cells are exact
    per-position parts of the filter's log-likelihood ratios."""
    b, channels = x.shape[0], x.shape[1]
    d = d.reshape(d.shape[0], b, channels, -1)
    d_bar = d.mean(0)
    delta = d - d_bar
    e = x_next.reshape(b, channels, -1) - (a * x.reshape(b, channels, -1) + (1 - a) * d_bar)
    return -2 * (1 - a) * (e * delta).sum(2) + (1 - a) ** 2 * (delta * delta).sum(2)


def _outside_cond(conditioner, n: int, outside: str):
    """The outside cell's ``cond``: the model conditioned on the classes outside the taxonomy, or
    ``None`` (the unconditional model, as it is or solved for the complement)."""
    if outside != "auto":
        return None
    try:
        return conditioner.outside(n)
    except (UnsupportedCondition, AttributeError):
        return None




# ---- the tracked filter ------------------------------------------------------------------------

def tracked_log_posterior(traj, denoiser, conditioner, ctx: ProbeContext, idx: list[int], name: str,
                          track: int, tail: float = DEFAULT_TAIL, move: float = DEFAULT_MOVE) -> torch.Tensor:
    """``log p(leaf | x_0..x_i)`` ``[B, len(idx), L]`` filtered down the taxonomy, node by node.

    ``p(leaf | path) = prod over the nodes above the leaf of p(child | path, node)``, and each
    factor is a Bayes filter of its own, with the children's kernels (``Y in c -> x_{i+1} -> x_i``
    is Markov for any set of leaves c). The path is recorded, so the nodes are filtered one depth
    after the other, parents first, each over the steps up to the last where its mass exceeds
    ``tail`` (after that its split stays as it is).

    A node's filter runs in *stages*. At a stage's first state ``x_j`` the children's kernels
    ``D(x_j; sigma_j, c)`` are evaluated once; for every later state ``x_t`` of the stage they give the
    Gaussian kernel of ``x_t`` given ``x_j``: mean ``a x_j + (1 - a) D(x_j; sigma_j, c)``, variance
    ``(1 - a) sigma_t^2``, ``a = sigma_t^2 / sigma_j^2`` (the step kernel of :class:`BayesEstimator`
    over a longer step; its mean is exact for any class law, its variance misses
    ``(1 - a)^2 Cov(x0 | x_j, c)``, which is small while the split barely moves). The stage ends
    before the step at which the node's mass times the total variation its split has moved since
    ``x_j`` exceeds ``move``, one step at least. Children holding together at most ``tail`` of the
    node's split are left out of a stage and keep their share; the other children, at most
    ``track`` of them (past that, the ``track - 1`` heaviest and one cell for the rest, its kernel
    solved from the node's own prediction by the mixture identity), share the rest. A node whose
    split holds all but ``tail`` on one child is decided: it is not filtered further.

    Internal nodes are cells only where the conditioner conditions on them (mixtures, prompts);
    otherwise (class-label models) the root is split straight into the leaves.
    """
    states = needs_states(traj, name)
    nodes = _Nodes(ctx.taxonomy, conditioner, ctx.partial_taxonomy)
    n_leaves, n_sigmas, batch = len(ctx.taxonomy.leaves), len(traj.sigmas), states.shape[1]
    sig = torch.as_tensor(traj.sigmas, dtype=torch.float64).cpu()
    work = states.dtype if states.dtype in (torch.float32, torch.float64) else torch.float32
    filters = _Filters(nodes, states, sig, ctx.prior.double(), denoiser, track, tail, move, ctx.batch_size, work,
                       name)
    out = torch.empty(batch, len(idx), n_leaves, dtype=torch.float32)
    rows_per_chunk = max(1, min(ctx.batch_size // track, (1 << 23) // max(1, n_sigmas * n_leaves)))
    for rows in chunks(batch, rows_per_chunk):
        # log p(leaf | path_t) [b, S, L], built up depth by depth as a sum of log p(child | path_t, node)
        log_post = torch.zeros(rows.stop - rows.start, n_sigmas, n_leaves, dtype=torch.float64)
        for depth in sorted(set(nodes.depth.values())):
            filters.run(log_post, rows, [k for k in nodes.split if nodes.depth[k] == depth])
        out[rows] = log_post[:, idx].float()
    return out


class _Nodes:
    """The taxonomy as the tracked filter walks it: the nodes whose split is filtered (``split``,
    parents first, with their ``children`` and the child each of their leaves falls in), every
    node's contiguous span of leaves, and the conditions that give the kernels.

    ``tree``: the conditioner conditions on internal nodes, so every internal node's split among
    its children is filtered; otherwise the root is split straight into the leaves.
    """

    def __init__(self, taxonomy, conditioner, partial_taxonomy: bool):
        names = taxonomy.nodes
        ids = {n: k for k, n in enumerate(names)}
        self.names = names
        self.lo = [taxonomy.leaf_slice(n).start for n in names]
        self.hi = [taxonomy.leaf_slice(n).stop for n in names]
        self.root = ids[taxonomy.root]
        inner = [n for n in taxonomy.internal_nodes if n != taxonomy.root]
        self.tree = bool(inner) and _conditions_on(conditioner, inner[0])
        if self.tree:
            self.children = {ids[n]: [ids[c] for c in taxonomy.children(n)] for n in taxonomy.internal_nodes}
        else:
            self.children = {self.root: [ids[leaf] for leaf in taxonomy.leaves]}
        self.split = sorted(self.children, key=lambda k: (taxonomy.depth(names[k]), k))
        self.depth = {k: taxonomy.depth(names[k]) for k in self.split}
        self.leaf_child = {}  # node -> [its leaves] index of the child each leaf falls in
        for node, kids in self.children.items():
            index = torch.empty(self.hi[node] - self.lo[node], dtype=torch.long)
            for c, kid in enumerate(kids):
                index[self.lo[kid] - self.lo[node]:self.hi[kid] - self.lo[node]] = c
            self.leaf_child[node] = index
        self._conditioner = conditioner
        # The whole taxonomy's own prediction: the root's condition, else the unconditional model
        # (which is the taxonomy's mixture unless the model knows classes beyond it).
        self._root = "node" if _conditions_on(conditioner, taxonomy.root) else "none" if not partial_taxonomy else ""

    def cond(self, node_ids: list[int]):
        return self._conditioner([self.names[k] for k in node_ids])

    def has_own(self, node: int) -> bool:
        return node != self.root or bool(self._root)

    def own_cond(self, node: int, n: int):
        """The model conditioned on ``node`` itself, for ``n`` rows (the remainder cell's source)."""
        return None if node == self.root and self._root == "none" else self.cond([node] * n)


def _conditions_on(conditioner, node: str) -> bool:
    try:
        conditioner([node])
    except (UnsupportedCondition, KeyError):
        return False
    return True


class _Filters:
    """The stages of the tracked filter (see :func:`tracked_log_posterior`), for all samples of a
    chunk at once: per filtered node, each sample's split among the node's children where its
    current stage starts (``base`` ``[b, C]``), that step (``start``) and the last step the node is
    filtered to (``last``)."""

    def __init__(self, nodes: _Nodes, states, sig, prior, denoiser, track, tail, move, batch_size, work, name):
        self.nodes, self.states, self.sig, self.prior = nodes, states, sig, prior
        self.denoiser, self.track, self.tail, self.move = denoiser, track, tail, move
        self.batch_size, self.work, self.name = batch_size, work, name

    def run(self, log_post, rows: slice, level: list[int]) -> None:
        """Filter the splits of the nodes ``level`` (one depth) for the samples ``rows`` and add
        ``log p(child | path_t, node)`` to ``log_post`` ``[b, S, L]``, which holds the ancestors' sum."""
        b, n_sigmas = log_post.shape[0], log_post.shape[1]
        everyone = torch.arange(b)
        state = {}
        for node in level:
            mass = torch.stack([self.prior[self.nodes.lo[k]:self.nodes.hi[k]].sum() for k in self.nodes.children[node]])
            base = (mass.log() - mass.sum().log()).expand(b, -1).clone()  # the prior split
            live = log_post[:, :, self.nodes.lo[node]].exp() > self.tail  # the node's mass against tail [b, S]
            last = torch.where(live.any(1), n_sigmas - 1 - live.flip(1).int().argmax(1), 0)
            self._write(log_post, node, everyone, base[:, None], 0, torch.ones(b, 1, dtype=torch.bool))
            state[node] = (base, torch.zeros(b, dtype=torch.long), last)
        for j in range(n_sigmas - 1):
            due = {node: ((start == j) & (j < last)).nonzero()[:, 0] for node, (_, start, last) in state.items()}
            due = {node: who for node, who in due.items() if len(who)}
            if due:
                self._stage(log_post, state, due, rows.start, j)
        for node, (base, start, _) in state.items():  # past its last stage a split stays as it is
            after = torch.arange(n_sigmas)[None] > start[:, None]
            self._write(log_post, node, everyone, base[:, None].expand(-1, n_sigmas - 1, -1), 1, after[:, 1:])

    def _write(self, log_post, node: int, who, split, t0: int, keep) -> None:
        """Add the log-splits ``split`` ``[U, T, C]`` of ``node`` for the samples ``who`` to their leaves at
        steps ``t0 .. t0 + T - 1`` where ``keep`` ``[U, T]``."""
        lo, hi = self.nodes.lo[node], self.nodes.hi[node]
        per_leaf = split[..., self.nodes.leaf_child[node]]
        steps = torch.arange(t0, t0 + split.shape[1])
        log_post[who[:, None], steps[None], lo:hi] += torch.where(keep[..., None], per_leaf, 0.0)

    def _plan(self, base: torch.Tensor):
        """Each row's cells for a stage: ``(slot, n_direct, lump)``. ``slot`` ``[U, C]``: the cell each
        child falls in (its rank among the children by mass for the ``n_direct`` heaviest, the
        remainder cell ``track - 1`` for the rest when ``lump``, -1 for children left out). The
        direct cells are the fewest children holding all but ``tail`` of the split, at most
        ``track``; past that the ``track - 1`` heaviest and the rest as one cell."""
        ordered, order = base.sort(-1, descending=True)
        q = ordered.exp()
        target = torch.full((len(base), 1), 1.0 - self.tail, dtype=q.dtype)
        need = torch.searchsorted(q.cumsum(-1), target)[:, 0] + 1
        need = torch.minimum(need, (q > 0).sum(-1))
        lump = need > self.track
        n_direct = torch.where(lump, self.track - 1, need)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(base.shape[1]).expand_as(order))
        slot = torch.where(rank < n_direct[:, None], rank, torch.where(lump[:, None], self.track - 1, -1))
        return slot, n_direct, lump

    def _stage(self, log_post, state, due, row0: int, j: int) -> None:
        """Start a stage at step ``j`` for the samples ``due[node]`` of each node: evaluate their cells'
        kernels at ``x_j`` and carry each split forward with them while the leaf posterior moves by at
        most ``move`` (one step at least)."""
        plans = {}
        for node, who in due.items():
            base, _, last = state[node]
            slot, n_direct, lump = self._plan(base[who])
            decided = n_direct + lump < 2  # all but tail on one child
            last[who[decided]] = j
            keep = ~decided
            if keep.any():
                plans[node] = (who[keep], slot[keep], n_direct[keep], lump[keep])
        if not plans:
            return
        s, x_j = float(self.sig[j]), self.states[j]
        # One call for the direct cells of every node due: pairs (sample, child).
        pairs = {node: (slot >= 0) & (slot < n_direct[:, None]) for node, (_, slot, n_direct, _) in plans.items()}
        pair_row = torch.cat([who[m.nonzero()[:, 0]] for (who, *_), m in zip(plans.values(), pairs.values())])
        pair_kid = [self.nodes.children[node][c] for node, m in pairs.items() for c in m.nonzero()[:, 1].tolist()]
        d = self._call(x_j[(row0 + pair_row).to(x_j.device)], s, lambda sl: self.nodes.cond(pair_kid[sl]))
        at = 0
        for node, (who, slot, n_direct, lump) in plans.items():
            m = pairs[node]
            n_pairs = int(m.sum())
            self._advance(log_post, state, node, who, slot, n_direct, lump, m, d[at:at + n_pairs], row0, j)
            at += n_pairs

    def _advance(self, log_post, state, node: int, who, slot, n_direct, lump, direct, d, row0: int, j: int) -> None:
        """One node's stage from step ``j`` for the samples ``who`` (``d``: the direct cells' kernels,
        in the order of ``direct.nonzero()``)."""
        base, start, last = state[node]
        n_units, n_slots = len(who), int((n_direct + lump).max())
        unit, child = direct.nonzero().unbind(1)
        kernels = torch.zeros(n_units, n_slots, d.shape[1], dtype=self.work)
        kernels[unit, slot[unit, child]] = d
        b0 = base[who]
        log_q = torch.full((n_units, n_slots), -math.inf, dtype=torch.float64)
        log_q[unit, slot[unit, child]] = b0[unit, child]
        if lump.any():
            self._remainder(kernels, log_q, node, who, b0, slot, lump, row0, j)
        horizon = min(_HORIZON, len(self.sig) - 1 - j)
        rows = row0 + who
        inc = _stage_evidence(kernels, log_q > -math.inf, rows, self.states, j, self.sig, horizon, self.work)
        # The cells share what the children left out do not hold; those keep their share.
        held = torch.logsumexp(log_q, -1)[:, None, None]
        moved = log_q[:, None] + inc
        moved = moved - torch.logsumexp(moved, -1, keepdim=True) + held  # [U, T, cells]
        change = 0.5 * (moved.exp() - log_q[:, None].exp()).abs().sum(-1)  # total variation of the split [U, T]
        mass = log_post[who, j + 1:j + 1 + horizon, self.nodes.lo[node]].exp()  # the node's mass [U, T]
        reach = torch.clamp(last[who] - j, max=horizon)
        t = torch.arange(horizon)[None]
        over = (mass * change > self.move) & (t < reach[:, None])
        first = torch.where(over.any(1), over.int().argmax(1), reach)
        steps = first.clamp(min=1)  # the stage covers j + 1 .. j + steps
        cell_shift = torch.where(log_q[:, None] > -math.inf, moved - log_q[:, None], 0.0)
        shift = cell_shift.gather(2, slot.clamp(min=0)[:, None].expand(-1, horizon, -1))
        split = b0[:, None] + torch.where(slot[:, None] >= 0, shift, 0.0)  # [U, T, C]
        self._write(log_post, node, who, split, j + 1, t < steps[:, None])
        base[who] = split[torch.arange(n_units), steps - 1]
        start[who] = j + steps

    def _remainder(self, kernels, log_q, node: int, who, b0, slot, lump, row0: int, j: int) -> None:
        """Fill the remainder cell (slot ``track - 1``) of the units with ``lump``: the children in it
        taken together, their kernel solved from the node's own prediction by
        ``D(x; node) = sum_c q_c D(x; c) + q_rest D(x; rest)`` (q the node's split)."""
        if not self.nodes.has_own(node):
            raise ProbesError(f"estimator {self.name!r}: the posterior needs more than track {self.track} leaves, "
                              "and the cell for the rest is solved from the model's prediction for the whole "
                              "taxonomy, which a model with classes beyond it does not give: raise track")
        units = lump.nonzero()[:, 0]
        x_j = self.states[j]
        own = self._call(x_j[(row0 + who[units]).to(x_j.device)], float(self.sig[j]),
                         lambda sl: self.nodes.own_cond(node, sl.stop - sl.start)).double()
        r = self.track - 1
        q = log_q[units, :r].exp()  # the direct cells' shares
        q_rest = torch.where(slot[units] == r, b0[units].exp(), 0.0).sum(-1)
        rest = (own - (q[..., None] * kernels[units, :r].double()).sum(1)) / q_rest.clamp(min=_MIN_OUTSIDE)[:, None]
        kernels[units, r] = rest.to(self.work)
        log_q[units, r] = q_rest.log()

    def _call(self, x, s: float, cond_of) -> torch.Tensor:
        """The denoiser on rows ``x`` ``[P, ...]`` in chunks; ``cond_of(slice)`` gives a chunk's condition.
        Returns ``[P, D]`` in the working precision, on the CPU (where the stages' bookkeeping is)."""
        parts = []
        for rows in chunks(x.shape[0], self.batch_size):
            with torch.no_grad():
                d = self.denoiser(x[rows], s, cond_of(rows))
            parts.append(d.to(self.work).reshape(rows.stop - rows.start, -1).cpu())
        return torch.cat(parts)


def _stage_evidence(kernels, mask, rows, states, j: int, sig, horizon: int, work) -> torch.Tensor:
    """``log N(x_t; a x_j + (1 - a) D_c, (1 - a) t^2)``, ``a = t^2 / sigma_j^2``, up to terms shared by a
    unit's cells, for the ``horizon`` states after ``x_j``: ``[U, horizon, C]`` (``kernels`` ``[U, C, D]``
    predicted at ``x_j``, ``mask`` ``[U, C]`` the real cells, ``rows`` each unit's sample). Centred on
    the cells' mean prediction, as :func:`_kernel_scores`; units in chunks of at most
    ``_STAGE_ELEMENTS`` states' values."""
    device = states.device
    t = sig[j + 1:j + 1 + horizon]
    a = t**2 / sig[j] ** 2
    a_w = a.to(device=device, dtype=work)[None, :, None]
    parts = []
    per_chunk = max(1, _STAGE_ELEMENTS // (horizon * kernels.shape[-1]))
    for units in chunks(len(rows), per_chunk):
        r = rows[units].to(device)
        x = states[j][r].to(work).reshape(len(r), -1)
        future = states[j + 1:j + 1 + horizon][:, r].to(work).reshape(horizon, len(r), -1).transpose(0, 1)
        weight = mask[units].to(device=device, dtype=work)[..., None]
        cells = kernels[units].to(device)
        d_bar = (cells * weight).sum(1) / weight.sum(1)
        delta = (cells - d_bar[:, None]) * weight
        e = future - a_w * x[:, None] - (1 - a_w) * d_bar[:, None]
        dot = torch.bmm(e, delta.transpose(1, 2)).double().cpu()  # [u, T, C]
        sq = (delta * delta).sum(-1).double().cpu()[:, None]  # [u, 1, C]
        parts.append(-(-2 * (1 - a)[None, :, None] * dot + ((1 - a) ** 2)[None, :, None] * sq)
                     / (2 * (1 - a) * t**2)[None, :, None])
    return torch.cat(parts)
