"""Figure layout shared by the SVG report (``report/html.py``) and the matplotlib figures
(``report/plots.py``), so both draw the same thing: where each tree node sits, round tick values,
the colour palette, and label placement that keeps labels off each other and off the lines.

**Tree heights.** Every internal node is drawn at its own decision sigma, also when a child
decides earlier (at a larger sigma) than its parent: that child is then drawn *above* its parent
and the edge between them is an **inversion** ("the parent decides after its children"), drawn
distinctly and counted on the figure. An undecided internal node is drawn at its highest child's
height (so its own edges never invert); leaves sit at the bottom. The Newick file needs
non-negative branch lengths and so uses clamped heights instead (``rundir.newick_heights``).

**Palette.** Okabe & Ito's colour-blind-safe qualitative palette (Okabe & Ito 2008, "Color
Universal Design"), yellow last (faint on white); beyond its eight colours, series repeat a colour
with another dash pattern.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

OKABE_ITO = {
    "blue": "#0072B2", "orange": "#E69F00", "bluish green": "#009E73", "vermillion": "#D55E00",
    "reddish purple": "#CC79A7", "sky blue": "#56B4E9", "black": "#000000", "yellow": "#F0E442",
}
PALETTE = list(OKABE_ITO.values())
# Dash patterns (in units of the line width) cycled once the colours run out.
DASHES: list[tuple[float, ...]] = [(), (4.0, 2.0), (1.0, 1.5), (6.0, 2.0, 1.0, 2.0)]

NODE_COLOR = OKABE_ITO["blue"]  # a decided node and its window bracket
EDGE_NODE_COLOR = OKABE_ITO["orange"]  # a node whose peak sits on the grid's edge
INVERSION_COLOR = OKABE_ITO["vermillion"]  # an edge whose child decides before its parent
HEIGHT_CONVENTION = ("each internal node at its own decision σ; undecided nodes at their highest child; "
                     "leaves on the bottom row")

CHAR_PX = 7.2  # width of one label character at an 11px font, generous so that labels never touch


def series_style(k: int) -> tuple[str, tuple[float, ...]]:
    """Colour and dash pattern of the k-th series: the palette's colours, then again dashed."""
    return PALETTE[k % len(PALETTE)], DASHES[(k // len(PALETTE)) % len(DASHES)]


# --------------------------------------------------------------------------------------------
# Tree geometry
# --------------------------------------------------------------------------------------------


def _post_order(children: Mapping[str, Sequence[str]], root: str) -> list[str]:
    out, stack = [], [(root, False)]
    while stack:
        n, seen = stack.pop()
        if seen or not children.get(n):
            out.append(n)
            continue
        stack.append((n, True))
        stack.extend((c, False) for c in reversed(children[n]))
    return out


def drawn_heights(children: Mapping[str, Sequence[str]], root: str, decision_sigma: Mapping[str, float | None],
                  leaf_sigma: float) -> dict[str, float]:
    """Height (log10 sigma) at which every node is drawn, by the convention of the module docstring.

    ``children`` maps each internal node to its children (leaves may be absent or map to ``[]``);
    ``decision_sigma`` gives each internal node's decision sigma (None or absent: undecided);
    leaves are at ``log10(leaf_sigma)``.
    """
    base = math.log10(leaf_sigma)
    height: dict[str, float] = {}
    for n in _post_order(children, root):
        kids = children.get(n) or []
        if not kids:
            height[n] = base
            continue
        d = decision_sigma.get(n)
        height[n] = math.log10(d) if d is not None and d > 0 else max(height[c] for c in kids)
    return height


def inverted_edges(children: Mapping[str, Sequence[str]], height: Mapping[str, float]) -> list[tuple[str, str]]:
    """The edges ``(parent, child)`` whose child is drawn above its parent: the child decides first."""
    return [(p, c) for p, kids in children.items() for c in kids if height[c] > height[p]]


def tree_x(children: Mapping[str, Sequence[str]], root: str) -> tuple[list[str], dict[str, float]]:
    """Leaves left to right in pre-order at x = 0, 1, 2, ...; every internal node halfway between
    its outermost children. Returns (leaves, x)."""
    leaves = _pre_order_leaves(children, root)
    x = {leaf: float(i) for i, leaf in enumerate(leaves)}
    for n in _post_order(children, root):
        kids = children.get(n) or []
        if kids:
            xs = [x[c] for c in kids]
            x[n] = 0.5 * (min(xs) + max(xs))
    return leaves, x


def _pre_order_leaves(children: Mapping[str, Sequence[str]], root: str) -> list[str]:
    out, stack = [], [root]
    while stack:
        n = stack.pop()
        kids = children.get(n) or []
        if not kids:
            out.append(n)
        stack.extend(reversed(kids))
    return out


def tree_extent(sigmas: Sequence[float], leaf_sigma: float) -> tuple[float, float]:
    """The vertical range ``(floor, top)`` in sigma of a tree drawing whose nodes and windows span
    ``sigmas``: a little below the lowest (never below the leaves' sigma), and above the highest
    with headroom for labels that find no room beside their node. The leaves' row is the floor:
    the drawing spans the decisions, not the whole grid."""
    spots = [s for s in sigmas if s > leaf_sigma]
    if not spots:
        return leaf_sigma, leaf_sigma * 10
    return max(leaf_sigma, min(spots) / 10**0.2), max(spots) * 10**0.3


# --------------------------------------------------------------------------------------------
# Ticks
# --------------------------------------------------------------------------------------------


def log_ticks(lo: float, hi: float, max_ticks: int = 7) -> list[float]:
    """Round tick values for a log axis from ``lo`` to ``hi`` (> 0): the densest of 1-2-5-style
    sequences per decade that gives at most ``max_ticks`` ticks (every k-th decade on long axes)."""
    lo, hi = min(lo, hi), max(lo, hi)
    if not (lo > 0 and math.isfinite(hi)):
        raise ValueError(f"log_ticks: expected 0 < lo <= hi, got {lo}, {hi}")
    e0, e1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    for mantissas in ((1, 1.5, 2, 3, 5, 7), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):
        ticks = [_round(m * 10.0**e) for e in range(e0, e1 + 1) for m in mantissas]
        ticks = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        if len(ticks) <= max_ticks:
            # fewer than two round values on a narrow axis: linear round values read better there
            return ticks if len(ticks) >= 2 else linear_ticks(lo, hi, min(max_ticks, 5))
    step = 2
    while True:  # long axes: every step-th decade
        ticks = [_round(10.0**e) for e in range(e0, e1 + 1) if e % step == 0 and lo <= 10.0**e <= hi]
        if len(ticks) <= max_ticks:
            return ticks
        step += 1


def named_log_ticks(lo: float, hi: float, named: Mapping[float, str], max_ticks: int = 7) -> list[tuple[float, str]]:
    """``(value, text)`` ticks for a log axis: the round values of :func:`log_ticks` and the named
    values given (e.g. ``{floor: "leaves"}``), round ones too close to a named one (within 6% of
    the axis) left out so their texts do not collide."""
    span = math.log10(max(hi, lo) / min(hi, lo)) or 1.0
    ticks = {t: tick_label(t) for t in log_ticks(lo, hi, max_ticks)}
    for value in named:
        ticks = {t: text for t, text in ticks.items() if abs(math.log10(t / value)) > 0.06 * span}
    ticks.update(named)
    return sorted(ticks.items())


def linear_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten apart) covering ``[lo, hi]``."""
    lo, hi = min(lo, hi), max(lo, hi)
    if hi - lo <= 0:
        return [_round(lo)]
    raw = (hi - lo) / max(1, max_ticks - 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        step = m * mag
        first = math.ceil(lo / step - 1e-9)
        ticks = [_round(k * step) for k in range(first, math.floor(hi / step + 1e-9) + 1)]
        if len(ticks) <= max_ticks:
            return ticks
    return [_round(lo), _round(hi)]


def _round(v: float) -> float:
    return float(f"{v:.6g}")


def tick_label(v: float) -> str:
    """A tick value as plain text: ``0.002``, ``0.5``, ``1``, ``20``, ``1e+04`` (no float noise)."""
    if v == 0:
        return "0"
    return f"{_round(v):g}"


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def place_labels(anchors: list[tuple[str, float, float]], height: float = 13.0) -> list[tuple[float, float]]:
    """Label positions right of their anchors, moved down until no two label boxes overlap.

    ``anchors`` are ``(text, x, y)`` in pixels with y growing downwards (SVG); the result gives, in
    the same order, the baseline-left corner of each label. Anchors are visited top to bottom, so upper
    labels keep their place and lower ones give way.
    """
    placed: list[tuple[float, float, float, float]] = []
    out: list = [None] * len(anchors)
    for i in sorted(range(len(anchors)), key=lambda k: (anchors[k][2], anchors[k][1])):
        name, x, y = anchors[i]
        w = CHAR_PX * len(name)
        lx, ly = x + 7, y - 5
        while any(lx < bx + bw and bx < lx + w and ly - height < by and by - height < ly for bx, by, bw, _ in placed):
            ly += height
        placed.append((lx, ly, w, height))
        out[i] = (lx, ly)
    return out


Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), y growing downwards
# Where a leader line leaves a label placed away from its anchor: the box's corner or edge middle
# nearest the anchor ("bottom left" for a label above and to the right of it, ...).
LEADER_FROM = {("right", True): "bottom left", ("right", False): "top left", ("left", True): "bottom right",
               ("left", False): "top right", ("centre", True): "bottom", ("centre", False): "top"}


class _BoxIndex:
    """Boxes and line segments hashed on a uniform grid, so a collision test looks at nearby ones
    only; a segment collides with a box only where it really crosses it (not just its bounds)."""

    def __init__(self, cell: float = 40.0):
        self.cell = cell
        self.cells: dict[tuple[int, int], list[tuple[Box, tuple | None]]] = {}

    def _keys(self, b: Box):
        c = self.cell
        for i in range(math.floor(b[0] / c), math.floor(b[2] / c) + 1):
            for j in range(math.floor(b[1] / c), math.floor(b[3] / c) + 1):
                yield i, j

    def add(self, b: Box, segment: tuple | None = None) -> None:
        for k in self._keys(b):
            self.cells.setdefault(k, []).append((b, segment))

    def add_segment(self, x0: float, y0: float, x1: float, y1: float) -> None:
        self.add((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), (x0, y0, x1, y1))

    def hits(self, b: Box) -> bool:
        for k in self._keys(b):
            for o, segment in self.cells.get(k, ()):
                overlap = b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3]
                if overlap and (segment is None or _crosses(segment, b)):
                    return True
        return False

    def segment_hits(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Whether the segment crosses any box held here (segments held are ignored)."""
        span = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        for k in self._keys(span):
            for o, segment in self.cells.get(k, ()):
                if segment is None and _crosses((x0, y0, x1, y1), o):
                    return True
        return False


def _crosses(segment: tuple, b: Box) -> bool:
    """Whether a line segment passes through the inside of box ``b`` (Liang-Barsky clipping)."""
    x0, y0, x1, y1 = segment
    dx, dy = x1 - x0, y1 - y0
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, x0 - b[0]), (dx, b[2] - x0), (-dy, y0 - b[1]), (dy, b[3] - y0)):
        if p == 0:
            if q <= 0:
                return False
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 >= t1:
            return False
    return True


