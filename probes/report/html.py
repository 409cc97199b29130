"""``report.html``: one self-contained page per result (and per ``probes compare``).

Everything is inline (SVG drawn here, PNG pictures as data URIs, a few lines of JavaScript for the
hover panel), so the file opens from disk or an e-mail without network access. The page is built
from an in-memory result object (:class:`probes.result.ProbeResult`, read through its public
attributes; never from files the same process wrote); ``probes plot RUN`` rebuilds it for any
finished run directory.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
from pathlib import Path

import numpy as np
import yaml

from probes.entropy.decisions import rates
from probes.report.commitment_plots import plot_commitment_ecdf, plot_commitment_pairs
from probes.report.evidence_maps import plot_evidence
from probes.report.layout import (
    EDGE_NODE_COLOR,
    INVERSION_COLOR,
    NODE_COLOR,
    PALETTE,
    drawn_heights,
    inverted_edges,
    leader_point,
    linear_ticks,
    log_ticks,
    named_log_ticks,
    place_clear_labels,
    segment_box,
    series_style,
    tick_label,
    tree_extent,
    tree_x,
)
from probes.report.rundir import atomic_write_text, decision_tree
from probes.report.samples import png_bytes, strip_picture
from probes.taxonomy.export import to_node_link

SIGMA_AXIS = "noise level σ (log scale), noise → clean"
LABEL_CHAR_PX = 6.4  # generous width of one character of a tree label at 11px
LABEL_LINE_PX = 13  # line height of tree labels
MAX_SAMPLE_PREVIEWS = 200

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1180px;margin:auto;padding:16px 24px}
h1{font-size:22px;margin:8px 0} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:12px 16px;margin:12px 0}
table{border-collapse:collapse;font-size:13px} td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
.row{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
.legend{font-size:12px;list-style:none;padding:0;margin:0;min-width:150px}
.legend span{display:inline-block;width:14px;height:3px;margin-right:6px;vertical-align:middle}
svg text{font:11px system-ui,sans-serif;fill:#333} svg .node{cursor:pointer}
svg text.label{fill:#111} svg text.caption{font-size:12px;fill:#444}
svg .node:hover circle,svg .node.on circle{stroke:#000;stroke-width:2}
#panel{position:sticky;top:8px;min-width:260px;max-width:300px;font-size:13px;background:#f4f7fb;
  border:1px solid #cfd8e3;border-radius:6px;padding:8px 12px}
.thumbs img{width:40px;height:40px;image-rendering:pixelated;margin:1px;border:1px solid #ddd}
.strip img{height:48px;image-rendering:pixelated} .strip td{padding:2px 6px}
img.figure{max-width:100%;width:760px;display:block;margin:8px 0}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px;max-height:420px}
"""

SCRIPT = """
document.querySelectorAll('.node').forEach(function(n){
  n.addEventListener('mouseenter',function(){
    document.querySelectorAll('.node.on').forEach(function(o){o.classList.remove('on');});
    n.classList.add('on');
    document.getElementById('panel').innerHTML=n.getAttribute('data-info');
  });
});
var first=document.querySelector('.node');
if(first){first.dispatchEvent(new Event('mouseenter'));}  // the root's numbers until another node is hovered
document.body.setAttribute('data-ready','1');
"""


def _g(v, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}g}"


def _data_uri(picture: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(picture)).decode()


# --- SVG pieces ------------------------------------------------------------------------------------


