"""Compare two results: where in sigma does one inject more information about the leaf?

The typical use is classifier-free guidance: run the same recipe at guidance 1 and at w, then

    probes compare runs/w1 runs/w3 --out runs/w3-vs-w1

gives, per taxonomy level and per internal node, ``dI(sigma) = I_B - I_A`` (nats), its rate in
log sigma, where each peaks, joint bootstrap intervals for all of these
(:mod:`probes.entropy.difference`), and how far each node's decision moved. Both arguments are
loaded as :class:`~probes.result.ProbeResult` (a ``probes run`` directory or a saved result), and
the comparison is :meth:`ProbeResult.compare`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probes.entropy.difference import (
    PAIRINGS,
    CurveComparison,
    compare_curves,
    prior_sums,
    restricted_curves,
    shared_subtree,
)
from probes.errors import ProbesError, os_errors_named
from probes.report.compare_plots import plot_decision_trees
from probes.report.html import write_compare_report
from probes.report.plots import plot_comparison
from probes.report.rundir import GUIDED_SUFFIX, atomic_write_text, format_float, write_csv


@dataclass
class Comparison:
    """What :meth:`ProbeResult.compare` returns: B's information gain over A per level and node.

    ``levels`` and ``nodes`` map each level depth / node name to a
    :class:`~probes.entropy.difference.Difference` (``delta``, ``rate``, their intervals, peaks);
    ``shifts`` gives each node's decision sigma in A and B, how far it moved on each axis and the
    bootstrap interval of that shift (``curves.shifts`` holds the same as
    :class:`~probes.entropy.difference.DecisionShift` objects); ``pairing`` says how the bootstrap
    resampled the two (``paired`` or ``independent``) and ``pairing_reason`` why.
    """

    estimator: str
    pairing: str
    pairing_reason: str
    curves: CurveComparison
    shifts: dict
    names_in_files: tuple[str, str] | None = None  # the estimator's name in A's and B's files
    taxonomy: object = None  # the taxonomy compared over (the subtree both share where theirs differ)
    notes: tuple[str, ...] = ()  # one line each: how differing grids or taxonomies were aligned

    @property
    def levels(self) -> dict:
        return self.curves.levels

    @property
    def nodes(self) -> dict:
        return self.curves.nodes

    def to_dict(self) -> dict:
        """The scalars as JSON-ready values (what ``compare.json`` holds)."""
        c = self.curves
        return {"estimator": self.estimator, "names_in_files": list(self.names_in_files or ()),
                "pairing": self.pairing, "pairing_reason": self.pairing_reason,
                "n_boot": c.n_boot, "ci": c.ci, "seed": c.seed, "n_samples": list(c.n_samples),
                "levels": {str(k): d.summary() for k, d in c.levels.items()},
                "nodes": {k: d.summary() for k, d in c.nodes.items()},
                "decision_shifts": self.shifts}

    def text(self, label_a="A", label_b="B") -> str:
        c = self.curves
        pct = f"{100 * c.ci:g}%"
        lines = [f"{label_b} vs {label_a} ({self._what()}): dI = I_B - I_A per level",
                 f"intervals: {pct} joint bootstrap, {c.n_boot} replicates, {self.pairing} "
                 f"({self.pairing_reason})", *self.notes]
        for level, d in c.levels.items():
            lines.append(f"  level {level}: " + _describe(d, pct))
        if c.nodes:
            lines.append("dI per node (information about the node's split):")
            for node, d in c.nodes.items():
                lines.append(f"  {node}: " + _describe(d, pct))
        interval = f" with its {pct} joint bootstrap interval" if c.n_boot else ""
        lines.append(f"decision sigma per node (A -> B, ratio B / A{interval}; the decision's shift in VP time "
                     "t = log(1 + sigma^2) / 2):")
        for node, s in self.shifts.items():
            lines.append(f"  {node}: {s['sigma_a']:.3g} -> {s['sigma_b']:.3g} (x{s['ratio']:.2f}"
                         + ("" if s["ratio_interval"] is None else
                            f", {pct} x{s['ratio_interval'][0]:.2f} to x{s['ratio_interval'][1]:.2f}") + ")"
                         + _describe_shift(c.shifts.get(node, {}).get("vp_time"), pct))
        return "\n".join(lines)

    def _what(self) -> str:
        a, b = self.names_in_files or (self.estimator, self.estimator)
        if a == b:
            return f"{a} estimator"
        return f"{self.estimator} estimator: {a} in A, {b} in B"

    def __repr__(self) -> str:
        moved = [f"{n} x{s['ratio']:.2f}" for n, s in list(self.shifts.items())[:4]
                 if s.get("ratio") is not None and math.isfinite(s["ratio"])]
        more = " ..." if len(self.shifts) > 4 else ""
        return (f"<Comparison {self._what()}, {self.pairing} bootstrap: {len(self.levels)} levels, "
                f"{len(self.nodes)} nodes; decision sigma B / A: {'; '.join(moved) or 'none'}{more}>")

    def __str__(self) -> str:
        return self.text()

    @os_errors_named()
    def save(self, out, label_a="A", label_b="B") -> Path:
        """``compare.csv`` (levels), ``compare_nodes.csv``, ``compare_shifts.csv`` (decision shifts),
        ``compare.json``, ``compare.png``, ``trees.png`` (both decision-time trees on the shared log-SNR
        axis; PDF copies beside both) and ``report.html`` in ``out`` (new, empty or an earlier
        comparison); returns ``out``."""
        out = Path(out)
        check_out(out)
        out.mkdir(parents=True, exist_ok=True)
        extra = ["delta_lo", "delta_hi", "rate", "rate_lo", "rate_hi"]
        for name, key, table in (("compare.csv", "level", self.levels), ("compare_nodes.csv", "node", self.nodes)):
            rows = []
            for label, d in table.items():
                columns = (d.sigmas, d.info_a, d.info_b, d.delta, d.stderr, d.delta_interval[0], d.delta_interval[1],
                           d.rate, d.rate_interval[0], d.rate_interval[1])
                rows += [[label] + [format_float(v) for v in values] for values in zip(*columns)]
            write_csv(out / name, [key, "sigma", "mutual_info_a", "mutual_info_b", "delta_mutual_info", "stderr",
                                   *extra], rows)
        rows = [[node, axis, format_float(d.sigma_a), format_float(d.sigma_b), format_float(d.shift),
                 *(format_float(v) for v in (d.interval or (math.nan, math.nan))), d.n_boot]
                for node, axes in self.curves.shifts.items() for axis, d in axes.items()]
        write_csv(out / "compare_shifts.csv", ["node", "axis", "sigma_a", "sigma_b", "shift", "shift_lo", "shift_hi",
                                               "n_boot"], rows)
        payload = {"a": str(label_a), "b": str(label_b), **self.to_dict()}
        atomic_write_text(out / "compare.json", json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
        plot_comparison(out / "compare.png", self)
        if self.taxonomy is not None:
            plot_decision_trees(out / "trees.png", self, str(label_a), str(label_b))
        write_compare_report(out, self, label_a, label_b)
        return out

    write = save


def _describe_shift(shift, pct: str) -> str:
    if shift is None or not math.isfinite(shift.shift):
        return ""
    text = f"; t {shift.shift:+.3f}"
    if shift.interval is not None:
        text += f" ({pct} {shift.interval[0]:+.3f} to {shift.interval[1]:+.3f})"
    return text


COMPARE_FILES = ("compare.csv", "compare_nodes.csv", "compare_shifts.csv", "compare.json", "compare.png", "compare.pdf",
                 "trees.png", "trees.pdf", "report.html")


def check_out(out: Path) -> None:
    """The comparison's folder is new, empty or an earlier comparison: never a run directory or a
    folder of the user's own files, whose ``report.html`` it would replace."""
    if out.exists() and not out.is_dir():
        raise ProbesError(f"--out {out}: exists and is not a directory")
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    foreign = [name for name in entries if name not in COMPARE_FILES]
    if foreign or (entries and "compare.json" not in entries):
        shown = ", ".join((foreign or entries)[:3])
        raise ProbesError(f"--out {out}: holds files that are not an earlier comparison ({shown}); choose an empty "
                          "or new folder")


