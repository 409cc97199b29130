"""Figures for the run directory and for papers (matplotlib, Agg backend).

* :func:`plot_curves`: level entropies against sigma, one panel per estimator.
* :func:`plot_tree`: the decision-time tree, each internal node at its own decision sigma.
* :func:`plot_rates`: ``dC_n / dlog sigma`` per node, decisions and half-peak windows marked.
* :func:`plot_strip`: one row of x0 predictions along sigma, captioned.
* :func:`write_figures`: curves, tree and rates of a result (what ``probes plot`` writes).

Every plot function takes the curves, decisions and taxonomy of a run or of a loaded result
(``probes.load(dir)``: ``.entropy()``, ``.decisions(kind="both")``, ``.taxonomy``), and writes one
file per entry of ``formats`` beside ``path`` (``path``'s suffix replaced by each format's:
PNG at 300 dpi, PDF/SVG as vectors with their text kept as text); it returns the first file's
path, or the figure itself when ``path`` is None.

Conventions, stated on each figure: sigma axes are logarithmic and run noise -> clean (largest
sigma on the left, or at the top of the tree), the order in which sampling visits them; tick
labels are round numbers. Colours: Okabe & Ito's colour-blind-safe palette for nodes
(``layout.PALETTE``, dashed once its eight colours run out) and viridis (perceptually uniform,
colour-blind safe) for the ordered levels. Text never sits on lines: legends stand beside the
axes, and tree labels take a free spot beside their node or are omitted, with a note saying how
many (``layout.place_clear_labels``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
from matplotlib.transforms import offset_copy

from probes.entropy.decisions import rates
from probes.entropy.engine import EntropyCurves
from probes.errors import ProbesError
from probes.fileio import atomic_path
from probes.report.layout import (
    EDGE_NODE_COLOR,
    INVERSION_COLOR,
    NODE_COLOR,
    inverted_edges,
    named_log_ticks,
    place_clear_labels,
    segment_box,
    series_style,
    tick_label,
    tree_extent,
    tree_x,
)
from probes.report.rundir import split_decisions, tree_heights

DPI = 300
FORMATS = ("png", "pdf")
KNOWN_FORMATS = ("png", "pdf", "svg")
SIGMA_LABEL = r"noise level $\sigma$ (log scale), noise $\rightarrow$ clean"
MAX_LABELLED_LEAVES = 40
NODE_FONT = 6.5  # points: node labels in the tree
WINDOW_OFFSET = 4.0  # points: a node's window bracket stands this far left of the node
RELPOS = {"bottom left": (0.0, 0.0), "top left": (0.0, 1.0), "bottom right": (1.0, 0.0), "top right": (1.0, 1.0),
          "bottom": (0.5, 0.0), "top": (0.5, 1.0)}  # a leader's end on its label (matplotlib's relpos)
# Vector files keep text as text (TrueType in PDF, <text> in SVG) and carry no creation date, so
# the same figure gives the same bytes.
RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "svg.hashsalt": "probes",
      "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
      "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.linewidth": 0.6}
METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}


def check_formats(formats) -> tuple[str, ...]:
    """``formats`` as a tuple of known file formats, or one line naming the bad one."""
    given = formats
    if isinstance(formats, str):
        formats = (formats,)
    out = tuple(str(f).lower().lstrip(".") for f in formats or ())
    bad = [f for f in out if f not in KNOWN_FORMATS]
    if not out or bad:
        raise ProbesError(f"formats: expected one or more of {', '.join(KNOWN_FORMATS)}, got {given!r}")
    return out


def save_figure(fig, path, formats=FORMATS):
    """Write ``fig`` once per format beside ``path`` (atomically: a reader never sees half an image)
    and close it; returns the first file's path. With ``path=None`` return the figure instead.

    Saved with a tight bounding box: the canvas grows to hold legends beside the axes, and nothing
    moves relative to anything else (tree labels were placed in points on the final layout)."""
    if path is None:
        plt.close(fig)  # detached from pyplot's state
        FigureCanvasAgg(fig)  # still drawable and savable
        return fig
    formats = check_formats(formats)
    path = Path(path)
    written = []
    try:
        for fmt in formats:
            target = path.with_suffix("." + fmt)
            with atomic_path(target) as tmp:
                fig.savefig(tmp, dpi=DPI, format=fmt, bbox_inches="tight", pad_inches=0.03, metadata=METADATA[fmt])
            written.append(target)
    finally:
        plt.close(fig)
    return written[0]


def literal(text) -> str:
    """A user's name as matplotlib must draw it: ``$`` is text, not the start of mathtext."""
    return str(text).replace("$", r"\$")


