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


def to_array(image: Image.Image) -> np.ndarray:
    """H x W x 3 float32 in [0, 1]: ComfyUI's IMAGE layout without the batch axis (inverse of to_pil)."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def label_height(tile_height: int) -> int:
    """The default height of the label band above tiles of this height."""
    return max(14, min(48, tile_height // 8))


_default_band = label_height


def labelled_strip(images, labels, columns=None, padding: int = 0, label_height: int | None = None) -> Image.Image:
    """One image: every input as a tile with its label in a band above it.

    ``columns=None`` gives one row (width = n * tile width with no padding); otherwise rows of
    ``columns`` tiles. Cells take the largest image's size; a smaller image is centred in its cell.
    Labels longer than a tile are shortened from the left ("...ckpt-800") so the step stays visible.
    Images may be PIL images or HxWxC arrays (float 0..1 or uint8)."""
    images = [to_pil(im) for im in images]
    labels = [str(s) for s in labels]
    if not images:
        raise ValueError("images: nothing to draw (no images given); give at least one image")
    if len(labels) != len(images):
        raise ValueError(f"labels: {len(labels)} labels for {len(images)} images; give one label per image")
    cw, ch = max(im.width for im in images), max(im.height for im in images)
    cols = len(images) if not columns else max(1, min(int(columns), len(images)))
    rows = math.ceil(len(images) / cols)
    band = label_height if label_height is not None else _default_band(ch)
    out = Image.new("RGB", (cols * cw + (cols + 1) * padding if padding else cols * cw,
                            rows * (ch + band) + (rows + 1) * padding if padding else rows * (ch + band)), BACKGROUND)
    draw = ImageDraw.Draw(out)
    font = _font(max(10, band - 4))
    for i, (im, text) in enumerate(zip(images, labels)):
        r, c = divmod(i, cols)
        x, y = padding + c * (cw + padding), padding + r * (ch + band + padding)
        out.paste(im, (x + (cw - im.width) // 2, y + band + (ch - im.height) // 2))
        shown = text
        while len(shown) > 1 and draw.textlength(shown, font=font) > cw - 4:
            shown = "\u2026" + shown[2:]
        top, bottom = draw.textbbox((0, 0), shown, font=font)[1::2]
        draw.text((x + 2, y + (band - (bottom - top)) // 2 - top), shown, fill=TEXT, font=font)
    return out


def step_labels(counts: list[int]) -> list[str]:
    """["1 step", "2 steps", ...] for the given step counts."""
    return [f"{n} step" if n == 1 else f"{n} steps" for n in counts]