class _Axis:
    """Log sigma on x (descending: noise -> clean, sampling order) and a linear or log y, in pixels;
    ticks at round values (``layout.log_ticks`` / ``layout.linear_ticks``)."""

    def __init__(self, sigmas, ys, width=620, height=300, left=56, right=12, top=12, bottom=40, log_y=False):
        self.w, self.h, self.l, self.r, self.t, self.b = width, height, left, right, top, bottom
        s = np.asarray(sigmas, dtype=float)
        self.x0, self.x1 = math.log10(s.max()), math.log10(s.min())
        y = np.asarray([v for v in ys if math.isfinite(v)] or [0.0, 1.0], dtype=float)
        self.log_y = log_y
        if log_y:
            y = np.log10(y[y > 0]) if (y > 0).any() else np.array([0.0, 1.0])
        lo, hi = float(y.min()), float(y.max())
        if not log_y:
            lo = min(lo, 0.0)
        pad = 0.05 * (hi - lo or 1.0)
        self.y0, self.y1 = lo - (pad if log_y else 0), hi + pad

    def x(self, sigma: float) -> float:
        f = (math.log10(sigma) - self.x0) / (self.x1 - self.x0 or 1.0)
        return self.l + f * (self.w - self.l - self.r)

    def y(self, v: float) -> float:
        v = math.log10(v) if self.log_y else v
        f = (v - self.y0) / (self.y1 - self.y0 or 1.0)
        return self.t + (1 - f) * (self.h - self.t - self.b)

    def y_ticks(self, named: dict | None = None) -> list[tuple[float, str]]:
        if self.log_y:
            return named_log_ticks(10.0**self.y0, 10.0**self.y1, named or {}, max_ticks=6)
        return [(v, tick_label(v)) for v in linear_ticks(self.y0, self.y1, 6)]

    def frame(self, ylabel: str, xlabel: str = SIGMA_AXIS) -> str:
        out = [f'<rect x="{self.l}" y="{self.t}" width="{self.w - self.l - self.r}" '
               f'height="{self.h - self.t - self.b}" fill="none" stroke="#999"/>']
        for s in log_ticks(10.0**self.x1, 10.0**self.x0):
            px = self.x(s)
            out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{self.t}" y2="{self.h - self.b}" stroke="#eee"/>'
                       f'<text class="xtick" x="{px:.1f}" y="{self.h - self.b + 14}" text-anchor="middle">'
                       f'{tick_label(s)}</text>')
        for val, text in self.y_ticks():
            py = self.y(val)
            out.append(f'<text class="ytick" x="{self.l - 4}" y="{py + 4:.1f}" text-anchor="end">{text}</text>')
        out.append(f'<text x="{(self.l + self.w - self.r) / 2}" y="{self.h - 6}" text-anchor="middle">'
                   f'{html.escape(xlabel)}</text>')
        out.append(f'<text transform="translate(12,{(self.t + self.h - self.b) / 2}) rotate(-90)" '
                   f'text-anchor="middle">{html.escape(ylabel)}</text>')
        return "".join(out)


def line_chart(series: list[tuple[str, np.ndarray, np.ndarray]], ylabel: str, shade: list | None = None) -> str:
    """An SVG chart of ``(name, sigma, value)`` series with the legend beside it (never over it);
    Okabe-Ito colours, dashed once the eight colours run out. ``shade`` lists ``(lo, hi, colour)``
    sigma bands to tint."""
    if not series:
        return "<p>no curves</p>"
    ax = _Axis(np.concatenate([s for _, s, _ in series]), np.concatenate([v for _, _, v in series]))
    parts = [f'<svg width="{ax.w}" height="{ax.h}" role="img">', ax.frame(ylabel)]
    for (lo, hi, color) in shade or []:
        parts.append(f'<rect x="{ax.x(hi):.1f}" y="{ax.t}" width="{ax.x(lo) - ax.x(hi):.1f}" '
                     f'height="{ax.h - ax.t - ax.b}" fill="{color}" opacity="0.08"/>')
    legend = []
    for k, (name, s, v) in enumerate(series):
        color, dashes = series_style(k)
        dash = f' stroke-dasharray="{",".join(f"{1.6 * d:g}" for d in dashes)}"' if dashes else ""
        pts = " ".join(f"{ax.x(a):.1f},{ax.y(b):.1f}" for a, b in zip(s, v) if math.isfinite(b))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.6"{dash}>'
                     f'<title>{html.escape(name)}</title></polyline>')
        legend.append(f'<li><span style="background:{color}"></span>{html.escape(name)}</li>')
    parts.append("</svg>")
    return f'<div class="row">{"".join(parts)}<ul class="legend">{"".join(legend)}</ul></div>'


