"""SD3.5 at its real structure, with random weights: files that carry Stability's key names and
shapes exactly, written tensor by tensor so building one never holds the model in RAM.

Shapes come from ComfyUI's own classes built on the ``meta`` device (``OpenAISignatureMMDITWrapper``
with the configs of ``../shared/README.md``; the VAE's ``Encoder`` / ``Decoder`` with SD3's
16-channel ddconfig), so a file here is what the host's detection and loader see in a real one:

- ``checkpoints/sd3.5_medium.safetensors``: MMDiT-X, width 1536, 24 joint blocks, attn2 on 0-12,
  RMS qk-norm, ``pos_embed_max_size`` 384, about 2.5B parameters, fp16, with the VAE inside under
  ``first_stage_model.`` (Stability's single file);
- ``diffusers/sd3.5_medium/transformer/``: the same weights in diffusers / SimpleTuner layout
  (``comfy.utils.mmdit_to_diffusers`` inverted, ``config.json`` as published);
- ``checkpoints/sd3.5_large.safetensors``: width 2432, 38 blocks, no attn2, ``pos_embed_max_size``
  192, about 8.1B parameters, written as float8_e4m3fn (8 GB) with the VAE in fp16; and
  ``sd3.5_large_turbo.safetensors``, the Turbo file name (a hard link: Turbo has Large's shapes).

Cached between runs in a folder keyed by this file's content (like ``tools/tiny_models.py``), never
committed. Needs ``comfy`` importable (``tools.host.bootstrap()`` first).

    python -m tools.real_models medium|large|all
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

MEDIUM = dict(hidden=1536, blocks=24, attn2=tuple(range(13)), pos_embed_max_size=384)
LARGE = dict(hidden=2432, blocks=38, attn2=(), pos_embed_max_size=192)
MEDIUM_FILE = "sd3.5_medium.safetensors"
LARGE_FILE = "sd3.5_large.safetensors"
TURBO_FILE = "sd3.5_large_turbo.safetensors"
CHUNK = 1 << 24  # elements generated at a time: 64 MB of fp32 scratch, whatever the tensor's size
ST_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.float8_e4m3fn: "F8_E4M3"}


def cache_root() -> Path:
    base = os.environ.get("SD35WB_REALSIZE_CACHE") or os.environ.get("SD35WB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sd35-workbench")
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return Path(base) / f"realsize-{digest}"


# ---------------------------------------------------------------------------------------------
# Shapes from ComfyUI's own classes (meta device: no memory)


def mmdit_config(hidden: int, blocks: int, attn2, pos_embed_max_size: int) -> dict:
    """The unet config ComfyUI's detection derives from a real SD3.5 file of this structure."""
    from tools.tiny_models import sd3_unet_config

    assert hidden == 64 * blocks, "ComfyUI's detection ties the block count to the width (depth = hidden // 64)"
    return sd3_unet_config(depth=blocks, attn2_layers=attn2, pos_embed_max_size=pos_embed_max_size)


def mmdit_shapes(spec: dict) -> dict[str, tuple[int, ...]]:
    """``model.diffusion_model.*`` key -> shape, from ComfyUI's MMDiT built on the meta device."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

    cfg = mmdit_config(**spec)
    with torch.device("meta"):
        m = OpenAISignatureMMDITWrapper(**cfg, dtype=torch.float32, device="meta", operations=comfy.ops.disable_weight_init)
    return {f"model.diffusion_model.{k}": tuple(v.shape) for k, v in m.state_dict().items()}


SD3_VAE = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
           "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def vae_shapes() -> dict[str, tuple[int, ...]]:
    """SD3's 16-channel VAE (no quant_conv) under ``first_stage_model.``, as in Stability's single files."""
    from comfy.ldm.modules.diffusionmodules.model import Decoder, Encoder

    out = {}
    with torch.device("meta"):
        for part, ctor in (("encoder", Encoder), ("decoder", Decoder)):
            m = ctor(**SD3_VAE)
            out.update({f"first_stage_model.{part}.{k}": tuple(v.shape) for k, v in m.state_dict().items()})
    return out


# ---------------------------------------------------------------------------------------------
# Streaming safetensors writer


def _is_norm(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf == "weight" and (".ln_q" in name or ".ln_k" in name or ".norm" in name or "norm_out" in name)


def random_tensor(name: str, shape: tuple[int, ...], seed: int) -> Iterator[torch.Tensor]:
    """Deterministic small values (norm weights about 1) in flat float32 chunks of at most CHUNK."""
    n = math.prod(shape)
    g = torch.Generator().manual_seed(seed ^ int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
    for start in range(0, n, CHUNK):
        chunk = torch.randn(min(CHUNK, n - start), generator=g).mul_(0.02)
        if _is_norm(name):
            chunk.add_(1.0)
        yield chunk


def write_streaming(path: Path, entries: list[tuple[str, tuple[int, ...], torch.dtype, Callable[[], Iterator[torch.Tensor]]]],
                    metadata: dict | None = None, header_only: bool = False) -> Path:
    """Write a safetensors file from (name, shape, dtype, chunks) without holding it in memory:
    the header first (shapes are known), then each tensor's flat chunks cast to its dtype.
    ``header_only``: the exact header, then the data area as a sparse hole of the right length
    (reads as zeros; no disk used, no time), for checks that read only the header."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, shape, dtype, _ in entries:
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the reference pads the header to 8 bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        if header_only:
            f.truncate(8 + len(raw) + offset)
            entries = []
        for name, _shape, dtype, chunks in entries:
            written = 0
            for c in chunks():
                b = c.to(dtype).contiguous().view(torch.uint8).numpy().tobytes()
                f.write(b)
                written += len(b)
            assert written == header[name]["data_offsets"][1] - header[name]["data_offsets"][0], name
    os.replace(tmp, path)
    return path