def _describe(d, pct: str) -> str:
    if d.peak_sigma is None:
        return "no difference"
    lo, hi = d.band
    text = f"dI peaks at {d.peak_delta:+.3f} nats"
    if d.peak_delta_interval is not None:
        text += f" ({pct} {d.peak_delta_interval[0]:+.3f} to {d.peak_delta_interval[1]:+.3f})"
    text += f" at sigma={d.peak_sigma:.3g}"
    if d.peak_interval is not None:
        text += f" ({d.peak_interval[0]:.3g}-{d.peak_interval[1]:.3g})"
    text += f"; |dI| above half its peak for sigma in [{lo:.3g}, {hi:.3g}]"
    if d.rate_peak_sigma is not None:
        text += f"; changes fastest at sigma={d.rate_peak_sigma:.3g}"
        if d.rate_peak_interval is not None:
            text += f" ({d.rate_peak_interval[0]:.3g}-{d.rate_peak_interval[1]:.3g})"
        text += f", {d.rate_peak:+.3f} nats per unit log sigma as sigma falls"
    return text


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# --- the comparison ---------------------------------------------------------------------------


def estimator_name(result, estimator: str | None) -> str:
    """The estimator to compare in ``result``: the given one (as named in the result or in its
    files, where guided runs add ``:unguided_posterior``), or the result's primary one."""
    name = estimator or result.primary
    if name not in result.estimates and name.endswith(GUIDED_SUFFIX):
        name = name[: -len(GUIDED_SUFFIX)]
    return name


