"""probes: when, during sampling, does a diffusion model decide what it is drawing?

The Python API mirrors the CLI: load a taxonomy, wrap a model as a denoiser and a classifier,
estimate leaf posteriors along sampling, and turn them into entropy curves and decision times.
See ``docs/architecture.md`` for the map of modules.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # The API is imported on first use: `import probes` stays light and keeps the torchvision
    # patch ahead of every diffusers / transformers import.
    if name == "probe":
        from probes.probing import probe

        return probe
    if name == "load":
        from probes.result import load

        return load
    if name == "ProbeResult":
        from probes.result import ProbeResult

        return ProbeResult
    if name == "load_taxonomy":
        from probes.taxonomy import load_taxonomy

        return load_taxonomy
    raise AttributeError(f"module 'probes' has no attribute {name!r}")
