"""LoRA files for the tiny models, written by PEFT's and diffusers' own save code, in the formats
SimpleTuner and the diffusers training scripts produce, plus broken ones and SimpleTuner run trees.

Good files (every module maps onto the tiny model):

- ``sd3-peft``: PEFT adapter on diffusers' ``SD3Transformer2DModel`` (the tiny SD3.5-Medium-shaped
  weights of ``tools.tiny_models``), ``get_peft_model_state_dict``,
  ``StableDiffusion3Pipeline.save_lora_weights``: ``transformer.<module>.lora_A.weight`` (diffusers'
  own training scripts);
- ``sd3-simpletuner``: what SimpleTuner's save hook writes: the same state dict through
  ``convert_state_dict_to_diffusers`` first (``to_q/k/v/out.0`` become ``lora.down/up``, the other
  modules stay ``lora_A/B``), with the adapter config in the file's metadata;
- ``sd3-simpletuner-comfyui``: SimpleTuner's ``--lora_format=comfyui`` conversion of that (its
  ``convert_diffusers_to_comfyui``, rewritten here: ``lora.down/up`` -> ``lora_A/B`` plus an ``alpha``
  tensor per converted module, ``transformer.`` kept for SD3, ``unet.`` -> ``diffusion_model.`` for SDXL);
- ``sdxl-peft`` / ``sdxl-simpletuner`` / ``sdxl-simpletuner-comfyui``: the same on diffusers'
  ``UNet2DConditionModel`` shaped like the tiny Vega (built on the meta device: only the LoRA
  matrices get memory).

``sd3-with-te``: ``sd3-peft``'s transformer LoRA plus a PEFT LoRA on a CLIP-L-shaped transformers
``CLIPTextModel`` (``text_encoder.<module>.lora_A.weight``), saved together by the pipeline.

Broken files: ``sdxl-peft`` on an SD3 model (wrong family); ``sd3-wide`` (trained on another width:
a 5-block, width-320 SD3); ``sd3-deeper`` (an 8-block base of the same width: half its modules
name blocks the tiny model lacks); ``sd3-matches-nothing`` (Flux-style module names);
``sd3-truncated`` (``sd3-peft`` cut in half, like an interrupted copy).

LoRA strength conventions: ``lora_alpha == rank`` (SimpleTuner's default), so files without alpha
tensors (PEFT, diffusers) load at the same scale in ComfyUI (which then assumes scale 1) and in
diffusers (which reads alpha from the metadata).

Needs torch, diffusers, peft (the tools layer) and ``comfy`` importable (``tools.host.bootstrap()``).
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

from tools import tiny_models as tm

RANK = 4
ALPHA = 4.0
SD3_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "ff.net.0.proj", "ff.net.2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # diffusers' training scripts' text-encoder targets
SDXL_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
GOOD = ("sd3-peft", "sd3-simpletuner", "sd3-simpletuner-comfyui", "sdxl-peft", "sdxl-simpletuner",
        "sdxl-simpletuner-comfyui")
WITH_TE = ("sd3-with-te",)  # transformer + CLIP-L text encoder (SimpleTuner's --train_text_encoder)
BAD = ("sd3-wide", "sd3-deeper", "sd3-matches-nothing", "sd3-truncated")
CACHE_VERSION = 1

# The tiny Vega (tools.tiny_models.VEGA_UNET) in diffusers' UNet2DConditionModel terms.
VEGA_DIFFUSERS = dict(
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), mid_block_type=None,
    transformer_layers_per_block=(0, 1, 2), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


def cache_root() -> Path:
    """Next to the tiny models, keyed by this file's and tiny_models' content."""
    digest = hashlib.sha256(Path(__file__).read_bytes() + Path(tm.__file__).read_bytes()).hexdigest()[:12]
    return tm.cache_root().parent / f"lora-fixtures-{digest}"


# ---------------------------------------------------------------------------------------------
# Models with a random LoRA


def sd3_transformer(depth: int = tm.SD3_DEPTH, num_blocks: int | None = None, weights: bool = True):
    """diffusers' SD3Transformer2DModel: the tiny model's weights (fp32), or on the meta device."""
    from diffusers import SD3Transformer2DModel

    if weights:
        folder = tm.build_all() / "diffusers" / "tiny-sd35m" / "transformer"
        return SD3Transformer2DModel.from_pretrained(folder, torch_dtype=torch.float32)
    cfg = {k: v for k, v in tm.sd3_diffusers_config(depth=depth, num_blocks=num_blocks).items() if not k.startswith("_")}
    with torch.device("meta"):
        return SD3Transformer2DModel(**cfg)


def vega_unet():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**VEGA_DIFFUSERS)


def add_random_lora(model, targets, seed: int, rank: int = RANK, alpha: float = ALPHA, scale: float = 0.05,
                    inject: bool = False):
    """PEFT's own adapter on ``model`` with random A and B (PEFT starts B at zero: an identity LoRA)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=True)
    if inject:  # transformers models: what their add_adapter does (which needs peft >= 0.22; the tools have 0.21)
        inject_adapter_in_model(config, model)
    else:  # diffusers models: their own add_adapter
        model.add_adapter(config)
    g = torch.Generator().manual_seed(seed)
    for name, mod in sorted(model.named_modules()):
        if name.endswith((".lora_A.default", ".lora_B.default")):
            if mod.weight.device.type == "meta":
                mod.to_empty(device="cpu")
            with torch.no_grad():
                mod.weight.copy_(scale * torch.randn(mod.weight.shape, generator=g))
    return model


