"""Figures for the run directory (matplotlib, Agg backend, PNG at 150 dpi).

* :func:`plot_curves`: level entropies against sigma, one panel per estimator.
* :func:`plot_tree`: the decision-time tree, each internal node at the height of its decision sigma.
* :func:`plot_rates`: ``dC_n / dlog sigma`` per node with the decisions marked.

Sigma axes are logarithmic and run from the largest sigma on the left to the smallest on the right,
the order in which sampling visits them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from probes.entropy.decisions import rates
from probes.entropy.engine import EntropyCurves
from probes.fileio import atomic_path
from probes.report.layout import place_labels
from probes.report.rundir import split_decisions, tree_heights

DPI = 150
SIGMA_LABEL = r"noise level $\sigma$ (log scale; sampling runs left to right)"
MAX_LABELLED_LEAVES = 40
MAX_LABELLED_INTERNAL = 40


def _save(fig, path):
    """Write ``fig`` as a PNG atomically (a reader never sees half an image) and close it; with
    ``path=None`` return the figure instead."""
    if path is None:
        fig.tight_layout()
        plt.close(fig)  # detached from pyplot's state; still drawable and savable
        return fig
    path = Path(path)
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return path


def literal(text) -> str:
    """A user's name as matplotlib must draw it: ``$`` is text, not the start of mathtext."""
    return str(text).replace("$", r"\$")


def _sigma_axis(ax, sigmas) -> None:
    ax.set_xscale("log")
    lo, hi = float(np.min(sigmas)), float(np.max(sigmas))
    ax.set_xlim(hi, lo)  # descending: sampling order
    ax.set_xlabel(SIGMA_LABEL)
    ax.grid(True, which="major", alpha=0.3)


def _level_label(level: int, depth: int) -> str:
    return f"level {level} (leaves)" if level == depth else f"level {level}"


def plot_curves(path, curves_by_estimator: Mapping[str, EntropyCurves]):
    """Level entropies ``H_l(sigma)`` (nats) per estimator, shaded +-1 standard error. Returns the
    PNG's path, or the figure when ``path`` is None.

    One panel per estimator (alphabetical), at most three a row, sharing the y axis; dotted lines
    mark each level's prior entropy ``H(cell_l)`` where known. Where the model's world is larger
    than the taxonomy, a grey dashed line on a right-hand axis gives the inside mass ``p(T | x)``.
    """
    names = sorted(curves_by_estimator)
    if not names:
        raise ValueError("plot_curves: no curves to plot")
    n = len(names)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols + 0.6, 3.8 * rows + 0.3), sharey=True, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    cmap = plt.get_cmap("viridis")
    for ax, est in zip(axes.flat, names):
        c = curves_by_estimator[est]
        order = np.argsort(-c.sigmas)
        sig = c.sigmas[order]
        mean, se = c.level_mean()[order], c.level_stderr()[order]
        D = len(c.level_names)
        for k, level in enumerate(c.level_names):
            color = cmap(k / max(1, D - 1) * 0.9)
            ax.plot(sig, mean[:, k], color=color, lw=1.6, label=_level_label(level, D))
            band = np.nan_to_num(se[:, k])
            ax.fill_between(sig, mean[:, k] - band, mean[:, k] + band, color=color, alpha=0.2, lw=0)
            if np.isfinite(c.prior_levels[k]):
                ax.axhline(c.prior_levels[k], color=color, lw=0.8, ls=":")
        if c.inside is not None:
            twin = ax.twinx()
            twin.plot(sig, c.inside_mean()[order], color="0.45", lw=1.2, ls="--")
            twin.set_ylim(0, 1.02)
            twin.set_ylabel(r"inside mass $p(T \mid x_\sigma)$ (dashed)", fontsize=8, color="0.35")
            twin.tick_params(labelsize=7, colors="0.35")
        _sigma_axis(ax, sig)
        ax.set_title(literal(f"{est} (N = {c.n_samples})"))
    for row in axes:
        row[0].set_ylabel(r"conditional entropy $H_l(\sigma)$ [nats]")
    axes[0][0].set_ylim(bottom=0)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if len(labels) > 12:
        handles, labels = handles[:: math.ceil(len(labels) / 12)], labels[:: math.ceil(len(labels) / 12)]
    # Beside the panels, never over the curves.
    right = 1.2 if any(curves_by_estimator[e].inside is not None for e in names) else 1.02  # past a twin axis
    axes.flat[n - 1].legend(handles, labels, loc="upper left", bbox_to_anchor=(right, 1.0), borderaxespad=0,
                            fontsize=8, title="dotted: prior", title_fontsize=7)
    return _save(fig, path)


