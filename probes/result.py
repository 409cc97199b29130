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
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from probes.errors import ProbesError
from probes.estimators.base import EstimatorOutput
from probes.fileio import read_text
from probes.store import BatchInvalid, read_record, run_json_if_readable, write_record

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
        from probes.taxonomy import Taxonomy

        if not isinstance(self.taxonomy, Taxonomy):
            raise ProbesError(f"ProbeResult: taxonomy must be a Taxonomy, got {type(self.taxonomy).__name__}")
        if not isinstance(self.estimates, dict) or not self.estimates:
            raise ProbesError("a probe result needs at least one estimator's output (a dict name -> EstimatorOutput)")
        for name, out in self.estimates.items():
            problem = output_problem(out, self.taxonomy)
            if problem:
                raise ProbesError(f"ProbeResult: estimator {name!r}: {problem}")
        if not prior_fits(self.prior, self.taxonomy):
            raise ProbesError(f"ProbeResult: the prior must be a tensor [{len(self.taxonomy.leaves)}] over the "
                              "taxonomy's leaves")
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

    def compare(self, other: ProbeResult, estimator: str | None = None, pairing: str = "auto", n_boot: int = 200,
                seed: int = 0, ci: float = 0.95):
        """Where in sigma ``other`` (B) knows more than ``self`` (A): per level and per node,
        ``dI = I_B - I_A`` along sigma, its rate in log sigma, where each peaks, and joint bootstrap
        intervals (both results resampled in every replicate; ``pairing="paired"`` resamples
        sample i of both together, ``"auto"`` does so when both were drawn from the same seeds).
        Returns a :class:`probes.compare.Comparison`; the results must share the taxonomy's levels
        and the sigma grid."""
        from probes.compare import compare_results

        return compare_results(self, other, estimator=estimator, pairing=pairing, n_boot=n_boot, seed=seed, ci=ci)

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

    def summary(self, decisions: dict | None = None) -> str:
        """The primary estimator's decision-time tree as text (``summary.txt``; what ``probes run``
        prints). ``decisions`` are its nodes' and levels' decisions, computed when not given."""
        from probes.report.rundir import format_decision_tree

        if decisions is None:
            decisions = self.decisions(kind="both")
        title = f"{self.taxonomy.name}: decision-time tree ({self.primary} estimator, {self.n_samples} samples)"
        return format_decision_tree(self.taxonomy, decisions, title)

    def save(self, directory, n_boot: int = 200, seed: int = 0) -> Path:
        """Write the run directory (with ``run.json`` and ``summary.txt``); returns its path."""
        from probes.report.rundir import atomic_write_text, write_run_json

        out = Path(directory)
        _check_save_dir(out)
        _, decisions = self.write(out, n_boot=n_boot, seed=seed)
        primary = self.primary
        write_run_json(out / "run.json", {
            "kind": "probe", "meta": self.meta, "n_samples": self.n_samples, "primary_estimator": primary,
            "estimators": {k: {"denoiser_calls": e.denoiser_calls, "classifier_calls": e.classifier_calls}
                           for k, e in self.estimates.items()},
            "decisions": decisions})
        atomic_write_text(out / "summary.txt", self.summary(decisions[primary]) + "\n")
        return out


def _check_save_dir(out: Path) -> None:
    """A result is saved into a new or empty folder or over an earlier saved result, never over a
    ``probes run`` directory (its run.json and files would be replaced) or onto a file."""
    from probes.store import MARKER

    if out.exists() and not out.is_dir():
        raise ProbesError(f"save: {out} exists and is not a directory")
    if (out / MARKER).exists():
        raise ProbesError(f"save: {out} holds a probes run; saving a result there would replace its files; "
                          "choose another folder")
    if out.is_dir() and any(out.iterdir()) and run_json_if_readable(out).get("kind") != "probe":
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:3])
        raise ProbesError(f"save: {out} holds files that are not a saved result ({shown}); saving there could "
                          "replace them; choose a new or empty folder")


