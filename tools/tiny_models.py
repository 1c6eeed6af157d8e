"""Tiny random-weight models built with ComfyUI's own model classes.

The host's own detection (``comfy.model_detection``) recognises every file written here as the
real family: SD3 (MMDiT-X, RMS qk-norm, context 4096, pooled 2048), SD1.5 and the SDXL family
(Segmind Vega's shape, the smallest SDXL-family shape the host knows). Weights are deterministic
for a seed, and the files are cached between runs in a folder keyed by this file's content.

Needs ``comfy`` importable (``tools.host.bootstrap()`` first); used by the tests, ``bench/`` and the demo.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

SD3_DEPTH = 4  # hidden 256, 4 heads, 4 joint blocks (file detection ties blocks to width)
SD3_ATTN2_LAYERS = (0, 1)  # MMDiT-X dual attention on the first half, like Medium's 13 of 24
SD3_POS_EMBED_MAX = 64  # latent side up to 128 -> 1024 px

CACHE_VERSION = 1


def cache_root() -> Path:
    """SD35WB_TINY_CACHE, else the host's cache folder (SD35WB_CACHE, else ~/.cache/sd35-workbench).

    The tiny models get their own override so a run can start with none built (the demo's cold-path
    test) while keeping the 6 GB host."""
    base = os.environ.get("SD35WB_TINY_CACHE") or os.environ.get("SD35WB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sd35-workbench"
    )
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return Path(base) / f"tiny-models-{digest}"


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.02) -> None:
    """ComfyUI's ops skip weight init; give every tensor small deterministic values instead."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.state_dict(keep_vars=True).items()):
            if not p.is_floating_point():
                continue
            if name.endswith(("ln_q.weight", "ln_k.weight", "norm.weight")) or ".norm" in name and name.endswith("weight"):
                p.copy_(1.0 + scale * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------------------------------------
# SD3 / SD3.5 (MMDiT)


def sd3_unet_config(depth: int = SD3_DEPTH, num_blocks: int | None = None,
                    attn2_layers=SD3_ATTN2_LAYERS, pos_embed_max_size: int = SD3_POS_EMBED_MAX) -> dict:
    """The config ComfyUI's detection derives from an SD3.5-Medium-shaped file of this width."""
    cfg = {
        "in_channels": 16,
        "patch_size": 2,
        "out_channels": 16,
        "depth": depth,
        "input_size": None,
        "adm_in_channels": 2048,
        "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64 * depth}},
        "num_patches": pos_embed_max_size * pos_embed_max_size,
        "pos_embed_max_size": pos_embed_max_size,
        "qk_norm": "rms",
        "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": list(attn2_layers),
    }
    if num_blocks is not None:
        cfg["num_blocks"] = num_blocks
    return cfg


def build_sd3_mmdit(seed: int = 0, dtype=torch.float32, **config_kw) -> torch.nn.Module:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

    cfg = sd3_unet_config(**config_kw)
    model = OpenAISignatureMMDITWrapper(**cfg, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    _randomise(model, seed)
    return model.to(dtype)


def sd3_model_patcher(num_blocks: int = 24, depth: int = 1, attn2_layers=tuple(range(13)), seed: int = 0,
                      dtype=torch.float32):
    """An in-process SD3 ModelPatcher with an explicit block count (a file cannot carry one: the
    host's detection ties blocks to width). Used where SD3.5 Medium's 24-block structure matters."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    cfg = sd3_unet_config(depth=depth, num_blocks=num_blocks, attn2_layers=attn2_layers)
    sd = {f"model.diffusion_model.{k}": v for k, v in build_sd3_mmdit(seed, dtype, **{
        "depth": depth, "num_blocks": num_blocks, "attn2_layers": attn2_layers}).state_dict().items()}
    model_config = comfy.supported_models.SD3(cfg)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model(sd, "model.diffusion_model.", device="cpu")
    model.load_model_weights(sd, "model.diffusion_model.")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def mmdit_to_diffusers_state_dict(comfy_sd: dict, depth: int, num_blocks: int | None = None) -> dict:
    """Inverse of ``comfy.utils.mmdit_to_diffusers``: ComfyUI MMDiT keys -> diffusers keys."""
    import comfy.utils

    key_map = comfy.utils.mmdit_to_diffusers({"depth": depth, "num_blocks": num_blocks or depth})
    out = {}
    for dkey, spec in key_map.items():
        if isinstance(spec, str):
            if spec in comfy_sd:
                out[dkey] = comfy_sd[spec]
        elif spec[1] is None:  # (comfy_key, None, transform); swap_scale_shift is its own inverse
            if spec[0] in comfy_sd:
                out[dkey] = spec[2](comfy_sd[spec[0]])
        else:  # (comfy_key, (dim, start, length)): one slice of a fused qkv
            ckey, (dim, start, length) = spec
            if ckey in comfy_sd:
                out[dkey] = comfy_sd[ckey].narrow(dim, start, length)
    return {k: v.contiguous() for k, v in out.items()}


def sd3_diffusers_config(depth: int = SD3_DEPTH, attn2_layers=SD3_ATTN2_LAYERS,
                         pos_embed_max_size: int = SD3_POS_EMBED_MAX, num_blocks: int | None = None) -> dict:
    return {
        "_class_name": "SD3Transformer2DModel",
        "_diffusers_version": "0.35.0",
        "sample_size": 128,
        "patch_size": 2,
        "in_channels": 16,
        "num_layers": num_blocks or depth,
        "attention_head_dim": 64,
        "num_attention_heads": depth,
        "joint_attention_dim": 4096,
        "caption_projection_dim": 64 * depth,
        "pooled_projection_dim": 2048,
        "out_channels": 16,
        "pos_embed_max_size": pos_embed_max_size,
        "dual_attention_layers": list(attn2_layers),
        "qk_norm": "rms_norm",
    }


def write_sd3(path: Path, seed: int = 0, dtype=torch.float16) -> Path:
    model = build_sd3_mmdit(seed, dtype)
    sd = {f"model.diffusion_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    _atomic_save(sd, path, {"sd35wb_tiny": "sd3.5-medium-shaped"})
    return path


def write_sd3_diffusers(folder: Path, seed: int = 0, dtype=torch.float16) -> Path:
    """SimpleTuner / diffusers layout: ``transformer/diffusion_pytorch_model.safetensors`` + config."""
    model = build_sd3_mmdit(seed, dtype)
    dsd = mmdit_to_diffusers_state_dict(model.state_dict(), SD3_DEPTH)
    tdir = folder / "transformer"
    tdir.mkdir(parents=True, exist_ok=True)
    _atomic_save(dsd, tdir / "diffusion_pytorch_model.safetensors", {"format": "pt"})
    (tdir / "config.json").write_text(json.dumps(sd3_diffusers_config(), indent=2))
    return tdir / "diffusion_pytorch_model.safetensors"


# ---------------------------------------------------------------------------------------------
# SD1.5 and SDXL family (UNet)

SD15_UNET = dict(
    in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1], channel_mult=(1,),
    transformer_depth=[1], transformer_depth_output=[1, 1], transformer_depth_middle=1,
    context_dim=768, num_heads=8, num_head_channels=-1, use_linear_in_transformer=False,
    use_spatial_transformer=True, legacy=False, adm_in_channels=None,
)

VEGA_UNET = dict(
    in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2], channel_mult=(1, 2, 4),
    transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
    transformer_depth_middle=-2, context_dim=2048, num_heads=-1, num_head_channels=64,
    use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False, adm_in_channels=2816,
    num_classes="sequential",
)


def build_unet(config: dict, seed: int, dtype=torch.float32) -> torch.nn.Module:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    model = UNetModel(image_size=32, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init, **config)
    _randomise(model, seed)
    return model.to(dtype)


def write_unet(path: Path, config: dict, seed: int, dtype=torch.float16, extra: dict | None = None) -> Path:
    model = build_unet(config, seed, dtype)
    sd = {f"model.diffusion_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    sd.update(extra or {})
    _atomic_save(sd, path, {"sd35wb_tiny": "unet"})
    return path


# ---------------------------------------------------------------------------------------------
# TAESD-style VAEs so VAELoader can decode without real VAE weights


def write_taesd(folder: Path, prefix: str, latent_channels: int, seed: int) -> list[Path]:
    from comfy.taesd.taesd import Decoder, Encoder

    out = []
    for i, (part, ctor) in enumerate((("encoder", Encoder), ("decoder", Decoder))):
        m = ctor(latent_channels=latent_channels)
        _randomise(m, seed + i, scale=0.05)
        p = folder / f"{prefix}_{part}.safetensors"
        _atomic_save({k: v.contiguous() for k, v in m.state_dict().items()}, p, None)
        out.append(p)
    return out


def _atomic_save(sd: dict, path: Path, metadata: dict | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata=metadata)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------


def build_all(root: Path | None = None) -> Path:
    """Write (once) every tiny model under ``root`` in ComfyUI's models/ layout; return root.

    Layout: diffusion_models/{tiny-sd35m,tiny-sd15,tiny-vega}.safetensors,
    diffusers/tiny-sd35m/transformer/..., vae_approx/taesd*.safetensors.
    """
    root = Path(root) if root else cache_root()
    stamp = root / f".complete-v{CACHE_VERSION}"
    if stamp.exists():
        return root
    # Several processes may build at once (two test runs, a test and `make demo`): each writes its
    # own folder and the first to finish publishes it; the others drop theirs.
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".building-", dir=root.parent))
    dm = tmp / "diffusion_models"
    write_sd3(dm / "tiny-sd35m.safetensors", seed=1)
    write_sd3_diffusers(tmp / "diffusers" / "tiny-sd35m", seed=1)
    write_unet(dm / "tiny-sd15.safetensors", SD15_UNET, seed=2)
    write_unet(dm / "tiny-vega.safetensors", VEGA_UNET, seed=3)
    va = tmp / "vae_approx"
    write_taesd(va, "taesd", 4, seed=10)
    write_taesd(va, "taesdxl", 4, seed=12)
    write_taesd(va, "taesd3", 16, seed=14)
    (tmp / stamp.name).write_text("ok\n")
    with contextlib.suppress(OSError):  # lost the race: another process published first
        os.rename(tmp, root)  # publishes only complete folders, never over an existing one
    shutil.rmtree(tmp, ignore_errors=True)
    if not stamp.exists():
        raise RuntimeError(f"{root} exists but is incomplete (no {stamp.name}): delete it and run again")
    return root


def model_dirs(root: Path) -> dict[str, list[Path]]:
    """ComfyUI folder name -> folders inside ``root`` (the shape ``tools.comfy_server.prepare_base`` takes)."""
    return {"diffusion_models": [root / "diffusion_models"], "vae_approx": [root / "vae_approx"]}


if __name__ == "__main__":
    print(build_all())
