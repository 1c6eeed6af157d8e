"""Tiny random scoring models in Hugging Face format: a CLIP model (text + vision, the layout of
``openai/clip-vit-large-patch14-336`` at toy width) and a DINOv2 model, written by transformers'
own classes so the reference implementations (torchmetrics, transformers) load the same files.

The CLIP tokenizer is ComfyUI's own copy of OpenAI's (``comfy/sd1_tokenizer``), so prompts tokenise
exactly as with the real model; the config keeps the real model's legacy end-of-text id (2).
"""

from __future__ import annotations

import os
from pathlib import Path

CLIP_SIZE = 336  # SimpleTuner's default evaluation model's input size


def _comfy_tokenizer() -> str:
    import comfy.sd1_clip

    return os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer")


def write_tiny_clip(folder: Path, seed: int = 6) -> Path:  # seed 6: scores on both sides of the clamp at 0
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

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
    tok = CLIPTokenizer.from_pretrained(_comfy_tokenizer())
    ip = CLIPImageProcessor(size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    return folder


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
