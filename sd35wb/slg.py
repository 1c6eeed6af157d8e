"""Skip Layer Guidance (SLG) logic that needs neither ComfyUI nor torch.

SLG (Stability AI's SD3.5 reference, ``sd3_impls.SkipLayerCFGDenoiser``; ComfyUI core
``SkipLayerGuidanceSD3``; inspired by Perturbed Attention Guidance, arXiv 2403.17377) runs the
positive prompt a second time with some joint blocks skipped and adds
``(cond - cond_with_layers_skipped) * scale`` to the CFG result.

This module holds the parts that are plain bookkeeping, so they are unit-tested on their own:

* :func:`parse_layers`: "7, 8, 9" -> ``[7, 8, 9]``, validated against the model's block count.
* The two gating rules: Stability's step window (:func:`step_active`) and core's sigma window
  (:func:`sigma_active`), plus :func:`nearest_step` to map a model call's sigma to its step.
* The row plan for the batched fast path (:func:`plan_rows`, :func:`merge_segments`): which
  chunks of a batched model call are skip-layer rows, which positive chunk each one can copy
  its shared prefix from, and how to assemble a block's output from slices without index
  tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GATINGS = ("steps", "sigma")

_LAYER_TOKEN = re.compile(r"[\s,;]+")


def parse_layers(text: str, block_count: int, input_name: str = "layers") -> list[int]:
    """Parse a layer list such as ``"7, 8, 9"`` and check every index exists in the model.

    Accepts integers separated by commas, semicolons or spaces; returns them sorted without
    duplicates (skipping a block twice is the same as skipping it once). An empty string gives
    ``[]`` (no SLG). Raises ``ValueError`` naming ``input_name``, the model's block count and
    the valid range.
    """
    if block_count <= 0:
        raise ValueError(f"{input_name}: the model has no joint blocks to skip")
    tokens = [t for t in _LAYER_TOKEN.split(str(text).strip()) if t]
    layers: set[int] = set()
    for tok in tokens:
        try:
            value = int(tok)
        except ValueError:
            raise ValueError(
                f"{input_name}: {tok!r} is not a block number; write block indices separated by commas, "
                f"e.g. \"7, 8, 9\" (this model has {block_count} joint blocks: 0-{block_count - 1})"
            ) from None
        if not 0 <= value < block_count:
            raise ValueError(
                f"{input_name}: block {value} does not exist; this model has {block_count} joint blocks, "
                f"so valid layers are 0-{block_count - 1} (SD3.5 Medium has 24, Large 38)"
            )
        layers.add(value)
    return sorted(layers)


def format_layers(layers) -> str:
    """``[7, 8, 9]`` -> ``"7, 8, 9"`` (the widget's text form)."""
    return ", ".join(str(int(i)) for i in layers)


def validate_window(start: float, end: float, gating: str) -> None:
    """Both ends are fractions of the run in [0, 1] with start <= end; gating is known."""
    if gating not in GATINGS:
        raise ValueError(f"gating: {gating!r} is not one of {list(GATINGS)}")
    for name, v in (("start", start), ("end", end)):
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name}: {v} is outside 0-1; it is a fraction of the run (0.01 = 1 %)")
    if start > end:
        raise ValueError(f"start ({start}) is after end ({end}); SLG would never be active. Swap them or set start <= end")


def step_active(step: int, steps: int, start: float, end: float) -> bool:
    """Stability's step window, exactly as ``sd3_impls.SkipLayerCFGDenoiser`` gates it.

    The reference counts model calls from 0 and applies SLG when
    ``step > start * steps and step < end * steps`` (both strict). So with 50 steps and the
    Medium window 0.01-0.20, steps 1 to 9 get SLG; a start of 0 still leaves step 0 out.
    """
    return step > start * steps and step < end * steps


def sigma_active(sigma: float, sigma_start: float, sigma_end: float) -> bool:
    """ComfyUI core's window: active iff ``sigma_end <= sigma <= sigma_start``.

    ``sigma_start`` / ``sigma_end`` come from ``model_sampling.percent_to_sigma(start / end)``,
    so sigma falls as the percentages rise (start 0.01 is a high sigma, end 0.15 a lower one).
    """
    return sigma_end <= sigma <= sigma_start


