"""``immse``: entropies from the I-MMSE identity, by integrating denoiser disagreements over sigma.

For a partition P of the leaves into cells (taxonomy nodes) and ``x = x0 + sigma n``::

    dH(P | x_sigma) / dlog sigma = sigma^-2 E || D(x; sigma) - D(x; sigma, cell_P(y)) ||^2

(the VE form of Guo-Shamai-Verdu: ``dI/dsnr = mmse / 2`` for ``x0`` and for ``x0 | cell``). Starting
from the prior's entropy at ``sigmas[0]``, the trapezoid rule in log sigma gives ``H(P | x_sigma)``
on the whole grid, *per (x0, y) pair* (each pair's running integral is an unbiased per-sample
term, so means, standard errors and bootstraps work as for the other estimators; single values
can be negative).

Level l uses the cells of ``level_cut(l)``. Node n's contribution ``C_n = H(P+) - H(P-)`` with
``P- = {n} + singletons outside n`` and ``P+ = children(n) + singletons outside n``; its integrand
vanishes for pairs with ``y`` outside n and is ``|D - D(child(y))|^2 - |D - D(n)|^2`` inside.
Only ``D(x; node)`` for the nodes on the path root -> y are needed: ``1 + depth(y)`` denoiser calls
per pair and sigma.
"""

from __future__ import annotations

import math

import torch

from probes.errors import ProbesError, UnsupportedCondition
from probes.estimators.base import Counter, Estimator, EstimatorOutput, ProbeContext, chunks
from probes.sampling import forward_path
from probes.taxonomy.index import TreeIndex

MAX_PAIRS = 1 << 16  # pairs are drawn and integrated at once, like one batch (sampling.batch_size's limit)


