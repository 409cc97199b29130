"""Entropy of class posteriors over a taxonomy, and the decision sigmas read off its curves."""

from .decisions import AXES, Decision, decide, decide_axes, rates
from .engine import EntropyCurves, tree_entropy

__all__ = ["AXES", "Decision", "EntropyCurves", "decide", "decide_axes", "rates", "tree_entropy"]
