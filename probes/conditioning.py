"""Conditioners map taxonomy nodes to a model's own conditioning object.

The estimators that need class-conditional denoisers (``bayes``, ``immse``) and guided generation
ask for "the model conditioned on node n"; only the model knows what that means: a class id, a
prompt, a mask of mixture components. A conditioner answers for a batch of node names and raises
:class:`~probes.errors.UnsupportedCondition` for nodes the model cannot be conditioned on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from probes.errors import UnsupportedCondition


class Conditioner:
    """Base class: ``conditioner(nodes) -> cond`` for a batch of taxonomy node names."""

    def __call__(self, nodes: Sequence[str]) -> Any:  # pragma: no cover
        raise NotImplementedError

    def supports(self, node: str) -> bool:
        try:
            self([node])
        except UnsupportedCondition:
            return False
        return True

    def outside(self, n: int) -> Any:
        """``cond`` for ``n`` samples conditioned on the classes *outside* the taxonomy (the model's
        world beyond its leaves). Most models cannot express it; estimators then stand the
        unconditional model in for it (see ``bayes``)."""
        raise UnsupportedCondition("the model cannot be conditioned on the outside of the taxonomy")


class ClassLabelConditioner(Conditioner):
    """Class-conditional models: each leaf has an integer class id; internal nodes are unsupported."""

    def __init__(self, class_of_leaf: Mapping[str, int]):
        self.class_of_leaf = dict(class_of_leaf)

    def __call__(self, nodes):
        try:
            return torch.tensor([self.class_of_leaf[n] for n in nodes], dtype=torch.long)
        except KeyError as err:
            raise UnsupportedCondition(
                f"the model is conditioned on leaf classes only and cannot be conditioned on node {err.args[0]!r}"
            ) from None


class PromptConditioner(Conditioner):
    """Text-conditional models: each node maps to a prompt."""

    def __init__(self, prompt_of_node: Mapping[str, str]):
        self.prompt_of_node = dict(prompt_of_node)

    def __call__(self, nodes):
        try:
            return [self.prompt_of_node[n] for n in nodes]
        except KeyError as err:
            raise UnsupportedCondition(f"no prompt for taxonomy node {err.args[0]!r}") from None
