"""Classifiers: clean input -> log-probabilities over a taxonomy's leaves."""

from probes.classifiers.base import Classifier, leaf_groups

__all__ = ["Classifier", "leaf_groups"]