def _round_log_axis(axis, lo: float, hi: float, max_ticks: int = 7, named: Mapping[float, str] | None = None):
    """Round tick values (1-2-5 style, plain numbers) on a log ``axis`` (``ax.xaxis``/``ax.yaxis``)
    from ``lo`` to ``hi``, with the named ticks given (``layout.named_log_ticks``)."""
    ticks = dict(named_log_ticks(lo, hi, named or {}, max_ticks))
    axis.set_major_locator(FixedLocator(sorted(ticks)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: ticks.get(v, tick_label(v))))
    axis.set_minor_locator(NullLocator())


def _sigma_axis(ax, sigmas) -> None:
    ax.set_xscale("log")
    lo, hi = float(np.min(sigmas)), float(np.max(sigmas))
    ax.set_xlim(hi, lo)  # descending: sampling order
    _round_log_axis(ax.xaxis, lo, hi)
    ax.set_xlabel(SIGMA_LABEL)
    ax.grid(True, which="major", alpha=0.25, lw=0.5)


def _level_label(level: int, depth: int) -> str:
    return f"level {level} (leaves)" if level == depth else f"level {level}"


def plot_curves(path, curves_by_estimator: Mapping[str, EntropyCurves], formats=FORMATS):
    """Level entropies ``H_l(sigma)`` (nats) per estimator, shaded +-1 standard error. Writes one
    file per format (see the module docstring) and returns the first, or the figure when ``path``
    is None.

    One panel per estimator (alphabetical), at most three a row, sharing the y axis; dotted lines
    mark each level's prior entropy ``H(cell_l)`` where known. Where the model's world is larger
    than the taxonomy, a grey dashed line on a right-hand axis gives the inside mass ``p(T | x)``.
    Levels are coloured by depth on viridis.
    """
    names = sorted(curves_by_estimator)
    if not names:
        raise ValueError("plot_curves: no curves to plot")
    with plt.rc_context(RC):
        n = len(names)
        cols = min(n, 3)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 0.4, 2.9 * rows + 0.2), sharey=True,
                                 squeeze=False)
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
                color = cmap(k / max(1, D - 1) * 0.85)
                ax.plot(sig, mean[:, k], color=color, lw=1.3, label=_level_label(level, D))
                band = np.nan_to_num(se[:, k])
                ax.fill_between(sig, mean[:, k] - band, mean[:, k] + band, color=color, alpha=0.2, lw=0)
                if np.isfinite(c.prior_levels[k]):
                    ax.axhline(c.prior_levels[k], color=color, lw=0.7, ls=":")
            if c.inside is not None:
                twin = ax.twinx()
                twin.plot(sig, c.inside_mean()[order], color="0.45", lw=1.0, ls="--")
                twin.set_ylim(0, 1.02)
                twin.set_ylabel(r"inside mass $p(T \mid x_\sigma)$ (dashed)", fontsize=7, color="0.35")
                twin.tick_params(labelsize=6, colors="0.35")
            _sigma_axis(ax, sig)
            ax.set_title(literal(f"{est} (N = {c.n_samples})"))
        for row in axes:
            row[0].set_ylabel(r"conditional entropy $H_l(\sigma)$ [nats]")
        axes[0][0].set_ylim(bottom=0)
        handles, labels = axes[0][0].get_legend_handles_labels()
        if len(labels) > 12:
            handles, labels = handles[:: math.ceil(len(labels) / 12)], labels[:: math.ceil(len(labels) / 12)]
        fig.tight_layout()
        # Beside the panels, never over the curves.
        right = 1.25 if any(curves_by_estimator[e].inside is not None for e in names) else 1.03  # past a twin axis
        axes.flat[n - 1].legend(handles, labels, loc="upper left", bbox_to_anchor=(right, 1.0), borderaxespad=0,
                                title="band: ±1 s.e.\ndotted: prior entropy", title_fontsize=6, frameon=False)
        return save_figure(fig, path, formats)


def _label(taxonomy, n) -> str:
    return literal(taxonomy.graph.nodes[n].get("label", n))