def always_active(start: float, end: float, gating: str) -> bool:
    """True when the window provably covers every model call, so no sigma needs reading.

    Only the sigma window can be always on (``percent_to_sigma(0)`` is the largest sigma a
    schedule can hold, ``percent_to_sigma(1)`` is 0); Stability's strict step window always
    leaves step 0 out.
    """
    return gating == "sigma" and start <= 0.0 and end >= 1.0


def never_active(scale: float, layers, start: float, end: float) -> bool:
    return scale == 0.0 or not layers or end <= start


def nearest_step(sigma: float, schedule) -> int:
    """Index of the step whose sigma is closest to ``sigma`` in a descending schedule.

    ``schedule`` holds the run's sigmas (``steps + 1`` values ending in 0). Single-evaluation
    samplers (euler, dpmpp_2m: the reference's) call the model exactly at ``schedule[i]``;
    for multi-evaluation samplers the intermediate calls count toward the nearest step.
    """
    n = len(schedule) - 1
    if n <= 0:
        return 0
    best, best_d = 0, abs(schedule[0] - sigma)
    for i in range(1, n):
        d = abs(schedule[i] - sigma)
        if d < best_d:
            best, best_d = i, d
    return best


# ---------------------------------------------------------------------------------------------
# Row bookkeeping for the batched fast path


@dataclass(frozen=True)
class RowPlan:
    """Which chunks of one batched model call are what.

    The host batches conds as chunks of ``batch`` rows each (one chunk per cond entry, tagged by
    ``transformer_options["uuids"]``). ``skip`` lists the chunk positions that are the
    skip-layer copy of a positive entry; ``shared`` maps a skip chunk to the chunk of its
    positive twin when that twin is in the same call (then the twin's hidden state up to the
    first skipped block is copied instead of computed). A skip chunk without its twin (the host
    split the batch under memory pressure) is computed in full, as a separate pass would.
    """

    n_chunks: int
    skip: tuple[int, ...]
    shared: tuple[tuple[int, int], ...]  # (skip chunk, source chunk)

    @property
    def shared_map(self) -> dict[int, int]:
        return dict(self.shared)

    def prefix_run(self) -> list[int]:
        """Chunks computed in the blocks before the first skipped one."""
        lazy = {s for s, _ in self.shared}
        return [c for c in range(self.n_chunks) if c not in lazy]

    def skipped_run(self) -> list[int]:
        """Chunks computed in a skipped block (every chunk but the skip-layer rows)."""
        skip = set(self.skip)
        return [c for c in range(self.n_chunks) if c not in skip]


def plan_rows(uuids, skip_to_positive: dict, rows=None, positive_index: int = 0) -> RowPlan:
    """Plan one batched call from its chunk uuids.

    ``skip_to_positive`` maps each skip-layer cond entry's uuid to the uuid of the positive
    entry it copies. Matching is by uuid, never by position, so it holds for any chunk order,
    several positive entries (combined conditioning) and partial batches. ``rows`` (the chunks'
    true cond indices) restricts the twin to chunks of the positive cond: the host's area
    handling copies cond entries *with* their uuid into the other cond's list, so a uuid alone
    can name a negative chunk too. A twin that is missing or ambiguous is not shared: that skip
    chunk is computed in full.
    """
    uuids = list(uuids)
    candidates: dict = {}
    for j, u in enumerate(uuids):
        if rows is None or (j < len(rows) and rows[j] == positive_index):
            candidates.setdefault(u, []).append(j)
    skip, shared = [], []
    for i, u in enumerate(uuids):
        if u in skip_to_positive:
            skip.append(i)
            src = candidates.get(skip_to_positive[u], [])
            if len(src) == 1:
                shared.append((i, src[0]))
    return RowPlan(len(uuids), tuple(skip), tuple(shared))


