"""One probe's result in memory: posteriors along the sigma grid, and everything derived from them.

:class:`ProbeResult` holds, per estimator, ``log p(leaf | x_sigma)`` as ``[samples, sigmas, leaves]``
(or per-sample entropies for ``immse``) with the taxonomy and the grid, what was kept of the samples
(:class:`~probes.kept_samples.KeptSamples`) and the provenance. Entropy curves, decisions,
comparisons and plots are computed from it on demand. ``probes.run``, ``probes.probe``,
``probes.load`` and ``probes.merge_results`` all return one; :meth:`ProbeResult.save` writes the
files of a run directory from memory (``docs/outputs.md``), and :func:`load` reads any directory
such a save or a ``probes run`` wrote (also those of earlier versions) back into one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from probes.comparison import Comparison, compare_results
from probes.entropy import EntropyCurves, decide, decide_axes
from probes.entropy.commitments import COMMIT_THRESHOLD, Commitments, commitments, final_leaves
from probes.entropy.decisions import AXES, check_n_boot, check_seed
from probes.errors import ProbesError, os_errors_named
from probes.estimators.base import EstimatorOutput
from probes.estimators.evidence import EvidenceMaps
from probes.fileio import read_text
from probes.kept_samples import KeptSamples
from probes.report import plots
from probes.report.evidence_maps import EVIDENCE_FILE, read_evidence
from probes.report.files import (
    CURVES_FILE,
    DECISIONS_FILE,
    POSTERIORS_FILE,
    RESULT_FILES,
    TAXONOMY_FILE,
    write_result_files,
)
from probes.report.rundir import CURVES_COLUMNS, DECISIONS_COLUMNS, format_decision_tree, name_in_files
from probes.report.samples import read_samples
from probes.store import MARKER, BatchInvalid, read_record, run_json_if_readable
from probes.taxonomy import Taxonomy
from probes.taxonomy.export import from_node_link

__all__ = ["POSTERIORS_FILE", "RESULT_FILES", "TAXONOMY_FILE", "ProbeResult", "load"]


@dataclass
class ProbeResult:
    """Posteriors of one probe (``probes.probe``) or run (``probes.run``), per estimator.

    Attributes:
        taxonomy: the taxonomy whose leaves index the last axis.
        estimates: estimator name -> :class:`~probes.estimators.EstimatorOutput`.
        output: what ``pipe(...)`` returned (``None`` for runs and after :func:`load`).
        trajectory: the recorded :class:`~probes.sampling.Trajectory` (not saved).
        meta: provenance: ``kind`` (``run`` or ``probe``), the family, pipeline and scheduler of a
            probe, the name, seed, conditioning and guidance of a run, how sample i was seeded.
        prior: ``[L]`` leaf prior, or ``None`` for uniform.
        primary: the estimator the summary methods use by default (the first one).
        inside_weighted: the samples came from the model's whole world, so where the model's world
            is larger than the taxonomy means are weighted by the inside mass ``p(T | x)``; False
            for samples drawn from the taxonomy's leaves (leaf-conditional generation).
        samples: what was kept of the samples (previews, x0 strips, classifier readings), or None.
        leaf: ``[N]`` each sample's conditioning leaf index where it is known (leaf-conditional
            runs, data paths; -1 where not), or None: the leaf its commitments end in.
        commit_threshold: the ``theta`` of :meth:`commitments` (a run's ``analysis.commit_threshold``).
        record: a run's ``run.json`` beyond the above (the recipe, timings, calls, quality, ...).
        n_boot, seed: the bootstrap behind the decisions that :meth:`save` writes.
        directory: where the result was saved or loaded from (None until then).
    """

    taxonomy: Any
    estimates: dict[str, EstimatorOutput]
    output: Any = None
    trajectory: Any = None
    meta: dict = field(default_factory=dict)
    prior: torch.Tensor | None = None
    primary: str | None = None
    inside_weighted: bool = True
    samples: KeptSamples | None = None
    leaf: torch.Tensor | None = None
    commit_threshold: float = COMMIT_THRESHOLD
    record: dict = field(default_factory=dict)
    n_boot: int = 200
    seed: int = 0
    directory: Path | None = None
    _curves: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
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
        if self.leaf is not None and (not isinstance(self.leaf, torch.Tensor) or self.leaf.shape != (self.n_samples,)):
            raise ProbesError(f"ProbeResult: leaf must be a tensor [{self.n_samples}] of leaf indices (-1: unknown)")

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

    @property
    def n_samples(self) -> int:
        first = next(iter(self.estimates.values()))
        return int((first.log_probs if first.log_probs is not None else first.levels).shape[0])

    @property
    def names_in_files(self) -> dict[str, str]:
        """Each estimator's name in curves.csv and decisions.csv: in guided leaf-conditional runs the
        plain estimators read the unguided posterior at guided states and are named for it."""
        given = self.meta.get("names_in_files")
        given = given if isinstance(given, dict) else {}
        return {n: str(given.get(n, n)) for n in self.estimates}

    # -- derived -------------------------------------------------------------------------------

    def entropy(self, estimator: str | None = None) -> EntropyCurves:
        """:class:`~probes.entropy.EntropyCurves` (level entropies, node contributions, in nats)."""
        name = self._pick(estimator)
        if name not in self._curves:
            out = self.estimates[name]
            if out.log_probs is None and out.prior_levels is None:  # per-sample entropies (immse)
                self._curves[name] = EntropyCurves.from_per_sample(
                    sigmas=out.sigmas, taxonomy=self.taxonomy, levels=out.levels, nodes=out.nodes, prior=self.prior,
                    bounds=out.bounds)
            else:
                self._curves[name] = out.curves(self.taxonomy, prior=self.prior, inside_weighted=self.inside_weighted)
        return self._curves[name]

    def decisions(self, axis: str = "log_sigma", estimator: str | None = None, n_boot: int | None = None,
                  seed: int | None = None, kind: str = "nodes") -> dict:
        """Decision sigma, half-peak window and bootstrap interval per internal node (``kind="nodes"``)
        or per level cut (``kind="levels"``); ``kind="both"`` gives both. ``axis`` is the variable
        the rate is taken against: ``log_sigma``, ``vp_time`` or ``log_snr`` (the peak moves with
        it). For convenience ``axis="nodes" | "levels" | "both"`` selects the kind on log sigma.
        ``n_boot`` and ``seed`` default to the result's own (a run's recipe, else 200 and 0)."""
        if axis in ("nodes", "levels", "both"):
            axis, kind = "log_sigma", axis
        if axis not in AXES:
            raise ProbesError(f"decisions: axis must be one of {', '.join(AXES)}, not {axis!r}")
        if kind not in ("nodes", "levels", "both"):
            raise ProbesError(f"decisions: kind must be 'nodes', 'levels' or 'both', not {kind!r}")
        both = decide(self.entropy(estimator), n_boot=self.n_boot if n_boot is None else n_boot,
                      seed=self.seed if seed is None else seed, axis=axis)
        return both if kind == "both" else both[kind]

    def decisions_by_axis(self, estimator: str | None = None) -> dict:
        """``{axis: {"nodes", "levels"}}`` on every axis, with the result's bootstrap settings
        (what decisions.csv holds)."""
        return decide_axes(self.entropy(estimator), n_boot=self.n_boot, seed=self.seed)

    def commitments(self, estimator: str | None = None, theta: float | None = None) -> Commitments:
        """Per-sample commitment sigma and argmax flips at every node above each sample's final
        leaf (:mod:`probes.entropy.commitments`), from an estimator with per-sample posteriors."""
        name = self._pick(estimator)
        log_probs = self.log_posteriors(name)
        sigmas = self.sigmas(name)
        final = final_leaves(log_probs, sigmas, None if self.leaf is None else self.leaf.numpy())
        return commitments(log_probs, sigmas, self.taxonomy, final,
                           theta=self.commit_threshold if theta is None else theta)

    def evidence_maps(self, estimator: str | None = None) -> tuple[str, EvidenceMaps] | None:
        """``(estimator, maps)``: the Bayes filter's per-position evidence maps
        (``analysis.evidence_maps``; :class:`~probes.estimators.evidence.EvidenceMaps`), of
        ``estimator`` or of the first estimator that has them; None where none has."""
        names = [self._pick(estimator)] if estimator is not None else list(self.estimates)
        for name in names:
            if self.estimates[name].evidence is not None:
                return name, self.estimates[name].evidence
        return None

    def compare(self, other: ProbeResult, estimator: str | None = None, pairing: str = "auto", n_boot: int = 200,
                seed: int = 0, ci: float = 0.95) -> Comparison:
        """Where in sigma ``other`` (B) knows more than ``self`` (A): per level and per node,
        ``dI = I_B - I_A`` along sigma, its rate in log sigma, where each peaks, and joint bootstrap
        intervals (both results resampled in every replicate; ``pairing="paired"`` resamples
        sample i of both together, ``"auto"`` does so when both were drawn from the same seeds).
        Returns a :class:`probes.comparison.Comparison`."""
        return compare_results(self, other, estimator=estimator, pairing=pairing, n_boot=n_boot, seed=seed, ci=ci)

    def plot(self, path=None, estimators: list[str] | None = None):
        """Level entropies against sigma (one panel per estimator). Writes a PNG when ``path`` is
        given and returns its path; otherwise returns the matplotlib figure."""
        curves = {n: self.entropy(n) for n in (estimators or list(self.estimates))}
        return plots.plot_curves(path, curves)

    def summary(self, decisions: dict | None = None) -> str:
        """The primary estimator's decision-time tree as text (``summary.txt``; what ``probes run``
        prints), with a run's theory and sample-quality lines where it has them."""
        if decisions is None:
            decisions = self.decisions(kind="both")
        title = f"{self.taxonomy.name}: decision-time tree ({self.primary} estimator, {self.n_samples} samples)"
        lines = [format_decision_tree(self.taxonomy, decisions, title)]
        lines += [line for line in (self.record.get("summary_lines") or []) if isinstance(line, str)]
        return "\n".join(lines)

    # -- files ---------------------------------------------------------------------------------

    @os_errors_named()
    def save(self, directory, n_boot: int | None = None, seed: int | None = None) -> Path:
        """Write the result's files into ``directory`` (new, empty, or an earlier saved result),
        the same files a ``probes run`` directory holds apart from its batches; returns the path."""
        out = Path(directory)
        _check_save_dir(out)
        if n_boot is not None:
            self.n_boot = check_n_boot(n_boot, "save: n_boot")
        if seed is not None:
            self.seed = check_seed(seed, "save: seed")
        write_result_files(self, out)
        self.directory = out
        return out

    def __repr__(self) -> str:
        names = ", ".join(f"{n}*" if n == self.primary else n for n in self.estimates)
        decided = self.decisions(n_boot=0)
        shown = [f"{n} {d.decision_sigma:.3g}" for n, d in list(decided.items())[:4] if d is not None]
        more = " ..." if len(decided) > 4 else ""
        where = f", saved in {self.directory}" if self.directory is not None else ""
        kind = self.meta.get("kind", "probe")
        name = f" {self.meta['name']!r}" if self.meta.get("name") else ""
        return (f"<ProbeResult ({kind}{name}) {self.taxonomy.name}: {self.n_samples} samples x "
                f"{len(self.sigmas())} sigmas x {len(self.taxonomy.leaves)} leaves; estimators {names}; "
                f"decision sigma {'; '.join(shown) or 'none'}{more}{where}>")

    __str__ = summary


