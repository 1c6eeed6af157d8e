"""Labelled image strips and grids drawn with Pillow (no ComfyUI, no torch).

Used by the LCM step sweep ("1 step", "2 steps", ...) and any other comparison that shows the
same picture under different settings side by side.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable built-in font
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def labelled_strip(images: list[Image.Image], labels: list[str], columns: int | None = None,
                   padding: int = 4, label_height: int | None = None) -> Image.Image:
    """Tile ``images`` left to right (``columns`` per row, default all in one row), each under its label.

    Cells take the largest image's size; smaller images are centred. Returns one RGB image."""
    if not images:
        raise ValueError("labelled_strip: no images given")
    if len(labels) != len(images):
        raise ValueError(f"labelled_strip: {len(images)} images but {len(labels)} labels")
    columns = len(images) if columns is None else max(1, min(int(columns), len(images)))
    rows = math.ceil(len(images) / columns)
    cw = max(im.width for im in images)
    ch = max(im.height for im in images)
    lh = label_height if label_height is not None else max(14, min(48, cw // 8))
    font = _font(max(10, int(lh * 0.7)))
    W = columns * cw + (columns + 1) * padding
    H = rows * (ch + lh) + (rows + 1) * padding
    out = Image.new("RGB", (W, H), BACKGROUND)
    draw = ImageDraw.Draw(out)
    for i, (im, label) in enumerate(zip(images, labels)):
        r, c = divmod(i, columns)
        x0 = padding + c * (cw + padding)
        y0 = padding + r * (ch + lh + padding)
        text = _fit_text(draw, str(label), font, cw - 4)
        tw = draw.textlength(text, font=font)
        draw.text((x0 + (cw - tw) / 2, y0 + lh / 2), text, fill=TEXT, font=font, anchor="lm")
        out.paste(im.convert("RGB"), (x0 + (cw - im.width) // 2, y0 + lh + (ch - im.height) // 2))
    return out


def step_labels(counts: list[int]) -> list[str]:
    """["1 step", "2 steps", ...] for the given step counts."""
    return [f"{n} step" if n == 1 else f"{n} steps" for n in counts]
