"""The CLI sweep's grid pages, drawn from the image files on disk (one image open at a time)."""

from __future__ import annotations

import os
from pathlib import Path

from .. import grid
from .plan import column_labels, row_label, validation_columns


def draw(result, sweep, out: Path, max_tile: int = grid.MAX_TILE, page_width: int = grid.MAX_PAGE,
         validation_dir: str | os.PathLike | None = None, notes: dict | None = None) -> list[Path]:
    """Rows: checkpoints (x strength); columns: prompt x seed x axis values x batch image; ``notes``: a
    short line (the scores) under each row's label, by row."""
    from PIL import Image

    batch = max([len(f) for f in result.files.values()] or [1])
    combos = list(dict.fromkeys(c.axes for c in sweep.cells))
    cols = [(i, s, a, b) for i in range(len(sweep.prompts)) for s in sweep.seeds for a in combos for b in range(batch)]
    by_cell = {(c.row, c.prompt_index, c.seed, c.axes): c for c in sweep.cells}
    rows = []
    for r in result.rows:
        row = []
        for i, s, a, b in cols:
            c = by_cell.get((r, i, s, a))
            files = result.files.get(c) if c else None
            row.append(files[b] if files and b < len(files) else
                       grid.Note(result.failures[c]) if c in result.failures and b == 0 else None)
        rows.append(row)
    labels = column_labels(sweep.prompts, sweep.seeds, batch, sweep.axes)
    names = [sweep.labels[m] for m, _ in result.rows]
    if validation_dir is not None:
        vlabels, vcells = validation_columns(names, [Path(validation_dir)] * len(names))
        labels += vlabels
        rows = [r + v for r, v in zip(rows, vcells)]
    sizes = []
    for f in [f for fs in result.files.values() for f in fs][:64]:
        with Image.open(f) as im:
            sizes.append(im.size)
    pages = grid.sweep_pages(rows, [row_label(n, st) for n, (_, st) in zip(names, result.rows)], labels,
                             grid.tile_size(sizes or [(max_tile, max_tile)], max_tile), max_width=page_width,
                             row_notes=[notes.get(r, "") for r in result.rows] if notes else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(pages) == 1 else [out.with_name(f"{out.stem}-page{k + 1}{out.suffix}") for k in range(len(pages))]
    for page, p in zip(pages, paths):
        page.save(p)
    return paths