def merge_segments(sources) -> list[tuple[str, int, int]]:
    """Group a per-chunk source list into as few contiguous slices as possible.

    ``sources[c] = (tensor_key, chunk_in_that_tensor)`` says where output chunk ``c`` comes
    from; returns ``[(tensor_key, first_chunk, end_chunk), ...]`` in output order, merging runs
    that read consecutive chunks of the same tensor (so the common layouts need one or two
    slices and a single concatenation, no gather with index tensors).
    """
    out: list[list] = []
    for key, idx in sources:
        if out and out[-1][0] == key and out[-1][2] == idx:
            out[-1][2] = idx + 1
        else:
            out.append([key, idx, idx + 1])
    return [tuple(s) for s in out]


def public_cond_or_uncond(rows, skip_index: int, as_index: int = 0) -> list[int]:
    """The cond indices shown to other code: skip-layer rows appear as positive rows (0).

    Core's own SLG runs its skip pass as a separate ``calc_cond_batch([cond])`` call, where the
    rows are tagged 0; showing the batched skip rows as 0 too keeps third-party attention
    patches and model wrappers that only know 0 (cond) and 1 (uncond) working as they do with
    core.
    """
    return [as_index if r == skip_index else r for r in rows]


def resolve_slg(preset: str, fields: dict, settings: dict | None, presets: dict) -> dict:
    """The SLG parameters a node runs with.

    ``preset`` is a name in ``presets``, ``"from settings"`` (the loader's recommendation for
    the detected variant; the fields when nothing is connected) or ``"custom"`` (the fields).
    """
    if preset == "custom":
        return dict(fields)
    if preset == "from settings":
        if settings is None:
            return dict(fields)
        slg = settings.get("slg") if isinstance(settings, dict) else None
        if not isinstance(slg, dict):
            raise ValueError("settings: the connected settings carry no 'slg' entry; connect the SD3.5 loader's "
                             "SETTINGS output or pick another preset")
        return {"layers": format_layers(slg.get("layers", [])), "scale": float(slg.get("scale", 0.0)),
                "start": float(slg.get("start", 0.0)), "end": float(slg.get("end", 1.0)),
                "gating": slg.get("gating", "steps")}
    if preset not in presets:
        raise ValueError(f"preset: unknown preset {preset!r}; expected one of {['from settings', *presets, 'custom']}")
    p = presets[preset]
    return {"layers": format_layers(p["layers"]), "scale": float(p["scale"]), "start": float(p["start"]),
            "end": float(p["end"]), "gating": p["gating"]}


def normalize_layers(text) -> str:
    """``"9,7 8"`` -> ``"7, 8, 9"`` for comparing a layers field with what ran; text that is not a
    list of block numbers comes back as it was (the report shows it; parsing reports the error)."""
    tokens = [t for t in _LAYER_TOKEN.split(str(text).strip()) if t]
    try:
        return format_layers(sorted({int(t) for t in tokens}))
    except ValueError:
        return str(text)


def slg_source(preset: str, settings: dict | None) -> str:
    """Where the SLG values that ran came from, for the report."""
    if preset == "custom":
        return "the fields (preset 'custom')"
    if preset == "from settings":
        if settings is None:
            return "the fields (preset 'from settings', no settings connected)"
        return f"settings for {settings.get('variant', '?')}"
    return f"preset {preset!r}"


def describe_slg(slg: dict, source: str) -> str:
    """One report line: the SLG that ran (or that none did) and where it came from."""
    layers = normalize_layers(slg["layers"])
    if never_active(float(slg["scale"]), [t for t in layers.split(",") if t.strip()], slg["start"], slg["end"]):
        return f"SLG: off (layers '{layers}', scale {float(slg['scale']):g}; from {source})"
    return f"SLG: layers {layers}, {describe_window(slg)}; from {source}"


def describe_window(slg: dict) -> str:
    """``scale 2.5, window 0.01-0.2 of steps (Stability's rule)``."""
    rule = "steps (Stability's rule)" if slg["gating"] == "steps" else "sigma (core's rule)"
    return f"scale {float(slg['scale']):g}, window {float(slg['start']):g}-{float(slg['end']):g} of {rule}"
