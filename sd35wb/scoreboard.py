"""The scoreboard: a sweep's scores per checkpoint as one picture, a CSV and a JSON (numpy + Pillow only).

It reads the scores doc (version 1) the sweep writes::

    {"version": 1,
     "metrics": {"clip": {"label": ..., "better": "higher" | "lower", "unit": "0-100"}, ...},
     "rows": [{"label", "model", "step" (int | None), "strength" (float | None), "base" (bool),
               "scores": {"clip": {"mean", "std", "min", "max", "n"}, "memorisation": {..., "nearest"}, ...}}],
     "thresholds": {"max_memorisation": 0.95, "max_drift": 0.4},
     "recommended": {"label", "step", "strength", "rule", "why"} | None}

A metric may be absent from a row, or have ``n == 0`` (not computed): it is left out there.

* :func:`draw_scoreboard`: one panel per metric that has a score, all sharing the x axis (training
  step); one line per LoRA strength (full checkpoints: one line), a ±1 std band, the base model as
  a dashed line, each metric's limit dotted, the recommended checkpoint marked across the panels.
* :func:`row_note`: the short line the grid writes under a row's label.
* :func:`scores_csv`, :func:`write_outputs`: the CSV, and the three files beside the grid.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
from pathlib import Path

from PIL import Image, ImageDraw

from .grid import NOTE_SEP
from .plot import BG, COLORS, FG, GRID, draw_legend, fit_text, font, legend_size, nice_step, styled_line, wrap_text

VERSION = 1
STATS = ("mean", "std", "min", "max", "n")
PALETTE = COLORS + ((188, 189, 34), (23, 190, 207))  # one colour per strength
BASE_COLOR, LIMIT_COLOR, REC_COLOR = (140, 86, 75), (127, 127, 127), (227, 119, 194)
BAND_ALPHA = 56
# The limit each metric is held to (a key of the doc's "thresholds").
THRESHOLDS = {"memorisation": "max_memorisation", "drift": "max_drift"}
# row_note's short names and decimals; CLIP also shows its spread, comparable to SimpleTuner's clip/std.
SHORT = {"clip": ("CLIP", 1, True), "memorisation": ("mem", 2, False), "diversity": ("div", 2, False),
         "drift": ("drift", 2, False)}


# ---------------------------------------------------------------------------------------------
# Reading the doc


def _rows(doc) -> list[dict]:
    if not isinstance(doc, dict):
        raise ValueError(f"scores doc: a {type(doc).__name__}, not a JSON object; pass the sweep's scores doc")
    if doc.get("version") != VERSION:
        raise ValueError(f"scores doc: version {doc.get('version')!r}; this pack reads version {VERSION}")
    rows = doc.get("rows") or []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"scores doc: rows[{i}] is a {type(r).__name__}, not an object with label and scores")
    return rows


def _num(v) -> float | None:
    """A finite number as float, else None (absent, null, NaN, a string)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _stat(row: dict, key: str) -> dict | None:
    """The row's score ``key`` when it was computed (n > 0 and a finite mean), else None."""
    s = (row.get("scores") or {}).get(key)
    if not isinstance(s, dict) or _num(s.get("mean")) is None or not (_num(s.get("n")) or 0) > 0:
        return None
    return s


def _metric_keys(doc) -> list[str]:
    """The doc's metrics in its order, then any other score a row carries."""
    keys = list(doc.get("metrics") or {})
    for r in _rows(doc):
        keys += [k for k in (r.get("scores") or {}) if k not in keys]
    return keys


def _step(row: dict) -> int | None:
    s = _num(row.get("step"))
    return int(s) if s is not None and s == int(s) else None


def is_recommended(row: dict, rec: dict | None) -> bool:
    """Whether ``row`` is the recommended one (same label, and same strength where both have one)."""
    if not rec or row.get("label") != rec.get("label"):
        return False
    a, b = _num(row.get("strength")), _num(rec.get("strength"))
    return a is None or b is None or math.isclose(a, b, abs_tol=1e-9)


def _fmt(v: float, decimals: int | None) -> str:
    return f"{v:.{decimals}f}" if decimals is not None else f"{v:.3g}"


def row_note(row: dict) -> str:
    """The scores as one short line for the grid: "CLIP 31.2 ±1.1 · mem 0.42 · div 0.31 · drift 0.12"
    (scores not computed are left out; "" when there are none)."""
    scores = row.get("scores") or {}
    parts = []
    for key in [k for k in SHORT if k in scores] + [k for k in scores if k not in SHORT]:
        s = _stat(row, key)
        if s is None:
            continue
        name, dec, spread = SHORT.get(key, (key, None, False))
        text = f"{name} {_fmt(float(s['mean']), dec)}"
        std = _num(s.get("std"))
        if spread and std is not None and (_num(s.get("n")) or 0) > 1:
            text += f" \u00b1{_fmt(std, dec)}"
        parts.append(text)
    return NOTE_SEP.join(parts)


