"""Scores for a checkpoint sweep: which checkpoint is best, measured.

Per rendered image (a *sample*) the scoring models give an image embedding and, with a prompt, a
CLIP score; this module turns those into per-row scores (row = checkpoint x strength) and a
recommended checkpoint. Plain numpy: the embeddings come from ComfyUI (nodes/_scoring.py) or, for
the CLI, from the same node run on the server that rendered the image.

- **Prompt adherence**: CLIP score exactly as torchmetrics' ``clip_score`` computes it (the
  function SimpleTuner's ``--evaluation_type clip`` calls): ``max(100 * cos(image, text), 0)`` on
  the projected embeddings, one image with its prompt at a time, so a figure here compares with the
  run's own ``clip/mean``.
- **Memorisation**: the highest cosine of a render's DINOv2 embedding to any training image's
  (Somepalli et al. 2023 search the nearest training image by DINO / SSCD similarity); the row
  keeps the highest and names that training image.
- **Seed diversity**: mean pairwise ``1 - cos`` between the renders of one prompt across seeds
  (and batch images); a drop means the seeds collapse into one image.
- **Drift from the base**: ``1 - cos`` between a render and the base model's render of the same
  prompt, seed and settings, on prompts marked held out (never trained on), so it measures what
  the fine-tune changed where it should not have.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

VERSION = 1

# SimpleTuner's default --pretrained_evaluation_model_name_or_path, and how the node and the CLI name it
CLIP_REPO = "openai/clip-vit-large-patch14-336"
CLIP_HUB_CHOICE = f"{CLIP_REPO} (Hugging Face cache / fetch)"

METRICS = {
    "clip": {"label": "prompt adherence (CLIP score)", "better": "higher", "unit": "0-100"},
    "memorisation": {"label": "memorisation (DINOv2 cosine to nearest training image)", "better": "lower",
                     "unit": "0-1"},
    "diversity": {"label": "seed diversity (mean pairwise 1 - cosine)", "better": "higher", "unit": "0-1"},
    "drift": {"label": "drift from the base on held-out prompts (1 - cosine)", "better": "lower", "unit": "0-1"},
}

# (default, why): the reasons are shown in the report and in the node's tooltips.
THRESHOLDS = {
    "max_memorisation": (0.90, "a render whose DINOv2 cosine to a training image passes 0.90 is a near copy: "
                               "DreamBooth (Ruiz et al. 2023) measures 0.77 between two real photos of the same "
                               "subject, so a faithful subject sits below it and a copied image above"),
    "max_drift": (0.50, "on held-out prompts a LoRA should leave the base's picture mostly alone; 0.50 is half-way "
                        "from the base's own render (0) to an unrelated image (about 1)"),
}

HELD_OUT = re.compile(r"^\s*\[held[ -]?out\]\s*", re.IGNORECASE)


def split_held_out(prompts: list[str]) -> tuple[list[str], list[bool]]:
    """'[held out] a red car' marks a prompt the run never trained on (for drift): returns the
    prompts without the mark and which ones carried it."""
    texts, flags = [], []
    for p in prompts:
        m = HELD_OUT.match(p)
        texts.append(p[m.end():].strip() if m else p)
        flags.append(bool(m))
    return texts, flags


def unit(x) -> np.ndarray:
    """Rows scaled to length 1 (float64); a zero row stays zero."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n == 0, 1.0, n)


def clip_score(image_embeds, text_embeds) -> np.ndarray:
    """torchmetrics' CLIP score of each image with its own text: ``max(100 * cos, 0)``."""
    return np.maximum(100.0 * (unit(image_embeds) * unit(text_embeds)).sum(-1), 0.0)


def nearest(embeds, bank) -> tuple[np.ndarray, np.ndarray]:
    """For each embedding its highest cosine to the bank and the bank index that gives it."""
    sims = unit(embeds) @ unit(bank).T
    idx = sims.argmax(axis=1)
    return sims[np.arange(len(idx)), idx], idx


def mean_pairwise_distance(embeds) -> float | None:
    """Mean ``1 - cos`` over every pair; None with fewer than two embeddings."""
    e = unit(embeds)
    n = len(e)
    if n < 2:
        return None
    sims = e @ e.T
    return float((1.0 - sims[np.triu_indices(n, 1)]).mean())