def _node_text(name: str, d, lines: int = 2) -> str:
    """A node's label: its name, then its decision sigma and half-peak window (or "undecided")."""
    value = "undecided" if d is None else f"σ={d.decision_sigma:.3g} [{d.window[0]:.2g}–{d.window[1]:.2g}]"
    return f"{name}\n{value}" if lines == 2 else f"{name}: {value}"


def plot_tree(path, taxonomy, decisions, sigma_min: float | None = None, title: str | None = None,
              formats=FORMATS):
    """The decision-time tree, each internal node at its own decision sigma (log y axis, noise at
    the top, clean at the bottom), elbow lines parent -> child, leaves on the bottom row.

    The convention of ``layout.drawn_heights``: a child that decides before its parent is drawn
    above it, and that edge (an inversion: the parent decides after its child) is drawn dashed in
    vermillion and counted in the legend. Each node's half-peak window is a thin bracket just left
    of it; each node is labelled with its name, decision sigma and window where there is room beside
    it (the note under the legend counts the labels left out). Undecided nodes are hollow, at their
    highest child's height; peaks on the grid's edge are triangles. Leaf names are drawn for trees
    of up to 40 leaves. The vertical axis spans the decisions and their windows, not the whole
    grid: the bottom row ("leaves") is not a sigma (the legend gives the grid's end, ``sigma_min``).
    """
    with plt.rc_context(RC):
        return save_figure(_tree_figure(taxonomy, decisions, sigma_min, title), path, formats)


