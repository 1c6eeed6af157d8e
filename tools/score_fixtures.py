"""Tiny random scoring models in Hugging Face format: a CLIP model (text + vision, the layout of
``openai/clip-vit-large-patch14-336`` at toy width) and a DINOv2 model, written by transformers'
own classes so the reference implementations (torchmetrics, transformers) load the same files.

The CLIP tokenizer is ComfyUI's own copy of OpenAI's (``comfy/sd1_tokenizer``), so prompts tokenise
exactly as with the real model; the config keeps the real model's legacy end-of-text id (2).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CLIP_SIZE = 336  # SimpleTuner's default evaluation model's input size


def _comfy_tokenizer() -> str:
    import comfy.sd1_clip

    return os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer")


def write_tiny_clip(folder: Path, seed: int = 6) -> Path:  # seed 6: scores on both sides of the clamp at 0
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return folder
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                           image_size=CLIP_SIZE, patch_size=14, hidden_act="quick_gelu"),
        projection_dim=32)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():  # larger projections than the default init, so the scores spread over 0-100
        model.visual_projection.weight.mul_(8.0)
        model.text_projection.weight.mul_(8.0)
    model.save_pretrained(folder, safe_serialization=True)
    # the files the real repo publishes: preprocessor_config.json and the slow tokenizer's vocab / merges
    # (a newer transformers' processor save_pretrained writes other names)
    CLIPImageProcessor(size={"shortest_edge": CLIP_SIZE},
                       crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE}).save_pretrained(folder)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(os.path.join(_comfy_tokenizer(), name), folder / name)
    CLIPProcessor.from_pretrained(folder)  # loads as the real one does
    return folder


def seed_hub_cache(cache_dir: Path, repo: str = "openai/clip-vit-large-patch14-336") -> Path:
    """The tiny CLIP placed in a Hugging Face hub cache as ``repo`` (what a SimpleTuner user who ran its CLIP
    evaluation already has): ``models--<org>--<name>/refs/main`` and ``snapshots/<rev>/<files>``."""
    root = Path(cache_dir) / f"models--{repo.replace('/', '--')}"
    rev = "0" * 40
    snap = root / "snapshots" / rev
    if not (snap / "model.safetensors").is_file():
        src = write_tiny_clip(Path(cache_dir) / ".tiny-clip-src")
        snap.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.name != "processor_config.json":
                shutil.copyfile(f, snap / f.name)
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / "main").write_text(rev)
    return snap


def write_tiny_dino(folder: Path, seed: int = 1) -> Path:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return folder
    torch.manual_seed(seed)
    # initializer_range 0.3 (transformers' default 0.02): at toy width the default gives every image nearly the
    # same embedding (1 - cos ~ 3e-4 between unrelated images); 0.3 separates them (~0.3) as a trained model does
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=518, patch_size=14,
                       mlp_ratio=4, layerscale_value=1.0, initializer_range=0.3)
    Dinov2Model(cfg).eval().save_pretrained(folder, safe_serialization=True)
    return folder


def write_training_images(folder: Path, n: int = 4, size: int = 64, seed: int = 3) -> list[Path]:
    """A few distinct pictures (smooth colour fields) standing in for a dataset."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    y, x = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        a = rng.uniform(0, 1, (3, 3))
        img = np.stack([np.sin(6 * (a[c, 0] * x + a[c, 1] * y) + 6 * a[c, 2]) for c in range(3)], -1) * 0.5 + 0.5
        p = folder / f"train_{i:03d}.png"
        Image.fromarray((img * 255).astype(np.uint8)).save(p)
        out.append(p)
    return out


# ---------------------------------------------------------------------------------------------
# Real sizes, random weights (bench/sweep_scores.py): SimpleTuner's default evaluation model's shapes and
# DINOv2-large's, so scoring costs what it costs with the published files.

# openai/clip-vit-large-patch14-336's config.json (text 12 x 768, vision 24 x 1024, patch 14 at 336 px, projection 768)
REAL_CLIP = dict(
    text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                     bos_token_id=0, eos_token_id=2, pad_token_id=1),
    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=CLIP_SIZE, patch_size=14, hidden_act="quick_gelu"),
    projection_dim=768)
# facebook/dinov2-large's config.json
REAL_DINO = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, image_size=518,
                 patch_size=14, layerscale_value=1.0, use_swiglu_ffn=False)
REAL_CLIP_DIR = "clip-vit-large-patch14-336"
REAL_DINO_DIR = "dinov2-large"


def real_cache_root() -> Path:
    """Beside tools/real_models.py's cache, keyed by this file's content (a change here rebuilds)."""
    import hashlib

    from tools import real_models

    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return real_models.cache_root().parent / f"scoring-realsize-{digest}"


def _save_real(model, folder: Path) -> Path:
    """Save into a temporary folder, then rename: an interrupted build never leaves a half folder behind."""
    import shutil

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    return tmp


def write_real_clip(folder: Path, seed: int = 6) -> Path:
    """CLIP ViT-L/14-336 (428M parameters, 1.7 GB fp32 as published), random weights, Hugging Face format."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return folder
    torch.manual_seed(seed)
    tmp = _save_real(CLIPModel(CLIPConfig(**REAL_CLIP)).eval(), folder)
    tok = CLIPTokenizer.from_pretrained(_comfy_tokenizer())
    ip = CLIPImageProcessor(size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder


def write_real_dino(folder: Path, seed: int = 1) -> Path:
    """DINOv2-large (304M parameters, 1.2 GB fp32 as published), random weights, Hugging Face format."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return folder
    torch.manual_seed(seed)
    os.replace(_save_real(Dinov2Model(Dinov2Config(**REAL_DINO)).eval(), folder), folder)
    return folder


def real_scoring_models(root: Path | None = None) -> Path:
    """Build (once) both real-size scoring models under one folder (register it as a clip_vision folder:
    ``<REAL_CLIP_DIR>/model.safetensors``, ``<REAL_DINO_DIR>/model.safetensors``); return it."""
    root = Path(root) if root else real_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    write_real_clip(root / REAL_CLIP_DIR)
    write_real_dino(root / REAL_DINO_DIR)
    return root
