"""probes: when, during sampling, does a diffusion model decide what it is drawing?

The Python API mirrors the CLI: load a taxonomy, wrap a model as a denoiser and a classifier,
estimate leaf posteriors along sampling, and turn them into entropy curves and decision times.
See ``docs/architecture.md`` for the map of modules.

Top level (imported on first use, so ``import probes`` stays fast)::

    probes.load_taxonomy("digits-shape")        # a shipped name, a YAML path or a wordnet: spec
    probes.load_recipe("digits")                # a shipped recipe by name, or a path
    probes.run("digits", "runs/digits")         # a recipe in, a run directory out
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> (module, attribute): resolved lazily by __getattr__ (PEP 562).
_LAZY = {
    "load_taxonomy": ("probes.taxonomy", "load_taxonomy"),
    "load_recipe": ("probes.recipe", "load_recipe"),
    "run": ("probes.run", None),  # the module, callable as run_recipe (see probes/run.py)
    "ProbesError": ("probes.errors", "ProbesError"),
    "probe": ("probes.probing", "probe"),
    "load": ("probes.result", "load"),
    "ProbeResult": ("probes.result", "ProbeResult"),
    "merge_results": ("probes.merge", "merge_results"),
    "guidance_window": ("probes.diffusers_guidance", "guidance_window"),
}

__all__ = ["ProbeResult", "ProbesError", "__version__", "guidance_window", "load", "load_recipe", "load_taxonomy",
           "merge_results", "probe", "run"]

if TYPE_CHECKING:  # pragma: no cover
    from probes import run
    from probes.diffusers_guidance import guidance_window
    from probes.errors import ProbesError
    from probes.merge import merge_results
    from probes.probing import probe
    from probes.recipe import load_recipe
    from probes.result import ProbeResult, load
    from probes.taxonomy import load_taxonomy


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = importlib.import_module(module)
        value = getattr(value, attr) if attr else value
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'probes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