def _check_save_dir(out: Path) -> None:
    """A result is saved into a new or empty folder or over an earlier saved result, never over a
    ``probes run`` directory (its run.json and files would be replaced) or onto a file."""
    if out.is_symlink():
        raise ProbesError(f"save: {out} is a symbolic link; give the folder itself")
    if out.exists() and not out.is_dir():
        raise ProbesError(f"save: {out} exists and is not a directory")
    if (out / MARKER).exists():
        raise ProbesError(f"save: {out} holds a probes run; saving a result there would replace its files; "
                          "choose another folder")
    if out.is_dir() and any(out.iterdir()) and run_json_if_readable(out).get("kind") not in ("probe", "run"):
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:3])
        raise ProbesError(f"save: {out} holds files that are not a saved result ({shown}); saving there could "
                          "replace them; choose a new or empty folder")


@os_errors_named()
def load(directory) -> ProbeResult:
    """A :class:`ProbeResult` from a finished run directory (``probes run``) or a directory written
    by :meth:`ProbeResult.save`. Anything missing, unfinished or damaged is one line naming the file."""
    if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory).strip():
        raise ProbesError(f"load: expected a run or result directory (a path), got {directory!r}")
    path = Path(directory)
    state = read_run_state(path)
    run = state.get("kind") == "run" or ("status" in state and "kind" not in state)
    rewrite = "; rerun with --resume to rewrite it" if (path / MARKER).exists() else ""
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
    for name, columns in ((CURVES_FILE, CURVES_COLUMNS), (DECISIONS_FILE, DECISIONS_COLUMNS)):
        _check_table(path / name, columns, rewrite or "; save the result again to rewrite it")
    meta = dict(state.get("meta") or {}) if isinstance(state.get("meta"), dict) else {}
    if run:
        meta.update(_run_meta(state, list(estimates)))
    inside_weighted = data.get("inside_weighted", True)  # files written before it was recorded: True
    if not isinstance(inside_weighted, bool):
        raise ProbesError(f"{path / POSTERIORS_FILE}: inside_weighted is not true or false; not a probes result file")
    analysis = _analysis_of(state)
    record = {k: v for k, v in state.items() if k not in ("meta", "versions")} if run else {}
    leaf = data.get("leaf")
    n = next(iter(estimates.values()))
    n = int((n.log_probs if n.log_probs is not None else n.levels).shape[0])
    if leaf is not None and (not isinstance(leaf, torch.Tensor) or leaf.shape != (n,) or leaf.is_floating_point()):
        raise ProbesError(f"{path / POSTERIORS_FILE}: leaf is not [{n}] leaf indices; not a probes result file")
    if (path / EVIDENCE_FILE).is_file():
        estimator, maps = read_evidence(path / EVIDENCE_FILE, taxonomy, n)
        if estimator not in estimates:
            raise ProbesError(f"{path / EVIDENCE_FILE}: holds the maps of estimator {estimator!r}, which this "
                              "result does not have")
        estimates[estimator].evidence = maps
    return ProbeResult(taxonomy=taxonomy, estimates=estimates, meta=meta, prior=prior, primary=primary,
                       inside_weighted=inside_weighted, samples=read_samples(path), leaf=leaf,
                       commit_threshold=analysis[2], record=record, n_boot=analysis[0], seed=analysis[1],
                       directory=path)


