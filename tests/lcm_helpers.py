"""Tiny LoRA files for the LCM tests, written once per session into the ``user_models/loras`` folder
(registered in both the in-process host and the server), and a pre-populated Hugging Face cache."""

from __future__ import annotations

import shutil
from pathlib import Path

from tools import lcm_fixtures, tiny_models

MODELS = {"sd15": ("tiny-sd15.safetensors", tiny_models.SD15_UNET), "vega": ("tiny-vega.safetensors", tiny_models.VEGA_UNET)}


def lora_name(model: str, fmt: str, kind: str = "lcm") -> str:
    return f"tiny-{model}-{kind}-{fmt}.safetensors"


def write_loras(tiny_root: Path, user_models: Path) -> dict[tuple[str, str, str], str]:
    """Every (model, format) LCM LoRA plus a differently seeded "style" LoRA, and attention-only
    ("lcmattn", "styleattn") ones that patch fast; returns ``{(model, format, kind): name in loras/}``."""
    out = {}
    for model, (fname, cfg) in MODELS.items():
        for fmt in lcm_fixtures.FORMATS:
            for kind, seed, targets in (("lcm", 1, "all"), ("style", 2, "all"), ("lcmattn", 1, "attn"),
                                        ("styleattn", 2, "attn")):
                name = lora_name(model, fmt, kind)
                path = user_models / "loras" / name
                if not path.exists():
                    lcm_fixtures.write_lora(path, tiny_root / "diffusion_models" / fname,
                                            lcm_fixtures.full_unet_config(cfg), fmt, seed=seed, targets=targets)
                out[(model, fmt, kind)] = name
    return out


def populate_hf_cache(cache: Path, repo_id: str, filename: str, src: Path, rev: str = "0123456789abcdef") -> Path:
    """Lay a file out the way huggingface_hub's cache does: models--org--name/{refs/main,snapshots/<rev>/file}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    shutil.copyfile(src, snap / filename)
    return snap / filename


def workflow_rule(loras: dict[tuple[str, str, str], str]):
    """Extra rule for the tiny-model remap of the LCM example workflows (tiny Vega = the SDXL family):
    the LCM / style LoRAs become the tiny Vega LoRA files (attention-only: quick to patch), and the patch node's CLIP input goes
    (the tiny models have no text encoder; prompts become SD35WBTest_Conditioning)."""

    def rule(nid: str, node: dict, family: str) -> None:
        model = "vega" if family == "sdxl" else "sd15"
        inp = node["inputs"]
        if node["class_type"] == "SD35WBTest_Conditioning" and isinstance(inp.get("seed"), int):
            inp["seed"] %= 2**31  # tools.tiny_remap hashes prompt text to up to 2**32; the test node stops at 2**31 - 1
        if node["class_type"] in ("SD35WB_LCMLoraSampler", "SD35WB_LCMLoraPatch", "SD35WB_LCMStepSweep"):
            inp["lcm_lora"] = loras[(model, "kohya", "lcmattn")]
        if node["class_type"] == "SD35WB_LCMLoraPatch":
            inp.pop("clip", None)
            if inp.get("style_lora", "none") != "none":
                inp["style_lora"] = loras[(model, "peft", "styleattn")]

    return rule

