"""Drawing bits the pack's Pillow pictures share (sigma plot, SLG sensitivity map, scoreboard, grids).

One font loader, one palette, one tick step rule, one way to shorten or wrap a label and one legend
box, so the plots look alike and a Pillow change is handled in one place. Pillow only.
"""

from __future__ import annotations

import math

from PIL import ImageDraw, ImageFont

COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))
BG, FG, GRID = (255, 255, 255), (20, 20, 20), (225, 225, 225)
ELLIPSIS = "\u2026"


def font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def nice_step(span: float, most: int = 6) -> float:
    """A tick step of 1, 2, 2.5 or 5 times a power of ten giving at most ``most`` steps over ``span``."""
    step = 10 ** math.floor(math.log10(span / 4)) if span > 0 else 1
    for mult in (1, 2, 2.5, 5, 10):
        if span / (step * mult) <= most:
            return step * mult
    return step


def fit_text(draw: ImageDraw.ImageDraw, text: str, fnt, width: float, from_left: bool = False) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` px: from the right, or from the
    left (``from_left``, so "…checkpoint-800" keeps the step visible)."""
    shown = text
    while len(shown) > 1 and draw.textlength(shown, font=fnt) > width:
        shown = ELLIPSIS + shown[2:] if from_left else shown[:-2] + ELLIPSIS
    return shown


def wrap_text(draw: ImageDraw.ImageDraw, text: str, fnt, width: float, sep: str | None = None) -> list[str]:
    """``text`` broken into lines no wider than ``width`` px at ``sep`` (None: any whitespace)."""
    joiner = " " if sep is None else sep
    lines, cur = [], ""
    for word in text.split(sep):
        cand = f"{cur}{joiner}{word}" if cur else word
        if cur and draw.textlength(cand.strip(), font=fnt) > width:
            lines.append(cur.strip())
            cur = word
        else:
            cur = cand
    return lines + ([cur.strip()] if cur.strip() else [])


def styled_line(draw: ImageDraw.ImageDraw, p0, p1, fill, width: int = 1, style: str = "solid") -> None:
    """A straight line, ``solid``, ``dashed`` (8 on, 5 off) or ``dotted`` (2 on, 4 off)."""
    if style == "solid":
        draw.line([p0, p1], fill=fill, width=width)
        return
    on, off = (8, 5) if style == "dashed" else (2, 4)
    (x0, y0), (x1, y1) = p0, p1
    length = math.hypot(x1 - x0, y1 - y0)
    if length == 0:
        return
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    t = 0.0
    while t < length:
        t1 = min(t + on, length)
        draw.line([(x0 + ux * t, y0 + uy * t), (x0 + ux * t1, y0 + uy * t1)], fill=fill, width=width)
        t += on + off


LEGEND_ROW = 21


def legend_size(draw: ImageDraw.ImageDraw, texts, fnt) -> tuple[float, int]:
    """(width, height) of :func:`draw_legend`'s box for these entry texts."""
    return max(draw.textlength(t, font=fnt) for t in texts) + 36, LEGEND_ROW * len(texts) + 6


def draw_legend(draw: ImageDraw.ImageDraw, xy, entries, fnt) -> None:
    """A boxed legend at ``xy``: per entry ``(text, colour)`` or ``(text, colour, style)`` a short
    swatch (a line in :func:`styled_line`'s styles, or ``band``: a light filled bar) and the text."""
    lx, ly = xy
    lw, lh = legend_size(draw, [e[0] for e in entries], fnt)
    draw.rectangle([lx, ly, lx + lw, ly + lh], fill=BG, outline=GRID)
    for k, (text, color, *style) in enumerate(entries):
        yy = ly + 4 + LEGEND_ROW * k
        if style and style[0] == "band":
            draw.rectangle([lx + 6, yy + 4, lx + 22, yy + 14], fill=color)
        else:
            styled_line(draw, (lx + 6, yy + 9), (lx + 22, yy + 9), color, 3, style[0] if style else "solid")
        draw.text((lx + 28, yy), text, fill=FG, font=fnt)