def _tree_structure(tree: dict) -> tuple[dict, dict, str]:
    """(nodes by id, children by parent in edge order, root) of a node-link tree."""
    nodes = {n["id"]: n for n in tree["nodes"]}
    children: dict[str, list[str]] = {}
    for e in tree.get("edges", tree.get("links", [])):
        children.setdefault(e["source"], []).append(e["target"])
    root = tree["graph"].get("root") or next(n for n in nodes if all(n not in k for k in children.values()))
    return nodes, children, root


def _node_info(label: str, n: str, attrs: dict) -> str:
    """The hover panel's text for one node."""
    d = attrs.get("decision_sigma")
    if not d:
        return f"<b>{html.escape(label)}</b> ({html.escape(n)})<br>undecided"
    interval = attrs.get("interval")
    return (f"<b>{html.escape(label)}</b> ({html.escape(n)})<br>decision σ = {_g(d)}<br>half-peak window "
            f"[{_g(attrs['window'][0])}, {_g(attrs['window'][1])}]<br>"
            + (f"95% bootstrap interval [{_g(interval[0])}, {_g(interval[1])}]<br>" if interval else "")
            + f"peak rate {_g(attrs.get('peak_rate'))} nats per unit log σ"
            + ("<br>peak at the grid's edge" if attrs.get("at_edge") else ""))