def _check_table(path: Path, columns: list[str], fix: str) -> None:
    """A result directory's table is there and is the table it says (its header row): a run whose
    files were damaged is said to be damaged, even where the posteriors alone would do."""
    if not path.is_file():
        raise ProbesError(f"{path}: missing, so the directory is incomplete{fix}")
    first = read_text(path, path.name).split("\n", 1)[0].strip()
    if first.split(",")[: len(columns)] != columns:
        raise ProbesError(f"{path}: not a probes {path.stem} table (its first line is {first[:60]!r}){fix}")


def _analysis_of(state: dict) -> tuple[int, int, float]:
    """The bootstrap settings and commitment threshold a directory's files were made with (runs:
    from the recipe; anything unreadable: the defaults)."""
    recipe = state.get("recipe") if isinstance(state.get("recipe"), dict) else {}
    analysis = recipe.get("analysis") if isinstance(recipe.get("analysis"), dict) else {}
    n_boot = analysis.get("n_boot", state.get("n_boot", 200))
    seed = state.get("seed", 0) if "recipe" in state else state.get("bootstrap_seed", 0)
    theta = analysis.get("commit_threshold", state.get("commit_threshold", COMMIT_THRESHOLD))
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0
    theta_ok = isinstance(theta, float) and 0.5 < theta < 1
    return (n_boot if ok(n_boot) else 200), (seed if ok(seed) else 0), (theta if theta_ok else COMMIT_THRESHOLD)


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


def _run_meta(state: dict, estimators: list[str]) -> dict:
    """Provenance of a ``probes run`` directory from its run.json: name, seed, sample seeds, how it
    was conditioned and guided, and the names its files give the estimators (guided runs rename
    the plain ones)."""
    recipe = state.get("recipe") if isinstance(state.get("recipe"), dict) else {}
    sampling = recipe.get("sampling") if isinstance(recipe.get("sampling"), dict) else {}
    guidance = sampling.get("guidance") if isinstance(sampling.get("guidance"), dict) else {}
    scale = guidance.get("scale", 1.0)
    meta = {"kind": "run", "name": state.get("name"), "seed": state.get("seed"),
            "condition": sampling.get("condition", "none"), "guidance_scale": _guidance_scale(scale),
            "guidance_interval": guidance.get("interval"),
            "names_in_files": {n: name_in_files(n, sampling.get("condition"), scale, guidance.get("schedule"))
                               for n in estimators}}
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
    known = {f.name for f in fields(EstimatorOutput)} - {"evidence"}  # the maps have a file of their own
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
