"""One probe's result in memory: posteriors along the sigma grid, and everything derived from them.

:class:`ProbeResult` holds, per estimator, ``log p(leaf | x_sigma)`` as ``[samples, sigmas, leaves]``
(or per-sample entropies for ``immse``) with the taxonomy and the grid. Entropy curves, decisions,
comparisons and plots are computed from it on demand; :meth:`ProbeResult.save` writes the run
directory (the same files as ``probes run``: ``curves.csv``, ``decisions.csv``, ``tree.*``,
``run.json``, PNG plots) plus ``posteriors.safetensors`` and ``taxonomy.json``, from which
:func:`load` rebuilds the object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probes.errors import ProbesError
from probes.estimators.base import EstimatorOutput
from probes.fileio import read_text
from probes.store import BatchInvalid, read_record, write_record

POSTERIORS_FILE = "posteriors.safetensors"
TAXONOMY_FILE = "taxonomy.json"


@dataclass
class ProbeResult:
    """Posteriors of one probe (``probes.probe``) or run, per estimator.

    Attributes:
        taxonomy: the taxonomy whose leaves index the last axis.
        estimates: estimator name -> :class:`~probes.estimators.EstimatorOutput`.
        output: what ``pipe(...)`` returned (``None`` after :func:`load`).
        trajectory: the recorded :class:`~probes.sampling.Trajectory` (not saved).
        meta: provenance (family, pipeline and scheduler names, estimator options).
        prior: ``[L]`` leaf prior, or ``None`` for uniform.
        primary: the estimator the summary methods use by default (the first one).
        inside_weighted: the samples came from the model's whole world, so where the model's world
            is larger than the taxonomy means are weighted by the inside mass ``p(T | x)``; False
            for samples drawn from the taxonomy's leaves (leaf-conditional generation).
    """

    taxonomy: Any
    estimates: dict[str, EstimatorOutput]
    output: Any = None
    trajectory: Any = None
    meta: dict = field(default_factory=dict)
    prior: torch.Tensor | None = None
    primary: str | None = None
    inside_weighted: bool = True
    _curves: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self.estimates:
            raise ProbesError("a probe result needs at least one estimator's output")
        if self.primary is None:
            self.primary = next(iter(self.estimates))
        self._pick(self.primary)

    def _pick(self, estimator: str | None) -> str:
        name = estimator or self.primary
        if name not in self.estimates:
            raise ProbesError(f"estimator {name!r} is not in this result; it has {', '.join(self.estimates)}")
        return name

    # -- the data ------------------------------------------------------------------------------

    def sigmas(self, estimator: str | None = None) -> torch.Tensor:
        """The grid ``[S]`` (descending) the estimator reported on."""
        return self.estimates[self._pick(estimator)].sigmas

    def log_posteriors(self, estimator: str | None = None) -> torch.Tensor:
        """``log p(leaf | x_sigma)`` ``[samples, sigmas, leaves]``."""
        out = self.estimates[self._pick(estimator)]
        if out.log_probs is None:
            raise ProbesError(f"estimator {out.name!r} estimates entropies, not posteriors")
        return out.log_probs

    @property
    def posteriors(self) -> torch.Tensor:
        """``p(leaf | x_sigma)`` ``[samples, sigmas, leaves]`` of the primary estimator."""
        return self.log_posteriors().exp()

    # -- derived -------------------------------------------------------------------------------

    def entropy(self, estimator: str | None = None):
        """:class:`~probes.entropy.EntropyCurves` (level entropies, node contributions, in nats)."""
        name = self._pick(estimator)
        if name not in self._curves:
            out = self.estimates[name]
            if out.log_probs is None and out.prior_levels is None:  # per-sample entropies (immse)
                from probes.entropy import EntropyCurves

                self._curves[name] = EntropyCurves.from_per_sample(
                    sigmas=out.sigmas, taxonomy=self.taxonomy, levels=out.levels, nodes=out.nodes, prior=self.prior,
                    bounds=out.bounds)
            else:
                self._curves[name] = out.curves(self.taxonomy, prior=self.prior, inside_weighted=self.inside_weighted)
        return self._curves[name]

    def decisions(self, axis: str = "log_sigma", estimator: str | None = None, n_boot: int = 200, seed: int = 0,
                  kind: str = "nodes") -> dict:
        """Decision sigma, half-peak window and bootstrap interval per internal node (``kind="nodes"``)
        or per level cut (``kind="levels"``); ``kind="both"`` gives both. ``axis`` is the variable
        the rate is taken against: ``log_sigma``, ``vp_time`` or ``log_snr`` (the peak moves with
        it). For convenience ``axis="nodes" | "levels" | "both"`` selects the kind on log sigma."""
        from probes.entropy import decide
        from probes.entropy.decisions import AXES

        if axis in ("nodes", "levels", "both"):
            axis, kind = "log_sigma", axis
        if axis not in AXES:
            raise ProbesError(f"decisions: axis must be one of {', '.join(AXES)}, not {axis!r}")
        if kind not in ("nodes", "levels", "both"):
            raise ProbesError(f"decisions: kind must be 'nodes', 'levels' or 'both', not {kind!r}")
        both = decide(self.entropy(estimator), n_boot=n_boot, seed=seed, axis=axis)
        return both if kind == "both" else both[kind]

    def compare(self, other: ProbeResult, estimator: str | None = None) -> dict:
        """Where in sigma ``other`` knows more than ``self``: per level, ``dI = I_other - I_self``
        of the mutual information ``I_l = H(cell_l) - H_l(sigma)``, its peak and half-peak band.
        The two results must share the taxonomy's levels and the sigma grid."""
        from probes.compare import _where

        a, b = self.entropy(estimator), other.entropy(estimator)
        if list(a.level_names) != list(b.level_names):
            raise ProbesError("compare: the results have different taxonomy levels; compare one taxonomy")
        if a.sigmas.shape != b.sigmas.shape or not np.allclose(a.sigmas, b.sigmas, rtol=1e-6):
            raise ProbesError("compare: the results have different sigma grids; probe with the same scheduler "
                              "and number of steps")
        delta = b.mutual_information() - a.mutual_information()
        return {level: {**_where(a.sigmas, delta[:, k]), "delta": delta[:, k]}
                for k, level in enumerate(a.level_names)}

    def plot(self, path=None, estimators: list[str] | None = None):
        """Level entropies against sigma (one panel per estimator). Writes a PNG when ``path`` is
        given and returns its path; otherwise returns the matplotlib figure."""
        from probes.report import plots

        curves = {n: self.entropy(n) for n in (estimators or list(self.estimates))}
        return plots.plot_curves(path, curves)

    # -- files ---------------------------------------------------------------------------------

    def write(self, directory, n_boot: int = 200, seed: int = 0, names: dict | None = None) -> tuple[dict, dict]:
        """Write the run directory's data files and plots (everything but ``run.json``); returns
        ``(curves, decisions)`` per estimator, decisions on the log-sigma axis (``decisions.csv``
        has every axis). ``names`` renames estimators in the CSV files (e.g. what a guided run's
        plain estimators measure). ``probes run`` writes its directories with this."""
        from probes.entropy import decide_axes
        from probes.report import plots
        from probes.report.rundir import atomic_write_text, write_curves_csv, write_decisions_csv, write_tree
        from probes.taxonomy.export import to_node_link

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        names = {n: (names or {}).get(n, n) for n in self.estimates}
        curves = {n: self.entropy(n) for n in self.estimates}
        by_axis = {n: decide_axes(c, n_boot=n_boot, seed=seed) for n, c in curves.items()}
        decisions = {n: d["log_sigma"] for n, d in by_axis.items()}
        primary = self.primary
        write_curves_csv(out / "curves.csv", {names[n]: c for n, c in curves.items()})
        write_decisions_csv(out / "decisions.csv", {names[n]: d for n, d in by_axis.items()})
        write_tree(out, self.taxonomy, decisions[primary])
        plots.plot_curves(out / "curves.png", curves)
        plots.plot_tree(out / "tree.png", self.taxonomy, decisions[primary])
        plots.plot_rates(out / "rates.png", curves[primary], decisions[primary])
        atomic_write_text(out / TAXONOMY_FILE, json.dumps(to_node_link(self.taxonomy), indent=1) + "\n")
        # safetensors, not pickle: loading a result directory can never run code.
        write_record(out / POSTERIORS_FILE, {"estimates": {n: vars(e) for n, e in self.estimates.items()},
                                             "prior": self.prior, "primary": primary,
                                             "inside_weighted": self.inside_weighted}, {"kind": "posteriors"})
        return curves, decisions

    @property
    def n_samples(self) -> int:
        first = next(iter(self.estimates.values()))
        return int((first.log_probs if first.log_probs is not None else first.levels).shape[0])

    def save(self, directory, n_boot: int = 200, seed: int = 0) -> Path:
        """Write the run directory (with ``run.json`` and ``summary.txt``); returns its path."""
        from probes.analysis import format_decision_tree
        from probes.report.rundir import atomic_write_text, write_run_json

        out = Path(directory)
        _, decisions = self.write(out, n_boot=n_boot, seed=seed)
        primary = self.primary
        write_run_json(out / "run.json", {
            "kind": "probe", "meta": self.meta, "n_samples": self.n_samples, "primary_estimator": primary,
            "estimators": {k: {"denoiser_calls": e.denoiser_calls, "classifier_calls": e.classifier_calls}
                           for k, e in self.estimates.items()},
            "decisions": decisions})
        title = f"{self.taxonomy.name}: decision-time tree ({primary} estimator, {self.n_samples} samples)"
        atomic_write_text(out / "summary.txt", format_decision_tree(self.taxonomy, decisions[primary], title) + "\n")
        return out


