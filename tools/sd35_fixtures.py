"""Real-size random text encoders for the SD3.5 loader tests, built with ComfyUI's own classes.

ComfyUI builds its CLIP text models from fixed configs, so a text-encoder file cannot be made
small: this writes a CLIP-L (``comfy/sd1_clip_config.json``: hidden 768, 12 layers, about 123M
parameters, 246 MB in fp16) with deterministic random weights, cached between runs in a folder
keyed by this file's content (next to the tiny models). A CLIP-G (``clip_config_bigg.json``: hidden
1280, 32 layers, about 695M parameters, 1.4 GB in fp16) is built the same way for the test of all
three slots. T5-XXL (9.5 GB) is left out to keep the test suite inside its time budget (ComfyUI's
SD3 text encoder pads a missing encoder with zeros, as SD3.5 itself allows).

Needs ``comfy`` importable (the host on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from tools.tiny_models import _atomic_save, _randomise


def cache_root() -> Path:
    base = os.environ.get("SD35WB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sd35-workbench")
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return Path(base) / f"sd35-fixtures-{digest}"


def build_clip_l(seed: int = 5, dtype=torch.float16):
    """ComfyUI's CLIP-L text model (the one SD3's text encoder uses) with random weights."""
    import comfy.ops
    from comfy import sd1_clip

    m = sd1_clip.SDClipModel(device="cpu", dtype=torch.float32, layer="hidden", layer_idx=-2,
                             layer_norm_hidden_state=False, return_projected_pooled=False,
                             model_options={"custom_operations": comfy.ops.disable_weight_init})
    _randomise(m.transformer, seed)
    return m.transformer.to(dtype)


def clip_l_file() -> Path:
    """Path of a cached random CLIP-L ``clip_l.safetensors`` (keys ``text_model.*`` like the real file)."""
    path = cache_root() / "text_encoders" / "clip_l.safetensors"
    if not path.exists():
        sd = {k: v.contiguous() for k, v in build_clip_l().state_dict().items()}
        _atomic_save(sd, path, {"sd35wb_fixture": "random CLIP-L"})
    return path


def build_clip_g(seed: int = 6, dtype=torch.float16):
    """ComfyUI's CLIP-G (bigG) text model, with its text projection, with random weights."""
    import comfy.ops
    from comfy import sdxl_clip

    m = sdxl_clip.SDXLClipG(device="cpu", dtype=torch.float32,
                            model_options={"custom_operations": comfy.ops.disable_weight_init})
    _randomise(m.transformer, seed)
    return m.transformer.to(dtype)


def clip_g_file() -> Path:
    """Path of a cached random CLIP-G ``clip_g.safetensors`` (keys ``text_model.*`` + ``text_projection``)."""
    path = cache_root() / "text_encoders" / "clip_g.safetensors"
    if not path.exists():
        model = build_clip_g()
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        del model
        _atomic_save(sd, path, {"sd35wb_fixture": "random CLIP-G"})
    return path


if __name__ == "__main__":
    print(clip_l_file())
