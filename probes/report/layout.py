"""Label placement shared by the SVG report and the matplotlib figures: no two labels overlap."""

from __future__ import annotations

CHAR_PX = 7.2  # width of one label character at an 11px font, generous so that labels never touch


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
