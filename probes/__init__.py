"""probes: when, during sampling, does a diffusion model decide what it is drawing?

The Python API mirrors the CLI: a recipe in, a result out; or a user's own diffusers pipeline
probed as it samples. Every entry point returns a :class:`ProbeResult` (``.save(dir)`` writes the
files of a run directory, ``print(result)`` shows its decision-time tree)::

    result = probes.run("digits", "runs/digits")          # a recipe (file or shipped name) in
    result = probes.probe(pipe, "animals-vehicles", classifier=clf, prompt=[...])
    result = probes.load("runs/digits")                   # a run directory or a saved result
    comparison = probes.compare("runs/w1", "runs/w3")      # two results or directories
    probes.load_taxonomy("digits-shape"); probes.load_recipe("digits")

The names are imported on first use (PEP 562), so ``import probes`` stays fast. See
``docs/architecture.md`` for the map of modules.
"""

from probes.version import __version__ as __version__

# name -> module that defines it; resolved by __getattr__ on first use.
_API = {
    "run": "probes.api",
    "probe": "probes.api",
    "load": "probes.api",
    "compare": "probes.api",
    "merge_results": "probes.api",
    "load_taxonomy": "probes.api",
    "load_recipe": "probes.api",
    "ProbeResult": "probes.api",
    "Comparison": "probes.api",
    "ProbesError": "probes.api",
    "guidance_window": "probes.api",
}

__all__ = sorted([*_API, "__version__"])


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'probes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)