def load(directory) -> ProbeResult:
    """A :class:`ProbeResult` from a finished run directory (``probes run``) or a directory written
    by :meth:`ProbeResult.save`. Anything missing, unfinished or damaged is one line naming the file."""
    from probes.taxonomy.export import from_node_link

    if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory).strip():
        raise ProbesError(f"load: expected a run or result directory (a path), got {directory!r}")
    path = Path(directory)
    state = read_run_state(path)
    run = "status" in state  # written by ``probes run`` (a saved probe has no status)
    rewrite = "; rerun with --resume to rewrite it" if run else ""
    for name in (POSTERIORS_FILE, TAXONOMY_FILE):
        if not (path / name).is_file():
            raise ProbesError(f"{path / name}: missing, so {path} cannot be loaded{rewrite}")
    try:
        data, _ = read_record(path / POSTERIORS_FILE)
    except BatchInvalid as why:
        raise ProbesError(f"{path / POSTERIORS_FILE}: {why}{rewrite}") from None
    try:
        taxonomy_data = json.loads(read_text(path / TAXONOMY_FILE, "taxonomy file"))
    except ValueError:
        raise ProbesError(f"{path / TAXONOMY_FILE}: not valid JSON{rewrite}") from None
    taxonomy = from_node_link(taxonomy_data, source=str(path / TAXONOMY_FILE))
    estimates, prior, primary = _estimates_of(data, taxonomy, path / POSTERIORS_FILE)
    meta = dict(state.get("meta") or {}) if isinstance(state.get("meta"), dict) else {}
    if run:
        meta.update(_run_meta(state, list(estimates)))
    inside_weighted = data.get("inside_weighted", True)  # files written before it was recorded: True
    if not isinstance(inside_weighted, bool):
        raise ProbesError(f"{path / POSTERIORS_FILE}: inside_weighted is not true or false; not a probes result file")
    return ProbeResult(taxonomy=taxonomy, estimates=estimates, meta=meta, prior=prior, primary=primary,
                       inside_weighted=inside_weighted)


def read_run_state(path: Path) -> dict:
    """``run.json`` of a run or saved result directory, checked: one line for a folder that is not
    one, a damaged file, or a run that has not finished."""
    state_file = path / "run.json"
    if not state_file.is_file():
        raise ProbesError(f"{path}: not a probes run directory or saved probe result (no run.json)")
    try:
        state = json.loads(read_text(state_file, "run.json"))
    except ValueError:
        raise ProbesError(f"{state_file}: not valid JSON; rerun with --resume to rewrite it") from None
    if not isinstance(state, dict):
        raise ProbesError(f"{state_file}: not a probes run.json (not a JSON object); rerun with --resume to rewrite it")
    if "status" in state and state["status"] != "complete":
        raise ProbesError(f"{path}: the run is not finished (status {state['status']!r}); resume it first")
    return state


def sample_seeds(result: ProbeResult) -> str | None:
    """What fixes which random numbers sample i was drawn from, when known (runs: the recipe's seed
    and batch size; probes: the seeds of the pipeline call's generators, see
    :func:`probes.probing.generator_provenance`); two results with the same value and sample count
    hold paired samples."""
    if result.meta.get("sample_seeds") is not None:
        return result.meta["sample_seeds"]
    generator = result.meta.get("generator")
    if not isinstance(generator, dict) or not generator.get("seeds"):
        return None
    seeds = [int(s) for s in generator["seeds"]]
    if not generator.get("per_sample"):
        text = f"one generator, seed {seeds[0]}"
    elif len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        text = f"one generator per sample, seeds {seeds[0]} to {seeds[-1]}"
    else:
        text = f"one generator per sample, seeds {seeds}"
    device = generator.get("device", "cpu")
    return text if device == "cpu" else f"{text} on {device}"


