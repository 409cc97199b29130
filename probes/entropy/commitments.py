"""Per-sample commitment times: when, along its own path, each sample settles each decision.

A population curve ``C_n(sigma)`` says when the samples *on average* decide between node n's
children; it cannot say whether a given sample decided coarse before fine. Along one sample's
path the posterior restricted to a node,

    q(c | n, x_sigma) = p(c | x_sigma) / p(n | x_sigma)        (c a child of n),

moves from the prior to the child the sample ends in. For every sample and every internal node n
above the sample's **final leaf** (``final_child`` is n's child on the way to that leaf):

* **commitment sigma**: the largest grid sigma from which, at every grid sigma down to the
  smallest, ``q(final_child | n) >= theta`` (default ``theta = 0.9``). NaN (an empty cell in
  ``commitments.csv``) when ``q`` is below ``theta`` at the smallest sigma: the sample never
  commits. Sampling runs from large to small sigma, so a larger commitment sigma is an *earlier*
  commitment.
* **flips**: how many times the leader ``argmax_c q(c | n)`` changes along the path, sigma
  falling. Children whose ``log q`` lie within ``TIE_TOL`` of the top (float32 resolution) tie:
  a tie has no leader and keeps the previous one, so the exact ties of a flat prior at the start
  of a path are not counted as flips.

The **final leaf** of a sample (:func:`final_leaves`) is its conditioning leaf when that is known
(leaf-conditional generation, data paths), else the argmax of its posterior at the smallest sigma.

**Summaries** (:class:`Commitments`):

* per node, the ECDF of commitment sigma: at each grid sigma, the fraction of the node's samples
  (those whose final leaf lies under it) already committed, i.e. whose commitment sigma is at
  least that sigma. Never-committed samples stay in the denominator, so the curve ends at the
  fraction that ever commits.
* the joint (parent, child) pairs: for each sample and each non-root node n on its path, the
  commitment sigma at n's parent p (the coarse choice, which of p's children holds n) and at n
  (the fine choice).
* **fine before coarse**: per non-root node n, the fraction of its samples whose commitment at n
  comes strictly before (at a larger sigma than) the commitment at its parent p. A sample that
  never commits counts as committing after the last grid sigma: one that commits at n and never
  at p is fine-first, one that commits at p and never at n coarse-first. Equal commitment sigmas
  (the same grid step) are *together*, neither committing are *neither*; the four fractions
  (``fine_first``, ``coarse_first``, ``together``, ``neither``) add to 1. Intervals are seeded
  bootstrap percentile intervals: each replicate draws multinomial counts over all samples (one
  weight vector for every node, as the other intervals of the toolkit resample samples).

**Which estimators have per-sample posteriors.** ``exact``, ``plugin``, ``rollout`` and ``bayes``
give ``log p(leaf | x_sigma)`` per sample, so each sample's commitments are defined. ``immse``
integrates an entropy *rate* (I-MMSE) over pairs of clean data and class noised afresh at each sigma:
its rows are not paths and hold entropies, not posteriors. ``guided`` reports per sample the middle
of a band between two bounds on the entropy of a guided run's own process (its lower bound's path
filter is used inside, not kept): an entropy again, with no argmax or threshold to apply. Neither
has commitments. (``rollout``'s curves may carry jackknife bias corrections; its commitments read
the averaged posteriors themselves.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from probes.errors import ProbesError

COMMIT_THRESHOLD = 0.9
TIE_TOL = 1e-6  # children whose log q differ by less than this tie (float32 resolves ~1.2e-7 relative)
COLUMNS = ("sample", "node", "final_child", "commit_sigma", "flips")
ORDER_KINDS = ("fine_first", "coarse_first", "together", "neither")
_CHUNK_ELEMENTS = 2**23  # float64 elements of one chunk of log-posteriors (~64 MiB)


def _as_float64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _check_posteriors(log_probs, sigmas, taxonomy) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
    shape = tuple(log_probs.shape)
    sig = _as_float64(sigmas).reshape(-1)
    if len(shape) != 3:
        raise ProbesError(f"commitments: log-posteriors must be [samples, sigmas, leaves]; got shape {list(shape)}")
    if shape[1] != len(sig):
        raise ProbesError(f"commitments: {len(sig)} sigmas for log-posteriors with {shape[1]} sigma columns")
    if shape[2] != len(taxonomy.leaves):
        raise ProbesError(f"commitments: log-posteriors have {shape[2]} leaf columns but the taxonomy has "
                          f"{len(taxonomy.leaves)} leaves")
    if len(sig) < 1 or not np.all(np.isfinite(sig)) or np.any(sig <= 0) or len(np.unique(sig)) != len(sig):
        raise ProbesError("commitments: sigmas must be distinct, finite and positive")
    return log_probs, sig


def final_leaves(log_probs, sigmas, conditioning=None) -> np.ndarray:
    """Each sample's final leaf ``[N]`` (indices into ``taxonomy.leaves``): its conditioning leaf
    where known (``conditioning [N]``, ``-1`` where unknown, or None), else the argmax of its
    posterior at the smallest sigma. Ties go to the first leaf in taxonomy order."""
    sig = _as_float64(sigmas).reshape(-1)
    if len(tuple(log_probs.shape)) != 3 or log_probs.shape[1] != len(sig):
        raise ProbesError(f"final leaves: log-posteriors must be [samples, {len(sig)}, leaves]; "
                          f"got {list(log_probs.shape)}")
    last = _as_float64(log_probs[:, int(np.argmin(sig))])
    out = np.argmax(np.where(np.isnan(last), -np.inf, last), axis=-1)
    if conditioning is not None:
        known = _as_float64(conditioning).reshape(-1)
        if known.shape != out.shape or np.any(~np.isfinite(known)) or np.any(known != np.round(known)):
            raise ProbesError(f"final leaves: conditioning must be {len(out)} whole leaf indices (-1: unknown)")
        known = known.astype(np.int64)
        if np.any(known < -1) or np.any(known >= last.shape[-1]):
            raise ProbesError(f"final leaves: conditioning leaf indices must lie in -1..{last.shape[-1] - 1}")
        out = np.where(known >= 0, known, out)
    return out.astype(np.int64)


def node_log_mass(log_probs, taxonomy, normalise: bool = True) -> dict[str, np.ndarray]:
    """``log p(v | x_sigma, T)`` ``[N, S]`` for every node v (leaves and internal nodes) of the
    taxonomy, the rows renormalised over its leaves (the mass outside a partial taxonomy drops
    out of every ratio ``q(c | n)``; ``normalise=False`` skips the renormalisation, which no ratio
    needs). ``-inf`` where v has no mass; NaN rows stay NaN."""
    lp = _as_float64(log_probs)
    col = {leaf: i for i, leaf in enumerate(taxonomy.leaves)}
    out = {leaf: lp[..., i] for leaf, i in col.items()}
    for n in reversed(taxonomy.internal_nodes):  # pre-order reversed: children before parents
        out[n] = _logsumexp(np.stack([out[c] for c in taxonomy.children(n)], axis=-1), axis=-1)
    if not normalise:
        return out
    inside = out[taxonomy.root].copy()  # log p(T | x): renormalise every node by it
    with np.errstate(invalid="ignore"):
        return {v: np.where(np.isfinite(inside), m - inside, m) for v, m in out.items()}


def restricted_posterior(mass: dict[str, np.ndarray], taxonomy, node: str) -> np.ndarray:
    """``log q(c | node, x_sigma)`` ``[N, S, K]`` over the node's children (taxonomy order) from the
    node masses of :func:`node_log_mass`; NaN where the node has no mass."""
    kids = np.stack([mass[c] for c in taxonomy.children(node)], axis=-1)
    parent = mass[node][..., None]
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(parent), kids - parent, np.nan)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        total = np.exp(a - safe).sum(axis=axis, keepdims=True)
        return np.squeeze(np.log(total) + safe, axis=axis)


def commit_index(q_final: np.ndarray, theta: float) -> np.ndarray:
    """Index (on a descending grid) of the commitment sigma for each row of ``q_final [M, S]``, or
    -1 where ``q`` is below ``theta`` at the last (smallest) sigma: the first index from which
    ``q >= theta`` holds to the end."""
    ok = q_final >= theta  # NaN compares False: an undefined q is not a commitment
    tail = np.flip(np.logical_and.accumulate(np.flip(ok, axis=-1), axis=-1), axis=-1)  # ok from k to the end
    committed = tail[:, -1] if tail.shape[-1] else np.zeros(len(tail), dtype=bool)
    first = np.argmax(tail, axis=-1)
    return np.where(committed, first, -1)


def count_flips(log_q: np.ndarray, tie_tol: float = TIE_TOL) -> np.ndarray:
    """Changes of the leader ``argmax_c q`` along the last-but-one axis of ``log_q [M, S, K]`` (a
    descending grid): a step where the top two are within ``tie_tol`` (or q is undefined) has no
    leader and keeps the previous one."""
    M, S, K = log_q.shape
    if K < 2 or S < 2:
        return np.zeros(M, dtype=np.int64)
    filled = np.where(np.isnan(log_q), -np.inf, log_q)
    top2 = -np.sort(-filled, axis=-1)[..., :2]
    with np.errstate(invalid="ignore"):
        clear = np.isfinite(top2[..., 0]) & ~(top2[..., 0] - top2[..., 1] <= tie_tol)
    leader = np.where(clear, np.argmax(filled, axis=-1), -1)  # [M, S]
    # carry the last leader over ties: forward fill of the -1 entries
    idx = np.where(leader >= 0, np.arange(S)[None, :], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    held = np.take_along_axis(leader, idx, axis=1)  # -1 until the first leader
    changed = (held[:, 1:] != held[:, :-1]) & (held[:, :-1] >= 0)
    return changed.sum(axis=1).astype(np.int64)


@dataclass
class CommitOrder:
    """Fine before coarse at one node n (child decision) under its parent p (coarse decision):
    the fractions of n's samples in each :data:`ORDER_KINDS` class, and the bootstrap percentile
    interval of each (None without two replicates)."""

    node: str
    parent: str
    n_samples: int
    fractions: dict[str, float]
    intervals: dict[str, tuple[float, float] | None]

    @property
    def fine_first(self) -> float:
        return self.fractions["fine_first"]

    def summary(self) -> dict:
        return {"parent": self.parent, "n_samples": self.n_samples, **{k: self.fractions[k] for k in ORDER_KINDS},
                "intervals": {k: None if v is None else [float(v[0]), float(v[1])]
                              for k, v in self.intervals.items()}}


@dataclass
class Commitments:
    """Every sample's commitments: one row per (sample, internal node above its final leaf).

    Row arrays (length R): ``sample`` (index), ``node`` and ``final_child`` (names),
    ``commit_sigma`` (NaN: never committed), ``flips``; ``parent_row`` is the row of the same
    sample at the node's parent (-1 at the root). ``sigmas`` is the grid (descending), ``theta``
    the threshold, ``nodes`` the internal nodes with rows (taxonomy pre-order) and ``parents``
    each internal node's parent.
    """

    sigmas: np.ndarray
    theta: float
    sample: np.ndarray
    node: list[str]
    final_child: list[str]
    commit_sigma: np.ndarray
    flips: np.ndarray
    parent_row: np.ndarray
    n_samples: int
    nodes: list[str] = field(default_factory=list)
    parents: dict[str, str | None] = field(default_factory=dict)

    def rows(self) -> list[tuple]:
        """``(sample, node, final_child, commit_sigma, flips)`` per row, in sample then path order;
        ``commit_sigma`` is None where the sample never commits (the CSV's empty cell)."""
        return [(int(i), n, c, None if math.isnan(s) else float(s), int(f))
                for i, n, c, s, f in zip(self.sample, self.node, self.final_child, self.commit_sigma, self.flips)]

    def __post_init__(self):
        rows: dict[str, list[int]] = {}
        for r, n in enumerate(self.node):
            rows.setdefault(n, []).append(r)
        self._rows = {n: np.asarray(r, dtype=np.int64) for n, r in rows.items()}

    def rows_of(self, node: str) -> np.ndarray:
        """Indices of the rows at ``node`` (one per sample whose final leaf lies under it)."""
        return self._rows.get(node, np.zeros(0, dtype=np.int64))

    def ecdf(self, node: str) -> tuple[np.ndarray, np.ndarray]:
        """``(sigmas [S] descending, fraction [S])``: at each grid sigma, the fraction of the node's
        samples whose commitment sigma is at least that sigma (committed by then)."""
        rows = self.rows_of(node)
        if not len(rows):
            raise ProbesError(f"commitments: no sample passes through node {node!r}")
        c = self.commit_sigma[rows]
        committed = np.where(np.isnan(c), -np.inf, c)
        return self.sigmas.copy(), (committed[None, :] >= self.sigmas[:, None]).mean(axis=1)

    def pairs(self) -> dict[str, tuple[str, np.ndarray]]:
        """Per non-root node n: ``(parent name, [M, 2] array of (parent's commitment sigma, n's
        commitment sigma))`` over the samples whose path passes through n (NaN: never)."""
        out = {}
        for n in self.nodes:
            rows = self.rows_of(n)
            up = self.parent_row[rows]
            if self.parents.get(n) is None or not len(rows):
                continue
            out[n] = (self.parents[n], np.stack([self.commit_sigma[up], self.commit_sigma[rows]], axis=1))
        return out

    def order(self, n_boot: int = 200, seed: int = 0, ci: float = 0.95) -> dict[str, CommitOrder]:
        """Fine before coarse per non-root node (see the module docstring), with seeded bootstrap
        percentile intervals over the samples (``n_boot=0``: none)."""
        n_boot = _check_whole(n_boot, "commitments: n_boot", 0)
        seed = _check_whole(seed, "commitments: seed", 0)
        if not 0 < ci < 1:
            raise ProbesError(f"commitments: ci must be in (0, 1); got {ci}")
        weights = None
        if n_boot and self.n_samples:
            rng = np.random.default_rng(seed)
            weights = rng.multinomial(self.n_samples, np.full(self.n_samples, 1.0 / self.n_samples),
                                      size=n_boot).astype(np.float64)  # [B, N]
        q = 100 * (1 - ci) / 2
        out = {}
        for n, (parent, pair) in self.pairs().items():
            kinds = order_kinds(pair[:, 0], pair[:, 1])
            fractions = {k: float(v.mean()) for k, v in kinds.items()}
            intervals: dict = dict.fromkeys(ORDER_KINDS)
            if weights is not None and n_boot >= 2:
                samples = self.sample[self.rows_of(n)]
                w = weights[:, samples]  # [B, M]
                total = w.sum(1)
                ok = total > 0
                if ok.sum() >= 2:
                    for k, v in kinds.items():
                        frac = (w[ok] @ v.astype(np.float64)) / total[ok]
                        lo, hi = np.percentile(frac, [q, 100 - q])
                        intervals[k] = (float(lo), float(hi))
            out[n] = CommitOrder(node=n, parent=parent, n_samples=len(pair), fractions=fractions, intervals=intervals)
        return out

    def summary(self, n_boot: int = 200, seed: int = 0, ci: float = 0.95) -> dict:
        """JSON-ready per-node summaries: samples through the node, the fraction that commits, the
        median commitment sigma of those that do, median flips, the ECDF on the grid, and (below
        the root) the fine-before-coarse fractions with their intervals."""
        orders = self.order(n_boot=n_boot, seed=seed, ci=ci)
        nodes = {}
        for n in self.nodes:
            rows = self.rows_of(n)
            c = self.commit_sigma[rows]
            done = c[np.isfinite(c)]
            _, fraction = self.ecdf(n)
            nodes[n] = {"n_samples": len(rows), "committed": float(np.isfinite(c).mean()),
                        "median_commit_sigma": float(np.median(done)) if len(done) else None,
                        "median_flips": float(np.median(self.flips[rows])),
                        "ecdf": [float(v) for v in fraction],
                        "order": orders[n].summary() if n in orders else None}
        return {"theta": self.theta, "n_boot": int(n_boot), "ci": ci, "seed": seed,
                "sigmas": [float(s) for s in self.sigmas], "nodes": nodes}


def order_kinds(parent_sigma: np.ndarray, child_sigma: np.ndarray) -> dict[str, np.ndarray]:
    """Each pair's class (boolean masks over ``ORDER_KINDS``): never committing counts as
    committing after the last grid sigma (``-inf``), and both never is ``neither``."""
    p = np.where(np.isnan(parent_sigma), -np.inf, parent_sigma)
    c = np.where(np.isnan(child_sigma), -np.inf, child_sigma)
    neither = np.isneginf(p) & np.isneginf(c)
    return {"fine_first": c > p, "coarse_first": p > c, "together": (p == c) & ~neither, "neither": neither}


def _check_whole(value, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ProbesError(f"{what}: expected a whole number >= {low}, got {value!r}")
    return int(value)


def commitments(log_probs, sigmas, taxonomy, final_leaf, theta: float = COMMIT_THRESHOLD,
                chunk: int | None = None) -> Commitments:
    """Commitment sigma and flips of every sample at every internal node above its final leaf.

    ``log_probs [N, S, L]`` (torch or numpy; natural log over ``taxonomy.leaves``) on ``sigmas
    [S]`` (any order; the result's grid is descending), ``final_leaf [N]`` leaf indices (see
    :func:`final_leaves`) and ``theta`` in (0, 1) (above 1/2 at most one child can hold it).
    ``chunk`` samples are processed at a time (None: about 64 MiB of float64 posteriors).
    """
    log_probs, sig = _check_posteriors(log_probs, sigmas, taxonomy)
    theta = float(theta)
    if not 0 < theta < 1:
        raise ProbesError(f"commitments: the threshold theta must lie in (0, 1); got {theta}")
    N, S, L = (int(v) for v in log_probs.shape)
    final = _as_float64(final_leaf).reshape(-1)
    if final.shape != (N,) or np.any(final != np.round(final)) or np.any(final < 0) or np.any(final >= L):
        raise ProbesError(f"commitments: final_leaf must be {N} leaf indices in 0..{L - 1}")
    final = final.astype(np.int64)
    order = np.argsort(-sig, kind="stable")  # descending: the sampling order
    sig = sig[order]
    leaves = list(taxonomy.leaves)
    internal = list(taxonomy.internal_nodes)
    parents = {n: taxonomy.parent(n) for n in internal}
    # each leaf's path: the internal nodes above it, root first, and the child taken at each
    path = [[*taxonomy.ancestors(leaf)] for leaf in leaves]
    child_on_path = [[*p[1:], leaf] for p, leaf in zip(path, leaves)]
    depth_of_row = [len(path[leaf]) for leaf in final]
    first_row = np.concatenate([[0], np.cumsum(depth_of_row)[:-1]]).astype(np.int64)
    R = int(sum(depth_of_row))
    sample = np.repeat(np.arange(N), depth_of_row)
    node = [n for leaf in final for n in path[leaf]]
    final_child = [c for leaf in final for c in child_on_path[leaf]]
    commit_sigma = np.full(R, np.nan)
    flips = np.zeros(R, dtype=np.int64)
    parent_row = np.full(R, -1, dtype=np.int64)
    for i, leaf in enumerate(final):
        k = len(path[leaf])
        if k > 1:
            parent_row[first_row[i] + 1: first_row[i] + k] = np.arange(first_row[i], first_row[i] + k - 1)
    # the row of (sample i, node n) is first_row[i] + depth(n): paths are listed root first
    depth = {n: taxonomy.depth(n) for n in internal}
    column = {leaf: i for i, leaf in enumerate(leaves)}
    under = {}
    for n in internal:
        under[n] = np.zeros(L, dtype=bool)
        under[n][[column[u] for u in taxonomy.leaves_under(n)]] = True
    # the child of n each leaf under it lies below, as an index among n's children
    chosen_child = {n: np.full(L, -1, dtype=np.int64) for n in internal}
    for leaf in leaves:
        for n, c in zip(path[column[leaf]], child_on_path[column[leaf]]):
            chosen_child[n][column[leaf]] = taxonomy.children(n).index(c)
    if chunk is None:
        chunk = max(1, _CHUNK_ELEMENTS // max(1, S * L))
    for start in range(0, N, max(1, int(chunk))):
        stop = min(N, start + int(chunk))
        block = _as_float64(log_probs[start:stop])[:, order]  # [n, S, L]
        if np.isnan(block).any():
            raise ProbesError("commitments: the log-posteriors contain NaN (estimator output)")
        mass = node_log_mass(block, taxonomy, normalise=False)  # q is a ratio of masses
        ends = final[start:stop]
        for n in internal:
            members = np.flatnonzero(under[n][ends])  # samples (in the block) whose final leaf is under n
            if not len(members):
                continue
            log_q = restricted_posterior({k: mass[k][members] for k in (n, *taxonomy.children(n))}, taxonomy, n)
            chosen = chosen_child[n][ends[members]]
            q_final = np.exp(np.take_along_axis(log_q, chosen[:, None, None], axis=-1)[..., 0])
            j = commit_index(q_final, theta)
            rows = first_row[start + members] + depth[n]
            commit_sigma[rows] = np.where(j >= 0, sig[np.maximum(j, 0)], np.nan)
            flips[rows] = count_flips(log_q)
    present = set(node)
    return Commitments(sigmas=sig, theta=theta, sample=sample, node=node, final_child=final_child,
                       commit_sigma=commit_sigma, flips=flips, parent_row=parent_row, n_samples=N,
                       nodes=[n for n in internal if n in present], parents=parents)
