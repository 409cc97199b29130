"""The decision-time trees of two compared results on one log-SNR axis (``probes compare``).

:func:`plot_decision_trees` draws both trees of a :class:`probes.compare.Comparison` in one
figure: each internal node at its decision log-SNR ``lambda = -2 log sigma`` in A and in B, elbow
lines to its children, leaves at the clean end. Runs of different models, schedulers or grids
share this axis (the comparison's decisions are each placed on the run's own grid). The axis runs
noise -> clean, left to right; the range both grids cover is shaded. Colours come from the
Okabe-Ito palette; the figure is a 300 dpi PNG with a PDF copy.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from probes.report.commitment_plots import PALETTE, save_figure

MAX_LABELLED_LEAVES = 40
_OFFSET = 0.12  # B's tree is drawn this far (in leaf rows) below A's, so overlapping lines stay apart


def _text(value) -> str:
    return str(value).replace("$", r"\$")


def _log_snr(sigma: float) -> float:
    return -2.0 * math.log(sigma) if sigma and math.isfinite(sigma) and sigma > 0 else math.nan


def _layout(taxonomy) -> dict[str, float]:
    """Leaves one row apart in taxonomy order; an internal node halfway between its outer children."""
    y = {leaf: float(i) for i, leaf in enumerate(taxonomy.leaves)}
    for n in reversed(taxonomy.nodes):
        kids = taxonomy.children(n)
        if kids:
            y[n] = 0.5 * (min(y[c] for c in kids) + max(y[c] for c in kids))
    return y


def plot_decision_trees(path, comparison, label_a: str = "A", label_b: str = "B", taxonomy=None,
                        title: str | None = None) -> Path:
    """Both decision-time trees of ``comparison`` on the shared log-SNR axis (one figure).

    ``taxonomy`` defaults to the one the comparison was made over (``comparison.taxonomy``: the
    shared subtree where the results' taxonomies differ). Each node carries its decision shift
    ``Delta lambda = lambda_B - lambda_A`` and, with a bootstrap, its interval. An undecided node is
    drawn hollow at its earliest decided child (or the clean end).
    """
    taxonomy = taxonomy if taxonomy is not None else getattr(comparison, "taxonomy", None)
    if taxonomy is None:
        raise ValueError("plot_decision_trees: the comparison carries no taxonomy; pass taxonomy=")
    shifts = comparison.curves.shifts
    alignment = getattr(comparison.curves, "alignment", None)
    lam = {"A": {}, "B": {}}
    for n in taxonomy.internal_nodes:
        s = shifts.get(n, {}).get("log_snr")
        lam["A"][n] = math.nan if s is None else _log_snr(s.sigma_a)
        lam["B"][n] = math.nan if s is None else _log_snr(s.sigma_b)
    decided = [v for side in lam.values() for v in side.values() if math.isfinite(v)]
    if alignment is not None:
        (ha, la, _), (hb, lb, _) = alignment.grids
        ends = [_log_snr(v) for v in (ha, la, hb, lb)]
    else:
        ends = decided or [0.0, 1.0]
    clean = max(ends + decided)
    noisy = min(ends + decided)
    y = _layout(taxonomy)
    leaves = list(taxonomy.leaves)
    big = len(leaves) > MAX_LABELLED_LEAVES

    fig, ax = plt.subplots(figsize=(9.0, max(3.5, min(14.0, 0.45 * len(leaves) + 2.0))))
    if alignment is not None and not alignment.same_grid:
        lo, hi = alignment.log_snr_range
        ax.axvspan(lo, hi, color="0.92", lw=0, zorder=0, label="both grids")
    for side, colour, style, marker, label, dy in (("A", PALETTE[0], "-", "o", label_a, 0.0),
                                                     ("B", PALETTE[1], "--", "s", label_b, _OFFSET)):
        x = dict.fromkeys(leaves, clean)
        for n in reversed(taxonomy.internal_nodes):  # children first: an undecided node sits at its earliest child
            v = lam[side][n]
            x[n] = v if math.isfinite(v) else min(x[c] for c in taxonomy.children(n))
        for n in taxonomy.internal_nodes:
            kids = taxonomy.children(n)
            ax.plot([x[n], x[n]], [min(y[c] for c in kids) + dy, max(y[c] for c in kids) + dy], color=colour,
                    ls=style, lw=1.3, zorder=2)
            for c in kids:
                ax.plot([x[n], x[c]], [y[c] + dy, y[c] + dy], color=colour, ls=style, lw=1.3, zorder=2)
        done = [n for n in taxonomy.internal_nodes if math.isfinite(lam[side][n])]
        open_ = [n for n in taxonomy.internal_nodes if not math.isfinite(lam[side][n])]
        ax.scatter([x[n] for n in done], [y[n] + dy for n in done], marker=marker, s=36, color=colour, zorder=3,
                   label=f"{_text(label)}: decision log-SNR")
        if open_:
            ax.scatter([x[n] for n in open_], [y[n] + dy for n in open_], marker=marker, s=36, facecolors="white",
                       edgecolors=colour, zorder=3, label=f"{_text(label)}: undecided")
    ci = getattr(comparison.curves, "ci", 0.95)
    for n in taxonomy.internal_nodes:
        s = shifts.get(n, {}).get("log_snr")
        if s is None or not math.isfinite(s.shift):
            continue
        text = rf"$\Delta\lambda$ {s.shift:+.2f}"
        if s.interval is not None:
            text += f" ({s.interval[0]:+.2f} to {s.interval[1]:+.2f})"
        where = np.nanmax([lam["A"][n], lam["B"][n]])
        ax.annotate(f"{_text(taxonomy.label(n))}: {text}", (where, y[n] + _OFFSET), textcoords="offset points",
                    xytext=(6, 4), fontsize=7, color="0.2")
    ax.set_xlim(noisy - 0.05 * (clean - noisy + 1), clean + 0.25 * (clean - noisy + 1))
    ax.set_xlabel(r"decision log-SNR $\lambda = -2\log\sigma$ (noise -> clean, left to right)")
    if big:
        ax.set_yticks([])
        ax.set_ylabel(f"{len(leaves)} leaves (labels omitted)")
    else:
        ax.set_yticks(range(len(leaves)))
        ax.set_yticklabels([_text(taxonomy.label(leaf)) for leaf in leaves], fontsize=8)
    ax.invert_yaxis()  # leaves top to bottom in taxonomy order
    ax.grid(True, axis="x", alpha=0.3)
    interval = f"{100 * ci:g}% bootstrap interval" if getattr(comparison.curves, "n_boot", 0) else "no bootstrap"
    ax.set_title(title or f"decision-time trees, {_text(label_a)} (solid) and {_text(label_b)} (dashed); "
                 rf"$\Delta\lambda = \lambda_B - \lambda_A$ ({interval})", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8)
    return save_figure(fig, path)