def segment_box(x0: float, y0: float, x1: float, y1: float, pad: float = 1.5) -> Box:
    """The box a straight line segment (and ``pad`` around it) occupies."""
    return min(x0, x1) - pad, min(y0, y1) - pad, max(x0, x1) + pad, max(y0, y1) + pad


def place_clear_labels(sizes: Sequence[tuple[float, float]], anchors: Sequence[tuple[float, float]],
                       obstacles: Sequence[Box], bounds: Box, gap: float = 4.0,
                       max_shift: int = 3, retries: int = 2) -> list[tuple[Box, str] | None]:
    """Boxes for labels that overlap neither each other nor any obstacle (lines, markers), inside
    ``bounds``, with leader lines that cross no label; labels are placed in the order given (put the
    important ones first).

    ``sizes[i] = (width, height)`` and ``anchors[i] = (x, y)`` (the point the label names), all in
    one unit with y growing downwards. Each label tries beside its anchor (right above, right
    below, left above, left below, centred above, centred below), then the same spots moved up or
    down in steps of half a label height, up to ``max_shift`` steps (then it needs a leader line to
    its anchor). Returns per label ``(box, leader)``, ``leader`` naming the box's corner or edge a
    leader line leaves from (``""``: none needed, the label is beside its anchor), or None where no
    spot is free (the caller omits it and says so). Where labels are left out of a small figure
    (up to 60 labels), the placement is tried again with those first, ``retries`` times, and the
    arrangement that leaves out fewest is kept.
    """
    order = list(range(len(sizes)))
    best = None
    for _ in range(retries + 1):
        placed = _place_in_order([sizes[i] for i in order], [anchors[i] for i in order], obstacles, bounds, gap,
                                 max_shift)
        result: list = [None] * len(sizes)
        for i, spot in zip(order, placed):
            result[i] = spot
        missing = [i for i in order if result[i] is None]
        if best is None or len(missing) < sum(r is None for r in best):
            best = result
        if not missing or len(sizes) > 60:
            break
        order = missing + [i for i in order if result[i] is not None]
    return best