def tree_svg(tree: dict, sigmas: list[float]) -> str:
    """The decision-time tree as SVG, by the convention of ``layout.drawn_heights`` (the same as
    ``tree.png``): every internal node at its own decision sigma on a log axis (noise at the top,
    clean at the bottom), a child that decides before its parent drawn above it with a dashed
    vermillion edge (counted in the caption), windows as thin brackets beside the nodes, each node
    labelled with its name, decision sigma and window where there is room (the caption counts
    the labels left out), leaves on the bottom row. Hovering a node fills the side panel with its
    numbers and bootstrap interval.

    ``tree`` is node-link data as in ``tree.json`` (decisions read from ``decision_sigma`` and
    ``window``), ``sigmas`` the run's grid (the leaves' sigma where the tree records none)."""
    nodes, children, root = _tree_structure(tree)
    leaf_sigma = float(tree["graph"].get("leaf_sigma") or min(sigmas))
    decision = {n: (float(a["decision_sigma"]) if a.get("decision_sigma") else None) for n, a in nodes.items()}
    log_height = drawn_heights(children, root, decision, leaf_sigma)
    inverted = set(inverted_edges(children, log_height))
    leaves, order = tree_x(children, root)
    internal = [n for n in nodes if children.get(n)]
    windows = [v for n in internal if decision[n] for v in nodes[n]["window"]]
    floor, top = tree_extent([10.0 ** log_height[n] for n in internal] + windows, leaf_sigma)

    many = len(leaves) > 40
    names = {leaf: str(nodes[leaf].get("label", leaf)) for leaf in leaves}
    slanted = max(len(v) for v in names.values()) > 3  # short leaf names stand upright
    width = max(560, min(1100, 64 * len(leaves) + 160))
    # Only the y axis is used (log sigma); x places leaves evenly.
    ax = _Axis([1.0, 10.0], [floor, top], width=width, height=440 if slanted and not many else 400, left=72,
               right=14, top=14, bottom=70 if slanted and not many else 30, log_y=True)
    span = width - ax.l - ax.r - 28
    xpos = {n: ax.l + 14 + order[n] * span / max(1, len(leaves) - 1) for n in order}
    ypos = {n: ax.y(max(10.0 ** log_height[n], floor)) for n in nodes}

    parts = [f'<svg width="{width}" height="{ax.h + 64}" role="img" aria-label="decision-time tree">']
    for val, text in ax.y_ticks({floor: "leaves"}):
        py = ax.y(val)
        parts.append(f'<line x1="{ax.l}" x2="{width - ax.r}" y1="{py:.1f}" y2="{py:.1f}" stroke="#eee"/>'
                     f'<text class="ytick" data-value="{val:.6g}" x="{ax.l - 4}" y="{py + 4:.1f}" '
                     f'text-anchor="end">{html.escape(text)}</text>')
    parts.append(f'<text transform="translate(14,{(ax.t + ax.h - ax.b) / 2:.0f}) rotate(-90)" text-anchor="middle">'
                 "decision noise level σ (log scale): clean ← → noise</text>")
    segments = []
    for p in internal:
        for c in children[p]:
            pts = [(xpos[c], ypos[c]), (xpos[c], ypos[p]), (xpos[p], ypos[p])]
            segments += [(*pts[0], *pts[1]), (*pts[1], *pts[2])]
            style = (f'stroke="{INVERSION_COLOR}" stroke-width="1.4" stroke-dasharray="5,3"' if (p, c) in inverted
                     else 'stroke="#777" stroke-width="1.2"')
            parts.append(f'<polyline class="edge{" inverted" if (p, c) in inverted else ""}" data-parent='
                         f'"{html.escape(p)}" data-child="{html.escape(c)}" points="'
                         + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + f'" fill="none" {style}/>')
    for n in internal:  # thin brackets beside each node: its half-peak window
        if decision[n]:
            lo, hi = nodes[n]["window"]
            bx, y_lo, y_hi = xpos[n] - 5, ax.y(max(lo, floor)), ax.y(hi)
            parts.append(f'<path class="window" d="M{bx - 2.5:.1f},{y_hi:.1f}h5M{bx:.1f},{y_hi:.1f}V{y_lo:.1f}'
                         f'M{bx - 2.5:.1f},{y_lo:.1f}h5" stroke="{NODE_COLOR}" stroke-width="1" fill="none"/>')
            segments.append((bx - 2.5, y_hi, bx + 2.5, y_lo))
    for n in internal:
        attrs, d = nodes[n], decision[n]
        label = str(attrs.get("label", n))
        fill = "#fff" if not d else (EDGE_NODE_COLOR if attrs.get("at_edge") else NODE_COLOR)
        info = html.escape(_node_info(label, n, attrs))
        parts.append(f'<g class="node" data-node="{html.escape(n)}" data-info="{info}">'
                     f'<circle cx="{xpos[n]:.1f}" cy="{ypos[n]:.1f}" r="4.5" fill="{fill}" stroke="#333"/>'
                     f'<title>{html.escape(label)}: σ={_g(d)}</title></g>')
    # Labels: two lines (name; sigma and window) at a free spot beside each node, root first.
    texts = [(str(nodes[n].get("label", n)), "undecided" if not decision[n] else
              f"σ={decision[n]:.3g} [{nodes[n]['window'][0]:.2g}–{nodes[n]['window'][1]:.2g}]") for n in internal]
    sizes = [(LABEL_CHAR_PX * max(len(a), len(b)) + 2, 2 * LABEL_LINE_PX + 3) for a, b in texts]
    obstacles = [segment_box(*seg) for seg in segments]
    obstacles += [(xpos[n] - 5.5, ypos[n] - 5.5, xpos[n] + 5.5, ypos[n] + 5.5) for n in internal]
    bounds = (ax.l + 1, ax.t + 1, width - ax.r - 1, ax.h - ax.b - 1)
    spots = place_clear_labels(sizes, [(xpos[n], ypos[n]) for n in internal], obstacles, bounds, gap=4.0,
                               max_shift=24)
    omitted = 0
    for n, (name, value), spot in zip(internal, texts, spots):
        if spot is None:
            omitted += 1
            continue
        box, leader = spot
        if leader:
            lx, ly = leader_point(box, leader)
            parts.append(f'<line class="leader" x1="{lx:.1f}" y1="{ly:.1f}" x2="{xpos[n]:.1f}" y2="{ypos[n]:.1f}" '
                         'stroke="#999" stroke-width="0.6"/>')
        parts.append(f'<text class="label" data-node="{html.escape(n)}" x="{box[0] + 1:.1f}" '
                     f'y="{box[1] + LABEL_LINE_PX:.1f}">{html.escape(name)}<tspan x="{box[0] + 1:.1f}" '
                     f'dy="{LABEL_LINE_PX}">{html.escape(value)}</tspan></text>')
    if not many:
        slant = ' rotate(50)' if slanted else ""
        anchor = "" if slant else ' text-anchor="middle"'
        for leaf, label in names.items():
            parts.append(f'<text class="leaf" transform="translate({xpos[leaf]:.1f},{ax.h - ax.b + 14}){slant}"'
                         f'{anchor}>{html.escape(label)}</text>')
    k = len(inverted)
    caption = ["Each internal node at its own decision σ (log scale); bracket: its half-peak window.",
               f"Dashed vermillion: the child decides before its parent ({k} {'edge' if k == 1 else 'edges'}). "
               "Hollow: undecided, drawn at its highest child.",
               f"Leaves: bottom row (the grid ends at σ = {_g(leaf_sigma)})"
               + (f"; {len(leaves)} leaf names omitted" if many else "")
               + (f"; {omitted} of {len(internal)} node labels omitted (no room)" if omitted else "") + "."]
    for i, line in enumerate(caption):
        parts.append(f'<text class="caption" x="{ax.l}" y="{ax.h + 18 + 16 * i}">{html.escape(line)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- the page ---------------------------------------------------------------------------------------


def _curve_series(curves, kind: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, sigma descending, mean)`` per level (``kind="level"``) or node of one estimator."""
    order = np.argsort(-curves.sigmas, kind="stable")
    sig = curves.sigmas[order]
    if kind == "level":
        mean = curves.level_mean()[order]
        return [(f"level {n}", sig, mean[:, k]) for k, n in enumerate(curves.level_names)]
    mean = curves.node_mean()[order]
    return [(str(n), sig, mean[:, k]) for k, n in enumerate(curves.node_names)]


def _rates(curves) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``dC_n / dlog sigma`` per node, read the way sampling runs (information gained per unit log
    sigma), with the same derivative as the decisions."""
    if len(curves.sigmas) <= 2:
        return []
    s, r = rates(curves.sigmas, curves.node_mean().T)
    return [(str(n), s[::-1], r[k][::-1]) for k, n in enumerate(curves.node_names)]


def _quality_table(record: dict) -> str:
    q, calls = record.get("quality") or {}, record.get("calls") or {}
    rows = []
    for level, acc in (q.get("conditional_accuracy") or {}).items():
        rows.append((f"conditional accuracy, level {level}", f"{acc:.3f}"))
    if "frechet_distance" in q:
        rows.append(("Frechet distance (classifier features)", f"{q['frechet_distance']:.4g} "
                     f"(vs {q.get('frechet_reference_n')} reference samples)"))
    for k, v in calls.items():
        rows.append((f"denoiser calls: {k.replace('_', ' ')}", str(v)))
    if not rows:
        return "<p>No quality measures for this result (it kept no final samples, or no classifier read them).</p>"
    return "<table>" + "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>" for a, b in rows) + \
        "</table>"