def write_single_file(path: Path, spec: dict, dtype: torch.dtype, seed: int, header_only: bool = False) -> Path:
    """Stability's single file: the MMDiT in ``dtype`` and the VAE in fp16."""
    shapes = [(k, s, dtype) for k, s in mmdit_shapes(spec).items()]
    shapes += [(k, s, torch.float16) for k, s in vae_shapes().items()]
    entries = [(k, s, dt, (lambda k=k, s=s: random_tensor(k, s, seed))) for k, s, dt in sorted(shapes)]
    what = "header only (zero data)" if header_only else "random weights"
    return write_streaming(path, entries, {"sd35wb_realsize": f"{what}, SD3.5 structure {spec['hidden']}x{spec['blocks']}"},
                           header_only=header_only)


def diffusers_config(spec: dict) -> dict:
    from tools.tiny_models import sd3_diffusers_config

    cfg = sd3_diffusers_config(depth=spec["blocks"], attn2_layers=spec["attn2"], pos_embed_max_size=spec["pos_embed_max_size"])
    cfg["sample_size"] = 128
    return cfg


def write_diffusers(folder: Path, single: Path, spec: dict) -> Path:
    """The single file's MMDiT in diffusers / SimpleTuner layout (``transformer/`` + config.json),
    read one tensor at a time from the single file (so both hold the same weights)."""
    import comfy.utils
    from safetensors import safe_open

    prefix = "model.diffusion_model."
    key_map = comfy.utils.mmdit_to_diffusers({"depth": spec["blocks"], "num_blocks": spec["blocks"]})
    with safe_open(str(single), framework="pt") as f:
        keys = set(f.keys())
        entries = []
        for dkey, sp in sorted(key_map.items()):
            ckey = prefix + (sp if isinstance(sp, str) else sp[0])
            if ckey not in keys:
                continue
            shape = list(f.get_slice(ckey).get_shape())
            dtype = f.get_slice(ckey).get_dtype()
            if not isinstance(sp, str) and sp[1] is not None:
                dim, start, length = sp[1]
                shape[dim] = length

            def chunks(ckey=ckey, sp=sp):
                t = f.get_tensor(ckey)
                if isinstance(sp, str):
                    pass
                elif sp[1] is None:
                    t = sp[2](t)  # swap_scale_shift is its own inverse
                else:
                    t = t.narrow(*sp[1])
                yield t.contiguous().flatten()

            entries.append((dkey, tuple(shape), {"F16": torch.float16, "F32": torch.float32,
                                                 "BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn}[dtype], chunks))
        tdir = folder / "transformer"
        write_streaming(tdir / "diffusion_pytorch_model.safetensors", entries, {"format": "pt"})
    (tdir / "config.json").write_text(json.dumps(diffusers_config(spec), indent=2))
    return tdir / "diffusion_pytorch_model.safetensors"


# ---------------------------------------------------------------------------------------------


def medium(root: Path | None = None) -> Path:
    """Build (once) the Medium single file and its SimpleTuner folder; return the root."""
    root = Path(root) if root else cache_root()
    single = root / "checkpoints" / MEDIUM_FILE
    if not single.exists():
        write_single_file(single, MEDIUM, torch.float16, seed=1)
    stamp = root / "diffusers" / "sd3.5_medium" / ".complete"
    if not stamp.exists():
        write_diffusers(root / "diffusers" / "sd3.5_medium", single, MEDIUM)
        stamp.write_text("ok\n")
    return root


def large(root: Path | None = None) -> Path:
    """Build (once) the Large file (fp8) and the Turbo file name; return the root."""
    root = Path(root) if root else cache_root()
    single = root / "checkpoints" / LARGE_FILE
    if not single.exists():
        write_single_file(single, LARGE, torch.float8_e4m3fn, seed=2)
    turbo = root / "checkpoints" / TURBO_FILE
    if not turbo.exists():
        os.link(single, turbo)
    return root


def large_headers(root: Path | None = None) -> Path:
    """Large and the Large Turbo file name with the exact header of the real files and a sparse,
    zero data area (8 GB apparent size, no disk, instant): what detection, the variant choice and
    the hub table see. Loading them is not the point (zero weights). Returns the folder."""
    folder = (Path(root) if root else cache_root()) / "large-headers"
    single = folder / LARGE_FILE
    if not single.exists():
        write_single_file(single, LARGE, torch.float8_e4m3fn, seed=2, header_only=True)
    turbo = folder / TURBO_FILE
    if not turbo.exists():
        os.link(single, turbo)
    return folder


def header_state_dict(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The file's tensors as ``meta`` tensors of their real shapes and dtypes (reads only the header)."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            if k.startswith(prefix):
                sl = f.get_slice(k)
                dt = {v: k2 for k2, v in ST_DTYPES.items()}[sl.get_dtype()]
                out[k] = torch.empty(sl.get_shape(), dtype=dt, device="meta")
    return out


if __name__ == "__main__":
    from tools import host

    host.bootstrap()
    what = sys.argv[1] if len(sys.argv) > 1 else "medium"
    if what in ("medium", "all"):
        print(medium())
    if what in ("large", "all"):
        print(large())