def _tree_figure(taxonomy, decisions, sigma_min, title):
    nodes = split_decisions(decisions)[1]
    children = {n: taxonomy.children(n) for n in taxonomy.nodes}
    log_height = tree_heights(taxonomy, decisions, sigma_min)
    inverted = set(inverted_edges(children, log_height))
    leaves, xpos = tree_x(children, taxonomy.root)
    internal = taxonomy.internal_nodes
    decided = [n for n in internal if nodes.get(n) is not None]
    leaf_sigma = 10.0 ** log_height[leaves[0]]

    # The vertical extent: the decisions and their windows; leaves on the bottom row.
    floor, top = tree_extent([10.0 ** log_height[n] for n in internal] + [v for n in decided for v in nodes[n].window],
                             leaf_sigma)
    y = {n: max(10.0 ** log_height[n], floor) for n in taxonomy.nodes}

    L = len(leaves)
    big = L > MAX_LABELLED_LEAVES
    # Inches per leaf: room for two-line node labels between the leaves' lines on small trees.
    width = 0.9 + (min(14.0, max(6.0, 0.05 * L)) if big else max(4.0, L * (0.5 if L <= 16 else 0.3)))
    fig = plt.figure(figsize=(width + 2.2, 4.6))
    names = [_label(taxonomy, n) for n in leaves]
    slanted = not big and max(len(n) for n in names) > 3  # short leaf names stand upright
    bottom = 0.9 if slanted else 0.45  # inches: room for the leaf names or the note
    fig.subplots_adjust(left=0.8 / (width + 2.2), right=(width - 0.1) / (width + 2.2), top=1 - 0.35 / 4.6,
                        bottom=bottom / 4.6)
    ax = fig.add_subplot()
    ax.set_yscale("log")
    ax.set_ylim(floor / 10**0.04, top)
    ax.set_xlim(-0.8, L - 0.2)
    _round_log_axis(ax.yaxis, floor, top, max_ticks=6, named={floor: "leaves"})
    ax.set_ylabel("decision noise level σ (log scale)\nclean ← → noise")
    ax.grid(True, axis="y", which="major", alpha=0.25, lw=0.5)
    lw = 0.4 if big else 1.0

    segments = []  # (x0, y0, x1, y1[, shift in points]) in data coordinates: what labels must keep off
    elbows = {False: [], True: []}  # child -> parent's height -> parent; by inversion
    for p in internal:
        for c in children[p]:
            path = [(xpos[c], y[c]), (xpos[c], y[p]), (xpos[p], y[p])]
            elbows[(p, c) in inverted].append(path)
            segments += [(*path[0], *path[1]), (*path[1], *path[2])]
    ax.add_collection(LineCollection(elbows[False], colors="0.45", linewidths=lw, capstyle="butt", zorder=1,
                                     gid="edges"))
    ax.add_collection(LineCollection(elbows[True], colors=INVERSION_COLOR, linewidths=max(lw, 0.8),
                                     linestyles=[(0, (3, 1.5))], zorder=2, gid="inverted-edges"))
    ms = 3 if big else 5
    if decided:
        xs = np.array([xpos[n] for n in decided])
        own = np.array([nodes[n].decision_sigma for n in decided])
        lo = np.maximum([nodes[n].window[0] for n in decided], floor)
        hi = np.array([nodes[n].window[1] for n in decided])
        # Thin brackets a few points left of each node, so they never hide its edges.
        beside = offset_copy(ax.transData, fig=fig, x=-WINDOW_OFFSET, y=0, units="points")
        ax.add_collection(LineCollection([[(x, a), (x, b)] for x, a, b in zip(xs, lo, hi)], colors=NODE_COLOR,
                                         linewidths=0.6, transform=beside, zorder=3, gid="windows"))
        ax.plot(np.repeat(xs, 2), np.stack([lo, hi], 1).ravel(), "_", color=NODE_COLOR, ms=3 if big else 4, mew=0.6,
                transform=beside, zorder=3, gid="window-caps")
        segments += [(x, a, x, b, -WINDOW_OFFSET) for x, a, b in zip(xs, lo, hi)]
        edge = np.array([bool(nodes[n].at_edge) for n in decided])
        ax.plot(xs[~edge], own[~edge], "o", ms=ms, color=NODE_COLOR, mec="white", mew=0.5, zorder=4,
                gid="decided-nodes")
        if edge.any():
            ax.plot(xs[edge], own[edge], "^", ms=ms + 1, color=EDGE_NODE_COLOR, mec="0.2", mew=0.4, zorder=4,
                    gid="edge-nodes")
    undecided = [n for n in internal if nodes.get(n) is None]
    if undecided:
        ax.plot([xpos[n] for n in undecided], [y[n] for n in undecided], "o", ms=ms, mfc="white", mec="0.15",
                mew=0.8, zorder=4, gid="undecided-nodes")

    if not big:
        ax.set_xticks(range(L))
        ax.set_xticklabels(names, rotation=60 if slanted else 0, ha="right" if slanted else "center", fontsize=7)
        ax.tick_params(axis="x", length=0)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{L} leaves (names omitted)")
    omitted = _label_nodes(fig, ax, [(n, xpos[n], y[n], _node_text(_label(taxonomy, n), nodes.get(n)))
                                     for n in internal], segments)
    ax.set_title(title or literal(f"decision-time tree: {getattr(taxonomy, 'name', '')}".rstrip(": ")), loc="left")

    k = len(inverted)
    handles = [
        Line2D([], [], marker="o", ls="none", ms=5, color=NODE_COLOR, mec="white", label="node at its decision σ"),
        Line2D([], [], marker="_", ls="-", lw=0.6, ms=5, color=NODE_COLOR, label="half-peak window"),
        Line2D([], [], color=INVERSION_COLOR, ls=(0, (3, 1.5)),
               label=f"child decides before its parent: {k} {'edge' if k == 1 else 'edges'}"),
    ]
    if decided and any(nodes[n].at_edge for n in decided):
        handles.append(Line2D([], [], marker="^", ls="none", ms=6, color=EDGE_NODE_COLOR,
                              label="peak at the grid's edge"))
    if undecided:
        handles.append(Line2D([], [], marker="o", ls="none", ms=5, mfc="white", mec="0.15",
                              label="undecided (at its highest child)"))
    notes = [f"leaves: bottom row (grid ends at σ = {leaf_sigma:.3g})"]
    if omitted:
        notes.append(f"{omitted} of {len(internal)} node labels omitted (no room)")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False,
              title="each internal node at its own\ndecision σ (log scale)", title_fontsize=7, alignment="left")
    ax.text(1.01, 0.0, "\n".join(notes), transform=ax.transAxes, fontsize=6.5, va="bottom", ha="left", color="0.25")
    return fig


