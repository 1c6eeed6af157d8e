"""Labelled image strips and grids, drawn with Pillow (used by the checkpoint sweep node and CLI)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)


def to_pil(image) -> Image.Image:
    """A PIL image from a PIL image or an HxWxC array (float in 0..1, or uint8)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return Image.fromarray(arr[..., :3], "RGB")


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def label_height(tile_height: int) -> int:
    return max(14, min(48, tile_height // 8))


def labelled_strip(images, labels, columns=None) -> Image.Image:
    """One image: every input as a tile of the first image's size with its label in a band above.

    ``columns=None`` gives one row (width = n * tile width); otherwise rows of ``columns`` tiles.
    Labels longer than a tile are shortened from the left ("...ckpt-800") so the step stays visible."""
    images = [to_pil(im) for im in images]
    labels = [str(s) for s in labels]
    if not images:
        raise ValueError("images: nothing to draw; give at least one image")
    if len(labels) != len(images):
        raise ValueError(f"labels: {len(labels)} labels for {len(images)} images; give one label per image")
    tw, th = images[0].size
    cols = len(images) if not columns else max(1, min(int(columns), len(images)))
    rows = math.ceil(len(images) / cols)
    band = label_height(th)
    out = Image.new("RGB", (cols * tw, rows * (th + band)), BACKGROUND)
    draw = ImageDraw.Draw(out)
    font = _font(max(10, band - 4))
    for i, (im, text) in enumerate(zip(images, labels)):
        x, y = (i % cols) * tw, (i // cols) * (th + band)
        if im.size != (tw, th):
            im = im.resize((tw, th), Image.Resampling.LANCZOS)
        out.paste(im, (x, y + band))
        shown = text
        while len(shown) > 1 and draw.textlength(shown, font=font) > tw - 4:
            shown = "\u2026" + shown[2:]
        top, bottom = draw.textbbox((0, 0), shown, font=font)[1::2]
        draw.text((x + 2, y + (band - (bottom - top)) // 2 - top), shown, fill=TEXT, font=font)
    return out
