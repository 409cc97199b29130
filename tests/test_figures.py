"""The figures: one height convention in the SVG tree, tree.png and the text tree, with
inversions shown; values on the page; round ticks; paper-ready files; labels that never collide."""

import json
import math
import re
import xml.etree.ElementTree as ET

import networkx as nx
import numpy as np
import pytest
from matplotlib.collections import LineCollection
from PIL import Image
from test_entropy_trees import make_taxonomy

from probes import noise
from probes.entropy import Decision, decide, tree_entropy
from probes.entropy.decisions import DecisionMap
from probes.errors import ProbesError
from probes.report import plots
from probes.report.html import line_chart, tree_svg
from probes.report.layout import OKABE_ITO, PALETTE, log_ticks, tree_x
from probes.report.rundir import (
    decision_inversions,
    decision_tree,
    format_decision_tree,
    tree_heights,
    write_tree,
)
from probes.taxonomy.export import from_newick, to_node_link

# A tree with known inversions: 'a' decides (sigma 3) before the root (1); 'b2' (0.8) before 'b'
# (0.5). 'c' is undecided and has a decided child 'c1' (0.25) and a leaf.
SPEC = {"a": ["a1", "a2"], "b": {"b1": ["x", "y"], "b2": ["z", "w"]}, "c": {"c1": ["u", "v"], "q": None}}
SIGMA = {"root": 1.0, "a": 3.0, "b": 0.5, "b1": 0.2, "b2": 0.8, "c1": 0.25}
WINDOW = {"root": (0.6, 1.7), "a": (2.0, 4.5), "b": (0.3, 0.8), "b1": (0.1, 0.35), "b2": (0.5, 1.2),
          "c1": (0.15, 0.4)}
INVERTED = {("root", "a"), ("b", "b2")}
SIGMA_MIN = 0.01


def decision(name, sigma, window):
    return Decision(name=name, kind="node", decision_sigma=sigma, window=window, interval=None, peak_rate=0.3,
                    at_edge=False, window_clipped=False, vp_time=noise.vp_time(sigma), log_snr=noise.log_snr(sigma),
                    grid=(SIGMA_MIN, 50.0))


@pytest.fixture(scope="module")
def inverted_tree():
    tax = make_taxonomy(SPEC)
    nodes = DecisionMap({n: (decision(n, SIGMA[n], WINDOW[n]) if n in SIGMA else None) for n in tax.internal_nodes},
                        reasons={"c": "flat: the rate is not positive at any grid point"})
    return tax, {"nodes": nodes, "levels": {}}


def test_heights_are_each_nodes_own_decision(inverted_tree):
    tax, decisions = inverted_tree
    h = tree_heights(tax, decisions, SIGMA_MIN)
    for n, s in SIGMA.items():
        assert h[n] == pytest.approx(math.log10(s), abs=1e-12)
    assert h["c"] == pytest.approx(math.log10(0.25), abs=1e-12)  # undecided: at its highest child
    assert h["q"] == pytest.approx(math.log10(SIGMA_MIN), abs=1e-12)
    assert set(decision_inversions(tax, decisions, SIGMA_MIN)) == INVERTED


def test_tree_files_keep_decisions_and_record_drawn_heights(tmp_path, inverted_tree):
    """tree.json's tree_sigma is the drawn height (the own decision, also for 'a' above the root);
    tree.nwk's branch lengths are clamped to >= 0 for the format (a's branch is 0)."""
    tax, decisions = inverted_tree
    write_tree(tmp_path, tax, decisions, SIGMA_MIN)
    g = nx.node_link_graph(json.loads((tmp_path / "tree.json").read_text()), edges="edges")
    for n, s in SIGMA.items():
        assert g.nodes[n]["decision_sigma"] == s and g.nodes[n]["tree_sigma"] == pytest.approx(s, rel=1e-12)
    parsed = from_newick((tmp_path / "tree.nwk").read_text())
    lengths = {(p, c): d["branch_length"] for p, c, d in parsed.graph.edges(data=True)}
    assert min(lengths.values()) >= 0
    assert lengths["root", "a"] == pytest.approx(0.0, abs=1e-12)
    assert lengths["root", "b"] == pytest.approx(math.log10(1.0 / 0.5))