def clip_l_text_model():
    """transformers' CLIPTextModel shaped like CLIP-L (SD3's first text encoder), on the meta device."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         projection_dim=768)
    with torch.device("meta"):
        return CLIPTextModel(cfg)


def _adapter_metadata(model) -> dict:
    cfg = model.peft_config["default"].to_dict()
    return json.loads(json.dumps(cfg, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))


# ---------------------------------------------------------------------------------------------
# Savers: the libraries' own code


def _pipeline(family: str):
    from diffusers import StableDiffusion3Pipeline, StableDiffusionXLPipeline

    return (StableDiffusion3Pipeline, "transformer") if family == "sd3" else (StableDiffusionXLPipeline, "unet")


def comfyui_convert(sd: dict, family: str, alpha: float) -> dict:
    """SimpleTuner's ``--lora_format=comfyui`` conversion (simpletuner/helpers/models/common.py
    ``save_lora_weights`` -> ``convert_diffusers_to_comfyui``), as it behaves: SD3 keeps its
    ``transformer.`` prefix, ``unet.`` becomes ``diffusion_model.``; ``lora.down/up`` become
    ``lora_A/B`` and only those modules get an ``alpha`` tensor (float32, the adapter's lora_alpha)."""
    out, alphas = {}, {}
    for key, w in sd.items():
        if family != "sd3" and key.startswith("unet."):
            key = "diffusion_model." + key[len("unet."):]
        if ".lora.down." in key:
            key = key.replace(".lora.down.", ".lora_A.")
            alphas[key[: key.rfind(".lora_A.")]] = torch.tensor(alpha, dtype=torch.float32)
        elif ".lora.up." in key:
            key = key.replace(".lora.up.", ".lora_B.")
        out[key] = w
    out.update({f"{m}.alpha": a for m, a in alphas.items()})
    return out


def save(model, family: str, fmt: str, path: Path) -> Path:
    """Write ``model``'s adapter as ``fmt`` ("peft", "simpletuner", "simpletuner-comfyui")."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from diffusers.utils.state_dict_utils import StateDictType
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    pipe, component = _pipeline(family)
    layers = get_peft_model_state_dict(model)
    kw = {}
    if fmt != "peft":  # SimpleTuner's save hook converts and passes the adapter config along
        layers = convert_state_dict_to_diffusers(layers, original_type=StateDictType.PEFT)
        kw[f"{component}_lora_adapter_metadata"] = _adapter_metadata(model)
    if fmt == "simpletuner-comfyui":
        alpha = float(model.peft_config["default"].lora_alpha)
        kw["save_function"] = lambda weights, filename: save_file(
            comfyui_convert(weights, family, alpha), filename, metadata={"format": "pt"})
    path.parent.mkdir(parents=True, exist_ok=True)
    pipe.save_lora_weights(str(path.parent), **{f"{component}_lora_layers": layers}, weight_name=path.name,
                           safe_serialization=True, **kw)
    return path


def save_with_te(model, te, path: Path) -> Path:
    """Transformer and text-encoder LoRA in one file, through the pipeline's own saver (PEFT keys)."""
    from diffusers import StableDiffusion3Pipeline
    from peft.utils import get_peft_model_state_dict

    # The tools' transformers names CLIPTextModel's modules without the ``text_model.`` level that
    # CLIP-L files, published LoRAs and ComfyUI's key map have; put it back so the file looks like theirs.
    te_layers = {k if k.startswith("text_model.") else "text_model." + k: v
                 for k, v in get_peft_model_state_dict(te).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusion3Pipeline.save_lora_weights(
        str(path.parent), transformer_lora_layers=get_peft_model_state_dict(model),
        text_encoder_lora_layers=te_layers, weight_name=path.name, safe_serialization=True)
    return path


def _rename(src: Path, dst: Path, old: str, new: str) -> Path:
    from safetensors.torch import load_file, save_file

    save_file({k.replace(old, new): v for k, v in load_file(str(src)).items()}, str(dst), metadata={"format": "pt"})
    return dst


# ---------------------------------------------------------------------------------------------


def build_all(root: Path | None = None) -> dict[str, Path]:
    """Write (once) every fixture under ``root``; ``{name: path}`` for GOOD, WITH_TE and BAD."""
    root = Path(root) if root else cache_root()
    stamp = root / f".complete-v{CACHE_VERSION}"
    if not stamp.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=root.name + ".building-", dir=root.parent))
        sd3 = add_random_lora(sd3_transformer(), SD3_TARGETS, seed=1)
        for fmt in ("peft", "simpletuner", "simpletuner-comfyui"):
            save(sd3, "sd3", fmt, tmp / f"sd3-{fmt}.safetensors")
        vega = add_random_lora(vega_unet(), SDXL_TARGETS, seed=2)
        for fmt in ("peft", "simpletuner", "simpletuner-comfyui"):
            save(vega, "sdxl", fmt, tmp / f"sdxl-{fmt}.safetensors")
        save_with_te(sd3, add_random_lora(clip_l_text_model(), TE_TARGETS, seed=5, inject=True), tmp / "sd3-with-te.safetensors")
        save(add_random_lora(sd3_transformer(depth=5, weights=False), SD3_TARGETS, seed=3), "sd3", "peft",
             tmp / "sd3-wide.safetensors")
        save(add_random_lora(sd3_transformer(num_blocks=2 * tm.SD3_DEPTH, weights=False), SD3_TARGETS, seed=4),
             "sd3", "peft", tmp / "sd3-deeper.safetensors")
        _rename(tmp / "sd3-peft.safetensors", tmp / "sd3-matches-nothing.safetensors",
                "transformer.transformer_blocks.", "transformer.single_transformer_blocks.")
        blob = (tmp / "sd3-peft.safetensors").read_bytes()
        (tmp / "sd3-truncated.safetensors").write_bytes(blob[: len(blob) // 2])
        (tmp / stamp.name).write_text("ok\n")
        with contextlib.suppress(OSError):  # lost the race: another process published first
            os.rename(tmp, root)
        shutil.rmtree(tmp, ignore_errors=True)
        if not stamp.exists():
            raise RuntimeError(f"{root} exists but is incomplete (no {stamp.name}): delete it and run again")
    return {name: root / f"{name}.safetensors" for name in GOOD + WITH_TE + BAD}


def lora_run(out: Path, steps=(500, 1000), family: str = "sd3", fmt: str = "simpletuner", ema: bool = False,
             markers: bool = True) -> Path:
    """A SimpleTuner LoRA run: ``checkpoint-N/pytorch_lora_weights.safetensors`` (a different random
    LoRA per step, saved like SimpleTuner does), ``ema/pytorch_lora_weights.safetensors`` with
    ``ema``, the accelerate state files, ``training_state*.json`` and the completion markers;
    the final ``pytorch_lora_weights.safetensors`` at the top once the last step is written."""
    from tools.simpletuner_fixtures import _finish_checkpoint

    def model(seed):
        if family == "sd3":
            return add_random_lora(sd3_transformer(weights=False), SD3_TARGETS, seed=seed)
        return add_random_lora(vega_unet(), SDXL_TARGETS, seed=seed)

    for step in steps:
        ck = out / f"checkpoint-{step}"
        save(model(step), family, fmt, ck / "pytorch_lora_weights.safetensors")
        if ema:
            save(model(step + 1), family, fmt, ck / "ema" / "pytorch_lora_weights.safetensors")
        (ck / "training_state.json").write_text(json.dumps({"global_step": step}))
        _finish_checkpoint(ck, step, markers, accelerate=True)
    save(model(steps[-1]), family, fmt, out / "pytorch_lora_weights.safetensors")
    return out


if __name__ == "__main__":
    print(json.dumps({k: str(v) for k, v in build_all().items()}, indent=2))
