"""The public API, in one place: what ``import probes`` exposes (see :mod:`probes`)."""

from __future__ import annotations

from pathlib import Path

from probes.comparison import Comparison
from probes.diffusers_guidance import guidance_window
from probes.errors import ProbesError
from probes.merge import merge_results
from probes.probing import probe
from probes.recipe import load_recipe
from probes.result import ProbeResult, load
from probes.runner import run
from probes.taxonomy import load_taxonomy

__all__ = ["Comparison", "ProbeResult", "ProbesError", "compare", "guidance_window", "load", "load_recipe",
           "load_taxonomy", "merge_results", "probe", "run"]


def compare(a: ProbeResult | str | Path, b: ProbeResult | str | Path, *, estimator: str | None = None,
            pairing: str = "auto", n_boot: int = 200, seed: int = 0, ci: float = 0.95) -> Comparison:
    """Where in sigma ``b`` knows more than ``a``: two results, or run / saved-result directories
    (see :meth:`ProbeResult.compare`). ``comparison.save(dir)`` writes its files."""
    a = a if isinstance(a, ProbeResult) else load(a)
    b = b if isinstance(b, ProbeResult) else load(b)
    return a.compare(b, estimator=estimator, pairing=pairing, n_boot=n_boot, seed=seed, ci=ci)
