"""A taxonomy as index tensors, built once and shared by the entropy engine and the estimators.

The entropy engine walks the tree bottom-up over a node table (log-sum-exp of children, node
contributions, level cells); the I-MMSE estimator needs each leaf's root path and each node's
leaves. Both read them here, so the tree is indexed one way only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from probes.errors import ProbesError


@dataclass
class _Group:
    """Internal nodes of one depth whose children are gathered together (padded with -inf)."""

    parents: torch.Tensor  # [G] row of each parent in the node table
    internal_pos: torch.Tensor  # [G] position of each parent in taxonomy.internal_nodes
    children: torch.Tensor  # [G, width] child rows, padded with the -inf row


class TreeIndex:
    """A taxonomy as index tables: the row layout of the entropy engine's node table and the index
    tensors that walk it, plus each leaf's path and each node's leaves (the I-MMSE estimator).

    Rows of the node table: leaves ``0..L-1`` (taxonomy order), internal nodes ``L..L+K-1``
    (pre-order), and one padding row ``L+K`` that always holds ``-inf``. Upward groups are ordered
    deepest first; within a depth, parents are sorted by fan-out and cut into groups whose padded
    size stays within 2x of their real number of children (few groups, little padding, even for
    trees with a few very wide nodes).
    """

    def __init__(self, taxonomy):
        leaves = list(taxonomy.leaves)
        internal = list(taxonomy.internal_nodes)
        self.leaves, self.internal = leaves, internal
        self.n_leaves, self.n_internal = len(leaves), len(internal)
        self.max_depth = int(taxonomy.max_depth)
        if self.n_internal == 0 or self.max_depth < 1:
            raise ProbesError(f"taxonomy {taxonomy.name!r}: no internal node to split the leaves")
        col = {n: i for i, n in enumerate(leaves)}
        col.update({n: self.n_leaves + i for i, n in enumerate(internal)})
        self.pad = self.n_leaves + self.n_internal
        self.width = self.pad + 1
        depth = {n: int(taxonomy.depth(n)) for n in col}
        self.node_depth = [depth[n] for n in internal]

        by_depth: dict[int, list[tuple[int, str]]] = {}
        for pos, n in enumerate(internal):
            by_depth.setdefault(depth[n], []).append((pos, n))
        self.groups: list[_Group] = []
        for d in sorted(by_depth, reverse=True):
            rows = []
            for pos, n in by_depth[d]:
                kids = [col[c] for c in taxonomy.children(n)]
                if not kids:
                    raise ProbesError(f"taxonomy {taxonomy.name!r}: internal node {n!r} has no children")
                rows.append((pos, n, kids))
            rows.sort(key=lambda r: -len(r[2]))  # widest first; cut where padding would pass 2x
            start, real = 0, 0
            for i, (_, _, kids) in enumerate(rows):
                width = len(rows[start][2])
                if i > start and (i - start + 1) * width > 2 * (real + len(kids)):
                    self.groups.append(self._group(rows[start:i], col))
                    start, real = i, 0
                real += len(kids)
            self.groups.append(self._group(rows[start:], col))

        # Cells of each level cut as a 0/1 matrix: H_l = -sum over cells of p log p.
        leaf_set = set(leaves)
        cells = torch.zeros(self.width, self.max_depth, dtype=torch.float64)
        for lvl in range(1, self.max_depth + 1):
            for n, c in col.items():
                if depth[n] == lvl or (n in leaf_set and depth[n] < lvl):
                    cells[c, lvl - 1] = 1.0
        self.cells_t = cells.T.contiguous()  # [D, width]

        # Paths and cells by name: path[i] lists the nodes at depths 1..depth(leaf i) from the root
        # to leaf i; leaves_of[v] the leaf positions under v; level_cells[l-1] the cells of level l.
        self.depth = depth
        self.children = {n: list(taxonomy.children(n)) for n in internal}
        root = internal[0]
        self.path = [[v for v in taxonomy.ancestors(leaf) if v != root] + [leaf] for leaf in leaves]
        self.leaf_depth = torch.tensor([len(p) for p in self.path])
        self.leaves_of = {n: [col[u] for u in taxonomy.leaves_under(n)] for n in internal}
        self.leaves_of.update({leaf: [i] for i, leaf in enumerate(leaves)})
        self.level_cells = [[n for n in col if int(cells[col[n], lvl - 1])] for lvl in range(1, self.max_depth + 1)]

    def under(self, node) -> torch.Tensor:
        """``[L]`` bool: which leaves lie under ``node``."""
        out = torch.zeros(self.n_leaves, dtype=torch.bool)
        out[self.leaves_of[node]] = True
        return out

    def _group(self, rows, col) -> _Group:
        width = max(len(k) for _, _, k in rows)
        children = torch.full((len(rows), width), self.pad, dtype=torch.long)
        for r, (_, _, kids) in enumerate(rows):
            children[r, : len(kids)] = torch.tensor(kids, dtype=torch.long)
        return _Group(
            parents=torch.tensor([col[n] for _, n, _ in rows], dtype=torch.long),
            internal_pos=torch.tensor([p for p, _, _ in rows], dtype=torch.long),
            children=children,
        )

    def compute(self, log_p_leaves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Leaf log-probs ``[L, M]`` (float64, one column per posterior) -> (levels ``[D, M]``,
        nodes ``[K, M]``).

        Columns are posteriors so that gathering a node's children copies whole rows and every
        reduction over children runs along contiguous memory.
        """
        M = log_p_leaves.shape[1]
        table = torch.empty((self.width, M), dtype=torch.float64)
        table[: self.n_leaves] = log_p_leaves
        table[self.n_leaves :] = -math.inf
        contrib = torch.empty((self.n_internal, M), dtype=torch.float64)
        for g in self.groups:
            lc = table[g.children]  # [G, width, M] children's log p
            top = torch.nan_to_num(lc.amax(dim=1), neginf=0.0)  # [G, M]; 0 where p(n|x) = 0
            e = torch.exp(lc - top.unsqueeze(1))  # p(c|x) / max_c p(c|x), in [0, 1]; -inf -> 0
            total = e.sum(dim=1)  # >= 1, or 0 where p(n|x) = 0
            log_total = torch.log(total)
            ln = log_total + top  # log p(n|x)
            table[g.parents] = ln
            # H(p(c | x, Y in n)) with r = e / total: -sum r log r = log total - sum(e log e) / total
            h = log_total - torch.special.xlogy(e, e).sum(dim=1) / total
            contrib[g.internal_pos] = torch.nan_to_num(torch.exp(ln) * h, nan=0.0)
        p = torch.exp(table)
        levels = -(self.cells_t @ torch.special.xlogy(p, p))  # cells read off directly
        return levels, contrib

    def prior_entropies(self, prior) -> tuple[np.ndarray, np.ndarray]:
        """Level entropies ``[D]`` and node contributions ``[K]`` of a distribution over leaves."""
        if isinstance(prior, torch.Tensor):
            p = prior.detach().to("cpu", torch.float64)
        else:
            p = torch.as_tensor(np.asarray(prior, dtype=np.float64))
        with torch.no_grad():
            lp = torch.where(p > 0, torch.log(p.clamp_min(1e-300)), torch.tensor(-math.inf, dtype=torch.float64))
            levels, nodes = self.compute(lp[:, None])
        return levels[:, 0].numpy(), nodes[:, 0].numpy()