def _label(taxonomy, n) -> str:
    return literal(taxonomy.graph.nodes[n].get("label", n))


def plot_tree(path, taxonomy, decisions, sigma_min: float | None = None, title: str | None = None) -> Path:
    """The decision-time tree: internal nodes at their decision sigma (log y axis), leaves at the
    bottom (at ``sigma_min``, the grid's smallest sigma), elbow lines parent -> child, and each
    node's half-peak window as a vertical bar. Undecided nodes are drawn hollow at their highest
    child's height. A node that decides before its parent is drawn at the parent's height (the
    heights of ``tree.nwk``), its own decision sigma marked by a hollow diamond joined by a dotted
    line. Labels (the ``label`` attribute) are drawn for trees of up to 40 leaves.
    """
    nodes = split_decisions(decisions)[1]
    height = {n: 10.0**h for n, h in tree_heights(taxonomy, decisions, sigma_min).items()}
    leaves = list(taxonomy.leaves)
    L = len(leaves)
    xpos = {leaf: float(i) for i, leaf in enumerate(leaves)}
    for n in reversed(taxonomy.nodes):
        kids = taxonomy.children(n)
        if kids:
            xpos[n] = 0.5 * (min(xpos[c] for c in kids) + max(xpos[c] for c in kids))

    big = L > MAX_LABELLED_LEAVES
    width = min(16.0, max(6.0, 0.32 * L + 2.0))
    fig, ax = plt.subplots(figsize=(width, 5.5))
    lw = 0.5 if big else 1.2
    for p in taxonomy.internal_nodes:
        for c in taxonomy.children(p):
            ax.plot([xpos[c], xpos[c], xpos[p]], [height[c], height[p], height[p]],
                    color="0.35", lw=lw, solid_capstyle="butt")
    decided = [n for n in taxonomy.internal_nodes if nodes.get(n) is not None]
    undecided = [n for n in taxonomy.internal_nodes if nodes.get(n) is None]
    if decided:
        xs = np.array([xpos[n] for n in decided])
        ys = np.array([height[n] for n in decided])
        lo = np.array([nodes[n].window[0] for n in decided])
        hi = np.array([nodes[n].window[1] for n in decided])
        own = np.array([nodes[n].decision_sigma for n in decided])  # == ys unless lowered to a parent
        ax.errorbar(xs, own, yerr=[np.maximum(own - lo, 0), np.maximum(hi - own, 0)], fmt="none",
                    ecolor="tab:blue", alpha=0.45, lw=2.5 if not big else 1.0,
                    label="half-peak window")
        edge = np.array([bool(nodes[n].at_edge) for n in decided])
        ax.scatter(xs[~edge], ys[~edge], s=10 if big else 36, color="tab:blue", zorder=3,
                   label="decision $\\sigma$")
        if edge.any():
            ax.scatter(xs[edge], ys[edge], s=10 if big else 36, marker="^", color="tab:orange",
                       zorder=3, label="peak at grid edge")
        early = own > ys * (1 + 1e-9)
        if early.any():
            ax.vlines(xs[early], ys[early], own[early], colors="tab:red", linestyles=":", lw=lw)
            ax.scatter(xs[early], own[early], s=10 if big else 30, marker="D", facecolors="white",
                       edgecolors="tab:red", zorder=3, label="decides before its parent")
    if undecided:
        ax.scatter([xpos[n] for n in undecided], [height[n] for n in undecided], s=10 if big else 36,
                   facecolors="white", edgecolors="0.3", zorder=3, label="undecided")
    ax.set_yscale("log")
    ax.set_ylabel(r"decision noise level $\sigma$ (log scale)")
    ax.set_xlim(-0.8, L - 0.2)
    if not big:
        ax.set_xticks(range(L))
        ax.set_xticklabels([_label(taxonomy, n) for n in leaves], rotation=60, ha="right", fontsize=8)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{L} leaves (labels omitted)")
    if len(taxonomy.internal_nodes) <= MAX_LABELLED_INTERNAL and not big:
        _annotate_without_overlap(fig, ax, [(_label(taxonomy, n), xpos[n], height[n]) for n in taxonomy.internal_nodes])
    ax.grid(True, axis="y", which="major", alpha=0.3)
    ax.set_title(title or literal(f"decision-time tree: {getattr(taxonomy, 'name', '')}".rstrip(": ")))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8)
    return _save(fig, path)