def choose_pairing(a, b, pairing: str = "auto") -> tuple[bool, str]:
    """``(paired, why)``: sample i of A and B are resampled together when they were drawn from the
    same seeds and both hold as many samples (``auto``), or when asked (``paired``)."""
    if pairing not in ("auto",) + PAIRINGS:
        raise ProbesError(f"compare: pairing must be auto, paired or independent, not {pairing!r}")
    same_count = a.n_samples == b.n_samples
    if pairing == "paired":
        if not same_count:
            raise ProbesError(f"--pairing paired: the runs hold {a.n_samples} and {b.n_samples} samples; "
                              "pairing needs as many in both")
        return True, "as asked"
    if pairing == "independent":
        return False, "as asked"
    unpaired = a.meta.get("unpaired") or b.meta.get("unpaired")
    if unpaired:
        return False, str(unpaired)
    seeds_a, seeds_b = sample_seeds(a), sample_seeds(b)
    if seeds_a is None or seeds_b is None:
        return False, "the seeds of the samples are not recorded"
    if seeds_a != seeds_b:
        return False, "drawn from different seeds"
    if not same_count:
        return False, f"same seeds but {a.n_samples} and {b.n_samples} samples"
    return True, f"same seeds ({seeds_a}) and {a.n_samples} samples"


def compare_results(a, b, estimator: str | None = None, pairing: str = "auto", n_boot: int = 200, seed: int = 0,
                    ci: float = 0.95) -> Comparison:
    """:meth:`probes.result.ProbeResult.compare`: B's information gain over A (see the module docstring)."""
    for result, which in ((a, "A"), (b, "B")):
        if not all(hasattr(result, attr) for attr in ("taxonomy", "estimates", "entropy", "meta", "n_samples")):
            raise ProbesError(f"compare: result {which} is a {type(result).__name__}, not a ProbeResult")
    shared = shared_subtree(a.taxonomy, b.taxonomy)  # None: one taxonomy
    name = estimator_name(a, estimator)
    for result, which in ((a, "A"), (b, "B")):
        if name not in result.estimates:
            raise ProbesError(f"compare: estimator {name!r} is not in result {which} (it has "
                              f"{', '.join(result.estimates)}); pass --estimator")
    paired, why = choose_pairing(a, b, pairing)
    if shared is None:
        taxonomy = a.taxonomy
        curves_a, curves_b = a.entropy(name), b.entropy(name)
        sums_a, sums_b = _prior_sums(a, name, curves_a), _prior_sums(b, name, curves_b)
    else:
        taxonomy = shared.taxonomy
        (curves_a, sums_a), (curves_b, sums_b) = (
            restricted_curves(r.estimates[name].log_probs, r.estimates[name].sigmas, columns, taxonomy, r.prior,
                              f"estimator {name!r} of result {which}")
            for r, columns, which in ((a, shared.columns_a, "A"), (b, shared.columns_b, "B")))
    curves = compare_curves(curves_a, curves_b, paired=paired, n_boot=n_boot, seed=seed, ci=ci,
                            prior_sums_a=sums_a, prior_sums_b=sums_b)
    files = tuple((r.meta.get("names_in_files") or {}).get(name, name) for r in (a, b))
    notes = tuple(line for line in (shared and shared.text(), curves.alignment.text()) if line)
    return Comparison(estimator=name, pairing=curves.pairing, pairing_reason=why, curves=curves,
                      shifts={node: _shift_summary(axes) for node, axes in curves.shifts.items()},
                      names_in_files=files, taxonomy=taxonomy, notes=notes)


def _prior_sums(result, name: str, curves):
    """Per sample, what a mean-posterior prior averages (None for estimators of entropies)."""
    log_probs = result.estimates[name].log_probs
    return None if log_probs is None else prior_sums(curves, log_probs.double().numpy())


def _shift_summary(axes: dict) -> dict:
    """One node's decision shift as JSON-ready values: on log sigma at the top (the sigmas, their
    ratio B / A and its interval, ``log_shift = log ratio`` and its interval), every axis under
    ``axes``."""
    d = axes["log_sigma"]
    sa, sb = d.sigma_a, d.sigma_b
    return {"sigma_a": sa, "sigma_b": sb, "ratio": sb / sa if sa and math.isfinite(sa) else math.nan,
            "ratio_interval": None if d.interval is None else [math.exp(v) for v in d.interval],
            "log_shift": d.shift, "log_shift_interval": None if d.interval is None else list(d.interval),
            "n_boot": d.n_boot, "axes": {axis: s.summary() for axis, s in axes.items()}}


def sample_seeds(result) -> str | None:
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