def _label_nodes(fig, ax, items, segments) -> int:
    """Label each node ``(id, x, y, text)`` at a free spot beside it (``place_clear_labels``, in
    points on the figure's final layout, y downwards); returns how many found no room.

    Each label is measured as matplotlib renders it, then offset from its node in points, so it
    holds at every dpi and in every format. ``segments`` (data coordinates) are the lines labels
    keep off; the node markers too.
    """
    per_point = fig.dpi / 72.0
    height_pt = fig.get_figheight() * 72.0

    def pts(x, y):
        px, py = ax.transData.transform((x, y)) / per_point
        return float(px), float(height_pt - py)

    obstacles = []
    for x0, y0, x1, y1, *shift in segments:  # shift: points to the right, for lines drawn offset
        (a, b), (c, d) = pts(x0, y0), pts(x1, y1)
        dx = shift[0] if shift else 0.0
        obstacles.append(segment_box(a + dx, b, c + dx, d, pad=2.0 if shift else 1.0))
    anchors = [pts(x, y) for _, x, y, _ in items]
    obstacles += [(a - 3.5, b - 3.5, a + 3.5, b + 3.5) for a, b in anchors]  # the markers
    bbox = ax.get_window_extent()
    bounds = (bbox.x0 / per_point + 1, height_pt - bbox.y1 / per_point + 1, bbox.x1 / per_point - 1,
              height_pt - bbox.y0 / per_point - 1)
    renderer = fig.canvas.get_renderer()
    style = {"fontsize": NODE_FONT, "color": "0.1", "ha": "left", "va": "bottom", "linespacing": 1.1}
    sizes = []
    for _, _, _, text in items:  # measured as rendered, then removed
        probe = ax.text(0, 0, text, transform=None, **style)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        sizes.append((extent.width / per_point + 1.0, extent.height / per_point + 0.5))
    spots = place_clear_labels(sizes, anchors, obstacles, bounds, gap=3.0, max_shift=24)
    omitted = 0
    for (node, x, y, text), (ax_pt, ay_pt), spot in zip(items, anchors, spots):
        if spot is None:
            omitted += 1
            continue
        (bx0, _, _, by1), leader = spot
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(bx0 + 0.5 - ax_pt, ay_pt - by1),
                    gid=f"label:{node}", annotation_clip=False, **style,
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.4, "shrinkA": 0, "shrinkB": 3,
                                "relpos": RELPOS[leader]} if leader else None)
    return omitted


def plot_rates(path, curves: EntropyCurves, decisions, max_nodes: int = 12, title: str | None = None,
               formats=FORMATS):
    """``dC_n / dlog sigma`` of the mean node curves (nats per unit log sigma), with each decision
    marked by a dot at its peak and its half-peak window by a thin bracket at half the peak
    rate (where the window's edges lie on the curve). Shows the ``max_nodes`` decided nodes with
    the largest peak rates (all of them when fewer); the legend gives each node's decision sigma
    and window. ``decisions`` are the log-sigma decisions of ``curves``.
    """
    nodes = split_decisions(decisions)[1]
    s, r = rates(curves.sigmas, curves.node_mean().T)  # r [K, S] ascending sigma
    index = {n: k for k, n in enumerate(curves.node_names)}
    decided = [n for n in curves.node_names if nodes.get(n) is not None]
    decided.sort(key=lambda n: -nodes[n].peak_rate)
    shown = decided[:max_nodes]
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        for j, n in enumerate(shown):
            d = nodes[n]
            color, dashes = series_style(j)
            ax.plot(s, r[index[n]], color=color, lw=1.2, dashes=dashes, label=literal(_node_text(n, d, lines=1)))
            half = 0.5 * float(np.interp(math.log(d.decision_sigma), np.log(s), r[index[n]])) \
                if d.axis != "log_sigma" else 0.5 * d.peak_rate
            ax.add_collection(LineCollection([[(d.window[0], half), (d.window[1], half)]], colors=color,
                                             linewidths=0.7, gid=f"window:{n}"))
            ax.plot(d.window, [half, half], "|", color=color, ms=4, mew=0.7, gid=f"window-caps:{n}")
            ax.plot([d.decision_sigma], [2 * half], "o", color=color, ms=3.5, mec="white", mew=0.4, gid=f"peak:{n}")
        ax.axhline(0, color="0.5", lw=0.5)
        _sigma_axis(ax, s)
        ax.set_ylabel(r"rate $dC_n / d\log\sigma$ [nats per unit $\log\sigma$]")
        extra = "" if len(decided) <= max_nodes else f" (top {max_nodes} of {len(decided)} by peak rate)"
        ax.set_title(title or f"where each node decides{extra}", loc="left")
        fig.tight_layout()
        if shown:
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False,
                      ncol=2 if len(shown) > 12 else 1, fontsize=6.5, title_fontsize=6.5,
                      title="node: decision σ [half-peak window]\n● peak    ├─┤ window, at half the peak")
        return save_figure(fig, path, formats)


