"""The Bayes filter's evidence maps as a file and a figure (see docs/evidence.md).

* ``evidence.safetensors``: per internal node, ``maps/<node>`` ``[samples, sigmas, H, W]`` float32
  cumulative evidence for the child each sample ends in against its siblings (NaN off the node's
  path), ``commitment/<node>`` ``[samples, H, W]`` the per-position commitment sigma and
  ``child/<node>`` ``[samples]`` the child's index (-1 off the path); ``sigmas`` ``[sigmas]`` (the
  estimator's thinned grid, descending) and ``final_leaf`` ``[samples]``. The header names the
  estimator, the node order, the leaves and where the final leaf came from.
* ``evidence.png`` / ``.pdf`` (:func:`plot_evidence`): for a few samples, per depth of the tree
  the node on the sample's path, *where* its evidence ended up and *when* each position committed.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm, Normalize

from probes.errors import ProbesError
from probes.estimators.evidence import EvidenceMaps, commitment_sigma
from probes.report.plots import FORMATS, RC, literal, save_figure
from probes.store import BatchInvalid, read_tensors, write_tensors

EVIDENCE_FILE = "evidence.safetensors"
FIGURE_SAMPLES = 4  # rows of the figure
QUIET_SHARE = 0.05  # positions whose |final evidence| is below this share of the sample's largest hold no decision


def write_evidence(path, estimator: str, maps: EvidenceMaps, taxonomy) -> Path:
    """``maps`` (of ``estimator``) as ``evidence.safetensors`` (see the module docstring)."""
    nodes = list(taxonomy.internal_nodes)
    tensors = {"sigmas": maps.sigmas.double(), "final_leaf": maps.final_leaf.long()}
    for node in nodes:
        tensors[f"maps/{node}"] = maps.maps[node].float()
        tensors[f"commitment/{node}"] = commitment_sigma(maps.maps[node], maps.sigmas)
        tensors[f"child/{node}"] = maps.child[node].long()
    header = {"kind": "evidence", "estimator": estimator, "final_from": maps.final_from,
              "nodes": json.dumps(nodes), "leaves": json.dumps(list(taxonomy.leaves))}
    return write_tensors(path, tensors, header)


def read_evidence(path, taxonomy, n_samples: int) -> tuple[str, EvidenceMaps]:
    """``(estimator, maps)`` from :func:`write_evidence`'s file, checked against the result's
    taxonomy and sample count; anything else is one line naming the file."""
    path = Path(path)

    def bad(why: str) -> ProbesError:
        return ProbesError(f"{path}: {why}; not a probes evidence file")

    try:
        tensors, header = read_tensors(path)
    except BatchInvalid as why:
        raise bad(str(why)) from None
    nodes = list(taxonomy.internal_nodes)
    try:
        named_nodes, leaves = json.loads(header.get("nodes", "null")), json.loads(header.get("leaves", "null"))
    except ValueError:
        raise bad("its header is not JSON") from None
    if header.get("kind") != "evidence" or named_nodes != nodes or leaves != list(taxonomy.leaves):
        raise bad("it is not the evidence of this result's taxonomy")
    sigmas, final_leaf = tensors.get("sigmas"), tensors.get("final_leaf")
    if sigmas is None or sigmas.ndim != 1 or final_leaf is None or final_leaf.shape != (n_samples,):
        raise bad(f"sigmas or final_leaf missing, or not for {n_samples} samples")
    want = (n_samples, len(sigmas))
    maps, child = {}, {}
    for node in nodes:
        m, c = tensors.get(f"maps/{node}"), tensors.get(f"child/{node}")
        if m is None or m.ndim != 4 or tuple(m.shape[:2]) != want or c is None or c.shape != (n_samples,):
            raise bad(f"node {node!r}'s map is missing or not [{n_samples} samples, {len(sigmas)} sigmas, H, W]")
        maps[node], child[node] = m, c.long()
    final_from = header.get("final_from")
    if final_from not in ("condition", "posterior") or not isinstance(header.get("estimator"), str):
        raise bad("its header names no estimator or final-leaf source")
    return header["estimator"], EvidenceMaps(sigmas=sigmas, maps=maps, final_leaf=final_leaf.long(),
                                             final_from=final_from, child=child)


def _path_nodes(taxonomy, leaf: int) -> list[tuple[str, str]]:
    """``(node, child)`` from the root down to ``leaf`` (an index in ``taxonomy.leaves``)."""
    name = taxonomy.leaves[leaf]
    chain = [name]
    while taxonomy.parent(chain[-1]) is not None:
        chain.append(taxonomy.parent(chain[-1]))
    chain.reverse()
    return list(itertools.pairwise(chain))


def plot_evidence(path, maps: EvidenceMaps, taxonomy, pictures=None, samples=None, formats=FORMATS):
    """Where and when each of a few samples decided, node by node down its path.

    One row per sample (default: the first :data:`FIGURE_SAMPLES`); its final image (``pictures``
    ``uint8 [N, h, w, 3]`` when the model makes pictures), then per depth two panels for the node
    on the sample's path: **where**, the final cumulative evidence for the child it ends in against
    its siblings, as a share of the panel's largest magnitude (orange for the child, purple
    against), over the image in grey; **when**, each position's commitment sigma (log colour scale, one for
    the figure), drawn where the position holds at least :data:`QUIET_SHARE` of the largest
    magnitude. Maps are at the model's resolution (the latent's for latent models) stretched over
    the image.
    """
    n = int(maps.final_leaf.shape[0])
    rows = list(range(min(FIGURE_SAMPLES, n))) if samples is None else [int(i) for i in samples]
    if not rows or any(not 0 <= i < n for i in rows):
        raise ProbesError(f"plot_evidence: samples must be indices below {n}, got {samples!r}")
    depth = taxonomy.max_depth
    lo, hi = float(maps.sigmas.min()), float(maps.sigmas.max())
    when_norm = LogNorm(vmin=lo, vmax=hi)
    height, width = next(iter(maps.maps.values())).shape[-2:]
    extent = (0, width, height, 0)  # pictures are stretched over the maps' positions
    with plt.rc_context(RC):
        has_picture = pictures is not None and len(pictures) > max(rows)
        columns = (1 if has_picture else 0) + 2 * depth
        panel = 0.95  # inches wide; rows keep the maps' aspect
        row_height = panel * min(2.0, height / width) + 0.3
        fig, axes = plt.subplots(len(rows), columns, squeeze=False,
                                 figsize=(panel * 1.08 * columns + 0.3, row_height * len(rows) + 1.35))
        fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.45 / fig.get_figheight(),
                            bottom=1.05 / fig.get_figheight(), wspace=0.08, hspace=0.35)
        where_image = when_image = None
        for r, i in enumerate(rows):
            row = list(axes[r])
            background = None
            if has_picture:
                background = np.asarray(pictures[i]).astype(float).mean(-1) / 255.0
                ax = row.pop(0)
                ax.imshow(pictures[i], interpolation="nearest", extent=extent)
                ax.set_title(f"sample {i}", fontsize=6.5, pad=2)
            chain = _path_nodes(taxonomy, int(maps.final_leaf[i]))
            for d in range(depth):
                where_ax, when_ax = row[2 * d], row[2 * d + 1]
                if d >= len(chain):
                    where_ax.axis("off")
                    when_ax.axis("off")
                    continue
                node, child = chain[d]
                final = maps.maps[node][i, -1].double().numpy()
                scale = float(np.nanmax(np.abs(final))) if np.isfinite(final).any() else 0.0
                share = final / scale if scale > 0 else np.zeros_like(final)
                when = commitment_sigma(maps.maps[node][i:i + 1], maps.sigmas)[0].double().numpy()
                when = np.where(np.abs(share) >= QUIET_SHARE, when, np.nan)
                if background is not None:  # the image under "where"; "when" stays plain, blank where quiet
                    where_ax.imshow(background, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="nearest")
                where_image = where_ax.imshow(share, cmap="PuOr_r", norm=Normalize(-1, 1), extent=extent,
                                              interpolation="nearest", alpha=0.75 if background is not None else 1)
                when_image = when_ax.imshow(np.ma.masked_invalid(when), cmap="viridis_r", norm=when_norm,
                                            extent=extent, interpolation="nearest")
                title = f"{literal(node)} → {literal(child)}"
                where_ax.set_title("where: " + (title if len(title) < 18 else title[:17] + "…"), fontsize=5.5, pad=2)
                median = np.nanmedian(when) if np.isfinite(when).any() else math.nan
                when_ax.set_title(f"when: median σ {median:.2g}", fontsize=5.5, pad=2)
            for ax in axes[r]:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle("Where and when each sample decided, node by node down its path (one row per sample)",
                     fontsize=7.5, x=0.02, ha="left", y=1 - 0.12 / fig.get_figheight())
        if where_image is not None:
            bar_height = 0.1 / fig.get_figheight()
            for image, x, label in (
                    (where_image, 0.03, "where: final evidence for the sample's child, as a\n"
                                        "share of the panel's largest (+ for it, − against)"),
                    (when_image, 0.53, "when: commitment σ, half the final evidence in\n"
                                       f"(log scale; blank: under {QUIET_SHARE:.0%} of the largest)")):
                bar = fig.colorbar(image, cax=fig.add_axes([x, 0.62 / fig.get_figheight(), 0.44, bar_height]),
                                   orientation="horizontal")
                bar.set_label(label, fontsize=6)
                bar.ax.tick_params(labelsize=6)
        return save_figure(fig, path, formats)
