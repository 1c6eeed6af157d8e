"""Small safetensors files that carry the *key names* of real SD3.5 / UNet / text-encoder files
with tiny shapes, for the header-only inspector and the loader's bad-input tests. numpy only."""

from __future__ import annotations

import hashlib
import http.server
import threading
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
    """CLIP text-model key names; ``hidden`` shows in the token embedding and final norm (what the
    inspector reads), the per-layer matrices stay tiny so even CLIP-G's 32 layers are a few KB."""
    out = {f"{prefix}text_model.embeddings.token_embedding.weight": (4, hidden),
           f"{prefix}text_model.final_layer_norm.weight": (hidden,)}
    for i in range(layers):
        out[f"{prefix}text_model.encoder.layers.{i}.mlp.fc1.weight"] = (32, 8)
    return out


def t5_keys(blocks: int = 24, d_model: int = 8) -> dict:
    out = {"shared.weight": (4, d_model), "encoder.final_layer_norm.weight": (d_model,)}
    for i in range(blocks):
        out[f"encoder.block.{i}.layer.0.SelfAttention.q.weight"] = (8, 8)
        out[f"encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"] = (16, 8)
    return out


def unet_keys(context_dim: int = 768) -> dict:
    p = "model.diffusion_model."
    return {p + "input_blocks.0.0.weight": (8, 4, 3, 3),
            p + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, context_dim)}


class FakeHub:
    """A fake Hugging Face hub on 127.0.0.1: HEAD/GET on /<repo>/resolve/main/<path> answered like
    huggingface.co (X-Repo-Commit, ETag, Content-Length; 403 GatedRepo; 401 RepoNotFound)."""

    def __init__(self, rev: str = "a" * 40):
        self.files: dict[str, bytes | Path] = {}
        self.gated: set[str] = set()
        self.refused: set[str] = set()
        self.auth: list[str] = []
        hub_ = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, body: bool):
                hub_.auth.append(self.headers.get("Authorization", ""))
                repo = "/".join(self.path.lstrip("/").split("/")[:2])
                if repo in hub_.gated:
                    self.send_response(403)
                    self.send_header("X-Error-Code", "GatedRepo")
                    self.send_header("X-Error-Message", "Access to model is restricted.")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if repo in hub_.refused:
                    self.send_response(401)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = hub_.files.get(self.path)
                if isinstance(data, Path):
                    data = data.read_bytes()
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", rev)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):  # noqa: N802
                self._answer(False)

            def do_GET(self):  # noqa: N802
                self._answer(True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo: str, path: str, data: bytes | Path):
        self.files[f"/{repo}/resolve/main/{path}"] = data


    def close(self):
        self.server.shutdown()
        self.server.server_close()