# -- the SVG tree (report.html) -------------------------------------------------------------------

def svg_tree(tax, decisions) -> ET.Element:
    data = to_node_link(decision_tree(tax, decisions, SIGMA_MIN))
    return ET.fromstring(tree_svg(data, [50.0, SIGMA_MIN]))


def y_to_sigma(root: ET.Element):
    """The y axis as the page draws it, read back from its numeric tick labels (value, y)."""
    ticks = [(float(t.get("data-value")), float(t.get("y")) - 4) for t in root.iter("text")
             if t.get("class") == "ytick" and t.text != "leaves"]
    assert len(ticks) >= 3
    ys, logs = np.array([y for _, y in ticks]), np.log10([v for v, _ in ticks])
    slope, intercept = np.polyfit(ys, logs, 1)
    # the axis is logarithmic: the ticks lie on one line to the pixel rounding (0.05 px of ~300 px a decade)
    assert np.abs(slope * ys + intercept - logs).max() < 1e-3
    return lambda y: 10.0 ** (slope * y + intercept)


def test_svg_draws_every_node_at_its_own_decision_and_shows_the_inversions(inverted_tree):
    """Heights parsed from the SVG's coordinates: every decided node within 0.5% of its decision
    sigma (pixel coordinates are rounded to 0.1 px, ~300 px a decade: 0.05% in sigma); the root
    drawn below 'a', which decides before it; the two inverted edges drawn dashed and counted."""
    tax, decisions = inverted_tree
    root = svg_tree(tax, decisions)
    to_sigma = y_to_sigma(root)
    circles = {g.get("data-node"): g.find("circle") for g in root.iter("g") if g.get("class") == "node"}
    assert set(circles) == set(tax.internal_nodes)
    drawn = {n: to_sigma(float(c.get("cy"))) for n, c in circles.items()}
    for n, s in SIGMA.items():
        assert drawn[n] == pytest.approx(s, rel=5e-3), n
    assert drawn["c"] == pytest.approx(0.25, rel=5e-3) and circles["c"].get("fill") == "#fff"  # hollow
    assert float(circles["root"].get("cy")) > float(circles["a"].get("cy"))  # the root below 'a'
    edges = [e for e in root.iter("polyline") if "edge" in (e.get("class") or "")]
    inverted = {(e.get("data-parent"), e.get("data-child")) for e in edges if "inverted" in e.get("class")}
    assert inverted == INVERTED
    for e in edges:
        if (e.get("data-parent"), e.get("data-child")) in INVERTED:
            assert e.get("stroke-dasharray") and e.get("stroke") == OKABE_ITO["vermillion"]
        else:
            assert not e.get("stroke-dasharray")
    captions = " ".join(t.text for t in root.iter("text") if t.get("class") == "caption")
    assert "the child decides before its parent (2 edges)" in captions
    assert "own decision σ" in captions


def test_svg_prints_each_nodes_sigma_and_window_beside_it(inverted_tree):
    tax, decisions = inverted_tree
    root = svg_tree(tax, decisions)
    labels = {t.get("data-node"): "".join(t.itertext()) for t in root.iter("text") if t.get("class") == "label"}
    assert set(labels) == set(tax.internal_nodes)  # a small tree: every node labelled on the page
    assert labels["a"] == "Aσ=3 [2–4.5]" and labels["root"] == "rootσ=1 [0.6–1.7]"
    assert labels["c"] == "Cundecided"


def test_svg_axis_has_round_ticks_quantity_and_direction(inverted_tree):
    tax, decisions = inverted_tree
    root = svg_tree(tax, decisions)
    ticks = [t.text for t in root.iter("text") if t.get("class") == "ytick"]
    assert "leaves" in ticks
    for text in ticks:
        if text != "leaves":
            assert re.fullmatch(r"\d+(\.\d)?|0\.0*[1-9]\d?", text), text  # 0.5, 3, 0.02, 1.5: round
    texts = " ".join("".join(t.itertext()) for t in root.iter("text"))
    assert "noise level σ (log scale)" in texts and "clean ← → noise" in texts
    chart = line_chart([("c", np.geomspace(80, 0.002, 30), np.linspace(0.0, 1.3, 30))], "y")
    xt = re.findall(r'class="xtick"[^>]*>([^<]*)<', chart)
    assert len(xt) >= 4 and all(re.fullmatch(r"1(0*)|0\.0*1", t) for t in xt), xt  # decades across five decades
    assert "noise → clean" in chart


