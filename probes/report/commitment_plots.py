"""Figures of per-sample commitment times (:mod:`probes.entropy.commitments`).

* :func:`plot_commitment_ecdf`: per node, the fraction of its samples already committed as sigma
  falls.
* :func:`plot_commitment_pairs`: per node, each sample's commitment sigma at the node against its
  commitment at the parent (fine before coarse above the diagonal).

Conventions, written on every figure: sigma axes are logarithmic and run noise -> clean (largest
sigma first: left to right, top to bottom), in the order sampling visits them. Colours are the
Okabe-Ito palette (distinguishable under the common colour-vision deficiencies). Each figure is
written as a 300 dpi PNG and a PDF copy beside it (same name, ``.pdf``).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from probes.entropy.commitments import Commitments
from probes.fileio import atomic_path

DPI = 300
# Okabe & Ito (2008), strongest contrast on white first (the yellow last)
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
NOISE_TO_CLEAN = "noise -> clean"


def save_figure(fig, path) -> Path:
    """``path`` (a PNG at :data:`DPI`) and its PDF copy, each written atomically; closes ``fig``."""
    path = Path(path)
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
        with atomic_path(path.with_suffix(".pdf")) as tmp:
            fig.savefig(tmp, format="pdf")
    finally:
        plt.close(fig)
    return path


def _text(value) -> str:
    """A user's name as matplotlib draws it: ``$`` is text, not mathtext."""
    return str(value).replace("$", r"\$")


def _sigma_axis(ax, sigmas, which: str = "x", label: str = r"$\sigma$") -> None:
    lo, hi = float(np.min(sigmas)), float(np.max(sigmas))
    if which == "x":
        ax.set_xscale("log")
        ax.set_xlim(hi * 1.15, lo / 1.15)  # descending: noise -> clean, left to right
        ax.set_xlabel(f"{label} (log scale; {NOISE_TO_CLEAN}, left to right)")
    else:
        ax.set_yscale("log")
        ax.set_ylim(lo / 1.15, hi * 1.15)  # noise at the top
        ax.set_ylabel(f"{label} (log scale; {NOISE_TO_CLEAN}, top to bottom)")


def _busiest(commitments: Commitments, nodes, limit: int) -> tuple[list[str], int]:
    """Up to ``limit`` of ``nodes`` (default: all with rows), those with the most samples first,
    then kept in taxonomy order; and how many there were."""
    pool = list(commitments.nodes if nodes is None else nodes)
    counts = {n: len(commitments.rows_of(n)) for n in pool}
    pool = [n for n in pool if counts[n]]
    keep = set(sorted(pool, key=lambda n: -counts[n])[:limit])
    return [n for n in pool if n in keep], len(pool)


def plot_commitment_ecdf(path, commitments: Commitments, nodes=None, max_nodes: int = len(PALETTE),
                         title: str | None = None) -> Path:
    """Per node, the ECDF of commitment sigma: at each grid sigma, the fraction of the node's
    samples committed to their final child (``q >= theta`` from there to the end). Never-committed
    samples stay in the denominator. At most ``max_nodes`` nodes (the ones with most samples)."""
    shown, total = _busiest(commitments, nodes, max_nodes)
    if not shown:
        raise ValueError("plot_commitment_ecdf: no node with samples to plot")
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    styles = ("-", "--", "-.", ":")
    for k, n in enumerate(shown):
        sigmas, fraction = commitments.ecdf(n)
        ax.step(sigmas, fraction, where="post", color=PALETTE[k % len(PALETTE)], ls=styles[k // len(PALETTE) % 4],
                lw=1.6, label=f"{_text(n)} (N = {len(commitments.rows_of(n))})")
    _sigma_axis(ax, commitments.sigmas, "x", r"noise level $\sigma$")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("fraction of the node's samples committed")
    ax.grid(True, alpha=0.3)
    extra = "" if total <= len(shown) else f"; {len(shown)} of {total} nodes, most samples first"
    ax.set_title(title or f"per-sample commitment, theta = {commitments.theta:g}{extra}", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=8, title="node",
              title_fontsize=8)
    return save_figure(fig, path)


def plot_commitment_pairs(path, commitments: Commitments, nodes=None, max_panels: int = 9,
                          title: str | None = None) -> Path:
    """Per node below the root, each sample's commitment sigma at the node (y: the fine choice)
    against its commitment at the parent (x: the coarse choice). Commitment sigmas are grid points,
    so equal pairs are drawn once with area proportional to their count. Samples that never commit
    sit on the 'never' line past the smallest sigma. Above the diagonal the child committed first
    (fine before coarse)."""
    pairs = commitments.pairs()
    candidates = [n for n in (commitments.nodes if nodes is None else nodes) if n in pairs]
    shown, total = _busiest(commitments, candidates, max_panels)
    if not shown:
        raise ValueError("plot_commitment_pairs: no node below the root with samples to plot")
    sig = commitments.sigmas
    never = float(np.min(sig)) / 2.5  # where never-committed samples are drawn
    orders = commitments.order(n_boot=0)
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 0.4, 4.0 * rows + 0.6), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    for ax, n in zip(axes.flat, shown):
        parent, pair = pairs[n]
        drawn = np.where(np.isnan(pair), never, pair)
        points, counts = np.unique(drawn, axis=0, return_counts=True)
        ax.scatter(points[:, 0], points[:, 1], s=12 + 200 * counts / counts.max(), color=PALETTE[0], alpha=0.6,
                   edgecolors="none")
        ends = [never, float(np.max(sig))]
        ax.plot(ends, ends, color="0.4", lw=0.8, ls="--")
        ax.axvline(never, color="0.7", lw=0.6)
        ax.axhline(never, color="0.7", lw=0.6)
        span = np.concatenate([sig, [never]])
        _sigma_axis(ax, span, "x", f"commitment $\\sigma$ at parent {_text(parent)}")
        _sigma_axis(ax, span, "y", f"at {_text(n)}")
        ax.xaxis.label.set_fontsize(8)
        ax.yaxis.label.set_fontsize(8)
        # x runs noise -> clean to the right, y to the bottom: above the diagonal the child's sigma is larger
        ax.text(0.97, 0.96, "child first\n(fine before coarse)", transform=ax.transAxes, fontsize=7, color="0.3",
                ha="right", va="top")
        ax.text(0.03, 0.04, "parent first", transform=ax.transAxes, fontsize=7, color="0.3", va="bottom")
        fine = orders[n].fine_first
        ax.set_title(f"{_text(n)}: {100 * fine:.0f}% fine first (N = {len(pair)})", fontsize=9)
        ax.grid(True, alpha=0.3, which="major")
    extra = "" if total <= len(shown) else f"; {len(shown)} of {total} nodes, most samples first"
    fig.suptitle(title or f"commitment at each node against its parent, theta = {commitments.theta:g} "
                 f"(area: number of samples; gridlines at {never:.2g}: never committed{extra})", fontsize=9)
    return save_figure(fig, path)