def plot_strip(path, frames, sigmas, caption: str, formats=FORMATS):
    """One x0 strip: the denoiser's predicted clean image ``D(x; sigma)`` of one sample at each
    sigma, left to right (noise -> clean), each column headed by its sigma, the row captioned
    with ``caption`` (e.g. its seed, leaf or prompt).

    ``frames`` is ``uint8 [K, H, W, 3]``, ``sigmas`` ``[K]``. Pixels are drawn as squares (no
    smoothing), so 8x8 digits stay legible.
    """
    frames = np.asarray(frames)
    sigmas = np.asarray(sigmas, dtype=float).reshape(-1)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ProbesError(f"plot_strip: frames must be uint8 [K, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    if len(sigmas) != frames.shape[0] or not np.all(np.isfinite(sigmas)) or np.any(sigmas <= 0):
        raise ProbesError(f"plot_strip: sigmas must be {frames.shape[0]} positive numbers, one per frame; got "
                          f"{sigmas.tolist()}")
    K, H, W, _ = frames.shape
    with plt.rc_context(RC):
        panel = 0.75  # inches per frame
        fig, axes = plt.subplots(1, K, figsize=(panel * K * max(1.0, W / H) + 0.2, panel + 0.75), squeeze=False)
        for ax, frame, sigma in zip(axes[0], frames, sigmas):
            ax.imshow(frame, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_linewidth(0.3)
            ax.set_title(f"σ = {tick_label(float(f'{sigma:.3g}'))}", fontsize=6.5, pad=2)
        fig.suptitle(literal(caption), fontsize=7.5, x=0.01, ha="left")
        fig.supxlabel(r"predicted clean image $D(x;\sigma)$, noise $\rightarrow$ clean", fontsize=6.5)
        fig.tight_layout(pad=0.2, w_pad=0.15)
        return save_figure(fig, path, formats)


def write_figures(out_dir, taxonomy, curves_by_estimator: Mapping[str, EntropyCurves], decisions: Mapping,
                  primary: str | None = None, formats=FORMATS) -> list[Path]:
    """``curves``, ``tree`` and ``rates`` figures of a run or a loaded result into ``out_dir``, one
    file per format each: ``decisions`` are the primary estimator's (``{"nodes", "levels"}``, on
    log sigma), ``primary`` names it (default: the first estimator). Returns the files written."""
    formats = check_formats(formats)
    out = Path(out_dir)
    primary = primary or next(iter(curves_by_estimator))
    written = []
    for name, draw in (("curves", lambda p: plot_curves(p, curves_by_estimator, formats)),
                       ("tree", lambda p: plot_tree(p, taxonomy, decisions, formats=formats)),
                       ("rates", lambda p: plot_rates(p, curves_by_estimator[primary], decisions, formats=formats))):
        draw(out / name)
        written += [out / f"{name}.{fmt}" for fmt in formats]
    return written


def plot_comparison(path, comparison, formats=FORMATS) -> Path:
    """dI per level with its pointwise bootstrap interval (or +- one standard error without one),
    drawn as dashed lines around the curve."""
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(5.6, 3.4))
        n = len(comparison.levels)
        for k, (level, d) in enumerate(comparison.levels.items()):
            color = plt.get_cmap("viridis")(k / max(1, n - 1) * 0.9)
            lo, hi = d.delta_interval
            if not np.isfinite(lo).any():
                se = np.nan_to_num(d.stderr)
                lo, hi = d.delta - se, d.delta + se
            ax.plot(d.sigmas, d.delta, color=color, lw=1.2, label=f"level {level}")
            ax.plot(d.sigmas, lo, color=color, lw=0.6, ls=":")
            ax.plot(d.sigmas, hi, color=color, lw=0.6, ls=":")
        ax.axhline(0, color="0.5", lw=0.5)
        _sigma_axis(ax, np.concatenate([d.sigmas for d in comparison.levels.values()]))
        ax.set_ylabel(r"$I_B - I_A$ [nats]")
        band = f"dotted: {100 * comparison.curves.ci:g}% {comparison.pairing} bootstrap interval"
        ax.set_title(f"information gained by B over A ({comparison.estimator}; {band})", loc="left", fontsize=8)
        ax.legend(frameon=False)
        fig.tight_layout()
        return save_figure(fig, path, formats)
