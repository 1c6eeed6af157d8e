"""Which node inputs another input overrides (or makes irrelevant), in one table.

The frontend greys out / relabels the widgets from it (served as JSON by GET /sd35wb/overrides),
and the nodes' reports use it to say which given values did not run, so the editor and the
report cannot disagree. Plain data and plain functions: no ComfyUI here.

A rule: ``inputs`` (the affected inputs), ``by`` (the input that wins), ``effect`` ("overridden":
another value runs instead; "ignored": the input has no effect), ``label`` (short text for the
widget) and ``when``, whose conditions must all hold:

* ``connected`` / ``disconnected``: inputs that must (not) have a link;
* ``values``: ``{widget: [values]}``, the widget's value is one of them;
* ``nonempty`` / ``empty``: STRING widgets whose trimmed text is (not) empty;
* ``named_in``: a STRING widget holding ``name=v1,v2`` axes; each affected input counts only when
  it is one of the axis names.
"""

from __future__ import annotations

import math
import re

from . import presets

VERSION = 1
SLG_FIELDS = ["layers", "scale", "start", "end", "gating"]
NAMED_SLG_PRESETS = list(presets.SLG_PRESETS)


def _slg_rules(sampling: list[str]) -> list[dict]:
    return [
        {"inputs": sampling, "by": "settings", "effect": "overridden", "label": "from settings",
         "when": {"connected": ["settings"], "values": {"sampling_from_settings": [True]}}},
        {"inputs": SLG_FIELDS, "by": "preset", "effect": "overridden", "label": "from preset",
         "when": {"values": {"preset": NAMED_SLG_PRESETS}}},
        {"inputs": SLG_FIELDS, "by": "settings", "effect": "overridden", "label": "from settings",
         "when": {"connected": ["settings"], "values": {"preset": ["from settings"]}}},
    ]


def _lcm_rules() -> list[dict]:
    return [
        {"inputs": ["negative"], "by": "cfg", "effect": "ignored", "label": "unused at cfg 1",
         "when": {"values": {"cfg": [1.0]}}},
        {"inputs": ["lcm_lora"], "by": "strength", "effect": "ignored", "label": "not applied at strength 0",
         "when": {"values": {"strength": [0.0]}}},
    ]


OVERRIDES: dict[str, list[dict]] = {
    "SD35WB_SLGSampler": _slg_rules(["steps", "cfg", "sampler_name", "scheduler"]),
    "SD35WB_SLGGuider": _slg_rules(["cfg"]),
    "SD35WB_SLGLayerExplorer": [
        {"inputs": ["candidates", "start", "end", "gating", "variants_per_call"], "by": "scale", "effect": "ignored",
         "label": "no SLG at scale 0", "when": {"values": {"scale": [0.0]}}},
    ],
    "SD35WB_LCMLoraSampler": _lcm_rules(),
    "SD35WB_LCMStepSweep": _lcm_rules(),
    "SD35WB_LCMLoraPatch": [
        _lcm_rules()[1],
        {"inputs": ["style_strength"], "by": "style_lora", "effect": "ignored", "label": "no style LoRA",
         "when": {"values": {"style_lora": ["none"]}}},
    ],
    "SD35WB_SD35Loader": [
        {"inputs": ["t5_dtype"], "by": "t5xxl", "effect": "ignored", "label": "no T5 selected",
         "when": {"values": {"t5xxl": ["none"]}}},
    ],
    "SD35WB_ZTSNRModelPatch": [
        {"inputs": ["detect_from"], "by": "prediction", "effect": "ignored", "label": "both set on the node",
         "when": {"values": {"prediction": ["v_prediction", "eps"], "zsnr": ["on", "off"]}}},
    ],
    "SD35WB_CheckpointSweep": [
        {"inputs": ["cfg", "steps", "sampler_name", "scheduler", "denoise"], "by": "axes", "effect": "overridden",
         "label": "swept in axes", "when": {"named_in": "axes"}},
        {"inputs": ["positive"], "by": "prompts", "effect": "ignored", "label": "prompts are used",
         "when": {"nonempty": ["prompts"]}},
        {"inputs": ["clip"], "by": "prompts", "effect": "ignored", "label": "no prompts to encode",
         "when": {"empty": ["prompts"]}},
        {"inputs": ["strengths"], "by": "model", "effect": "ignored", "label": "LoRA sweeps only",
         "when": {"disconnected": ["model"]}},
        {"inputs": ["weight_dtype"], "by": "model", "effect": "ignored", "label": "the base model is loaded by you",
         "when": {"connected": ["model"]}},
    ],
}


def payload() -> dict:
    """What GET /sd35wb/overrides answers."""
    return {"version": VERSION, "nodes": OVERRIDES}


def axis_names(text: str) -> list[str]:
    """The axis names in a sweep's axes text (``cfg=3.5,4.5; steps=28,40``), tolerant of bad parts."""
    out = []
    for part in re.split(r"[;\n]", text or ""):
        part = part.strip()
        if part and not part.startswith("#") and "=" in part:
            out.append(part.split("=", 1)[0].strip())
    return out


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _text(v) -> str:
    return v.strip() if isinstance(v, str) else ""


def active(node_id: str, values: dict, connected) -> list[tuple[dict, list[str]]]:
    """The rules of ``node_id`` that hold for these widget ``values`` and ``connected`` inputs, each
    with the inputs it affects (for ``named_in``, only the named ones)."""
    connected = set(connected)
    out = []
    for rule in OVERRIDES.get(node_id, []):
        when = rule["when"]
        if not all(n in connected for n in when.get("connected", [])):
            continue
        if any(n in connected for n in when.get("disconnected", [])):
            continue
        if not all(any(_same(values.get(k), v) for v in allowed) for k, allowed in when.get("values", {}).items()):
            continue
        if not all(_text(values.get(k)) for k in when.get("nonempty", [])):
            continue
        if any(_text(values.get(k)) for k in when.get("empty", [])):
            continue
        targets = list(rule["inputs"])
        if "named_in" in when:
            named = axis_names(values.get(when["named_in"], ""))
            targets = [t for t in targets if t in named]
            if not targets:
                continue
        out.append((rule, targets))
    return out


def _show(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, str):
        return repr(v)
    return str(v)


def report_lines(node_id: str, given: dict, used: dict, connected) -> list[str]:
    """Warning / note lines for a node's report.

    ``given``: the node's widget values as the prompt sent them; ``used``: what ran instead for the
    inputs a rule overrides. An overridden input whose given value differs from the one that ran
    gives a warning (the prompt contradicts what it asked for); an ignored input that was given
    (a widget, or a connected socket) gives a note."""
    lines = []
    for rule, targets in active(node_id, given, connected):
        if rule["effect"] == "overridden":
            diff = [t for t in targets if t in given and t in used and not _same(given[t], used[t])]
            if diff:
                lines.append(f"warning: {', '.join(f'{t}={_show(given[t])}' for t in diff)} on the node did not run: "
                             f"{rule['by']} wins ({rule['label']}): "
                             + ", ".join(f"{t}={_show(used[t])}" for t in diff))
        else:
            shown = [t for t in targets if (t in given and given[t] is not None) or t in connected]
            if shown:
                lines.append(f"note: {', '.join(shown)} has no effect ({rule['label']})")
    return lines