# -- tree.png ------------------------------------------------------------------------------------

def segments_in_pixels(ax):
    """Every straight piece of every line and line collection in the axes, in display pixels."""
    out = []
    for artist in list(ax.lines) + [c for c in ax.collections if isinstance(c, LineCollection)]:
        paths = artist.get_segments() if isinstance(artist, LineCollection) else [artist.get_xydata()]
        if isinstance(artist, LineCollection) or artist.get_linestyle() not in ("None", "none", ""):
            for path in paths:
                pix = artist.get_transform().transform(np.asarray(path, dtype=float))
                out += [(*pix[i], *pix[i + 1]) for i in range(len(pix) - 1)]
    return out


def crosses(seg, box, shrink=0.5):
    """Whether a segment passes through the box (shrunk by ``shrink`` px), by dense sampling."""
    x0, y0, x1, y1 = seg
    t = np.linspace(0, 1, 400)
    xs, ys = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
    inside_x = (xs > box.x0 + shrink) & (xs < box.x1 - shrink)
    return bool(np.any(inside_x & (ys > box.y0 + shrink) & (ys < box.y1 - shrink)))


def check_labels_clear(fig):
    """Node labels (their text as rendered) overlap no other label and no line of the tree, and no
    leader line crosses another label; returns them."""
    from matplotlib.text import Text

    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    labels = [t for t in ax.texts if (t.get_gid() or "").startswith("label:")]
    boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text alone, not its leader
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1), (a, b)
    segments = segments_in_pixels(ax)
    for t, box in zip(labels, boxes):
        assert not any(crosses(s, box) for s in segments), t.get_text()
    for t in labels:
        if t.arrow_patch is not None:
            v = t.arrow_patch.get_path().vertices  # display coordinates once drawn
            leader = [(*v[i], *v[i + 1]) for i in range(len(v) - 1)]
            for other, box in zip(labels, boxes):
                assert other is t or not any(crosses(s, box) for s in leader), (t.get_text(), other.get_text())
    return labels


def test_png_draws_every_node_at_its_own_decision_and_shows_the_inversions(inverted_tree):
    """From the matplotlib figure's artists: node markers at the decision sigmas (exactly: data
    coordinates), the root below 'a', inverted edges in their own dashed collection going *down*
    from child to parent, counted in the legend; every node labelled with its sigma and window."""
    tax, decisions = inverted_tree
    fig = plots.plot_tree(None, tax, decisions, sigma_min=SIGMA_MIN)
    ax = fig.axes[0]
    _, x = tree_x({n: tax.children(n) for n in tax.nodes}, tax.root)
    at = {round(x[n], 6): n for n in tax.internal_nodes}
    markers = next(line for line in ax.lines if line.get_gid() == "decided-nodes")
    drawn = {at[round(px, 6)]: py for px, py in markers.get_xydata()}
    assert drawn == pytest.approx(SIGMA, rel=1e-12)
    assert drawn["root"] < drawn["a"]
    hollow = next(line for line in ax.lines if line.get_gid() == "undecided-nodes")
    assert hollow.get_xydata().tolist() == [[x["c"], pytest.approx(0.25)]]
    inverted = next(c for c in ax.collections if c.get_gid() == "inverted-edges")
    found = set()
    for path in inverted.get_segments():
        (cx, cy), (_, py), (px, _) = path
        assert cy > py  # drawn from the child down to its parent's height
        found.add((at[round(px, 6)], next(n for n in tax.children(at[round(px, 6)]) if round(x[n], 6) == round(cx, 6))))
    assert found == INVERTED
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts()) + ax.get_legend().get_title().get_text()
    assert "child decides before its parent: 2 edges" in legend and "own" in legend
    labels = {t.get_gid()[6:]: t for t in check_labels_clear(fig)}
    assert set(labels) == set(tax.internal_nodes)
    assert labels["a"].get_text() == "A\nσ=3 [2–4.5]" and labels["a"].xy == pytest.approx((x["a"], 3.0))
    ylabel = ax.get_ylabel()
    assert "σ (log scale)" in ylabel and "clean ← → noise" in ylabel


