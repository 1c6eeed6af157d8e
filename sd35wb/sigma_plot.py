"""Draw noise schedules (sigma per step on a log axis) with Pillow; no matplotlib needed.

``render(series, title)`` returns an RGB ``PIL.Image``: one polyline with point markers per
series, a log-scale y axis with decade ticks and labels, step numbers on the x axis, axis
titles, a legend, and the title line (the nodes put the rule they applied there). Sigma 0 (the
end of every schedule) cannot sit on a log axis, so it is drawn as a marker on the bottom edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .plot import BG, COLORS, FG, GRID, draw_legend, legend_size
from .plot import font as _font


@dataclass
class Series:
    label: str
    sigmas: Sequence[float]


def _text_w(draw: ImageDraw.ImageDraw, text: str, font) -> float:
    return draw.textlength(text, font=font)


def _fmt_tick(v: float) -> str:
    if 1e-3 <= v < 1e5:
        return f"{v:g}"
    return f"1e{int(round(math.log10(v)))}"


def log_range(series: Sequence[Series]) -> tuple[float, float]:
    """Decade-aligned (lo, hi) of log10 over every positive finite sigma."""
    vals = np.concatenate([np.asarray(s.sigmas, dtype=np.float64).reshape(-1) for s in series] or [np.ones(1)])
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if vals.size == 0:
        return -1.0, 1.0
    lo, hi = math.floor(math.log10(vals.min())), math.ceil(math.log10(vals.max()))
    if hi <= lo:
        hi = lo + 1
    return float(lo), float(hi)


def render(series: Sequence[Series], title: str = "", width: int = 768, height: int = 480) -> Image.Image:
    if not series:
        raise ValueError("sigmas: nothing to plot.")
    img = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(img)
    f_small, f_mid = _font(15), _font(18)

    left, right, top, bottom = 92, 20, 48 if title else 20, 62
    x0, x1, y0, y1 = left, width - right, top, height - bottom  # plot box (y0 top)
    lo, hi = log_range(series)
    n_max = max(max(len(s.sigmas) - 1, 1) for s in series)

    def px(i: float) -> float:
        return x0 + (x1 - x0) * i / n_max

    def py(sigma: float) -> float:
        return y1 - (y1 - y0) * (math.log10(sigma) - lo) / (hi - lo)

    # grid + y ticks (decades; 2 and 5 minor lines when the range is small)
    for dec in range(int(lo), int(hi) + 1):
        y = py(10.0 ** dec)
        d.line([(x0, y), (x1, y)], fill=GRID)
        label = _fmt_tick(10.0 ** dec)
        d.text((x0 - 6 - _text_w(d, label, f_small), y - 9), label, fill=FG, font=f_small)
        if hi - lo <= 4 and dec < hi:
            for m in (2, 5):
                ym = py(m * 10.0 ** dec)
                d.line([(x0, ym), (x0 + 4, ym)], fill=FG)
                if hi - lo <= 2:
                    label = _fmt_tick(m * 10.0 ** dec)
                    d.text((x0 - 6 - _text_w(d, label, f_small), ym - 9), label, fill=(90, 90, 90), font=f_small)
    # x ticks
    step = max(1, int(math.ceil(n_max / 10)))
    for i in range(0, n_max + 1, step):
        x = px(i)
        d.line([(x, y1), (x, y1 + 4)], fill=FG)
        label = str(i)
        d.text((x - _text_w(d, label, f_small) / 2, y1 + 6), label, fill=FG, font=f_small)
    d.rectangle([x0, y0, x1, y1], outline=FG)

    # axis titles
    xt = "step"
    d.text(((x0 + x1) / 2 - _text_w(d, xt, f_mid) / 2, height - 28), xt, fill=FG, font=f_mid)
    yt = "sigma (log scale)"
    tw = int(_text_w(d, yt, f_mid)) + 4
    label_img = Image.new("RGB", (tw, 22), BG)
    ImageDraw.Draw(label_img).text((2, 0), yt, fill=FG, font=f_mid)
    label_img = label_img.rotate(90, expand=True)
    img.paste(label_img, (4, int((y0 + y1) / 2 - tw / 2)))
    if title:
        d.text((x0, 12), title, fill=FG, font=f_mid)

    # series
    all_pts = []
    for k, s in enumerate(series):
        color = COLORS[k % len(COLORS)]
        sig = np.asarray(s.sigmas, dtype=np.float64).reshape(-1)
        pts = [(px(i), py(v)) for i, v in enumerate(sig) if np.isfinite(v) and v > 0]
        all_pts.extend(pts)
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        r = 3 if len(sig) <= 60 else 1
        for x, y in pts:
            d.ellipse([x - r, y - r, x + r, y + r], fill=color)
        for i, v in enumerate(sig):  # sigma 0: a triangle on the bottom edge
            if v == 0:
                x = px(i)
                d.polygon([(x, y1 - 1), (x - 5, y1 - 9), (x + 5, y1 - 9)], outline=color)

    # legend, in whichever corner covers the fewest points
    texts = []
    for s in series:
        sig = np.asarray(s.sigmas, dtype=np.float64).reshape(-1)
        top_sigma = next((float(v) for v in sig if np.isfinite(v)), float("nan"))
        texts.append(f"{s.label}  (max {top_sigma:.4g}, {len(sig) - 1} steps)")
    lw, lh = legend_size(d, texts, f_small)
    corners = [(x1 - 6 - lw, y0 + 6), (x0 + 6, y1 - 36 - lh), (x0 + 6, y0 + 6), (x1 - 6 - lw, y1 - 36 - lh)]

    def covered(c):
        return sum(1 for x, y in all_pts if c[0] - 4 <= x <= c[0] + lw + 4 and c[1] - 4 <= y <= c[1] + lh + 4)

    lx, ly = min(corners, key=covered)
    draw_legend(d, (lx, ly), [(t, COLORS[k % len(COLORS)]) for k, t in enumerate(texts)], f_small)
    note = "triangle on the bottom edge = sigma 0 (end)"
    d.text((x1 - 8 - _text_w(d, note, f_small), y1 - 26), note, fill=FG, font=f_small)
    return img