def stats(values: list[float]) -> dict:
    """mean, population std, min, max and n (n == 0: nothing to say)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not len(v):
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


@dataclass
class Sample:
    """One scored image: where it sits in the sweep and what the scoring models said of it."""

    row: tuple  # (model, strength)
    prompt_index: int
    seed: int
    axes: tuple = ()
    batch: int = 0
    held_out: bool = False
    clip: float | None = None
    memorisation: float | None = None
    nearest: str | None = None
    look: np.ndarray | None = None  # the embedding diversity and drift compare (DINOv2, else CLIP's image)

    @property
    def match(self) -> tuple:
        """What makes two rows' samples comparable: the same prompt, seed, settings and batch image."""
        return (self.prompt_index, self.seed, self.axes, self.batch)


@dataclass
class Row:
    model: str
    label: str
    step: int | None = None
    strength: float | None = None
    base: bool = False

    @property
    def key(self) -> tuple:
        return (self.model, self.strength)


@dataclass
class Options:
    thresholds: dict = field(default_factory=lambda: {k: v for k, (v, _) in THRESHOLDS.items()})
    look: str = "DINOv2"  # which embedding diversity and drift use, for the report


def memorise(samples_embeds, train_embeds, train_names: list[str]) -> list[tuple[float, str]]:
    """(highest cosine, nearest training image's name) per render."""
    if train_embeds is None or not len(train_names):
        return [(None, None)] * len(samples_embeds)
    sims, idx = nearest(samples_embeds, train_embeds)
    return [(float(s), train_names[i]) for s, i in zip(sims, idx)]


def base_key(rows: list[Row]) -> tuple | None:
    """The row drift is measured against: the first base row (strength 0 of a LoRA sweep, or the base
    file of a full fine-tune)."""
    return next((r.key for r in rows if r.base), None)


def score_doc(rows: list[Row], samples: list[Sample], opts: Options | None = None) -> dict:
    """The scores document (JSON-ready): per row every score's mean/std/min/max/n, the thresholds and
    the recommended checkpoint with its rule."""
    opts = opts or Options()
    by_row: dict[tuple, list[Sample]] = {}
    for s in samples:
        by_row.setdefault(s.row, []).append(s)
    ref = base_key(rows)
    base_looks = {s.match: s.look for s in by_row.get(ref, []) if s.look is not None}
    out_rows = []
    for r in rows:
        mine = by_row.get(r.key, [])
        scores: dict[str, dict] = {}
        clip = [s.clip for s in mine if s.clip is not None]
        if clip:
            scores["clip"] = stats(clip)
        mem = [s for s in mine if s.memorisation is not None]
        if mem:
            top = max(mem, key=lambda s: s.memorisation)
            scores["memorisation"] = {**stats([s.memorisation for s in mem]), "nearest": top.nearest}
        groups: dict[tuple, list] = {}
        for s in mine:
            if s.look is not None:
                groups.setdefault((s.prompt_index, s.axes), []).append(s.look)
        div = [mean_pairwise_distance(g) for g in groups.values()]
        if any(d is not None for d in div):
            scores["diversity"] = stats(div)
        if base_looks:
            drift = [float(1.0 - (unit(s.look) * unit(base_looks[s.match])).sum())
                     for s in mine if s.held_out and s.look is not None and s.match in base_looks]
            if drift:
                scores["drift"] = stats(drift)
        out_rows.append({"label": r.label, "model": r.model, "step": r.step, "strength": r.strength, "base": r.base,
                         "scores": scores})
    present = [m for m in METRICS if any(m in r["scores"] for r in out_rows)]
    doc = {"version": VERSION, "metrics": {m: METRICS[m] for m in present}, "rows": out_rows,
           "thresholds": dict(opts.thresholds), "look": opts.look}
    doc["recommended"] = recommend(doc)
    return doc


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"


def row_name(row: dict) -> str:
    return row["label"] + ("" if row.get("strength") is None else f" @ {row['strength']:g}")


