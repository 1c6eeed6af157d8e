"""SimpleTuner output_dir layouts for tests and the linker bench.

Two kinds:

- ``fake_*``: tiny valid safetensors files (numpy, no torch) in SimpleTuner's folder layout: for
  layout, linking and pruning logic, and the 1,000-checkpoint bench.
- ``diffusers_*``: written by the libraries SimpleTuner itself saves with (diffusers
  ``SD3Transformer2DModel.save_pretrained``, sharded EMA with a small ``max_shard_size``; peft +
  ``StableDiffusion3Pipeline.save_lora_weights`` for LoRA), with the tiny SD3.5-Medium-shaped
  weights of ``tools.tiny_models`` so the host loads and renders them.

Layout facts (SimpleTuner 4.10.1): see /docs/simpletuner.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file as save_np

MARKERS = ("checkpoint_manifest.json", ".guard")
ACCELERATE_FILES = ("optimizer.bin", "scheduler.bin", "random_states_0.pkl")


def write_fake_safetensors(path: Path, seed: int = 0, n: int = 2, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_np({f"w{i}": rng.standard_normal(size).astype(np.float16) for i in range(n)}, str(path),
            metadata={"format": "pt"})
    return path


def write_empty_safetensors(path: Path, seed: int = 0) -> Path:
    """The smallest valid safetensors file: a header with no tensors (for the 1,000-checkpoint bench)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = b'{"__metadata__":{"format":"pt"}}'
    blob += b" " * (-(8 + len(blob)) % 8)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob)
    return path


def write_sharded_np(folder: Path, tensors: dict[str, np.ndarray], per_shard: int) -> Path:
    """diffusers' sharded layout from numpy tensors: ``per_shard`` tensors per file + the index."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    groups = [names[i:i + per_shard] for i in range(0, len(names), per_shard)]
    weight_map = {}
    for k, group in enumerate(groups, 1):
        fname = f"diffusion_pytorch_model-{k:05d}-of-{len(groups):05d}.safetensors"
        save_np({n: tensors[n] for n in group}, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in group})
    total = sum(t.nbytes for t in tensors.values())
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return index


def _finish_checkpoint(ck: Path, step: int, markers: bool, accelerate: bool) -> None:
    if accelerate:
        for name in ACCELERATE_FILES:
            (ck / name).write_bytes(b"accelerate state: never loaded by the linker\n")
        (ck / "training_state-0.json").write_text(json.dumps({"global_step": step}))
    if markers:
        (ck / "checkpoint_manifest.json").write_text(json.dumps({"step": step, "files": sorted(os.listdir(ck))}))
        (ck / ".guard").write_text("")


def fake_checkpoint(out: Path, step: int, kind: str = "full", markers: bool = True, ema: str | None = None,
                    suffix: str = "", model_dir: str = "transformer", accelerate: bool = True,
                    writer=write_fake_safetensors) -> Path:
    """``checkpoint-<step><suffix>/`` with full (``<model_dir>/``) or LoRA weights, optional EMA
    ("single", "sharded", or "lora") and SimpleTuner's completion markers."""
    ck = out / f"checkpoint-{step}{suffix}"
    if kind == "full":
        writer(ck / model_dir / "diffusion_pytorch_model.safetensors", seed=step)
        (ck / model_dir / "config.json").write_text("{}")
    elif kind == "lora":
        writer(ck / "pytorch_lora_weights.safetensors", seed=step)
    if ema == "single":
        write_fake_safetensors(ck / f"{model_dir}_ema" / "diffusion_pytorch_model.safetensors", seed=step + 1)
    elif ema == "sharded":
        rng = np.random.default_rng(step)
        write_sharded_np(ck / f"{model_dir}_ema", {f"b{i}.w": rng.standard_normal((4, 3)).astype(np.float32)
                                                   for i in range(5)}, per_shard=2)
        (ck / f"{model_dir}_ema" / "ema_model.pt").write_bytes(b"\x80\x04 a pickle: never loaded")
    elif ema == "lora":
        write_fake_safetensors(ck / "ema" / "pytorch_lora_weights.safetensors", seed=step + 2)
    _finish_checkpoint(ck, step, markers, accelerate)
    return ck


# ---------------------------------------------------------------------------------------------
# Written by diffusers / peft (needs torch, diffusers, peft and the host on sys.path)

_BASE: dict = {}


def _diffusers_sd3(seed: int, dtype):
    """A diffusers SD3Transformer2DModel with the tiny model's weights, perturbed per seed."""
    import torch
    from diffusers import SD3Transformer2DModel

    from tools import tiny_models as tm

    if "sd" not in _BASE:
        _BASE["sd"] = tm.mmdit_to_diffusers_state_dict(tm.build_sd3_mmdit(1).state_dict(), tm.SD3_DEPTH)
    cfg = {k: v for k, v in tm.sd3_diffusers_config().items() if not k.startswith("_")}
    model = SD3Transformer2DModel(**cfg)
    g = torch.Generator().manual_seed(seed)
    sd = {k: v + 0.02 * torch.randn(v.shape, generator=g) if v.ndim >= 2 else v for k, v in _BASE["sd"].items()}
    model.load_state_dict(sd, strict=True)
    return model.to(dtype)


def diffusers_checkpoint(out: Path, step: int, ema: str | None = None, lora: bool = False, markers: bool = True,
                         ema_shard_size: str = "10MB") -> Path:
    """A SimpleTuner-like full fine-tune checkpoint saved through diffusers.

    ``transformer/`` in fp16 as one file (SimpleTuner merges the model's shards); ``ema="sharded"``
    adds ``transformer_ema/`` in fp32 saved with a small ``max_shard_size`` (as SimpleTuner's
    10GB limit shards a real model) next to an ``ema_model.pt``."""
    import torch

    ck = out / f"checkpoint-{step}"
    _diffusers_sd3(step, torch.float16).save_pretrained(ck / "transformer", safe_serialization=True,
                                                        max_shard_size="10GB")
    if ema:
        _diffusers_sd3(step + 7, torch.float32).save_pretrained(
            ck / "transformer_ema", safe_serialization=True,
            max_shard_size=ema_shard_size if ema == "sharded" else "10GB")
        (ck / "transformer_ema" / "ema_model.pt").write_bytes(b"\x80\x04 a pickle: never loaded")
    if lora:
        diffusers_lora(ck, seed=step)
    _finish_checkpoint(ck, step, markers, accelerate=True)
    return ck


def diffusers_lora(folder: Path, seed: int = 0, rank: int = 4) -> Path:
    """``pytorch_lora_weights.safetensors`` as SimpleTuner saves it: peft adapter on the diffusers
    transformer, ``get_peft_model_state_dict``, ``StableDiffusion3Pipeline.save_lora_weights``
    (PEFT keys ``transformer.<module>.lora_A.weight``)."""
    import torch
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model = _diffusers_sd3(seed, torch.float32)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusion3Pipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(model))
    return folder / "pytorch_lora_weights.safetensors"


def tiny_example_run(out: Path, model: Path, steps=(500, 1000)) -> Path:
    """A finished SimpleTuner-shaped run whose checkpoints are copies of one tiny model file: what the
    example workflows' linker node points at when they run on the test host."""
    import shutil

    for step in steps:
        ck = out / f"checkpoint-{step}"
        dst = ck / "transformer" / "diffusion_pytorch_model.safetensors"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model, dst)
            _finish_checkpoint(ck, step, markers=True, accelerate=False)
    return out