# ---------------------------------------------------------------------------------------------
# The picture


def _unit_bounds(unit) -> tuple[float, float] | None:
    """"0-1" -> (0, 1): the range a score cannot leave (the axis is clipped to it)."""
    try:
        lo, hi = (float(p) for p in str(unit).split("-"))
    except ValueError:
        return None
    return (lo, hi) if lo < hi else None


def _y_range(values: list[float], unit, core: list[float]) -> tuple[float, float, float]:
    """(lo, hi, tick step) covering ``values`` (means +- std, base, limit), on tick multiples, cut to the
    unit's range when the ``core`` values (means, base, limit) lie in it (a band may poke past 1)."""
    lo, hi = min(values), max(values)
    if hi - lo <= 0:
        half = abs(hi) * 0.05 or 0.05
        lo, hi = lo - half, hi + half
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo, 5)
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    bounds = _unit_bounds(unit)
    if bounds and bounds[0] <= min(core) and max(core) <= bounds[1]:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return lo, hi, step


def _series_key(strength) -> tuple:
    return (0, 0.0) if strength is None else (1, strength)


def _series_label(strength) -> str:
    return "checkpoints" if strength is None else f"strength {strength:g}"


def _x_layout(rows: list[dict]):
    """x coordinate of every curve row (not base): its step; rows without one take slots after the
    last step, one per model, in order. Returns (coords by row index, lo, hi, steps, slots) where
    ``slots`` is [(x, text)] for the step-less models."""
    curve = [i for i, r in enumerate(rows) if not r.get("base")]
    steps = sorted({_step(rows[i]) for i in curve if _step(rows[i]) is not None})
    slot_of: dict[str, int] = {}
    slot_text: list[str] = []
    for i in curve:
        if _step(rows[i]) is None:
            key = str(rows[i].get("model") or rows[i].get("label"))
            if key not in slot_of:
                slot_of[key] = len(slot_text)
                model = rows[i].get("model")
                slot_text.append(Path(str(model)).stem if model else str(rows[i].get("label", "?")))
    if steps:
        unit = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else max(abs(steps[-1]), 1)
        start = steps[-1] + unit
    else:
        unit, start = 1.0, 0.0
    coords = {}
    for i in curve:
        s = _step(rows[i])
        coords[i] = float(s) if s is not None else start + unit * slot_of[str(rows[i].get("model") or
                                                                               rows[i].get("label"))]
    slots = [(start + unit * k, t) for k, t in enumerate(slot_text)]
    first = steps[0] if steps else start
    last = slots[-1][0] if slots else steps[-1]
    wide = len(steps) > 1
    lo = first - (0.04 * (steps[-1] - steps[0]) if wide else 0.5 * unit)
    hi = last + (0.5 * unit if slots or not wide else 0.04 * (steps[-1] - steps[0]))
    return coords, lo, hi, steps, slots, unit


def _blend(color, alpha: int) -> tuple:
    return tuple(round(c * alpha / 255 + b * (255 - alpha) / 255) for c, b in zip(color, BG))


def _footer(doc, rec_found: bool) -> list[str]:
    rec = doc.get("recommended")
    lines = []
    if rec:
        st = _num(rec.get("strength"))
        what = f"Recommended: {rec.get('label')}" + (f" at strength {st:g}" if st is not None else "")
        if not rec_found:
            what += " (not among these rows)"
        lines.append(what + (f". Rule: {rec['rule']}" if rec.get("rule") else "") +
                     (f". Why: {rec['why']}" if rec.get("why") else ""))
    else:
        lines.append("No checkpoint is recommended in these scores.")
    th = doc.get("thresholds") or {}
    limits = [f"{m} at most {_num(th.get(k)):g}" for m, k in THRESHOLDS.items() if _num(th.get(k)) is not None]
    if limits:
        lines.append("Limits: " + ", ".join(limits) + ".")
    lines.append("Each point: one row's mean over its prompts and seeds; band or bar: \u00b11 std (the CSV has "
                 "min, max and n).")
    return lines


