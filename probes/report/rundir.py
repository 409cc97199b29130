"""Writers for the run directory: ``run.json``, ``curves.csv``, ``decisions.csv``, ``tree.*``,
``summary.txt``.

These files are the product's output and their formats are stable; ``docs/outputs.md`` documents
every column and attribute. All files are written atomically (a temporary file in the same folder,
then ``os.replace``), so a reader never sees half a file.

CSV conventions: comma-separated, a header row, ``\\n`` line ends, floats in Python's shortest
round-trip form, missing values (NaN, undecided nodes) as empty fields, booleans ``true``/``false``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np

import probes.noise as noise
from probes.entropy.decisions import AXES, Decision, undecided_reasons
from probes.entropy.engine import EntropyCurves
from probes.fileio import atomic_path, atomic_write_text
from probes.report.layout import drawn_heights, inverted_edges
from probes.taxonomy.export import write_taxonomy

CURVES_COLUMNS = [
    "estimator", "sigma", "vp_time", "log_snr", "kind", "name",
    "entropy", "stderr", "mutual_info", "n_samples", "entropy_lo", "entropy_hi", "inside_mass",
]
DECISIONS_COLUMNS = [
    "estimator", "kind", "name", "decision_sigma", "window_lo", "window_hi",
    "interval_lo", "interval_hi", "vp_time", "log_snr", "peak_rate", "at_edge",
    "axis", "points_per_half_width", "under_resolved",
]
VERSION_PACKAGES = {
    "probes": "probes",
    "torch": "torch",
    "numpy": "numpy",
    "networkx": "networkx",
    "matplotlib": "matplotlib",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "open_clip": "open_clip_torch",
    "timm": "timm",
}


#: How a guided leaf-conditional run's files name its plain estimators: they read the unguided
#: model's posterior at guided states, not the entropy of the run's own (guided) process.
GUIDED_SUFFIX = ":unguided_posterior"


def name_in_files(name: str, condition, guidance_scale, schedule=None) -> str:
    """An estimator's name in curves.csv / decisions.csv given how the run sampled: in guided
    leaf-conditional runs only ``guided`` measures the entropy of the run's own process; the others
    are named for what they read (``<name>:unguided_posterior``)."""
    guided_run = condition == "leaf" and (guidance_scale != 1.0 or bool(schedule))
    if guided_run and name != "guided":
        return f"{name}{GUIDED_SUFFIX}"
    return name


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def format_float(x) -> str:
    """A float in shortest round-trip form; NaN / None as an empty field."""
    if x is None:
        return ""
    x = float(x)
    if not math.isfinite(x):
        return "" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return repr(x)


def write_csv(path, columns: list[str], rows) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


# --------------------------------------------------------------------------------------------
# curves.csv and decisions.csv
# --------------------------------------------------------------------------------------------


def write_curves_csv(path, curves_by_estimator: Mapping[str, EntropyCurves]) -> Path:
    """The mean entropy curves of every estimator as one long table (see docs/outputs.md).

    Row order: estimator (alphabetical), kind (``level`` rows, then ``node`` rows, then the
    ``inside`` rows of the root where the model's world is larger than the taxonomy), name (levels
    by depth; nodes in taxonomy pre-order, root first), sigma descending (sampling order).
    """
    rows = []
    for est in sorted(curves_by_estimator):
        c = curves_by_estimator[est]
        order = np.argsort(-c.sigmas, kind="stable")
        sig = c.sigmas[order]
        vp = [noise.vp_time(float(s)) for s in sig]
        ls = [noise.log_snr(float(s)) for s in sig]
        families = [
            ("level", [str(n) for n in c.level_names], c.level_mean(), c.level_stderr(),
             c.mutual_information(), c.level_count(), c.level_bounds()),
            ("node", list(c.node_names), c.node_mean(), c.node_stderr(),
             c.node_mutual_information(), c.node_count(), c.node_bounds()),
        ]
        for kind, names, mean, se, mi, count, band in families:
            mean, se, count = mean[order], se[order], count[order]
            mi = None if mi is None else mi[order]
            lo, hi = (None, None) if band is None else (band[0][order], band[1][order])
            for k, name in enumerate(names):
                for i in range(len(sig)):
                    rows.append([
                        est, format_float(sig[i]), format_float(vp[i]), format_float(ls[i]), kind, name,
                        format_float(mean[i, k]), format_float(se[i, k]),
                        "" if mi is None else format_float(mi[i, k]), str(int(count[i, k])),
                        "" if lo is None else format_float(lo[i, k]), "" if hi is None else format_float(hi[i, k]), "",
                    ])
        if c.inside is not None:  # p(T | x_sigma): the root's rows, entropy columns empty
            mass, se = c.inside_mean()[order], c.inside_stderr()[order]
            count = np.isfinite(c.inside).sum(0)[order]
            root = c.node_names[0] if c.node_names else ""
            for i in range(len(sig)):
                rows.append([est, format_float(sig[i]), format_float(vp[i]), format_float(ls[i]), "inside", root,
                             "", format_float(se[i]), "", str(int(count[i])), "", "", format_float(mass[i])])
    return write_csv(path, CURVES_COLUMNS, rows)


COMMITMENT_COLUMNS = ["estimator", "sample", "node", "final_child", "commit_sigma", "flips"]


def write_commitments_csv(path, by_estimator: Mapping) -> Path:
    """Per-sample commitments of every estimator with posteriors, one row per (sample, node above
    its final leaf); ``commit_sigma`` empty where the sample never commits (see docs/outputs.md).
    Row order: estimator (alphabetical), then sample and path order (root first)."""
    rows = []
    for est in sorted(by_estimator):
        for sample, node, child, sigma, flips in by_estimator[est].rows():
            rows.append([est, sample, node, child, format_float(sigma), flips])
    return write_csv(path, COMMITMENT_COLUMNS, rows)


def split_decisions(decisions) -> tuple[Mapping, Mapping]:
    """(levels, nodes) from a ``decide()`` result or a plain ``{node: Decision}`` mapping."""
    if (
        isinstance(decisions, Mapping)
        and decisions
        and set(decisions) <= {"nodes", "levels"}
        and all(isinstance(v, Mapping) for v in decisions.values())
    ):
        return decisions.get("levels", {}) or {}, decisions.get("nodes", {}) or {}
    return {}, decisions or {}


def write_decisions_csv(path, decisions_by_estimator: Mapping[str, Mapping]) -> Path:
    """Decisions of every estimator, one row per level and internal node (see docs/outputs.md).

    ``decisions_by_estimator[name]`` is a :func:`probes.entropy.decide` result, or a
    :func:`probes.entropy.decide_axes` result ``{axis: decide() result}`` for one row per axis.
    Undecided nodes (flat or unsupported curves) get a row with empty values but their axis.
    Row order: estimator (alphabetical), axis (in the order given), ``level`` rows by depth, then
    ``node`` rows in the decide() (taxonomy pre-order) order.
    """
    rows = []
    for est in sorted(decisions_by_estimator):
        by_axis = decisions_by_estimator[est]
        if not (isinstance(by_axis, Mapping) and by_axis and set(by_axis) <= set(AXES)):
            by_axis = {"log_sigma": by_axis}
        for axis, decisions in by_axis.items():
            rows += _decision_rows(est, axis, decisions)
    return write_csv(path, DECISIONS_COLUMNS, rows)


def _decision_rows(est: str, axis: str, decisions) -> list[list[str]]:
    rows = []
    levels, nodes = split_decisions(decisions)
    for kind, family in (("level", levels), ("node", nodes)):
        for name, d in family.items():
            if d is None:
                rows.append([est, kind, str(name)] + [""] * (len(DECISIONS_COLUMNS) - 6) + [axis, "", ""])
                continue
            interval = d.interval or (None, None)
            rows.append([
                est, kind, str(name), format_float(d.decision_sigma), format_float(d.window[0]),
                format_float(d.window[1]), format_float(interval[0]), format_float(interval[1]),
                format_float(d.vp_time), format_float(d.log_snr), format_float(d.peak_rate),
                "true" if d.at_edge else "false", d.axis, format_float(d.points_per_half_width),
                "true" if d.under_resolved else "false",
            ])
    return rows


# --------------------------------------------------------------------------------------------
# The decision-time tree
# --------------------------------------------------------------------------------------------


def _leaf_sigma(decisions: Mapping[str, Decision | None], sigma_min: float | None) -> float:
    if sigma_min is not None:
        return float(sigma_min)
    grid = [d.grid[0] for d in decisions.values() if d is not None and d.grid is not None]
    if grid:
        return float(min(grid))
    vals = [min(d.window[0], d.decision_sigma) for d in decisions.values() if d is not None]
    return min(vals) if vals else 1.0


def _children_map(taxonomy) -> dict[str, list[str]]:
    return {n: taxonomy.children(n) for n in taxonomy.nodes}


def _decision_sigmas(nodes: Mapping) -> dict[str, float | None]:
    return {n: (None if d is None else d.decision_sigma) for n, d in nodes.items()}


def tree_heights(taxonomy, decisions, sigma_min: float | None = None) -> dict[str, float]:
    """Height of every node in log10 sigma as the figures draw it (``tree.png``, ``report.html``,
    the ``tree_sigma`` of ``tree.json``): each decided internal node at ``log10(decision_sigma)``,
    also where a child decides earlier (the child is then drawn above its parent, an inversion);
    an undecided internal node at its highest child's height; leaves at ``log10(sigma_min)`` (by
    default the grid's smallest sigma, as recorded in the decisions). The rule lives in
    :func:`probes.report.layout.drawn_heights`; ``tree.nwk`` uses :func:`newick_heights`.
    """
    _, nodes = split_decisions(decisions)
    return drawn_heights(_children_map(taxonomy), taxonomy.root, _decision_sigmas(nodes),
                         _leaf_sigma(nodes, sigma_min))


def newick_heights(taxonomy, decisions, sigma_min: float | None = None) -> dict[str, float]:
    """The heights of :func:`tree_heights` clamped for the Newick format, whose branch lengths must
    not be negative: a node is never placed above its parent, so one that decides before its parent
    sits at the parent's height (a zero-length branch). Used for ``tree.nwk`` only; the figures and
    ``tree_sigma`` show the unclamped heights."""
    height = tree_heights(taxonomy, decisions, sigma_min)
    for n in taxonomy.nodes:  # pre-order: parents before children
        for c in taxonomy.children(n):
            height[c] = min(height[c], height[n])
    return height


def decision_inversions(taxonomy, decisions, sigma_min: float | None = None) -> list[tuple[str, str]]:
    """Edges ``(parent, child)`` drawn inverted: the child (or, for an undecided child, a node
    below it) decides before the parent, at a larger sigma."""
    return inverted_edges(_children_map(taxonomy), tree_heights(taxonomy, decisions, sigma_min))


def decision_tree(taxonomy, decisions, sigma_min: float | None = None):
    """A copy of the taxonomy with decision attributes on every decided internal node.

    Attributes: ``decision_sigma``, ``window`` ``[lo, hi]``, ``interval`` ``[lo, hi]`` (absent
    without a bootstrap), ``decision_vp_time``, ``decision_log_snr``, ``peak_rate``, ``at_edge``.
    Undecided nodes carry none of them. Every internal node gets ``tree_sigma``, the sigma it is
    drawn at (``10 ** height`` of :func:`tree_heights`: its decision sigma where decided). The
    graph also records ``leaf_sigma``.
    """
    _, nodes = split_decisions(decisions)
    tax = taxonomy.copy()
    height = tree_heights(taxonomy, decisions, sigma_min)
    for n in tax.internal_nodes:
        tax.graph.nodes[n]["tree_sigma"] = float(10.0 ** height[n])
        d = nodes.get(n)
        if d is None:
            continue
        attrs = tax.graph.nodes[n]
        attrs["decision_sigma"] = float(d.decision_sigma)
        attrs["window"] = [float(d.window[0]), float(d.window[1])]
        if d.interval is not None:
            attrs["interval"] = [float(d.interval[0]), float(d.interval[1])]
        attrs["decision_vp_time"] = float(d.vp_time)
        attrs["decision_log_snr"] = float(d.log_snr)
        attrs["peak_rate"] = float(d.peak_rate)
        attrs["at_edge"] = bool(d.at_edge)
    tax.graph.graph["leaf_sigma"] = _leaf_sigma(nodes, sigma_min)
    return tax


def write_tree(out_dir, taxonomy, decisions, sigma_min: float | None = None) -> dict[str, Path]:
    """Write the decision-time tree as ``tree.json``, ``tree.graphml`` and ``tree.nwk``.

    ``decisions`` is a :func:`probes.entropy.decide` result (or ``{node: Decision}``);
    ``sigma_min`` is where leaves sit in the Newick tree (default: the grid's smallest sigma, as
    recorded in the decisions). Newick branch lengths are ``log10(sigma_parent) -
    log10(sigma_child)`` with the heights of :func:`newick_heights`: clamped for the file format
    only, so that none is negative (a child that decides before its parent gets a zero-length
    branch there); ``tree.json`` and ``tree.graphml`` keep every ``decision_sigma`` and record the
    drawn, unclamped height as ``tree_sigma``.
    Returns ``{"json": path, "graphml": path, "newick": path}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tax = decision_tree(taxonomy, decisions, sigma_min)
    height = newick_heights(taxonomy, decisions, sigma_min)
    paths = {}
    for fmt, name in (("json", "tree.json"), ("graphml", "tree.graphml"), ("newick", "tree.nwk")):
        final = out_dir / name
        with atomic_path(final) as tmp:
            if fmt == "newick":
                write_taxonomy(tax, tmp, fmt, branch_length=lambda p, c: height[p] - height[c])
            else:
                write_taxonomy(tax, tmp, fmt)
        paths[fmt] = final
    return paths