def _run_meta(state: dict, estimators: list[str]) -> dict:
    """Provenance of a ``probes run`` directory from its run.json: name, seed, sample seeds, how it
    was conditioned and guided, and the names its files give the estimators (guided runs rename
    the plain ones)."""
    from probes.analysis import name_in_files

    recipe = state.get("recipe") if isinstance(state.get("recipe"), dict) else {}
    sampling = recipe.get("sampling") if isinstance(recipe.get("sampling"), dict) else {}
    guidance = sampling.get("guidance") if isinstance(sampling.get("guidance"), dict) else {}
    scale = guidance.get("scale", 1.0)
    meta = {"kind": "run", "name": state.get("name"), "seed": state.get("seed"),
            "condition": sampling.get("condition", "none"), "guidance_scale": _guidance_scale(scale),
            "guidance_interval": guidance.get("interval"),
            "names_in_files": {n: name_in_files(n, sampling.get("condition"), scale) for n in estimators}}
    if state.get("seed") is not None and sampling.get("batch_size") is not None:
        # Batch b draws from seed (recipe seed, b): the seed and the batch size fix every sample's draws.
        meta["sample_seeds"] = f"recipe seed {state['seed']}, batches of {sampling['batch_size']}"
    return meta


def _guidance_scale(scale) -> float:
    """The recorded guidance scale as a float; 0 (the unconditional denoiser) is a scale like any
    other, only a missing one means 1 (no guidance)."""
    return float(scale) if isinstance(scale, (int, float)) and not isinstance(scale, bool) else 1.0


def prior_fits(prior, taxonomy) -> bool:
    """Whether ``prior`` is absent or a tensor over the taxonomy's leaves."""
    return prior is None or (isinstance(prior, torch.Tensor) and tuple(prior.shape) == (len(taxonomy.leaves),))


def output_problem(out, taxonomy) -> str | None:
    """What makes an estimator's output unfit for ``taxonomy`` (shapes, a grid that does not fall),
    or ``None``."""
    if not isinstance(out, EstimatorOutput):
        return f"expected an EstimatorOutput, got {type(out).__name__}"
    sig = out.sigmas
    if not isinstance(sig, torch.Tensor) or sig.ndim != 1 or len(sig) < 1:
        return "has no sigma grid"
    if not (torch.isfinite(sig).all() and (sig > 0).all() and (sig[1:] < sig[:-1]).all()):
        return "its sigma grid is not positive, finite and descending"
    S, L, D, K = len(sig), len(taxonomy.leaves), taxonomy.max_depth, len(taxonomy.internal_nodes)
    if out.log_probs is None and out.levels is None:
        return "has neither posteriors nor entropies"
    shapes = [(out.log_probs, (S, L), "log_probs"), (out.levels, (S, D), "levels"), (out.nodes, (S, K), "nodes")]
    for value, tail, what in shapes:
        if value is not None and (not isinstance(value, torch.Tensor) or value.ndim != 3
                                  or tuple(value.shape[1:]) != tail):
            return f"{what} is not [samples, {tail[0]}, {tail[1]}] for this taxonomy"
    counts = {int(v.shape[0]) for v, _, _ in shapes if v is not None}
    if len(counts) > 1:
        return f"its tensors hold different numbers of samples ({sorted(counts)})"
    return None


def _estimates_of(data, taxonomy, source: Path) -> tuple[dict, torch.Tensor | None, str | None]:
    """The estimator outputs of a posteriors file, each checked against the taxonomy."""
    def bad(why: str) -> ProbesError:
        return ProbesError(f"{source}: {why}; not a probes result file")

    if not isinstance(data, dict) or not isinstance(data.get("estimates"), dict) or not data["estimates"]:
        raise bad("no estimates")
    known = {f.name for f in fields(EstimatorOutput)}
    estimates = {}
    for name, values in data["estimates"].items():
        if not isinstance(values, dict) or set(values) - known:
            raise bad(f"estimator {name!r} has unknown fields")
        try:
            out = EstimatorOutput(**values)
        except TypeError as why:
            raise bad(f"estimator {name!r}: {why}") from None
        problem = output_problem(out, taxonomy)
        if problem:
            raise bad(f"estimator {name!r}: {problem}")
        estimates[str(name)] = out
    prior, primary = data.get("prior"), data.get("primary")
    if not prior_fits(prior, taxonomy):
        raise bad(f"the prior is not [{len(taxonomy.leaves)}] for this taxonomy")
    if primary is not None and primary not in estimates:
        raise bad(f"the primary estimator {primary!r} has no estimates")
    return estimates, prior, primary