class IMMSEEstimator(Estimator):
    """Level entropies and node contributions from class-conditional denoisers; no classifier.

    The trajectory argument is not used for its states: the estimator draws its own labelled pairs
    ``ctx.sample_pairs(n_pairs, generator)``, noises them along ``ctx.sigmas`` (or ``traj.sigmas``
    when ``ctx.sigmas`` is ``None``) with Brownian forward paths, and returns ``levels [n, S', D]``
    and ``nodes [n, S', K]`` (``log_probs`` is ``None``). Levels and nodes whose cells the
    conditioner cannot condition on (:class:`UnsupportedCondition`) are NaN; the leaf level always
    works for a class-conditional model. Accuracy: Monte-Carlo error over pairs plus the trapezoid
    error of the grid, and the approximation ``H(sigmas[0]) = H(prior)`` at the top.

    When the model's world is larger than the taxonomy (``ctx.partial_taxonomy``), the pairs come
    from the taxonomy's own mixture (``ctx.sample_pairs`` draws leaves from ``ctx.prior``) and the
    reference is ``D(x; root)``, the model conditioned on the taxonomy, not the unconditional
    ``D(x)``: the identity then gives ``H(level | x_sigma, Y in T)``, the inside entropy the other
    estimators report. The conditioner must support the root (mixtures do; a class-label model
    does not, and is refused in one line).

    Args:
        n_pairs: number of (x0, y) pairs; ``None`` takes the trajectory's batch size.

    Needs: ``ctx.sample_pairs``, ``ctx.cond_denoiser`` (called with ``cond=None`` for ``D(x)``),
    ``ctx.conditioner``, ``ctx.prior`` (the class frequencies of ``sample_pairs``).
    """

    name = "immse"

    def __init__(self, n_pairs: int | None = None, sigma_stride: int = 1):
        super().__init__(sigma_stride)
        if n_pairs is not None and (int(n_pairs) != n_pairs or not 1 <= n_pairs <= MAX_PAIRS):
            raise ProbesError(f"estimator 'immse': n_pairs must be a whole number from 1 to {MAX_PAIRS:,}, "
                              f"got {n_pairs}")
        self.n_pairs = n_pairs

    def estimate(self, traj, ctx: ProbeContext, generator=None) -> EstimatorOutput:
        draw = ctx.require("sample_pairs", self.name, "it integrates over labelled clean samples")
        denoiser = Counter(ctx.require("cond_denoiser", self.name, "it compares D(x) with D(x; node)"))
        conditioner = ctx.require("conditioner", self.name, "it conditions the denoiser on taxonomy nodes")
        grid = ctx.sigmas if ctx.sigmas is not None else (None if traj is None else traj.sigmas)
        n = self.n_pairs or (None if traj is None else traj.batch_size)
        if grid is None or n is None:
            raise ProbesError("estimator 'immse' needs ctx.sigmas and n_pairs when no trajectory is given")
        sigmas = torch.as_tensor(grid, dtype=torch.float64)[self.grid_index(len(grid))]
        tree = _Tree(ctx.taxonomy, conditioner)
        reference = None  # D(x): the unconditional model, the mixture of the taxonomy's leaves
        if ctx.partial_taxonomy:
            root = ctx.taxonomy.root
            if not _supports(conditioner, root):
                raise ProbesError(f"estimator 'immse': the model's world is larger than the taxonomy, so the "
                                  f"reference must be the model conditioned on the root {root!r}, which this "
                                  "model cannot express; use bayes or plugin")
            reference = lambda n: conditioner([root] * n)

        x0, y = draw(n, generator)
        y = torch.as_tensor(y, dtype=torch.long).cpu()
        path = forward_path(x0, sigmas, generator)  # state j is x0 + sigma_j n_j
        gaps = self._gaps(path.states, sigmas, y, tree, denoiser, conditioner, ctx.batch_size, reference)

        # Running integral of sigma^-2 gap dlog sigma from sigmas[0] down (trapezoid), per pair.
        rate = gaps / (sigmas**2)[None, :, None]
        du = (sigmas[:-1].log() - sigmas[1:].log())[None, :, None]
        run = torch.cat([torch.zeros_like(rate[:, :1]), (0.5 * (rate[:, 1:] + rate[:, :-1]) * du).cumsum(1)], 1)
        # run[b, j, d]: integral for the cell at depth d + 1 on y's path; depth 0 (root) is 0.
        run = torch.cat([torch.zeros_like(run[..., :1]), run], -1)

        prior_levels, prior_nodes = (torch.from_numpy(a) for a in tree.index.prior_entropies(ctx.prior))
        levels = torch.empty(n, len(sigmas), tree.max_depth, dtype=torch.float64)
        for lvl in range(1, tree.max_depth + 1):
            depth = torch.clamp(tree.leaf_depth[y], max=lvl)  # the cell of y at level l sits at this depth
            taken = run.gather(2, depth[:, None, None].expand(n, len(sigmas), 1))[..., 0]
            levels[..., lvl - 1] = prior_levels[lvl - 1] - taken
            if not tree.level_ok[lvl - 1]:
                levels[..., lvl - 1] = math.nan
        nodes = torch.empty(n, len(sigmas), len(tree.internal), dtype=torch.float64)
        for k, node in enumerate(tree.internal):
            d = tree.depth[node]
            inside = tree.under[node][y]
            diff = torch.where(inside[:, None], run[..., d + 1] - run[..., d], torch.zeros(()).double())
            nodes[..., k] = prior_nodes[k] - diff
            if not tree.node_ok[k]:
                nodes[..., k] = math.nan
        return EstimatorOutput(self.name, sigmas, levels=levels, nodes=nodes, denoiser_calls=denoiser.calls,
                               prior_levels=prior_levels, prior_nodes=prior_nodes)

    @staticmethod
    def _gaps(states, sigmas, y, tree, denoiser, conditioner, batch_size, reference=None):
        """``|D(x; s) - D(x; s, node)|^2`` ``[n, S, max_depth]`` for the node at each depth on y's path
        (NaN below the leaf and for nodes the conditioner does not support); ``reference(n)`` gives
        the ``cond`` of ``D(x; s)`` (``None``: unconditional)."""
        n = states.shape[1]
        gaps = torch.full((n, len(sigmas), tree.max_depth), math.nan, dtype=torch.float64)
        for j, s in enumerate(sigmas.tolist()):
            for rows in chunks(n, batch_size // (1 + tree.max_depth)):
                x, yr = states[j, rows], y[rows]
                with torch.no_grad():
                    d_all = denoiser(x, s, None if reference is None else reference(x.shape[0])).double()
                for depth in range(1, tree.max_depth + 1):
                    names = [tree.path[leaf][depth - 1] if depth <= len(tree.path[leaf]) else None
                             for leaf in yr.tolist()]
                    sel = [b for b, name in enumerate(names) if name is not None and tree.supported[name]]
                    if not sel:
                        continue
                    sel_t = torch.tensor(sel)
                    with torch.no_grad():
                        d_node = denoiser(x[sel_t], s, conditioner([names[b] for b in sel])).double()
                    diff = (d_all[sel_t] - d_node).reshape(len(sel), -1)
                    gaps[rows.start + sel_t, j, depth - 1] = (diff**2).sum(-1).cpu()
        return gaps


class _Tree:
    """The shared :class:`~probes.taxonomy.index.TreeIndex` plus what this conditioner supports."""

    def __init__(self, taxonomy, conditioner):
        self.index = index = TreeIndex(taxonomy)
        self.internal, self.max_depth = index.internal, index.max_depth
        self.depth, self.path, self.leaf_depth = index.depth, index.path, index.leaf_depth
        self.under = {v: index.under(v) for v in index.internal}
        root = index.internal[0]
        self.supported = {v: _supports(conditioner, v) for v in index.leaves + index.internal if v != root}
        self.level_ok = [all(self.supported[c] for c in cells) for cells in index.level_cells]
        self.node_ok = [all(self.supported[c] for c in index.children[v]) and (v == root or self.supported[v])
                        for v in index.internal]


def _supports(conditioner, node) -> bool:
    try:
        conditioner([node])
    except UnsupportedCondition:
        return False
    return True
