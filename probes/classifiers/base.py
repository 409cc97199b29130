"""The classifier interface.

A classifier scores clean inputs over its own *native* classes (10 digits, 1000 ImageNet synsets,
one text per leaf for CLIP, or a universe of names) and maps them to the taxonomy's leaves: each
leaf owns a group of native classes, and its log-probability is the log-sum-exp of theirs. Native
classes that belong to no leaf are the *outside* of the taxonomy: their mass is not handed to the
leaves, so a row sums to ``p(T | x)``, the probability that the input belongs to the taxonomy at
all (the entropy engine reports it as the inside mass and renormalises). A temperature divides the
native logits before the softmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from probes.errors import ProbesError


def leaf_groups(leaves: Sequence[str], native_of_leaf: dict[str, Sequence[int]]) -> list[list[int]]:
    """Native class indices per leaf, in leaf order; a clear error for uncovered leaves."""
    missing = [leaf for leaf in leaves if not native_of_leaf.get(leaf)]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise ProbesError(f"the classifier does not cover {len(missing)} taxonomy leaves: {shown}")
    return [list(native_of_leaf[leaf]) for leaf in leaves]


class Classifier(torch.nn.Module):
    """Base class. Subclasses implement :meth:`logits` (native classes) and set ``leaves``/groups.

    Args:
        leaves: the taxonomy leaves scored, in output order.
        groups: native class indices per leaf; ``None`` when native classes are the leaves.
        temperature: divides the native logits (``T > 1`` flattens, ``T < 1`` sharpens).
    """

    def __init__(self, leaves: Sequence[str], groups: list[list[int]] | None = None,
                 temperature: float = 1.0):
        super().__init__()
        self.leaves = list(leaves)
        self.temperature = float(temperature)
        if groups is not None:
            if len(groups) != len(self.leaves):
                raise ValueError("groups must have one entry per leaf")
            width = max(len(g) for g in groups)
            index = torch.tensor([g + [g[0]] * (width - len(g)) for g in groups])
            valid = torch.tensor([[True] * len(g) + [False] * (width - len(g)) for g in groups])
            self.register_buffer("group_index", index, persistent=False)
            self.register_buffer("group_valid", valid, persistent=False)
        else:
            self.group_index = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Native-class logits ``[batch, classes]`` for clean inputs ``x``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[batch, leaves]``; rows log-sum-exp to ``log p(T | x) <= 0`` (zero when
        every native class belongs to a leaf)."""
        return self.leaf_log_probs(self.logits(x))

    def leaf_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float() / self.temperature
        if self.group_index is None:
            return torch.log_softmax(logits, dim=-1)
        per_class = torch.log_softmax(logits, dim=-1)
        gathered = per_class[:, self.group_index]  # [batch, leaves, width]
        gathered = gathered.masked_fill(~self.group_valid, float("-inf"))
        return torch.logsumexp(gathered, dim=-1)


    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, leaf_index: torch.Tensor, steps: int = 100) -> float:
        """Fit the temperature by minimising the leaf NLL on labelled clean data; returns it."""
        logits = self.logits(x).float()
        log_t = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps)

        def closure():
            opt.zero_grad()
            with torch.enable_grad():
                saved, self.temperature = self.temperature, 1.0
                lp = self.leaf_log_probs(logits / log_t.exp())
                self.temperature = saved
                loss = -lp.gather(1, leaf_index[:, None]).mean()
                loss.backward()
            return loss

        opt.step(closure)
        self.temperature = float(log_t.exp())
        return self.temperature


class CheckedClassifier:
    """A classifier whose every answer is checked: ``[B, L]`` log-probabilities for a batch of B
    (a wrong shape is one line naming the classifier, not a broadcast or an index error deep in
    the estimators). Other attributes are the classifier's own (features for quality measures)."""

    def __init__(self, classifier, n_leaves: int):
        self.inner, self.n_leaves = classifier, n_leaves

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if not isinstance(out, torch.Tensor) or out.shape != (x.shape[0], self.n_leaves):
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ProbesError(f"classifier: returned {shape} for {x.shape[0]} inputs; expected log-probabilities "
                              f"[{x.shape[0]}, {self.n_leaves}] over the taxonomy's leaves")
        return out

    def __getattr__(self, name):
        if name in ("inner", "n_leaves"):  # not yet set (copying, unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)
