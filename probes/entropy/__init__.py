"""Entropy of class posteriors over a taxonomy, and the decision sigmas read off its curves."""

from .decisions import Decision, decide, rates
from .engine import EntropyCurves, tree_entropy

__all__ = ["Decision", "EntropyCurves", "decide", "rates", "tree_entropy"]