def _strips(kept) -> str:
    if kept is None or not kept.strips:
        return "<p>No x0 predictions kept (vector data, or a run on data paths).</p>"
    sigmas = kept.strip_sigmas
    rows = []
    for strip in kept.strips:
        row = kept.rows[strip.index] if strip.index < len(kept.rows) else {}
        seed = f"seed {row.get('batch_seed')}" if row.get("batch_seed") not in (None, "") else ""
        rows.append(f'<tr><td>sample {strip.index}<br>{html.escape(seed)}<br>{html.escape(strip.condition)}</td>'
                    f'<td colspan="{len(sigmas)}"><img alt="x0 predictions of sample {strip.index}" '
                    f'src="{_data_uri(strip_picture(strip.frames))}"></td></tr>')
    return (f'<table class="strip"><tr><th>sample, seed, condition</th><th colspan="{len(sigmas)}">'
            f'predicted clean image D(x; σ) at σ = {", ".join(f"{s:.3g}" for s in sigmas)} '
            f'(left to right: noise → clean)</th></tr>{"".join(rows)}</table>')


def _samples(kept) -> str:
    if kept is None or not kept.rows:
        return "<p>No samples listed.</p>"
    previews = kept.previews if kept.previews is not None else []
    shown = kept.rows[: min(len(previews), MAX_SAMPLE_PREVIEWS)]
    thumbs = "".join(
        f'<img src="{_data_uri(previews[r["index"]])}" alt="sample {r["index"]}" '
        f'title="sample {r["index"]}: batch {r["batch"]} (seed {r["batch_seed"]}, #{r["index_in_batch"]}); '
        f'condition {html.escape(str(r["condition"]) or "none")}; classifier: {html.escape(r["classifier_leaf"])} '
        f'(p={_g(r["classifier_prob"], 2)})">' for r in shown)
    note = f"{len(kept.rows)} samples in samples.csv" + (f"; the first {len(shown)} shown" if shown else "")
    return f"<p>{note}. Hover a picture for its seed, condition and classifier reading.</p>" + \
        f'<div class="thumbs">{thumbs}</div>'