def test_png_ticks_are_round(inverted_tree):
    tax, decisions = inverted_tree
    fig = plots.plot_tree(None, tax, decisions, sigma_min=SIGMA_MIN)
    fig.draw(fig.canvas.get_renderer())
    texts = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert texts[0] == "leaves"
    for text in texts[1:]:
        assert re.fullmatch(r"\d+(\.\d)?|0\.0*[1-9]\d?", text), text
    for lo, hi in [(0.002, 80.0), (0.5, 3.0), (1.0, 1.3), (1e-8, 1e8)]:
        ticks = log_ticks(lo, hi)
        assert 2 <= len(ticks) <= 7 and all(lo <= t <= hi for t in ticks)
        assert all(float(f"{t:.2g}") == t for t in ticks)  # at most two significant digits


def test_text_tree_marks_the_inversions(inverted_tree):
    tax, decisions = inverted_tree
    text = format_decision_tree(tax, decisions)
    assert "2 edges where the parent decides after its child" in text
    line = {row.split(":")[0].strip("│├└─ "): row for row in text.splitlines()}
    assert "^ before its parent root, which decides at sigma=1" in line["a (A)"]
    assert "^ before its parent b (B), which decides at sigma=0.5" in line["b2 (B2)"]
    assert "^" not in line["b1 (B1)"] and "^" not in line["root"]
    assert line["c (C)"].endswith("c (C): undecided (flat: the rate is not positive at any grid point)")


def test_a_thousand_leaves_collide_nowhere_and_say_what_is_left_out():
    """1000 leaves (10 x 10 x 10): leaf names are omitted with a note, node labels that find no
    room are omitted and counted on the figure, and the rendered labels overlap nothing."""
    spec = {f"g{i}": {f"f{i}_{j}": [f"l{i}_{j}_{k}" for k in range(10)] for j in range(10)} for i in range(10)}
    tax = make_taxonomy(spec)
    assert len(tax.leaves) == 1000
    rng = np.random.default_rng(0)
    nodes = {}
    for n in tax.internal_nodes:
        s = float(np.exp(rng.uniform(-2, 2)))
        nodes[n] = decision(n, s, (s / 1.8, s * 1.8))
    fig = plots.plot_tree(None, tax, {"nodes": nodes, "levels": {}}, sigma_min=SIGMA_MIN)
    labels = check_labels_clear(fig)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "1000 leaves (names omitted)"
    notes = " ".join(t.get_text() for t in ax.texts if not (t.get_gid() or "").startswith("label:"))
    omitted = len(tax.internal_nodes) - len(labels)
    assert omitted > 0 and f"{omitted} of {len(tax.internal_nodes)} node labels omitted" in notes
    assert any(t.get_gid() == "label:root" for t in labels)  # the root is labelled first


# -- files, palette, rates, strips -----------------------------------------------------------------

@pytest.fixture(scope="module")
def small_run():
    tax = make_taxonomy({"A": ["a1", "a2"], "B": ["b1", "b2", "b3"]})
    sigmas = noise.geometric_grid(50.0, 0.02, 30)
    rng = np.random.default_rng(0)
    n = 64
    y = rng.integers(0, 5, n)
    coarse = np.array([0, 0, 1, 1, 1])
    x = np.log(sigmas.numpy())
    # the coarse split resolves near sigma 2, the fine ones near 0.3
    wrong_group = (coarse[None, None, :] != coarse[y][:, None, None]).astype(float)
    wrong_leaf = (np.arange(5)[None, None, :] != y[:, None, None]).astype(float)
    logits = (-6 * wrong_group / (1 + np.exp(2 * (x[None, :, None] - 0.7)))
              - 6 * wrong_leaf / (1 + np.exp(2 * (x[None, :, None] + 1.2))))
    logits = logits + 0.2 * rng.standard_normal(logits.shape)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    import torch

    curves = tree_entropy(torch.tensor(log_probs, dtype=torch.float32), tax, sigmas)
    return tax, curves, decide(curves, n_boot=0)


