"""probes: when, during sampling, does a diffusion model decide what it is drawing?

The Python API mirrors the CLI: load a taxonomy, wrap a model as a denoiser and a classifier,
estimate leaf posteriors along sampling, and turn them into entropy curves and decision times.
See ``docs/architecture.md`` for the map of modules.
"""

__version__ = "0.1.0"
