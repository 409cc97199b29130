"""Where the Bayes filter gathered its evidence: per-position evidence maps and commitment sigmas.

The filter's step score for a leaf y, ``-|x_{i+1} - mu_y|^2 / (2 v)``, is a sum over the state's
positions. Summing over channels only gives per-position log-likelihood increments ``l_{i,y}(p)``
(up to a term shared by every leaf at each position), and for any two leaves
``sum_p (l_{i,y}(p) - l_{i,y'}(p))`` is exactly the filter's log-likelihood ratio increment.

For an internal node n on the path of a sample's final leaf, with c the child the sample ends in,
the **evidence map** is cumulative along the grid::

    E_n(sigma_k, p) = sum_{i < k} [ lbar_{i,c}(p) - lbar_{i,n \\ c}(p) ],
    lbar_{i,S}(p) = sum_{y in S} omega_{i,y|S} l_{i,y}(p)

for the child's leaves against all its siblings' leaves taken together: a within-set
posterior-weighted average of the leaves' parts. The weights ``omega_{i,.|S}`` are the set's
posterior ``p(y | x_0..x_i, Y in S)`` before the step mixed with the one after it,
``alpha w + (1 - alpha) w'``, with the one ``alpha`` in [0, 1] that makes the parts sum to the set's
log-likelihood increment ``log sum_S w_y e^{l_y}`` (the ``w``-average of ``l`` is below it, the
``w'``-average above). So the spatial sum of every map is the filter's log-odds of the final
child against its siblings, ``log p(c | ., Y in n) - log p(n \\ c | ., Y in n)`` minus its prior
value, exactly; when c and n \\ c are single leaves the map is their exact per-position
log-likelihood ratio. The weights before the step alone (``split="before"``) give the first-order
split; ``docs/evidence.md`` measures how far its spatial sum falls from the log-odds.

The sample's final leaf is its conditioning leaf when the trajectory knows it (``traj.leaf``),
else the leaf with the largest filtered posterior at the last grid point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from probes.errors import ProbesError


@dataclass
class EvidenceMaps:
    """Evidence maps of one batch (see the module docstring).

    Attributes:
        sigmas: ``[S']`` the grid the maps are given on (the estimator's thinned grid).
        maps: internal node -> ``[B, S', H, W]`` float32 cumulative evidence for the child the sample
            ends in against its siblings (NaN for samples whose final leaf is not under the node).
        final_leaf: ``[B]`` the leaf index (in ``taxonomy.leaves`` order) each sample's maps are for.
        final_from: ``"condition"`` (``traj.leaf``) or ``"posterior"`` (argmax of the last posterior).
        child: internal node -> ``[B]`` index (in ``taxonomy.children(node)``) of the child the sample
            ends in, -1 off its path.
    """

    sigmas: torch.Tensor
    maps: dict[str, torch.Tensor]
    final_leaf: torch.Tensor
    final_from: str
    child: dict[str, torch.Tensor]

    def commitment(self, node: str) -> torch.Tensor:
        """Per-position commitment sigma of ``node``'s map, ``[B, H, W]`` (see :func:`commitment_sigma`)."""
        return commitment_sigma(self.maps[node], self.sigmas)

    @property
    def nbytes(self) -> int:
        return sum(m.numel() * m.element_size() for m in self.maps.values())

    def to_record(self, nodes: list[str]) -> dict:
        """The maps as a few stacked tensors, nodes in ``nodes`` order (a batch file's record:
        node names never become keys there)."""
        return {"sigmas": self.sigmas.double().cpu(), "final_leaf": self.final_leaf.cpu(),
                "final_from": self.final_from, "maps": torch.stack([self.maps[n] for n in nodes]).float().cpu(),
                "child": torch.stack([self.child[n] for n in nodes]).cpu()}

    @classmethod
    def from_record(cls, record: dict, nodes: list[str]) -> EvidenceMaps:
        return cls(sigmas=record["sigmas"], maps=dict(zip(nodes, record["maps"].unbind(0))),
                   final_leaf=record["final_leaf"].long(), final_from=str(record["final_from"]),
                   child=dict(zip(nodes, record["child"].long().unbind(0))))

    @classmethod
    def cat(cls, parts: list[EvidenceMaps]) -> EvidenceMaps:
        """The maps of consecutive batches as one (every part on the same grid)."""
        first = parts[0]
        return cls(sigmas=first.sigmas, maps={n: torch.cat([p.maps[n] for p in parts]) for n in first.maps},
                   final_leaf=torch.cat([p.final_leaf for p in parts]),
                   final_from=first.final_from, child={n: torch.cat([p.child[n] for p in parts]) for n in first.child})


def commitment_sigma(maps: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Where each position's cumulative evidence first reaches half its final value: ``[B, H, W]``.

    ``maps`` ``[B, S', H, W]`` cumulative evidence on the descending grid ``sigmas`` ``[S']``. At a
    position whose final value ``E_f`` is not zero, the evidence in the direction of ``E_f``,
    ``E sign(E_f)``, starts at 0 at ``sigmas[0]``; the commitment sigma is where it first reaches
    ``|E_f| / 2``, interpolated linearly in ``log sigma`` between the two grid points around the
    crossing. NaN where ``E_f`` is zero or NaN (a sample off the node's path).
    """
    maps = torch.as_tensor(maps, dtype=torch.float64)
    log_sigma = torch.as_tensor(sigmas, dtype=torch.float64).log()
    if maps.ndim != 4 or maps.shape[1] != log_sigma.shape[0]:
        raise ProbesError(f"commitment_sigma: maps must be [samples, {log_sigma.shape[0]} sigmas, H, W], "
                          f"got {list(maps.shape)}")
    final = maps[:, -1:]
    toward = maps * final.sign() - final.abs() / 2  # >= 0 once half the final evidence is in
    reached = toward >= 0
    k = reached.int().argmax(1, keepdim=True)  # first grid point at or past half (the last one always is)
    before = (k - 1).clamp(min=0)
    y0, y1 = toward.gather(1, before), toward.gather(1, k)
    s0, s1 = log_sigma[before], log_sigma[k]
    frac = torch.where(y1 > y0, -y0 / (y1 - y0), torch.zeros_like(y0)).clamp(0, 1)
    out = (s0 + frac * (s1 - s0)).exp()[:, 0]
    return out.masked_fill((final[:, 0] == 0) | final[:, 0].isnan(), math.nan).float()


class EvidenceRecorder:
    """Collects the filter's per-position increments chunk by chunk and turns them into maps.

    The filter calls :meth:`step` before each update (per-cell position increments ``[cells, b, P]``
    and the log-posterior ``[b, cells]`` it is about to update) and :meth:`chunk_done` after a chunk's
    last step; each chunk's maps are made then, so the increments of one chunk only are held.
    Memory held: ``4 (S - 1) L b P`` bytes for a chunk of b samples, P positions.
    """

    def __init__(self, taxonomy, shape, idx: list[int], sigmas: torch.Tensor, batch: int,
                 leaf: torch.Tensor | None = None, split: str = "exact"):
        if split not in ("exact", "before"):
            raise ProbesError(f"evidence maps: split must be 'exact' or 'before', got {split!r}")
        self.taxonomy, self.split = taxonomy, split
        self.height, self.width = int(shape[-2]), int(shape[-1])
        self.idx = list(idx)
        self.sigmas = torch.as_tensor(sigmas)[self.idx]
        self.n_leaves = len(taxonomy.leaves)
        self.leaf = None if leaf is None else torch.as_tensor(leaf, dtype=torch.long).cpu()
        self.maps = {n: torch.full((batch, len(self.idx), self.height, self.width), math.nan)
                     for n in taxonomy.internal_nodes}
        self.child = {n: torch.full((batch,), -1, dtype=torch.long) for n in taxonomy.internal_nodes}
        self.final_leaf = torch.full((batch,), -1, dtype=torch.long)
        self._increments, self._log_post = [], []

    def step(self, rows: slice, i: int, increments: torch.Tensor, log_post: torch.Tensor) -> None:
        self._increments.append(increments[:self.n_leaves].float().cpu())
        self._log_post.append(log_post[:, :self.n_leaves].double().cpu())

    def chunk_done(self, rows: slice, log_post: torch.Tensor) -> None:
        """Make the maps of the samples ``rows`` from the steps recorded since the last chunk."""
        b = rows.stop - rows.start
        steps = len(self._increments)
        if steps:
            inc = torch.stack(self._increments)  # [S - 1, L, b, P]
            lp = torch.stack(self._log_post)  # [S - 1, b, L]
        else:
            inc = torch.zeros(0, self.n_leaves, b, self.height * self.width)
            lp = torch.zeros(0, b, self.n_leaves, dtype=torch.float64)
        self._increments, self._log_post = [], []
        final = (self.leaf[rows] if self.leaf is not None
                 else log_post[:, :self.n_leaves].double().cpu().argmax(-1))
        self.final_leaf[rows] = final
        tax = self.taxonomy
        # cumulative sums are read at the output grid points: E(sigma_k) sums the steps i < idx[k]
        take = torch.as_tensor(self.idx)
        for node in tax.internal_nodes:
            span = tax.leaf_slice(node)
            for c, kid in enumerate(tax.children(node)):
                inside = tax.leaf_slice(kid)
                mine = ((final >= inside.start) & (final < inside.stop)).nonzero()[:, 0]
                if not len(mine):
                    continue
                self.child[node][rows.start + mine] = c
                chosen = torch.zeros(self.n_leaves, dtype=torch.bool)
                chosen[inside] = True
                others = torch.zeros(self.n_leaves, dtype=torch.bool)
                others[span] = True
                others &= ~chosen
                delta = (_set_part(inc[:, :, mine], lp[:, mine], chosen, self.split)
                         - _set_part(inc[:, :, mine], lp[:, mine], others, self.split))  # [S - 1, b', P]
                cumulative = torch.cat([torch.zeros_like(delta[:1]), delta.cumsum(0)])  # [S, b', P]
                maps = cumulative[take].transpose(0, 1).reshape(len(mine), len(take), self.height, self.width)
                self.maps[node][rows.start + mine] = maps.float()

    def result(self) -> EvidenceMaps:
        return EvidenceMaps(sigmas=self.sigmas, maps=self.maps, final_leaf=self.final_leaf,
                            final_from="condition" if self.leaf is not None else "posterior", child=self.child)


def _set_part(inc: torch.Tensor, log_post: torch.Tensor, members: torch.Tensor, split: str = "exact") -> torch.Tensor:
    """``sum_{y in S} omega_{i,y} l_{i,y}(p)`` for the set ``members`` ``[L]``: ``inc`` ``[S - 1, L, b, P]``,
    ``log_post`` ``[S - 1, b, L]`` before each step. Returns ``[S - 1, b, P]`` (float64).

    ``omega`` is the within-set posterior, before the step (``split="before"``: a first-order split)
    or (``"exact"``) mixed with the one after it in the proportion that makes the parts sum to the
    set's log-likelihood increment ``log sum_S w_y e^{l_y}`` (the weighted mean of ``l`` is below it
    with the weights before, above it with the weights after).
    """
    inside = log_post.masked_fill(~members, -math.inf)
    before = torch.softmax(inside, dim=-1).nan_to_num(0.0)  # [S - 1, b, L]
    inc = inc.double()
    if split == "before":
        return torch.einsum("sbl,slbp->sbp", before, inc)
    total = inc.sum(-1).transpose(1, 2)  # each leaf's increment [S - 1, b, L]
    moved = inside + total
    after = torch.softmax(moved, dim=-1).nan_to_num(0.0)
    gain = torch.logsumexp(moved, -1) - torch.logsumexp(inside, -1)  # the set's log-likelihood increment
    total = total.masked_fill(~members, 0.0)
    low, high = (before * total).sum(-1), (after * total).sum(-1)
    span = high - low
    alpha = torch.where(span.abs() > 1e-12 * (high.abs() + low.abs() + 1), (high - gain) / span, 0.5)
    alpha = alpha.nan_to_num(0.5).clamp(0, 1)[..., None]  # (nan: an empty set, whose part is 0 anyway)
    weights = alpha * before + (1 - alpha) * after
    return torch.einsum("sbl,slbp->sbp", weights, inc)