def test_each_plot_writes_300_dpi_png_and_a_vector_copy(tmp_path, small_run):
    tax, curves, decisions = small_run
    written = plots.write_figures(tmp_path, tax, {"plugin": curves}, decisions, formats=("png", "pdf", "svg"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written) == sorted(
        f"{name}.{fmt}" for name in ("curves", "tree", "rates") for fmt in ("png", "pdf", "svg"))
    for name in ("curves", "tree", "rates"):
        dpi = Image.open(tmp_path / f"{name}.png").info["dpi"]
        assert dpi == pytest.approx((300, 300), abs=0.5)
        assert (tmp_path / f"{name}.pdf").read_bytes().startswith(b"%PDF")
        svg = (tmp_path / f"{name}.svg").read_text()
        assert "<svg" in svg and "<text" in svg  # text kept as text
    again = tmp_path / "again" / "tree.png"
    assert plots.plot_tree(again, tax, decisions) == again  # the default: PNG and PDF
    assert sorted(p.name for p in again.parent.iterdir()) == ["tree.pdf", "tree.png"]
    assert again.read_bytes() == (tmp_path / "tree.png").read_bytes()
    assert again.with_suffix(".pdf").read_bytes() == (tmp_path / "tree.pdf").read_bytes()  # no dates inside
    with pytest.raises(ProbesError, match="formats: expected one or more of png, pdf, svg, got 'jpg'"):
        plots.plot_curves(tmp_path / "x", {"plugin": curves}, formats="jpg")


def test_rates_mark_windows_with_brackets_in_colour_blind_safe_colours(small_run):
    """No shaded bands: each window is a thin horizontal bracket from its lo to its hi at half
    the peak rate (where the window's edges lie on the curve); colours from Okabe-Ito; the legend
    states every node's decision sigma and window."""
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_hex

    _, curves, decisions = small_run
    fig = plots.plot_rates(None, curves, decisions)
    ax = fig.axes[0]
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)] and not ax.patches
    decided = {n: d for n, d in decisions["nodes"].items() if d is not None}
    assert decided
    for n, d in decided.items():
        window = next(c for c in ax.collections if c.get_gid() == f"window:{n}")
        (x0, y0), (x1, y1) = window.get_segments()[0]
        assert (x0, x1) == pytest.approx(d.window) and y0 == y1 == pytest.approx(d.peak_rate / 2)
    colours = {to_hex(line.get_color()).upper() for line in ax.lines if line.get_gid() is None
               and len(line.get_xdata()) > 2}
    assert colours and colours <= {c.upper() for c in PALETTE}
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for n, d in decided.items():
        assert f"{n}: σ={d.decision_sigma:.3g} [{d.window[0]:.2g}–{d.window[1]:.2g}]" in legend
    assert "noise $\\rightarrow$ clean" in ax.get_xlabel()


def test_strip_is_captioned_with_sigma_per_column(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    sigmas = [14.6, 2.7, 0.29, 0.03]
    fig = plots.plot_strip(None, frames, sigmas, "seed 1234, leaf 'six' (prompt: a photo of a 6)")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["σ = 14.6", "σ = 2.7", "σ = 0.29", "σ = 0.03"]
    assert fig._suptitle.get_text() == "seed 1234, leaf 'six' (prompt: a photo of a 6)"
    shown = fig.axes[2].get_images()[0].get_array()
    assert np.array_equal(np.asarray(shown), frames[2])  # the frames drawn as given, unsmoothed
    assert fig.axes[0].get_images()[0].get_interpolation() == "nearest"
    path = plots.plot_strip(tmp_path / "strip", frames, sigmas, "seed 1")
    assert path == tmp_path / "strip.png" and (tmp_path / "strip.pdf").is_file()
    with pytest.raises(ProbesError, match=r"frames must be uint8 \[K, H, W, 3\]"):
        plots.plot_strip(None, frames.astype(float), sigmas, "x")
    with pytest.raises(ProbesError, match="sigmas must be 4 positive numbers"):
        plots.plot_strip(None, frames, sigmas[:3], "x")
