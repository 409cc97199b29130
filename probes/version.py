"""The package version (one place; ``probes --version`` and ``probes.__version__`` read it)."""

__version__ = "0.1.0"
