"""SLG layer explorer bookkeeping that needs neither ComfyUI nor torch.

The explorer renders one seed with plain CFG and once per SLG candidate (a set of joint blocks to
skip); the sensitivity map measures, for every block, how much skipping it moves the positive
prediction. Both evaluate many skip variants of the positive pass at the same input, and every
variant equals the positive pass up to its first skipped block, so one batched model call can
carry the positive and all variants and compute each block once per distinct prefix.

This module holds the plain parts, unit-tested on their own:

* :func:`parse_candidates`: ``"each"`` or ``"7,8,9 | 6 | 10,11"`` -> ``[(7, 8, 9), (6,), (10, 11)]``.
* :func:`block_action` / :func:`variant_block_plan`: what each chunk of a batched call does in
  block ``j`` (computed, copied from its positive twin, passed through, or carried untouched).
* :func:`block_rows` and :func:`chunk_variants`: the work a plan needs, and the split into calls.
* :data:`LOCKSTEP_SAMPLERS`, :func:`lane_groups`, :func:`lane_block_plan`: the renders stepped
  together as one batch ("lanes"), each step one batched model call for all of them.
* :func:`probe_steps`, :func:`sensitivity`, :func:`map_report`, :func:`bar_chart`: the map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from . import slg as S
from .plot import BG, FG, GRID, fit_text, nice_step
from .plot import font as _font

EACH = "each"

# What a chunk does in one joint block (see block_action).
RUN, TAKE, PASS, CARRY = "run", "take", "pass", "carry"


def parse_candidates(text: str, block_count: int, input_name: str = "candidates") -> list[tuple[int, ...]]:
    """``"each"`` (every single block) or groups separated by ``|`` (``"7,8,9 | 6 | 10,11"``).

    Each group is a layer list as the SLG nodes read it (validated against the model's block
    count). Repeated groups are kept once, in first-seen order. Raises ``ValueError`` naming
    ``input_name`` for an empty list, an empty group, or a block the model lacks.
    """
    raw = str(text).strip()
    if block_count <= 0:
        raise ValueError(f"{input_name}: the model has no joint blocks to skip")
    if raw.lower() == EACH:
        return [(i,) for i in range(block_count)]
    if not raw:
        raise ValueError(f"{input_name}: the candidate list is empty; write \"each\" (every single block) or groups "
                         f"separated by | such as \"7,8,9 | 6 | 10,11\" (this model has {block_count} joint blocks: "
                         f"0-{block_count - 1})")
    out: list[tuple[int, ...]] = []
    for n, group in enumerate(raw.split("|"), start=1):
        layers = tuple(S.parse_layers(group, block_count, input_name))
        if not layers:
            raise ValueError(f"{input_name}: group {n} of {raw!r} is empty; remove the extra | or put block numbers "
                             "in it")
        if layers not in out:
            out.append(layers)
    return out


def candidate_label(layers: Sequence[int]) -> str:
    """``(7, 8, 9)`` -> ``"skip 7,8,9"`` (the grid's tile label)."""
    return "skip " + ",".join(str(int(i)) for i in layers)


def variant_order(candidates: Sequence[Sequence[int]]) -> list[int]:
    """Candidate indices sorted by first skipped block (then by the layers): in that order the
    chunks computed in any block form one contiguous run of the batch, so slices need no gather."""
    return sorted(range(len(candidates)), key=lambda k: (min(candidates[k]), tuple(candidates[k])))


def chunk_variants(order: Sequence[int], per_call: int) -> list[list[int]]:
    """Split the sorted variants into calls of at most ``per_call`` (memory bound); 0 = one call."""
    order = list(order)
    if per_call <= 0 or per_call >= len(order):
        return [order] if order else []
    return [order[i:i + per_call] for i in range(0, len(order), per_call)]


def block_action(layers: Sequence[int], j: int, has_twin: bool = True) -> str:
    """What a skip variant's rows do in joint block ``j``.

    With its positive twin in the same call: before the block preceding the first skipped one
    the rows are carried untouched (their value is never read), at that block they take the
    twin's output (the shared prefix), from the first skipped block on they pass skipped blocks
    through and compute the others. Without a twin (the host split the batch) the rows compute
    their own prefix, exactly as a separate SLG pass does.
    """
    skipped = set(int(i) for i in layers)
    first = min(skipped)
    if has_twin and j < first:
        return TAKE if j == first - 1 else CARRY
    return PASS if j in skipped else RUN


def _positive_chunks(uuids: list, rows, positive_index: int) -> dict:
    """uuid -> the chunks of the positive cond (by ``rows``, the chunks' true cond indices) carrying it."""
    out: dict = {}
    for c, u in enumerate(uuids):
        if rows is None or (c < len(rows) and rows[c] == positive_index):
            out.setdefault(u, []).append(c)
    return out


def _plan(actions: list[str], src: dict):
    """``None`` when every position runs, else ``(run, sources)``: the positions computed and, per output
    position, ``("out", k)`` (the k-th computed one; for TAKE its ``src`` position's) or ``("in", c)``."""
    if all(a == RUN for a in actions):
        return None
    run = [c for c, a in enumerate(actions) if a == RUN]
    at = {c: k for k, c in enumerate(run)}
    return run, [("out", at[c]) if a == RUN else ("out", at[src[c]]) if a == TAKE else ("in", c)
                 for c, a in enumerate(actions)]


def variant_block_plan(uuids, variants: dict, j: int, rows=None, positive_index: int = 0):
    """Plan block ``j`` of one batched call from its chunk uuids.

    ``variants`` maps a skip-variant cond entry's uuid to ``(positive uuid, layers)``. Twins are
    matched by uuid (never by position) among the chunks whose cond index (``rows``) is the
    positive's, so chunk order, combined conditioning and partial batches all hold; a twin that
    is missing or ambiguous means the variant computes its own prefix.

    Returns ``None`` when every chunk simply runs the block, else ``(run, sources)``: the chunks
    to compute (in batch order) and, per output chunk, ``("out", k)`` (the k-th computed chunk)
    or ``("in", c)`` (the block's input chunk c, untouched).
    """
    uuids = list(uuids)
    twins = _positive_chunks(uuids, rows, positive_index)
    actions, src = [], {}
    for c, u in enumerate(uuids):
        v = variants.get(u)
        if v is None:
            actions.append(RUN)
            continue
        pos = twins.get(v[0], [])
        has_twin = len(pos) == 1
        if has_twin:
            src[c] = pos[0]
        actions.append(block_action(v[1], j, has_twin))
    return _plan(actions, src)


# Samplers whose update treats every batch row alone and draws no noise: renders stepped together
# as one batch follow exactly their separate runs' trajectories (tests/host check each one). The
# others (ancestral, SDE: batch-shaped noise) run one render at a time.
LOCKSTEP_SAMPLERS = frozenset({"euler", "heun", "dpm_2", "lms", "dpmpp_2m", "ipndm", "ipndm_v", "deis", "uni_pc",
                               "uni_pc_bh2"})


def lane_groups(n_lanes: int, per_run: int) -> list[list[int]]:
    """Lanes (renders) split into sampling runs of at most ``per_run`` lanes, in order."""
    per_run = n_lanes if per_run <= 0 else per_run
    return [list(range(i, min(i + per_run, n_lanes))) for i in range(0, n_lanes, per_run)]


def lane_block_plan(uuids, twins: dict, lanes: Sequence[Sequence[int]], j: int, rows=None, positive_index: int = 0):
    """Plan joint block ``j`` of one batched call whose batch holds several renders (lanes).

    Every cond chunk covers all lanes: chunk ``c``'s lane ``l`` is row segment ``s = c * L + l``.
    ``twins`` maps a skip-twin entry's uuid to its positive entry's uuid (or ``None`` when that
    uuid is not unique). In a twin chunk, lane ``l`` does what :func:`block_action` says for
    ``lanes[l]`` (its layers), taking the shared prefix from the same lane of its positive chunk;
    a lane with no layers (the plain-CFG baseline) never reads its twin rows, so they are carried.
    Other chunks run every block.

    Returns ``None`` when every segment runs the block, else ``(run, sources)`` over segments,
    as :func:`variant_block_plan` does over chunks.
    """
    uuids = list(uuids)
    n_lanes = len(lanes)
    positives = _positive_chunks(uuids, rows, positive_index)
    actions, src = [], {}
    for c, u in enumerate(uuids):
        if u not in twins:
            actions += [RUN] * n_lanes
            continue
        pos = positives.get(twins[u], []) if twins[u] is not None else []
        has_twin = len(pos) == 1
        for lane, layers in enumerate(lanes):
            if not layers:
                actions.append(CARRY)
                continue
            if has_twin:
                src[c * n_lanes + lane] = pos[0] * n_lanes + lane
            actions.append(block_action(layers, j, has_twin))
    return _plan(actions, src)


def patched_blocks(candidates: Sequence[Sequence[int]]) -> int:
    """Blocks ``0 .. n-1`` need a patch; from the last skipped block on, every row just runs."""
    return max(max(c) for c in candidates) + 1 if candidates else 0


def block_rows(candidates: Sequence[Sequence[int]], depth: int, calls: int = 1) -> dict:
    """Joint-block evaluations (one block on one chunk of rows) for the positive plus every variant.

    ``separate``: the positive pass once plus one SLG pass per candidate (``depth - len(layers)``
    blocks each, core's way). ``shared``: the positive once per call plus, per variant, only the
    blocks after its shared prefix that it does not skip.
    """
    separate = depth + sum(depth - len(set(c)) for c in candidates)
    shared = depth * max(1, calls) + sum(
        sum(1 for j in range(depth) if block_action(c, j) == RUN) for c in candidates)
    return {"shared": shared, "separate": separate, "ratio": shared / separate if separate else float("nan")}


# ---------------------------------------------------------------------------------------------
# Sensitivity map


def probe_steps(schedule: Sequence[float], start: float, end: float, gating: str, probes: int,
                sigma_start: float | None = None, sigma_end: float | None = None) -> list[int]:
    """Up to ``probes`` steps spread evenly over the steps where SLG is active.

    ``schedule`` is the run's sigmas (steps + 1 values); step gating follows Stability's strict
    rule, sigma gating needs ``sigma_start`` / ``sigma_end`` (``percent_to_sigma``). Raises when
    the window holds no step, naming start/end.
    """
    if probes < 1:
        raise ValueError(f"probes: {probes} sigmas; give at least 1")
    n = len(schedule) - 1
    if gating == "steps":
        active = [i for i in range(n) if S.step_active(i, n, start, end)]
    else:
        active = [i for i in range(n) if S.sigma_active(float(schedule[i]), sigma_start, sigma_end)]
    if not active:
        raise ValueError(f"start/end: the SLG window {start}-{end} ({gating}) holds no step of this {n}-step run, so "
                         "there is nothing to measure; widen the window or add steps")
    if probes >= len(active):
        return active
    # centres of `probes` equal parts of the active steps
    return sorted({active[min(len(active) - 1, int((k + 0.5) * len(active) / probes))] for k in range(probes)})


def sensitivity(cond: np.ndarray, skips: Sequence[np.ndarray]) -> dict:
    """Per skip variant: RMS of ``cond - cond_skip``, that RMS relative to RMS(cond), and the
    cosine similarity of ``cond`` and ``cond_skip`` (all over every element, float64)."""
    c = np.asarray(cond, dtype=np.float64).ravel()
    c_rms = float(np.sqrt(np.mean(c * c)))
    c_norm = float(np.linalg.norm(c))
    rms, rel, cos = [], [], []
    for s in skips:
        s = np.asarray(s, dtype=np.float64).ravel()
        d = c - s
        r = float(np.sqrt(np.mean(d * d)))
        rms.append(r)
        rel.append(r / c_rms if c_rms > 0 else float("nan"))
        denom = c_norm * float(np.linalg.norm(s))
        cos.append(float(np.dot(c, s) / denom) if denom > 0 else float("nan"))
    return {"rms": rms, "relative_rms": rel, "cosine": cos}


def map_report(candidates: Sequence[Sequence[int]], per_probe: Sequence[dict], steps: Sequence[int],
               sigmas: Sequence[float], block_count: int) -> dict:
    """The map as JSON-ready numbers: per probe and averaged over probes, plus the ranking."""
    k = len(candidates)
    mean = {key: [float(np.mean([p[key][i] for p in per_probe])) for i in range(k)]
            for key in ("rms", "relative_rms", "cosine")}
    ranking = sorted(range(k), key=lambda i: -mean["relative_rms"][i])
    return {
        "block_count": block_count,
        "candidates": [list(map(int, c)) for c in candidates],
        "labels": [",".join(str(i) for i in c) for c in candidates],
        "probe_steps": [int(s) for s in steps],
        "probe_sigmas": [float(s) for s in sigmas],
        **mean,
        "per_probe": [{"step": int(s), "sigma": float(sg), **p} for s, sg, p in zip(steps, sigmas, per_probe)],
        "ranking": [",".join(str(i) for i in candidates[r]) for r in ranking],
    }


BAR, BAR_TOP = (70, 130, 180), (214, 39, 40)


def bar_chart(values: Sequence[float], labels: Sequence[str], title: str, subtitle: str = "", highlight: int = 3,
              width: int = 0, height: int = 360, y_label: str = "RMS(cond - cond skipped) / RMS(cond)") -> Image.Image:
    """A vertical bar chart (Pillow): one bar per candidate, the ``highlight`` largest in red with
    their value written on top, a y axis with ticks and gridlines, the labels under the bars."""
    values = [0.0 if not math.isfinite(v) else float(v) for v in values]
    labels = [str(s) for s in labels]
    if not values or len(values) != len(labels):
        raise ValueError(f"values: {len(values)} values for {len(labels)} labels; give one label per bar")
    n = len(values)
    bar_w = max(10, min(48, 900 // n))
    left, right, top, bottom = 64, 16, 54 if subtitle else 36, 46
    width = width or left + right + n * bar_w
    img = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(img)
    f, fs = _font(13), _font(11)
    d.text((left, 8), title, fill=FG, font=f)
    if subtitle:
        d.text((left, 28), subtitle, fill=FG, font=fs)
    plot_h = height - top - bottom
    vmax = max(values) or 1.0
    step = nice_step(vmax)
    ymax = math.ceil(vmax / step) * step
    t = 0.0
    while t <= ymax + 1e-12:
        y = top + plot_h - plot_h * t / ymax
        d.line([(left, y), (width - right, y)], fill=GRID)
        txt = f"{t:.3g}"
        d.text((left - 6 - d.textlength(txt, font=fs), y - 6), txt, fill=FG, font=fs)
        t += step
    d.line([(left, top), (left, top + plot_h), (width - right, top + plot_h)], fill=FG)
    top_k = set(sorted(range(n), key=lambda i: -values[i])[:max(0, highlight)])
    slot = (width - left - right) / n
    for i, (v, lab) in enumerate(zip(values, labels)):
        x0 = left + i * slot + slot * 0.15
        x1 = left + (i + 1) * slot - slot * 0.15
        y = top + plot_h - plot_h * v / ymax
        d.rectangle([x0, y, x1, top + plot_h], fill=BAR_TOP if i in top_k else BAR)
        if i in top_k:
            txt = f"{v:.3g}"
            d.text(((x0 + x1) / 2 - d.textlength(txt, font=fs) / 2, y - 13), txt, fill=FG, font=fs)
        shown = fit_text(d, lab, fs, slot)
        d.text((left + (i + 0.5) * slot - d.textlength(shown, font=fs) / 2, top + plot_h + 4), shown, fill=FG, font=fs)
    d.text((left, height - 18), "skipped block(s)    bar: " + y_label, fill=FG, font=fs)
    return img
