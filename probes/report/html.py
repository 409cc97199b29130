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
from probes.report.layout import place_labels
from probes.report.rundir import atomic_write_text, decision_tree
from probes.report.samples import png_bytes, strip_picture
from probes.taxonomy.export import to_node_link

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
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
    """Log sigma on x (descending, sampling order) and a linear or log y, in pixels."""

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

    def frame(self, ylabel: str, xlabel: str = "noise level σ (log; sampling runs left to right)") -> str:
        out = [f'<rect x="{self.l}" y="{self.t}" width="{self.w - self.l - self.r}" '
               f'height="{self.h - self.t - self.b}" fill="none" stroke="#999"/>']
        for e in range(math.floor(self.x1), math.ceil(self.x0) + 1):
            s = 10.0**e
            if min(self.x0, self.x1) - 1e-9 <= e <= max(self.x0, self.x1) + 1e-9:
                px = self.x(s)
                out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{self.t}" y2="{self.h - self.b}" stroke="#eee"/>'
                           f'<text x="{px:.1f}" y="{self.h - self.b + 14}" text-anchor="middle">{s:g}</text>')
        for v in np.linspace(self.y0, self.y1, 5):
            val = 10.0**v if self.log_y else v
            py = self.y(val)
            out.append(f'<text x="{self.l - 4}" y="{py + 4:.1f}" text-anchor="end">{val:.2g}</text>')
        out.append(f'<text x="{(self.l + self.w - self.r) / 2}" y="{self.h - 6}" text-anchor="middle">'
                   f'{html.escape(xlabel)}</text>')
        out.append(f'<text transform="translate(12,{(self.t + self.h - self.b) / 2}) rotate(-90)" '
                   f'text-anchor="middle">{html.escape(ylabel)}</text>')
        return "".join(out)


def line_chart(series: list[tuple[str, np.ndarray, np.ndarray]], ylabel: str, shade: list | None = None) -> str:
    """An SVG chart of ``(name, sigma, value)`` series with the legend beside it (never over it)."""
    if not series:
        return "<p>no curves</p>"
    ax = _Axis(np.concatenate([s for _, s, _ in series]), np.concatenate([v for _, _, v in series]))
    parts = [f'<svg width="{ax.w}" height="{ax.h}" role="img">', ax.frame(ylabel)]
    for (lo, hi, color) in shade or []:
        parts.append(f'<rect x="{ax.x(hi):.1f}" y="{ax.t}" width="{ax.x(lo) - ax.x(hi):.1f}" '
                     f'height="{ax.h - ax.t - ax.b}" fill="{color}" opacity="0.08"/>')
    legend = []
    for k, (name, s, v) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        pts = " ".join(f"{ax.x(a):.1f},{ax.y(b):.1f}" for a, b in zip(s, v) if math.isfinite(b))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.6">'
                     f'<title>{html.escape(name)}</title></polyline>')
        legend.append(f'<li><span style="background:{color}"></span>{html.escape(name)}</li>')
    parts.append("</svg>")
    return f'<div class="row">{"".join(parts)}<ul class="legend">{"".join(legend)}</ul></div>'


