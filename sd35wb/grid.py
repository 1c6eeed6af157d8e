"""Labelled image strips and grids, drawn with Pillow (used by the checkpoint sweep node and CLI)."""

from __future__ import annotations

import math
import os
import re

import numpy as np
from PIL import Image, ImageDraw

from .plot import fit_text as _fit
from .plot import font as _font
from .plot import wrap_text as _wrap

BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
NOTE_TEXT = (170, 190, 215)  # a row's scores under its label: dimmer than the label, still readable
NOTE_SEP = " \u00b7 "  # a row note breaks into lines between its parts ("CLIP 31.2 · mem 0.42")


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
        shown = _fit(draw, text, font, cw - 4, True)
        top, bottom = draw.textbbox((0, 0), shown, font=font)[1::2]
        draw.text((x + 2, y + (band - (bottom - top)) // 2 - top), shown, fill=TEXT, font=font)
    return out


def step_labels(counts: list[int]) -> list[str]:
    """["1 step", "2 steps", ...] for the given step counts."""
    return [f"{n} step" if n == 1 else f"{n} steps" for n in counts]


# ---------------------------------------------------------------------------------------------
# The checkpoint sweep's grid: rows = checkpoints, columns = prompt x seed (x batch image)

MAX_TILE = 256  # a tile's longer side; sweep renders are downscaled to this in the grid
MAX_PAGE = 4096  # a page's width and height limit (what an image viewer / browser shows whole)


def step_label(label: str) -> str:
    """'checkpoint-800' -> 'step 800', 'checkpoint-800-ema' -> 'step 800 ema'; other labels unchanged."""
    m = re.match(r"^(?:.*/)?checkpoint-(\d+)(.*)$", label)
    if not m:
        return label
    rest = m.group(2).replace("-", " ").strip()
    return f"step {m.group(1)}" + (f" {rest}" if rest else "")


def snippet(text: str, n: int = 28) -> str:
    """The first words of a prompt, cut at n characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "\u2026"


class Note(str):
    """A cell's text drawn in its tile instead of an image (why it failed or was skipped)."""


def _open_cell(cell):
    """A cell is an image (PIL / array), a path to one, a :class:`Note`, or None (left empty)."""
    if cell is None or isinstance(cell, Note):
        return cell
    if isinstance(cell, (str, os.PathLike)):
        with Image.open(cell) as im:
            return im.convert("RGB")
    return to_pil(cell)


def tile_size(sizes, max_tile: int = MAX_TILE) -> tuple[int, int]:
    """The grid's tile size: the largest (w, h) among ``sizes``, scaled so its longer side <= max_tile."""
    w = max(s[0] for s in sizes)
    h = max(s[1] for s in sizes)
    scale = min(1.0, max_tile / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def sweep_pages(rows, row_labels, col_labels, tile: tuple[int, int], max_width: int = MAX_PAGE,
                max_height: int = MAX_PAGE, row_notes: list[str] | None = None) -> list[Image.Image]:
    """The sweep grid, split into pages no wider than ``max_width`` (nor taller than ``max_height``).

    ``rows[r][c]`` is one cell (see :func:`_open_cell`); every page repeats the row labels on the
    left and the column labels on top. Cells are opened and downscaled one at a time, so memory
    holds one page plus one full-size image, however large the sweep. ``row_notes`` (one short
    text per row, "" for none; the scores, :func:`sd35wb.scoreboard.row_note`) are written in a
    smaller font under each row label, wrapped between their `` · `` parts; None draws the grid as
    it was without them."""
    if not rows or not col_labels:
        raise ValueError("rows: nothing to draw (no checkpoints or no columns); give at least one of each")
    if len(row_labels) != len(rows) or any(len(r) != len(col_labels) for r in rows):
        raise ValueError("rows: every row needs one label and one cell per column label")
    if row_notes is not None and len(row_notes) != len(rows):
        raise ValueError(f"row_notes: {len(row_notes)} notes for {len(rows)} rows; give one note per row (\"\" for "
                         "none) or no notes")
    tw, th = tile
    size = max(10, min(20, th // 10))
    font = _font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = probe.textbbox((0, 0), "Ag", font=font)[3] + 4
    row_lines = [str(s).split("\n") for s in row_labels]
    widths = [int(probe.textlength(t, font=font)) for lines in row_lines for t in lines]
    if row_notes is not None:
        note_font = _font(max(9, size - 4))
        note_h = probe.textbbox((0, 0), "Ag", font=note_font)[3] + 2
        widths += [int(probe.textlength(t, font=note_font)) for n in row_notes for t in str(n).split(NOTE_SEP)]
    label_w = min(max(tw, 64), 8 + max(widths))
    levels = [str(c).split("\n") for c in col_labels]
    depth = max(2, max(len(lv) for lv in levels))
    head_h = depth * line_h + 4
    per_row = max(1, (max_width - label_w) // tw)
    per_col = max(1, (max_height - head_h) // th)
    pages = []
    for r0 in range(0, len(rows), per_col):
        for c0 in range(0, len(col_labels), per_row):
            rs, cs = range(r0, min(r0 + per_col, len(rows))), range(c0, min(c0 + per_row, len(col_labels)))
            page = Image.new("RGB", (label_w + len(cs) * tw, head_h + len(rs) * th), BACKGROUND)
            draw = ImageDraw.Draw(page)
            _draw_header(draw, [levels[c] for c in cs], label_w, tw, line_h, font)
            for i, r in enumerate(rs):
                y = head_h + i * th
                shown = row_lines[r][: max(1, th // line_h)]
                for k, line in enumerate(shown):
                    draw.text((4, y + 4 + k * line_h), _fit(draw, line, font, label_w - 8, True), fill=TEXT, font=font)
                if row_notes is not None and str(row_notes[r]).strip():
                    ny = y + 6 + len(shown) * line_h
                    for line in _wrap(draw, str(row_notes[r]), note_font, label_w - 8, NOTE_SEP):
                        if ny + note_h > y + th:
                            break
                        draw.text((4, ny), _fit(draw, line, note_font, label_w - 8), fill=NOTE_TEXT, font=note_font)
                        ny += note_h
                for j, c in enumerate(cs):
                    x = label_w + j * tw
                    cell = _open_cell(rows[r][c])
                    if isinstance(cell, Image.Image):
                        if cell.width > tw or cell.height > th:
                            cell.thumbnail((tw, th), Image.LANCZOS)
                        page.paste(cell, (x + (tw - cell.width) // 2, y + (th - cell.height) // 2))
                    elif isinstance(cell, Note):
                        draw.rectangle((x + 1, y + 1, x + tw - 2, y + th - 2), outline=(160, 60, 60))
                        for k, line in enumerate(_wrap(draw, cell, font, tw - 8)[: max(1, th // line_h - 1)]):
                            draw.text((x + 4, y + 4 + k * line_h), line, fill=(240, 150, 150), font=font)
            pages.append(page)
    return pages


def _draw_header(draw, levels: list[list[str]], x0: int, tw: int, line_h: int, font) -> None:
    """One header row per level; a level's label spans the run of columns that share it and every
    level above it (prompt over its seeds, seed over its axis values), with a rule under each span."""
    depth = max(len(lv) for lv in levels)
    for k in range(depth):
        j = 0
        while j < len(levels):
            key = levels[j][: k + 1]
            end = j + 1
            while end < len(levels) and levels[end][: k + 1] == key and k < depth - 1:
                end += 1
            if k < len(levels[j]):
                x, width = x0 + j * tw, (end - j) * tw
                y = 2 + k * line_h
                draw.text((x + 3, y), _fit(draw, levels[j][k], font, width - 6), fill=TEXT, font=font)
                if end - j > 1:
                    draw.line((x + 3, y + line_h - 2, x + width - 4, y + line_h - 2), fill=(110, 110, 110))
            j = end


def same_size(pages: list[Image.Image]) -> list[Image.Image]:
    """Pages padded to one size (ComfyUI's IMAGE batch needs one height and width)."""
    w, h = max(p.width for p in pages), max(p.height for p in pages)
    out = []
    for p in pages:
        if p.size != (w, h):
            q = Image.new("RGB", (w, h), BACKGROUND)
            q.paste(p, (0, 0))
            p = q
        out.append(p)
    return out