def _figure_uri(draw) -> str:
    """A figure drawn by ``draw(path)`` (a PNG writer) as a data URI."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _commitments(commits) -> str:
    """For whom: when each sample commits at each node, and whether fine choices come first."""
    if commits is None or not len(commits.commit_sigma):
        return "<p>No per-sample posteriors (this estimator gives entropies only).</p>"
    parts = [f"<p>A sample has committed at a node from the largest σ on which the posterior restricted to the "
             f"node keeps θ = {commits.theta:g} on the child it ends in, all the way to the end "
             "(commitments.csv has every sample).</p>",
             f'<img class="figure" alt="commitment ECDF" '
             f'src="{_figure_uri(lambda path: plot_commitment_ecdf(path, commits))}">']
    if commits.pairs():
        parts.append(f'<img class="figure" alt="parent against child commitment" '
                     f'src="{_figure_uri(lambda path: plot_commitment_pairs(path, commits))}">')
        rows = []
        for node, o in commits.order(n_boot=0).items():
            rows.append(f"<tr><td>{html.escape(node)}</td><td>{html.escape(str(o.parent))}</td><td>{o.n_samples}</td>"
                        + "".join(f"<td>{o.fractions[k]:.2f}</td>" for k in ("fine_first", "coarse_first",
                                                                            "together", "neither")) + "</tr>")
        parts.append("<table><tr><th>node</th><th>parent</th><th>samples</th><th>child first</th><th>parent first</th>"
                     "<th>together</th><th>neither</th></tr>" + "".join(rows) + "</table>")
    return "".join(parts)


def _evidence(result, estimator: str, maps) -> str:
    """Where in the image, and when, the first samples' decisions were made (the filter's maps)."""
    pictures = result.samples.previews if result.samples is not None else None
    source = ("its conditioning leaf" if maps.final_from == "condition"
              else "the leaf of largest posterior at the last σ")
    uri = _figure_uri(lambda path: plot_evidence(path, maps, result.taxonomy, pictures, formats=("png",)))
    return (f"<p>The {html.escape(estimator)} filter's evidence, position by position, for the child each sample "
            f"ends in (its final leaf: {source}) against the child's siblings, summed along σ; and where each "
            f"position's evidence was half in (its commitment σ). {len(maps.sigmas)} σ, maps of "
            f"{maps.maps[next(iter(maps.maps))].shape[-2]} × {maps.maps[next(iter(maps.maps))].shape[-1]} "
            "positions; every sample's maps are in evidence.safetensors.</p>"
            f'<img class="figure" alt="evidence maps" src="{uri}">')


def render_run_report(result, curves: dict | None = None, decisions: dict | None = None, commits=None) -> str:
    """The page of a result (``curves``/``decisions``: per estimator, when already computed;
    ``commits``: the primary estimator's commitments)."""
    primary = result.primary
    curves = curves or {primary: result.entropy(primary)}
    decisions = decisions or {primary: result.decisions(kind="both")}
    record, meta = result.record, result.meta
    name = meta.get("name") or record.get("name") or meta.get("pipeline") or "probe"
    c = curves[primary]
    tree = to_node_link(decision_tree(result.taxonomy, decisions[primary]))
    kind = "run" if meta.get("kind") == "run" else "probe"
    body = [f"<h1>probes {kind}: {html.escape(str(name))}</h1>",
            f"<p>{result.n_samples} samples, {len(c.sigmas)} noise levels, taxonomy "
            f"<b>{html.escape(str(result.taxonomy.name))}</b> ({len(result.taxonomy.leaves)} leaves), "
            f"primary estimator <b>{html.escape(primary)}</b>.</p>"]
    body.append('<h2>Decision-time tree</h2><section class="row"><div>'
                + tree_svg(tree, [float(v) for v in c.sigmas]) +
                '</div><div id="panel">Hover a node: its decision σ, half-peak window and bootstrap '
                'interval.</div></section>')
    body.append(f"<h2>Entropy per level ({html.escape(primary)})</h2><section>"
                + line_chart(_curve_series(c, "level"), "conditional entropy H_l(σ) [nats]") + "</section>")
    nodes = _curve_series(c, "node")
    body.append("<h2>Entropy and rate per node</h2><section>"
                + line_chart(nodes, "node contribution C_n(σ) [nats]")
                + line_chart(_rates(c), "rate dC_n / dlog σ [nats]") + "</section>")
    body.append("<h2>What the model sees as it decides</h2><section>" + _strips(result.samples) + "</section>")
    if commits is None and result.estimates[primary].log_probs is not None:
        commits = result.commitments(primary)
    body.append("<h2>For whom: per-sample commitment</h2><section>" + _commitments(commits) + "</section>")
    evidence = result.evidence_maps()
    if evidence is not None:
        body.append("<h2>Where: evidence maps</h2><section>" + _evidence(result, *evidence) + "</section>")
    body.append("<h2>Sample quality</h2><section>" + _quality_table(record) + "</section>")
    body.append("<h2>Samples</h2><section>" + _samples(result.samples) + "</section>")
    provenance = record.get("recipe") if isinstance(record.get("recipe"), dict) else meta
    body.append(f"<h2>{'Recipe' if 'recipe' in record else 'Provenance'}</h2><section><pre>"
                + html.escape(yaml.safe_dump(_plain(provenance), sort_keys=False)) + "</pre></section>")
    return _page(f"probes: {name}", "".join(body))


def _plain(value):
    """Provenance as plain YAML-able values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><main>{body}</main><script>{SCRIPT}</script></body></html>")


def write_run_report(path, result, curves: dict | None = None, decisions: dict | None = None, commits=None) -> Path:
    """Write the result's page to ``path``."""
    return atomic_write_text(path, render_run_report(result, curves, decisions, commits))


def write_compare_report(out, comparison, run_a, run_b) -> Path:
    """report.html for ``probes compare`` (a :class:`probes.comparison.Comparison`): the information
    difference per level and the node shifts."""
    out = Path(out)
    series = [(f"level {k}", d.sigmas, d.delta) for k, d in comparison.levels.items()]
    shade = [(d.band[0], d.band[1], PALETTE[k % len(PALETTE)])
             for k, d in enumerate(comparison.levels.values()) if d.band]
    def ratio_interval(s):
        lo_hi = s.get("ratio_interval")
        return "" if lo_hi is None else f"×{_g(lo_hi[0])} – ×{_g(lo_hi[1])}"

    shifts = "".join(f"<tr><td>{html.escape(n)}</td><td>{_g(s['sigma_a'])}</td><td>{_g(s['sigma_b'])}</td>"
                     f"<td>×{_g(s['ratio'])}</td><td>{ratio_interval(s)}</td></tr>"
                     for n, s in comparison.shifts.items())
    pct = f"{100 * comparison.curves.ci:g}%"
    body = (f"<h1>probes compare</h1><p>B = {html.escape(str(run_b))} against A = {html.escape(str(run_a))} "
            f"({html.escape(comparison.estimator)} estimator).</p>"
            "<h2>Information B gains over A, per level</h2><section>"
            + line_chart(series, "I_B − I_A [nats]", shade) + "<p>Shaded: where |ΔI| exceeds half its peak.</p>"
            + f"<pre>{html.escape(comparison.text(run_a, run_b))}</pre></section>"
            "<h2>Decision σ per node</h2><section><table><tr><th>node</th><th>A</th><th>B</th><th>ratio</th>"
            f"<th>{pct} interval</th></tr>"
            + shifts + "</table></section>")
    return atomic_write_text(out / "report.html", _page("probes compare", body))