def load(directory) -> ProbeResult:
    """A :class:`ProbeResult` from a directory written by :meth:`ProbeResult.save`."""
    from probes.taxonomy.export import from_node_link

    path = Path(directory)
    missing = [f for f in (POSTERIORS_FILE, TAXONOMY_FILE, "run.json") if not (path / f).is_file()]
    if missing:
        raise ProbesError(f"{path}: not a saved probe result (no {', '.join(missing)})")
    try:
        data, _ = read_record(path / POSTERIORS_FILE)
        taxonomy_data = json.loads(read_text(path / TAXONOMY_FILE, "taxonomy file"))
        meta = json.loads(read_text(path / "run.json", "run.json")).get("meta") or {}
    except BatchInvalid as why:
        raise ProbesError(f"{path / POSTERIORS_FILE}: {why}") from None
    except (ValueError, AttributeError):
        raise ProbesError(f"{path}: taxonomy.json or run.json is not valid JSON") from None
    taxonomy = from_node_link(taxonomy_data, source=str(path / TAXONOMY_FILE))
    estimates = {n: EstimatorOutput(**fields) for n, fields in data["estimates"].items()}
    return ProbeResult(taxonomy=taxonomy, estimates=estimates, meta=meta, prior=data["prior"],
                       primary=data["primary"], inside_weighted=bool(data.get("inside_weighted", True)))
