"""Tiny LoRA files for the tiny SD1.5 / Vega models, in the key formats seen in the wild.

Shapes come from the model file's safetensors header (no model is built), names from the
host's own diffusers <-> LDM map (``comfy.utils.unet_to_diffusers``), so each file carries one
LoRA pair for every attention / feed-forward / proj / resnet layer of the tiny model:

- ``kohya``: ``lora_unet_<diffusers path with _>.lora_down.weight`` / ``lora_up.weight`` / ``alpha``
  (the published LCM-LoRA files use this form);
- ``kohya_ldm``: ``lora_unet_<LDM path with _>...`` (sd-scripts trained on ComfyUI/A1111 names);
- ``peft``: ``unet.<diffusers module>.lora_A.weight`` / ``lora_B.weight`` (PEFT, diffusers >= 0.24);
- ``diffusers``: ``unet.<diffusers module>.lora.down.weight`` / ``lora.up.weight``.

Needs ``comfy`` importable (the host on ``sys.path``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMATS = ("kohya", "kohya_ldm", "peft", "diffusers")

# diffusers module names a LoRA trains (diffusers' LCM-LoRA training script targets the attention
# projections, feed-forward, proj_in/out and the resnets' convs and time embedding).
_TARGET = re.compile(r"(attn[12]\.to_(q|k|v|out\.0)|ff\.net\.0\.proj|ff\.net\.2|proj_in|proj_out|"
                     r"resnets\.\d+\.(conv1|conv2|time_emb_proj))\.weight$")
# Attention projections only: a much smaller patch, for tests that load the patched Vega often.
_ATTN_ONLY = re.compile(r"attn[12]\.to_(q|k|v|out\.0)\.weight$")


def _header_shapes(model_file: Path) -> dict[str, list[int]]:
    with safe_open(str(model_file), "pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}


def lora_state_dict(model_file: Path, unet_config: dict, fmt: str, rank: int = 4, alpha: float = 4.0,
                    seed: int = 0, scale: float = 0.05, prefix: str = "model.diffusion_model.", targets: str = "all") -> dict:
    """A LoRA for every target layer of the UNet in ``model_file`` (LDM keys under ``prefix``);
    ``targets="attn"`` keeps the attention projections only."""
    import comfy.utils

    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}")
    shapes = _header_shapes(model_file)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for dkey, ldm in sorted(comfy.utils.unet_to_diffusers(unet_config).items()):
        target = _TARGET if targets == "all" else _ATTN_ONLY
        if not target.search(dkey) or prefix + ldm not in shapes:
            continue
        shape = shapes[prefix + ldm]
        out_f, in_rest = shape[0], shape[1:]
        down = scale * torch.randn([rank, *in_rest], generator=g)
        up = scale * torch.randn([out_f, rank] + [1] * (len(shape) - 2), generator=g)
        module = dkey[: -len(".weight")]
        if fmt == "kohya":
            base = "lora_unet_" + module.replace(".", "_")
        elif fmt == "kohya_ldm":
            base = "lora_unet_" + ldm[: -len(".weight")].replace(".", "_")
        else:
            base = "unet." + module
        if fmt in ("kohya", "kohya_ldm"):
            sd[f"{base}.lora_down.weight"], sd[f"{base}.lora_up.weight"] = down, up
            sd[f"{base}.alpha"] = torch.tensor(float(alpha))
        elif fmt == "peft":
            sd[f"{base}.lora_A.weight"], sd[f"{base}.lora_B.weight"] = down, up
        else:
            sd[f"{base}.lora.down.weight"], sd[f"{base}.lora.up.weight"] = down, up
    if not sd:
        raise ValueError(f"no LoRA target layers found in {model_file}")
    return {k: v.to(torch.float16).contiguous() for k, v in sd.items()}


def write_lora(path: Path, model_file: Path, unet_config: dict, fmt: str, **kw) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(lora_state_dict(model_file, unet_config, fmt, **kw), str(tmp), metadata={"sd35wb_tiny": f"lora-{fmt}"})
    tmp.replace(path)
    return path


def full_unet_config(config: dict) -> dict:
    """tools.tiny_models' UNet config with the fields ``unet_to_diffusers`` reads made explicit."""
    cfg = dict(config)
    cfg.setdefault("transformer_depth_middle", 1)
    return cfg