def _place_in_order(sizes: Sequence[tuple[float, float]], anchors: Sequence[tuple[float, float]],
                       obstacles: Sequence[Box], bounds: Box, gap: float = 4.0,
                       max_shift: int = 3) -> list[tuple[Box, str] | None]:
    """One greedy pass of :func:`place_clear_labels`, in the order given."""
    index = _BoxIndex(cell=max(20.0, 2 * max((h for _, h in sizes), default=10.0)))
    for b in obstacles:
        index.add(b)
    labels = _BoxIndex(cell=index.cell)  # placed labels alone: what a leader line must not cross
    out: list[tuple[Box, str] | None] = []
    for (w, h), (ax, ay) in zip(sizes, anchors):
        found = None
        for shift in range(max_shift + 1):
            # beside the node first; moved away, straight above or below it (the shortest leader)
            sides = ("right", "left", "centre") if shift == 0 else ("centre", "right", "left")
            for side in sides:
                for above in (True, False):
                    x0 = {"right": ax + gap, "left": ax - gap - w, "centre": ax - w / 2}[side]
                    rise = gap if side == "centre" else gap / 2
                    y1 = ay - rise - shift * h / 2 if above else ay + rise + h + shift * h / 2
                    box = (x0, y1 - h, x0 + w, y1)
                    if box[0] < bounds[0] or box[2] > bounds[2] or box[1] < bounds[1] or box[3] > bounds[3]:
                        continue
                    if index.hits(box):
                        continue
                    leader = LEADER_FROM[side, above] if shift > 0 else ""
                    if leader:
                        lx, ly = leader_point(box, leader)
                        if labels.segment_hits(lx, ly, ax, ay):
                            continue
                    found = (box, leader)
                    break
                if found:
                    break
            if found:
                break
        if found:
            box, leader = found
            index.add(box)
            labels.add(box)
            if leader:
                index.add_segment(*leader_point(box, leader), ax, ay)
        out.append(found)
    return out


def leader_point(box: Box, where: str) -> tuple[float, float]:
    """The point of ``box`` a leader line leaves from (a name of ``LEADER_FROM``)."""
    x = {"left": box[0], "right": box[2]}.get(where.split()[-1], (box[0] + box[2]) / 2)
    y = box[3] if where.startswith("bottom") else box[1]
    return x, y