def tree_svg(tree: dict, sigmas: list[float]) -> str:
    """The decision-time tree: internal nodes at their decision sigma (log y), leaves at the bottom;
    hovering a node fills the side panel with its decision sigma, window and interval."""
    nodes = {n["id"]: n for n in tree["nodes"]}
    children: dict[str, list[str]] = {}
    for e in tree.get("edges", tree.get("links", [])):
        children.setdefault(e["source"], []).append(e["target"])
    root = tree["graph"].get("root") or next(iter(nodes))
    leaves: list[str] = []

    def walk(n):
        if n not in children:
            leaves.append(n)
        for c in children.get(n, []):
            walk(c)

    walk(root)
    leaf_sigma = float(tree["graph"].get("leaf_sigma") or min(sigmas))
    height: dict[str, float] = {}

    def h(n):
        if n in children:
            below = max(h(c) for c in children[n])
            d = nodes[n].get("decision_sigma")
            height[n] = max(float(d), below) if d else below
        else:
            height[n] = leaf_sigma
        return height[n]

    h(root)
    many = len(leaves) > 40
    width = max(560, min(1100, 56 * len(leaves) + 140))
    # Up to three times the highest decision (not the whole grid), so close decisions stay apart.
    top_sigma = min(max(sigmas), 3 * max(height.values())) if len(height) > len(leaves) else max(sigmas)
    top_sigma = max(top_sigma, max(height.values()) * 1.2)
    ax = _Axis([top_sigma, leaf_sigma], [top_sigma, leaf_sigma], width=width, height=420, bottom=70, log_y=True)
    xpos = {leaf: ax.l + 14 + i * (width - ax.l - 40) / max(1, len(leaves) - 1) for i, leaf in enumerate(leaves)}
    for n in height:  # post-order: children are placed before their parent
        if n in children:
            xs = [xpos[c] for c in children[n]]
            xpos[n] = 0.5 * (min(xs) + max(xs))
    parts = [f'<svg width="{width}" height="{ax.h}" role="img" aria-label="decision-time tree">']
    for v in np.linspace(ax.y0, ax.y1, 6):
        py = ax.y(10.0**v)
        parts.append(f'<line x1="{ax.l}" x2="{width - 10}" y1="{py:.1f}" y2="{py:.1f}" stroke="#eee"/>'
                     f'<text x="{ax.l - 4}" y="{py + 4:.1f}" text-anchor="end">{10.0**v:.2g}</text>')
    parts.append(f'<text transform="translate(12,{ax.h / 2 - 30}) rotate(-90)" text-anchor="middle">'
                 'decision noise level σ (log)</text>')
    for p, kids in children.items():
        for c in kids:
            parts.append(f'<polyline points="{xpos[c]:.1f},{ax.y(height[c]):.1f} {xpos[c]:.1f},{ax.y(height[p]):.1f} '
                         f'{xpos[p]:.1f},{ax.y(height[p]):.1f}" fill="none" stroke="#777" stroke-width="1.2"/>')
    anchors = []
    for n, attrs in nodes.items():
        if n not in children:
            continue
        label = str(attrs.get("label", n))
        d = attrs.get("decision_sigma")
        x, y = xpos[n], ax.y(height[n])
        if d:
            lo, hi = attrs["window"]
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{ax.y(hi):.1f}" y2="{ax.y(max(lo, leaf_sigma)):.1f}" '
                         'stroke="#1f77b4" stroke-opacity="0.35" stroke-width="5"/>')
        interval = attrs.get("interval")
        info = (f"<b>{html.escape(label)}</b> ({html.escape(n)})<br>" + (
            f"decision σ = {_g(d)}<br>half-peak window [{_g(attrs['window'][0])}, {_g(attrs['window'][1])}]<br>"
            + (f"95% bootstrap interval [{_g(interval[0])}, {_g(interval[1])}]<br>" if interval else "")
            + f"peak rate {_g(attrs.get('peak_rate'))} nats per unit log σ"
            + ("<br>peak at the grid's edge" if attrs.get("at_edge") else "") if d else "undecided"))
        fill = "#1f77b4" if d and not attrs.get("at_edge") else ("#ff7f0e" if d else "#fff")
        parts.append(f'<g class="node" data-info="{html.escape(info)}"><circle cx="{x:.1f}" cy="{y:.1f}" r="5" '
                     f'fill="{fill}" stroke="#333"/><title>{html.escape(label)}: σ={_g(d)}</title></g>')
        anchors.append((label, x, y))
    if not many:
        for (label, _, _), (lx, ly) in zip(anchors, place_labels(anchors, height=15.0)):
            parts.append(f'<text x="{lx:.1f}" y="{ly:.1f}">{html.escape(label)}</text>')
        for leaf in leaves:
            label = str(nodes[leaf].get("label", leaf))
            parts.append(f'<text transform="translate({xpos[leaf]:.1f},{ax.h - ax.b + 12}) rotate(50)">'
                         f'{html.escape(label)}</text>')
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