def _annotate_without_overlap(fig, ax, anchors) -> None:
    """Node labels beside their points, stacked downwards where they would collide.

    Positions are worked out in points at the figure's final layout, then given to matplotlib as
    offsets from each node (points do not change when the figure is saved at another dpi).
    """
    fig.tight_layout()
    per_point = fig.dpi / 72.0
    scale = 11 / 8  # place_labels measures an 11px font; these labels are 8 pt
    pts = [(text, *(ax.transData.transform((x, y)) / per_point)) for text, x, y in anchors]
    spots = place_labels([(t, px * scale, -py * scale) for t, px, py in pts], height=13.0)
    for (text, x, y), (_, px, py), (lx, ly) in zip(anchors, pts, spots):
        dx, dy = lx / scale - px, -ly / scale - py
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8, color="0.15",
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if dy < -10 else None)


def plot_rates(path, curves: EntropyCurves, decisions, max_nodes: int = 12, title: str | None = None) -> Path:
    """``dC_n / dlog sigma`` of the mean node curves, decisions marked with their windows.

    Shows the ``max_nodes`` decided nodes with the largest peak rates (all of them when fewer), in
    nats per unit log sigma.
    """
    nodes = split_decisions(decisions)[1]
    s, r = rates(curves.sigmas, curves.node_mean().T)  # r [K, S] ascending sigma
    index = {n: k for k, n in enumerate(curves.node_names)}
    decided = [n for n in curves.node_names if nodes.get(n) is not None]
    decided.sort(key=lambda n: -nodes[n].peak_rate)
    shown = decided[:max_nodes]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    cmap = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20")
    for j, n in enumerate(shown):
        d = nodes[n]
        color = cmap(j % cmap.N)
        ax.plot(s, r[index[n]], color=color, lw=1.4, label=literal(n))
        ax.axvspan(d.window[0], d.window[1], color=color, alpha=0.07, lw=0)
        ax.plot([d.decision_sigma], [d.peak_rate], marker="o", color=color, ms=5)
    ax.axhline(0, color="0.5", lw=0.6)
    _sigma_axis(ax, s)
    ax.set_ylabel(r"rate $dC_n / d\log\sigma$ [nats per unit $\log\sigma$]")
    extra = "" if len(decided) <= max_nodes else f" (top {max_nodes} of {len(decided)} by peak rate)"
    ax.set_title(title or f"where each node decides{extra}")
    if shown:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=7,
                  ncol=2 if len(shown) > 12 else 1, title="node (dot: decision;\nband: window)", title_fontsize=7)
    return _save(fig, path)


def plot_comparison(path, comparison) -> Path:
    """dI per level with its pointwise bootstrap band (or +- one standard error without one)."""

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    cmap = plt.get_cmap("viridis")
    n = len(comparison.levels)
    for k, (level, d) in enumerate(comparison.levels.items()):
        color = cmap(k / max(1, n - 1) * 0.9)
        lo, hi = d.delta_interval
        if not np.isfinite(lo).any():
            se = np.nan_to_num(d.stderr)
            lo, hi = d.delta - se, d.delta + se
        ax.plot(d.sigmas, d.delta, color=color, lw=1.6, label=f"level {level}")
        ax.fill_between(d.sigmas, lo, hi, color=color, alpha=0.2, lw=0)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel(r"noise level $\sigma$ (log scale; sampling runs left to right)")
    ax.set_ylabel(r"$I_B - I_A$ [nats]")
    band = f"{100 * comparison.curves.ci:g}% {comparison.pairing} bootstrap band"
    ax.set_title(f"information gained by B over A ({comparison.estimator}; {band})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
