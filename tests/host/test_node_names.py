"""Host tier: what a user reads in the node search and on the canvas. Every pack input explains
itself in a tooltip, no pack node's name reads like a core node's, and categories share one casing.
Walks the real host's node mappings (INPUT_TYPES as the frontend receives it)."""

from __future__ import annotations

import re

# Inputs whose meaning is obvious from name and socket type on the node they sit on, with why.
NO_TOOLTIP_NEEDED: dict[tuple[str, str], str] = {}

ACRONYMS = {"LCM", "SLG", "SD3.5", "ZTSNR"}


def _ours(host):
    return {k: v for k, v in host.nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("SD35WB_")}


def test_every_pack_input_has_a_tooltip(host):
    missing = []
    for node_id, cls in sorted(_ours(host).items()):
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
                if not str(opts.get("tooltip", "")).strip() and (node_id, name) not in NO_TOOLTIP_NEEDED:
                    missing.append(f"{node_id}.{name}")
    assert not missing, "inputs without a tooltip (add one, or name it in NO_TOOLTIP_NEEDED with why): " + \
        ", ".join(missing)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.split(" (")[0].lower())


def test_no_pack_node_reads_like_a_core_node(host):
    display = host.nodes.NODE_DISPLAY_NAME_MAPPINGS
    core = {}
    for k in host.nodes.NODE_CLASS_MAPPINGS:
        if not k.startswith(("SD35WB_", "SD35WBTest_")):
            core[_norm(k)] = k
            core[_norm(display.get(k, k))] = k
    clashes = {k: core[_norm(display.get(k, k))] for k in _ours(host) if _norm(display.get(k, k)) in core}
    assert not clashes, f"pack nodes a user cannot tell from core's in the search: {clashes}"


def test_categories_share_one_casing(host):
    cats = {cls.GET_SCHEMA().category if hasattr(cls, "GET_SCHEMA") else cls.CATEGORY for cls in _ours(host).values()}
    for cat in cats:
        top, *rest = cat.split("/")
        assert top == "SD3.5 Workbench", cat
        for part in rest:  # sentence case like core's own ("sampling", "advanced/model"); acronyms stay
            words = [w for w in part.split() if w not in ACRONYMS]
            assert all(w == w.lower() for w in words), f"{cat}: '{part}' is not lower case"
    assert not any(c.endswith("/schedulers") for c in cats
                   if c in {_ours(host)[n].GET_SCHEMA().category for n in ("SD35WB_ZTSNRGuider", "SD35WB_RescaleCFG",
                                                                            "SD35WB_ZTSNRModelPatch")}), \
        "guider and model-patch nodes are not schedulers"
