"""The run directory: file writers (``run.json``, ``curves.csv``, ``decisions.csv``, ``tree.*``)
and plots. Formats are documented in ``docs/outputs.md``."""

from .rundir import (
    atomic_write_text,
    decision_tree,
    package_versions,
    tree_heights,
    write_curves_csv,
    write_decisions_csv,
    write_run_json,
    write_tree,
)

__all__ = [
    "atomic_write_text",
    "decision_tree",
    "package_versions",
    "tree_heights",
    "write_curves_csv",
    "write_decisions_csv",
    "write_run_json",
    "write_tree",
]
