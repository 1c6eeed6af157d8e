"""Small safetensors files that carry the *key names* of real SD3.5 / UNet / text-encoder files
with tiny shapes, for the header-only inspector and the loader's bad-input tests. numpy only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def write(path: Path, shapes: dict[str, tuple], dtype=np.float16, metadata: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(s, dtype=dtype) for k, s in shapes.items()}, str(path), metadata=metadata)
    return path


def mmdit_keys(blocks: int, attn2=(), qk_norm=True, prefix="model.diffusion_model.", hidden=8) -> dict:
    out = {f"{prefix}x_embedder.proj.weight": (hidden, 16, 2, 2), f"{prefix}pos_embed": (1, 16, hidden),
           f"{prefix}context_embedder.weight": (hidden, 4096)}
    for i in range(blocks):
        b = f"{prefix}joint_blocks.{i}."
        out[b + "context_block.attn.qkv.weight"] = (3 * hidden, hidden)
        out[b + "x_block.attn.qkv.weight"] = (3 * hidden, hidden)
        if qk_norm:
            out[b + "x_block.attn.ln_q.weight"] = (hidden // 2,)
        if i in attn2:
            out[b + "x_block.attn2.qkv.weight"] = (3 * hidden, hidden)
    return out


def diffusers_sd3_keys(blocks: int, attn2=(), qk_norm=True, hidden=8) -> dict:
    out = {"pos_embed.proj.weight": (hidden, 16, 2, 2), "context_embedder.weight": (hidden, 4096)}
    for i in range(blocks):
        b = f"transformer_blocks.{i}."
        out[b + "attn.to_q.weight"] = (hidden, hidden)
        if qk_norm:
            out[b + "attn.norm_q.weight"] = (hidden // 2,)
        if i in attn2:
            out[b + "attn2.to_q.weight"] = (hidden, hidden)
    return out


def clip_keys(layers: int, hidden: int = 8, prefix: str = "") -> dict:
    out = {f"{prefix}text_model.embeddings.token_embedding.weight": (16, hidden),
           f"{prefix}text_model.final_layer_norm.weight": (hidden,)}
    for i in range(layers):
        out[f"{prefix}text_model.encoder.layers.{i}.mlp.fc1.weight"] = (hidden * 4, hidden)
    return out


def t5_keys(blocks: int = 24, d_model: int = 8) -> dict:
    out = {"shared.weight": (16, d_model), "encoder.final_layer_norm.weight": (d_model,)}
    for i in range(blocks):
        out[f"encoder.block.{i}.layer.0.SelfAttention.q.weight"] = (d_model, d_model)
        out[f"encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"] = (d_model * 2, d_model)
    return out


def unet_keys(context_dim: int = 768) -> dict:
    p = "model.diffusion_model."
    return {p + "input_blocks.0.0.weight": (8, 4, 3, 3),
            p + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, context_dim)}