def panel_boxes(doc, width: int = 1200) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(metric key, plot box (x0, y0, x1, y1)) of each panel :func:`draw_scoreboard` draws, top to bottom."""
    return _layout(doc, width)["boxes"]


def _layout(doc, width: int) -> dict:
    if not 600 <= int(width) <= 8192:
        raise ValueError(f"width: {width} px; give 600 to 8192 (about 1200 reads well)")
    rows = _rows(doc)
    keys = [k for k in _metric_keys(doc) if any(_stat(r, k) for r in rows)]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    f = font(15)
    strengths = sorted({_num(r.get("strength")) for r in rows if not r.get("base") and
                        any(_stat(r, k) for k in keys)}, key=_series_key)
    entries = [(_series_label(s), PALETTE[k % len(PALETTE)]) for k, s in enumerate(strengths)]
    th = doc.get("thresholds") or {}
    if any(r.get("base") and _stat(r, k) for r in rows for k in keys):
        entries.append(("base model", BASE_COLOR, "dashed"))
    if any(k in THRESHOLDS and _num(th.get(THRESHOLDS[k])) is not None for k in keys):
        entries.append(("limit", LIMIT_COLOR, "dotted"))
    rec = doc.get("recommended") or None
    rec_rows = [i for i, r in enumerate(rows) if not r.get("base") and is_recommended(r, rec)]
    if rec and (rec_rows or _step(rec) is not None):
        entries.append(("recommended", REC_COLOR))
    entries.append(("\u00b11 std over prompts and seeds", _blend(PALETTE[0], BAND_ALPHA * 2), "band"))
    lw, lh = legend_size(probe, [e[0] for e in entries], f)
    x0, x1 = 72, int(width - lw - 34)
    top = 62
    ph = max(150, min(230, 880 // max(1, len(keys))))
    boxes, y = [], top
    for k in keys:
        y += 24  # the panel's title
        boxes.append((k, (x0, y, x1, y + ph)))
        y += ph + 14
    footer = [ln for text in _footer(doc, bool(rec_rows)) for ln in wrap_text(probe, text, f, width - 2 * 16)]
    height = (y - 14 if keys else top + 40) + 58 + 20 * len(footer) + 12
    return {"rows": rows, "keys": keys, "strengths": strengths, "entries": entries, "legend_w": lw, "boxes": boxes,
            "footer": footer, "height": max(height, top + lh + 20), "rec": rec, "rec_rows": rec_rows}


def draw_scoreboard(doc, width: int = 1200) -> Image.Image:
    """Every score against training step, one panel per metric present (see the module doc)."""
    L = _layout(doc, width)
    rows, keys, boxes = L["rows"], L["keys"], L["boxes"]
    metrics = doc.get("metrics") or {}
    th = doc.get("thresholds") or {}
    img = Image.new("RGB", (width, L["height"]), BG)
    d = ImageDraw.Draw(img)
    f_title, f, fs = font(18), font(15), font(13)
    d.text((16, 10), "Scores per checkpoint", fill=FG, font=f_title)
    if not keys:
        d.text((16, 70), "No scores in this sweep: every score was off, or none could be computed.", fill=FG, font=f)
        _draw_footer(d, L, 110)
        return img
    coords, xlo, xhi, steps, slots, unit = _x_layout(rows)
    bx0, bx1 = boxes[0][1][0], boxes[0][1][2]

    def px(v: float) -> float:
        return bx0 + (bx1 - bx0) * (v - xlo) / (xhi - xlo)

    x_ticks = _x_ticks(d, f, steps, slots, unit, px, xlo, bx1 - bx0)
    rec, rec_x = L["rec"], None
    if L["rec_rows"]:
        rec_x = px(coords[L["rec_rows"][0]])
    elif rec and _step(rec) is not None and steps:
        rec_x = px(float(_step(rec)))
    n_x = len({coords[i] for i in coords if any(_stat(rows[i], k) for k in keys)})
    head = f"{n_x} checkpoint{'s' if n_x != 1 else ''}"
    if any(s is not None for s in L["strengths"]):
        head += f" x {len(L['strengths'])} strength{'s' if len(L['strengths']) != 1 else ''}"
    d.text((16 + d.textlength("Scores per checkpoint", font=f_title) + 14, 13), head, fill=(90, 90, 90), font=f)

    panels = []
    for key, (x0, y0, x1, y1) in boxes:
        meta = metrics.get(key) or {}
        limit = _num(th.get(THRESHOLDS[key])) if key in THRESHOLDS else None
        base = [float(_stat(r, key)["mean"]) for r in rows if r.get("base") and _stat(r, key)]
        core = base + ([limit] if limit is not None else [])
        vals = list(core)
        for r in rows:
            s = _stat(r, key)
            if s is not None:
                m, sd = float(s["mean"]), _num(s.get("std")) or 0.0
                core.append(m)
                vals += [m - sd, m + sd]
        lo, hi, step = _y_range(vals, meta.get("unit"), core)

        def py(v, y0=y0, y1=y1, lo=lo, hi=hi):
            return y1 - (y1 - y0) * (min(max(v, lo), hi) - lo) / (hi - lo)

        panels.append((key, meta, limit, base, py))
        better = meta.get("better")
        title = str(meta.get("label") or key)
        if better in ("higher", "lower"):
            title += f"  \u00b7  {better} is better"
        if meta.get("unit"):
            title += f"  \u00b7  {meta['unit']}"
        d.text((x0, y0 - 21), fit_text(d, title, f, x1 - x0), fill=FG, font=f)
        for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1):
            t = k * step
            y = py(t)
            d.line([(x0, y), (x1, y)], fill=GRID)
            label = f"{round(t, 9):g}"
            d.text((x0 - 6 - d.textlength(label, font=fs), y - 8), label, fill=FG, font=fs)
        for x, _ in x_ticks:
            d.line([(x, y0), (x, y1)], fill=GRID)

    # ±1 std bands, translucent over the grid lines
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    od = ImageDraw.Draw(overlay)
    series = {}
    for key, _meta, _limit, _base, py in panels:
        for n, strength in enumerate(L["strengths"]):
            pts = sorted((coords[i], float(_stat(r, key)["mean"]), _num(_stat(r, key).get("std")) or 0.0)
                         for i, r in enumerate(rows) if i in coords and _num(r.get("strength")) == strength
                         and _stat(r, key))
            series[key, n] = pts
            if len(pts) > 1:
                upper = [(px(x), py(m + sd)) for x, m, sd in pts]
                lower = [(px(x), py(m - sd)) for x, m, sd in reversed(pts)]
                od.polygon(upper + lower, fill=PALETTE[n % len(PALETTE)] + (BAND_ALPHA,))
    img.paste(Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB"))

    for (key, _meta, limit, base, py), (_, (x0, y0, x1, y1)) in zip(panels, boxes):
        d.rectangle([x0, y0, x1, y1], outline=FG)  # first: a base or limit on the edge (drift 0) stays visible
        if limit is not None:
            y = py(limit)
            styled_line(d, (x0, y), (x1, y), LIMIT_COLOR, 2, "dotted")
            label = f"limit {limit:g}"
            d.text((x1 - 6 - d.textlength(label, font=fs), y - 16 if y - 16 > y0 else y + 3), label,
                   fill=LIMIT_COLOR, font=fs)
        if base:
            b = sum(base) / len(base)
            y = py(b)
            styled_line(d, (x0, y), (x1, y), BASE_COLOR, 2, "dashed")
            d.text((x0 + 6, y - 16 if y - 16 > y0 else y + 3), f"base {_fmt(b, SHORT.get(key, ('', None))[1])}",
                   fill=BASE_COLOR, font=fs)
        if rec_x is not None:
            d.line([(rec_x, y0), (rec_x, y1)], fill=REC_COLOR, width=2)
        for n in range(len(L["strengths"])):
            color = PALETTE[n % len(PALETTE)]
            pts = [(px(x), py(m), py(m - sd), py(m + sd)) for x, m, sd in series[key, n]]
            if len(pts) > 1:
                d.line([(x, y) for x, y, _, _ in pts], fill=color, width=2, joint="curve")
            r = 3 if len(pts) <= 30 else 2
            for x, y, ylo, yhi in pts:
                if len(pts) == 1 and ylo != yhi:  # a lone point: its spread as an error bar
                    d.line([(x, ylo), (x, yhi)], fill=color, width=1)
                    d.line([(x - 4, ylo), (x + 4, ylo)], fill=color)
                    d.line([(x - 4, yhi), (x + 4, yhi)], fill=color)
                d.ellipse([x - r, y - r, x + r, y + r], fill=color)
        for i in L["rec_rows"]:
            s = _stat(rows[i], key)
            if s is not None:
                x, y = px(coords[i]), py(float(s["mean"]))
                d.ellipse([x - 7, y - 7, x + 7, y + 7], outline=REC_COLOR, width=2)

    # the recommended checkpoint, named above the first panel
    if rec_x is not None:
        top = boxes[0][1][1]
        d.line([(rec_x, 58), (rec_x, top)], fill=REC_COLOR, width=2)
        st = _num(rec.get("strength"))
        text = f"recommended: {rec.get('label')}" + (f" @ strength {st:g}" if st is not None else "")
        tw = d.textlength(text, font=f)
        tx = min(max(rec_x - tw / 2, bx0), bx1 - tw)
        d.text((tx, 38), text, fill=(170, 40, 130), font=f)

    # shared x axis under the last panel
    yb = boxes[-1][1][3]
    for x, text in x_ticks:
        d.line([(x, yb), (x, yb + 4)], fill=FG)
        d.text((x - d.textlength(text, font=fs) / 2, yb + 6), text, fill=FG, font=fs)
    xt = "training step" if steps else "checkpoint"
    d.text(((bx0 + bx1) / 2 - d.textlength(xt, font=f) / 2, yb + 26), xt, fill=FG, font=f)
    draw_legend(d, (bx1 + 18, boxes[0][1][1]), L["entries"], f)
    _draw_footer(d, L, yb + 58)
    return img


def _x_ticks(d, fnt, steps, slots, unit, px, xlo, plot_w) -> list[tuple[float, str]]:
    """[(x px, text)]: every checkpoint's step where the labels fit, else round steps; then the step-less slots."""
    ticks: list[tuple[float, str]] = []
    if steps:
        widest = max(d.textlength(str(s), font=fnt) for s in steps)
        gaps = [px(b) - px(a) for a, b in zip(steps, steps[1:])]
        if not gaps or min(gaps) >= widest + 10:
            ticks = [(px(s), str(s)) for s in steps]
        else:
            st = nice_step(steps[-1] - steps[0], max(2, int(plot_w // 90)))
            k = math.ceil(max(xlo, 0) / st - 1e-9)
            while k * st <= steps[-1] + 1e-9:
                ticks.append((px(k * st), f"{round(k * st, 6):g}"))
                k += 1
    slot_w = px(unit) - px(0)
    ticks += [(px(x), fit_text(d, text, fnt, slot_w - 6)) for x, text in slots]
    return ticks


def _draw_footer(d, L: dict, y: float) -> None:
    f = font(15)
    for k, line in enumerate(L["footer"]):
        d.text((16, y + 20 * k), line, fill=FG, font=f)


# ---------------------------------------------------------------------------------------------
# CSV, JSON and the files beside the grid


def _nearest_keys(doc, keys: list[str]) -> set[str]:
    return {"memorisation"} | {k for r in _rows(doc) for k in keys
                               if isinstance((r.get("scores") or {}).get(k), dict) and "nearest" in r["scores"][k]}


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


def scores_csv(doc) -> str:
    """One line per row: label, model, step, strength, base, then per metric its mean, std, min, max,
    n (and nearest for memorisation), then whether it is the recommended row. Empty: not computed."""
    rows = _rows(doc)
    keys = _metric_keys(doc)
    nearest = _nearest_keys(doc, keys)
    header = ["label", "model", "step", "strength", "base"]
    for k in keys:
        header += [f"{k}_{s}" for s in STATS] + ([f"{k}_nearest"] if k in nearest else [])
    header.append("recommended")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    rec = doc.get("recommended")
    for r in rows:
        line = [r.get("label"), r.get("model"), r.get("step"), r.get("strength"), bool(r.get("base"))]
        for k in keys:
            s = (r.get("scores") or {}).get(k)
            s = s if isinstance(s, dict) else {}
            line += [s.get(st) for st in STATS] + ([s.get("nearest")] if k in nearest else [])
        line.append(is_recommended(r, rec))
        w.writerow([_cell(v) for v in line])
    return buf.getvalue()


def _json_safe(obj):
    """JSON has no NaN: a non-finite number (a score that could not be computed) is written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def output_paths(out_stem) -> list[Path]:
    """``<stem>.scores.csv``, ``<stem>.scores.json``, ``<stem>-scoreboard.png`` (stem: the grid's path
    without its suffix)."""
    s = str(out_stem)
    return [Path(s + ".scores.csv"), Path(s + ".scores.json"), Path(s + "-scoreboard.png")]


def _write_atomic(path: Path, data: bytes) -> None:
    # A temporary name in the same folder, then a rename: a reader (or a kill mid-write) never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_outputs(doc, out_stem, width: int = 1200) -> list[Path]:
    """Write the CSV, the JSON and the scoreboard picture beside the grid (see :func:`output_paths`).

    Everything is made before the first file is written, and each file is written whole or not at
    all; files of these names are the sweep's own and are replaced."""
    paths = output_paths(out_stem)
    for p in paths:
        if p.is_dir():
            raise ValueError(f"out: {p} is a folder, where the sweep writes its scores; choose another output name")
    png = io.BytesIO()
    draw_scoreboard(doc, width).save(png, format="PNG")
    data = [scores_csv(doc).encode("utf-8"),
            (json.dumps(_json_safe(doc), indent=1, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8"),
            png.getvalue()]
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for p, b in zip(paths, data):
        _write_atomic(p, b)
    return paths