def rule_text(thresholds: dict, metrics) -> str:
    """The recommendation rule in words, with only the scores that were measured."""
    what = ("the highest prompt adherence (mean CLIP score)" if "clip" in metrics else
            "the highest seed diversity" if "diversity" in metrics else "the lowest memorisation")
    limits = []
    if "memorisation" in metrics:
        limits.append(f"no render's memorisation above {thresholds['max_memorisation']:g}")
    if "drift" in metrics:
        limits.append(f"mean held-out drift at most {thresholds['max_drift']:g}")
    return f"{what} among the checkpoints" + (f" with {' and '.join(limits)}" if limits else "") + \
        "; ties go to the earlier step; the base itself is never recommended"


def recommend(doc: dict) -> dict | None:
    """The recommended row by :func:`rule_text`'s rule, with why (who passed, who was left out)."""
    metrics = doc["metrics"]
    if not metrics:
        return None
    th = doc["thresholds"]
    rule = rule_text(th, metrics)
    key = "clip" if "clip" in metrics else "diversity" if "diversity" in metrics else "memorisation"
    sign = -1.0 if METRICS[key]["better"] == "higher" else 1.0
    passed, excluded = [], []
    for r in doc["rows"]:
        if r["base"]:
            continue
        sc = r["scores"]
        why = []
        mem = sc.get("memorisation", {}).get("max")
        if mem is not None and mem > th["max_memorisation"]:
            why.append(f"memorisation {mem:.3f} > {th['max_memorisation']:g} (nearest {sc['memorisation']['nearest']})")
        drift = sc.get("drift", {}).get("mean")
        if drift is not None and drift > th["max_drift"]:
            why.append(f"held-out drift {drift:.3f} > {th['max_drift']:g}")
        value = sc.get(key, {}).get("max" if key == "memorisation" else "mean")
        if value is None:
            why.append(f"no {key} score")
        if why:
            excluded.append(f"{row_name(r)}: {'; '.join(why)}")
        else:
            passed.append((sign * value, r["step"] if r["step"] is not None else math.inf, r))
    if not passed:
        return {"label": None, "step": None, "strength": None, "rule": rule,
                "why": "no checkpoint passes: " + ("; ".join(excluded) or "nothing was scored")}
    passed.sort(key=lambda t: (t[0], t[1]))
    best = passed[0][2]
    value = best["scores"][key]["max" if key == "memorisation" else "mean"]
    why = f"{row_name(best)}: {key} {_fmt(value)}"
    if len(passed) > 1:
        nxt = passed[1][2]
        why += f" (next: {row_name(nxt)}, {_fmt(nxt['scores'][key]['max' if key == 'memorisation' else 'mean'])})"
    if excluded:
        why += "; left out: " + "; ".join(excluded)
    return {"label": best["label"], "step": best["step"], "strength": best["strength"], "rule": rule, "why": why}


def report_lines(doc: dict) -> list[str]:
    """What the sweep's report says about the scores: one line per row, the rule and the answer."""
    if not doc["metrics"]:
        return ["scores: none measured"]
    lines = [f"scores ({', '.join(doc['metrics'])}; diversity and drift on {doc.get('look', 'DINOv2')} embeddings):"]
    for r in doc["rows"]:
        parts = [f"{m} {_fmt(r['scores'][m]['mean'])}" + (f" ±{_fmt(r['scores'][m]['std'])}" if r['scores'][m]['n'] > 1
                                                            else "")
                 for m in doc["metrics"] if m in r["scores"] and r["scores"][m]["n"]]
        if "memorisation" in r["scores"]:
            parts.append(f"max memorisation {_fmt(r['scores']['memorisation']['max'])} "
                         f"({r['scores']['memorisation']['nearest']})")
        lines.append(f"  {row_name(r)}{' (base)' if r['base'] else ''}: {', '.join(parts) or 'no scores'}")
    rec = doc["recommended"]
    if rec is not None:
        lines.append(f"recommended: {row_name(rec) if rec['label'] else 'none'} -- rule: {rec['rule']}")
        lines.append(f"  why: {rec['why']}")
    if "drift" not in doc["metrics"]:
        lines.append("drift: not measured (needs a base row -- strength 0 of a LoRA sweep, or the base file of a full "
                     "fine-tune -- and prompts marked '[held out]')")
    return lines