# --------------------------------------------------------------------------------------------
# run.json
# --------------------------------------------------------------------------------------------


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a run depends on (None where not installed), and Python."""
    out: dict[str, str | None] = {}
    for key, dist in VERSION_PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    out["python"] = platform.python_version()
    return out


def _jsonable(obj):
    """Plain JSON values: numpy/torch scalars and arrays to Python, NaN/inf to null, paths to str."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Decision):
        return _jsonable(obj.to_dict())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch tensors
        return _jsonable(obj.detach().cpu().tolist())
    return obj


def write_run_json(path, payload: Mapping) -> Path:
    """Write ``payload`` as ``run.json`` with a ``versions`` entry added (see docs/outputs.md).

    Keys set in ``payload["versions"]`` are kept; NaN and infinities become ``null`` so the file is
    strict JSON. The write is atomic.
    """
    data = dict(payload)
    versions = package_versions()
    versions.update(dict(payload.get("versions") or {}))
    data["versions"] = versions
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


# --------------------------------------------------------------------------------------------
# summary.txt
# --------------------------------------------------------------------------------------------


def format_decision_tree(taxonomy, decisions: dict, title: str = "") -> str:
    """``summary.txt``: the taxonomy as text, each internal node with its decision sigma, window and
    interval (``decisions``: ``{"nodes": ..., "levels": ...}`` of one estimator).

    The same convention as the figures: every node is stated at its own decision sigma, and a node
    that decides before its parent (at a larger sigma, drawn above it) is marked ``^`` with its
    parent's sigma; the header counts them. Undecided nodes say why (:func:`undecided_reasons`)."""
    nodes = decisions["nodes"]
    reasons = undecided_reasons(nodes)
    inverted = {c: p for p, c in decision_inversions(taxonomy, decisions)}
    lines = [title] if title else []
    lines.append("node: decision sigma [half-peak window] (95% bootstrap interval); each node at its own "
                 "decision sigma")
    if inverted:
        k = len(inverted)
        lines.append(f"^ marks a node that decides before its parent (at a larger sigma): {k} "
                     f"{'edge' if k == 1 else 'edges'} where the parent decides after its child")

    def name_of(n: str) -> str:
        label = taxonomy.node_attrs(n).get("label", n)
        return n if str(label) == str(n) else f"{n} ({label})"

    def describe(n: str) -> str:
        name = name_of(n)
        if taxonomy.is_leaf(n):
            return name
        d = nodes.get(n)
        if d is None or d.decision_sigma is None:
            reason = reasons.get(str(n), "undecided")
            text = f"{name}: undecided" + (f" ({reason})" if reason != "undecided" else "")
        else:
            edge = "  (peak at grid edge)" if getattr(d, "at_edge", False) else ""
            interval = f" ({d.interval[0]:.3g}-{d.interval[1]:.3g})" if d.interval is not None else ""
            text = f"{name}: sigma={d.decision_sigma:.3g} [{d.window[0]:.3g}, {d.window[1]:.3g}]{interval}{edge}"
        if n in inverted:
            parent = nodes.get(inverted[n])
            when = "is undecided" if parent is None else f"decides at sigma={parent.decision_sigma:.3g}"
            text += f"  ^ before its parent {name_of(inverted[n])}, which {when}"
        return text

    def walk(n: str, prefix: str, last: bool, top: bool) -> None:
        lines.append(describe(n) if top else f"{prefix}{'└── ' if last else '├── '}{describe(n)}")
        kids = taxonomy.children(n)
        for i, c in enumerate(kids):
            walk(c, prefix if top else prefix + ("    " if last else "│   "), i == len(kids) - 1, False)

    walk(taxonomy.root, "", True, True)
    levels = decisions.get("levels", {})
    if levels:
        lines.append("level cuts: " + ", ".join(
            f"depth {k}: sigma={v.decision_sigma:.3g}" if v is not None and v.decision_sigma is not None
            else f"depth {k}: undecided" for k, v in levels.items()))
    return "\n".join(lines)
