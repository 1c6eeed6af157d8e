"""Every reach into ComfyUI that the host does not promise to keep, in one place.

Each helper detects what the running host offers and takes the most public way there is, so a
new ComfyUI release breaks this file (and tests/host/test_compat.py says how) rather than the
nodes. ``FEATURES`` records what was found, for that test and for one start-up log line.
Not a capability module (the leading underscore keeps it out of node discovery).

V3 API version: the pack imports ``comfy_api.v0_0_2``, the numbered version core's maintainers
advise over ``comfy_api.latest`` (marked unstable). On both hosts of the matrix (0.3.75, 0.33.0)
``v0_0_2`` re-exports latest's ``io``, ``ui`` and ``ComfyExtension`` unchanged, so today the
two are the same objects and nothing behaves differently; the numbered import says which surface
the pack is written against, so a core release that freezes ``v0_0_2`` or changes ``latest``
keeps this pack on the surface it was tested with (tests/host/test_compat.py checks the import
on every host and that no pack module reaches for ``latest``).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os

import comfy.model_management
import comfy.samplers
import folder_paths
from comfy_api.v0_0_2 import io

LOG = logging.getLogger("sd35-workbench")


def _schema_takes_search_aliases() -> bool:
    return dataclasses.is_dataclass(io.Schema) and "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}


def _inputs_take_advanced() -> bool:
    # Checked on every widget input class the pack uses: a host that had it on some only would
    # reject the keyword on the others at import.
    classes = (io.Int.Input, io.Float.Input, io.Boolean.Input, io.Combo.Input, io.String.Input)
    return all("advanced" in inspect.signature(c.__init__).parameters for c in classes)


def _filename_caches() -> list[dict]:
    caches = [getattr(folder_paths, "filename_list_cache", None),
              getattr(getattr(folder_paths, "cache_helper", None), "cache", None)]
    return [c for c in caches if isinstance(c, dict)]


def _scheduler_registry():
    handlers = getattr(comfy.samplers, "SCHEDULER_HANDLERS", None)
    names = getattr(comfy.samplers, "SCHEDULER_NAMES", None)
    handler_cls = getattr(comfy.samplers, "SchedulerHandler", None)
    if isinstance(handlers, dict) and isinstance(names, list) and handler_cls is not None:
        return handlers, names, handler_cls
    return None


def _unload_way() -> str:
    mm = comfy.model_management
    if callable(getattr(mm, "unload_model_and_clones", None)):
        return "unload_model_and_clones"
    free = getattr(mm, "free_memory", None)
    if isinstance(getattr(mm, "current_loaded_models", None), list) and callable(free) \
            and "keep_loaded" in inspect.signature(free).parameters:
        return "free_memory(keep_loaded=)"
    return "none"


def _image_encoder_config() -> str:
    """How core's ClipVisionModel takes its config: a dict (newer hosts) or only a JSON file path."""
    import comfy.clip_vision

    src = inspect.getsource(comfy.clip_vision.ClipVisionModel.__init__)
    return "dict" if "isinstance(json_config, dict)" in src else "json file"


FEATURES: dict[str, object] = {
    "search_aliases": _schema_takes_search_aliases(),
    "advanced_inputs": _inputs_take_advanced(),
    "filename_cache_drop": len(_filename_caches()),  # how many private caches a refresh clears
    "scheduler_registry": _scheduler_registry() is not None,
    "unload_model": _unload_way(),
    "image_encoder_config": _image_encoder_config(),
}
LOG.info("[sd35-workbench] host features: %s", ", ".join(f"{k}={v}" for k, v in FEATURES.items()))


# ----------------------------------------------------------------------------- schema extras

def advanced() -> dict:
    """``**advanced()`` on an expert input: folded under "advanced" where the host has that."""
    return {"advanced": True} if FEATURES["advanced_inputs"] else {}


def search_aliases(*words: str) -> dict:
    """``**search_aliases(...)`` on an ``io.Schema``: extra words the node search finds it by."""
    return {"search_aliases": list(words)} if FEATURES["search_aliases"] else {}


# ----------------------------------------------------------------------------- core nodes

def run_core_node(node_id: str, **inputs) -> tuple:
    """Run a core node through its node contract (V1 ``FUNCTION`` or V3 ``execute``), not its internals.

    Returns the node's outputs as a tuple, like the executor sees them."""
    import nodes as host_nodes

    cls = host_nodes.NODE_CLASS_MAPPINGS.get(node_id)
    if cls is None:
        raise RuntimeError(f"this ComfyUI has no core node {node_id!r}; the SD3.5 Workbench needs it (update ComfyUI)")
    if isinstance(cls, type) and issubclass(cls, io.ComfyNode):
        out = cls.execute(**inputs)
        return tuple(out.result or ())
    return tuple(getattr(cls(), cls.FUNCTION)(**inputs))


def combo_options(node_id: str, input_name: str) -> list[str]:
    """The choices a core node's combo input offers now (what the host sends the frontend)."""
    import nodes as host_nodes

    spec = host_nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
    entry = {**spec.get("required", {}), **spec.get("optional", {})}[input_name]
    opts = entry[0] if isinstance(entry[0], (list, tuple)) else (entry[1] if len(entry) > 1 else {}).get("options", [])
    return list(opts)


def vae_names() -> list[str]:
    """What core VAELoader offers: models/vae files plus the TAESD pairs found in vae_approx."""
    return combo_options("VAELoader", "vae_name")


def weight_dtype_options() -> list[str]:
    """What core's diffusion-model loader (UNETLoader) offers as weight_dtype on this host."""
    return combo_options("UNETLoader", "weight_dtype")


def weight_dtype_model_options(weight_dtype: str) -> dict:
    """The ``model_options`` core's UNETLoader passes for a weight_dtype choice (same on 0.3.75 and
    0.33.0; its mapping is inside ``load_unet``, so it is repeated here, once for the pack)."""
    import torch

    if weight_dtype == "fp8_e4m3fn":
        return {"dtype": torch.float8_e4m3fn}
    if weight_dtype == "fp8_e4m3fn_fast":
        return {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}
    if weight_dtype == "fp8_e5m2":
        return {"dtype": torch.float8_e5m2}
    return {}


def load_vae(name: str):
    return run_core_node("VAELoader", vae_name=name)[0]


def model_sampling_discrete(model, sampling: str, zsnr: bool = False):
    """Core ModelSamplingDiscrete (an object patch on a clone; ``model`` is left alone)."""
    return run_core_node("ModelSamplingDiscrete", model=model, sampling=sampling, zsnr=zsnr)[0]


def ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0) -> dict:
    """Core KSampler: same noise, same progress bar, same result as the node."""
    return run_core_node("KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                         scheduler=scheduler, positive=positive, negative=negative, latent_image=latent,
                         denoise=denoise)[0]


# ----------------------------------------------------------------------------- host state

def refresh_filename_lists(folder_names) -> None:
    """Make ``folder_paths.get_filename_list`` rescan these folders on its next call.

    The host rescans when a folder's mtime changes, but coarse-timestamp filesystems (FAT/exFAT,
    some network mounts) can hide a change, and no host so far has a public invalidation call, so
    the cached entries are dropped where the caches are found; elsewhere the mtime check remains."""
    for cache in _filename_caches():
        for name in folder_names:
            cache.pop(name, None)


def unload_model(model) -> None:
    """Take this one model (and its clones) out of the host's memory manager; keep the rest loaded."""
    mm = comfy.model_management
    way = FEATURES["unload_model"]
    if way == "unload_model_and_clones":
        mm.unload_model_and_clones(model, all_devices=True)
    elif way == "free_memory(keep_loaded=)":
        others = [lm for lm in mm.current_loaded_models if lm.model is not model]
        for device in {lm.device for lm in mm.current_loaded_models if lm.model is model}:
            mm.free_memory(1e30, device, keep_loaded=others)
    else:
        LOG.info("[sd35-workbench] this ComfyUI offers no way to unload one model; it stays until memory is needed")


def register_scheduler(name: str, sigmas_fn, use_ms: bool = True) -> bool:
    """Add a scheduler to core's registry, in place, once, so KSampler and BasicScheduler offer it.

    ``KSampler.SCHEDULERS`` *is* ``SCHEDULER_NAMES`` (the same list object) and the nodes read it
    whenever their inputs are asked for, so appending keeps core's names, in core's order."""
    registry = _scheduler_registry()
    if registry is None:
        LOG.info("[sd35-workbench] this ComfyUI has no scheduler registry; %s not added to KSampler", name)
        return False
    handlers, names, handler_cls = registry
    if name not in handlers:
        handlers[name] = handler_cls(sigmas_fn, use_ms=use_ms)
    if name not in names:
        names.append(name)
    return True


# ----------------------------------------------------------------------------- LoRA key maps

def lora_key_map(model=None, clip=None) -> dict:
    """The host's {LoRA module name: weight key} for a ModelPatcher (and a CLIP): what
    ``comfy.sd.load_lora_for_models`` builds before it patches (same calls, same order)."""
    import comfy.lora

    key_map: dict = {}  # fresh: both functions default to one shared dict
    if model is not None:
        key_map = base_lora_key_map(model.model)
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    return key_map


def base_lora_key_map(base_model) -> dict:
    """``lora_key_map`` for the host's model object itself (``ModelPatcher.model``, or a meta-device one)."""
    import comfy.lora

    return comfy.lora.model_lora_keys_unet(base_model, {})


def lora_convert(lora_sd: dict) -> dict:
    """The host's own LoRA format conversions (comfy/lora_convert.py), as its loader applies them."""
    import comfy.lora_convert

    return comfy.lora_convert.convert_lora(lora_sd)


def weight_shapes(model=None, clip=None) -> dict:
    """{weight key: shape} under the key map's names (``diffusion_model.…``, the CLIP's own keys)."""
    out = {}
    if model is not None:
        out.update({k: tuple(v.shape) for k, v in model.model.state_dict().items()})
    if clip is not None:
        out.update({k: tuple(v.shape) for k, v in clip.cond_stage_model.state_dict().items()})
    return out


def meta_diffusion_model(tensors: dict):
    """The host's model object for a diffusion-model file, built on the meta device (no weights):
    its detection (``model_config_from_unet``; diffusers MMDiT and UNet layouts as
    ``comfy.sd.load_diffusion_model_state_dict`` converts them), from ``{key: meta tensor}``.
    None when the host does not recognise the file."""
    import comfy.model_detection as md
    import comfy.utils
    import torch

    prefix = md.unet_prefix_from_state_dict(tensors)
    inner = comfy.utils.state_dict_prefix_replace(tensors, {prefix: ""}, filter_keys=True) or tensors
    with torch.device("meta"):
        config = md.model_config_from_unet(inner, "")
        sd = inner
        if config is None:
            converted = md.convert_diffusers_mmdit(inner, "")
            if converted is not None:
                config, sd = md.model_config_from_unet(converted, ""), converted
            else:
                config = md.model_config_from_diffusers_unet(inner)
        if config is None:
            return None
        return config.get_model(sd, "", device="meta")


def _plain_lora_part(entry, weight):
    """A ``_lora_branch.Part`` for one entry of a ModelPatcher's patch list when it is a plain LoRA the
    host would merge as ``W[offset] += strength * alpha / rank * up @ down`` (comfy/lora.py,
    weight_adapter/lora.py); None for anything else (LoCon mid, DoRA, reshape, a function, another
    adapter, a slice not on the output rows), which stays a merged patch."""
    import comfy.weight_adapter

    from ._lora_branch import Part

    if len(entry) != 5:
        return None
    strength, v, strength_model, offset, function = entry
    if not isinstance(v, comfy.weight_adapter.LoRAAdapter) or strength_model != 1.0 or function is not None:
        return None
    w = v.weights
    if len(w) != 6 or any(x is not None for x in w[3:]):
        return None
    up, down, alpha = w[0], w[1], w[2]
    if up.dim() != 2 or down.dim() != 2 or up.shape[1] != down.shape[0] or down.shape[1] != weight.shape[1]:
        return None
    start, size = 0, None
    if offset is not None:
        if offset[0] != 0:
            return None
        start, size = int(offset[1]), int(offset[2])
    if up.shape[0] != (weight.shape[0] if size is None else size):
        return None
    scale = float(strength) * ((float(alpha) / down.shape[0]) if alpha is not None else 1.0)
    return Part(down=down, up=up, scale=scale, start=start, size=size)


def unmerge_lora(base, patched) -> tuple[int, int]:
    """Move the LoRA patches ``patched`` (``comfy.sd.load_lora_for_models(base, …)``) added to Linear
    weights out of the host's merge and into forward branches (``nodes/_lora_branch.py``), set as
    object patches (``<module>.forward``) on the clone: the host applies and restores them when it
    loads the clone, as it does any object patch, and the base's weights are never rewritten.

    Only what this LoRA added moves: patches ``base`` already carried (a style LoRA merged upstream)
    stay merged, and an object patch another pack set on the same forward is chained, not replaced.
    When no weight patch is left beyond the base's, the clone keeps the base's patch id, so loading it
    does not re-patch the weights either. Returns (layers branched, layers left merged)."""
    import types

    import comfy.utils
    import torch

    from ._lora_branch import Branch

    branched = merged = 0
    for key in list(patched.patches):
        own = base.patches.get(key, [])
        added = patched.patches[key][len(own):]
        if not added or patched.patches[key][:len(own)] != own:
            continue
        if not key.endswith(".weight"):
            merged += 1
            continue
        path = key[: -len(".weight")]
        module = comfy.utils.get_attr(patched.model, path)
        weight = getattr(module, "weight", None)
        linear = isinstance(module, torch.nn.Linear) and weight is not None and weight.dim() == 2
        parts = [_plain_lora_part(e, weight) for e in added] if linear else [None]
        if any(p is None for p in parts):
            merged += 1
            continue
        name = path + ".forward"
        prev = patched.object_patches.get(name) or module.__dict__.get("forward")
        if prev is None:
            prev = types.MethodType(type(module).forward, module)
        patched.add_object_patch(name, Branch(prev, parts))
        if own:
            patched.patches[key] = list(own)
        else:
            del patched.patches[key]
        branched += 1
    if patched.patches.keys() == base.patches.keys() and all(patched.patches[k] == base.patches[k] for k in base.patches):
        patched.patches_uuid = base.patches_uuid
    return branched, merged


# ----------------------------------------------------------------------------- scoring models

def _full_precision(encoder, fp32: bool):
    """fp32 weights where asked (scores comparable with torchmetrics' fp32 reference); else the host's
    text-encoder dtype, as core's CLIPVisionLoader gives."""
    import torch

    if fp32:
        encoder.model.float()
        encoder.dtype = torch.float32
    return encoder


def image_encoder(config: dict, state_dict: dict, fp32: bool = True):
    """Core's own image encoder (``comfy.clip_vision.ClipVisionModel``: CLIP vision or DINOv2) from an
    explicit config (a Hugging Face config turned into core's keys), managed by ComfyUI's model
    management like any CLIPVisionLoader model. Returns (encoder, missing keys)."""
    import json
    import tempfile

    import comfy.clip_vision

    if FEATURES["image_encoder_config"] == "dict":
        enc = comfy.clip_vision.ClipVisionModel(dict(config))
    else:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(config, f)
        try:
            enc = comfy.clip_vision.ClipVisionModel(f.name)
        finally:
            os.remove(f.name)
    _full_precision(enc, fp32)
    missing, _unexpected = enc.load_sd(state_dict)
    return enc, list(missing)


def image_encoder_file(path: str, fp32: bool = True):
    """A clip_vision file as core's CLIPVisionLoader reads it (its own detection picks the config:
    CLIP-L/336, DINOv2 large / giant ...); None when core does not recognise it."""
    import comfy.clip_vision
    import comfy.utils

    sd = comfy.utils.load_torch_file(path, safe_load=True)
    enc = comfy.clip_vision.load_clipvision_from_sd(dict(sd))
    if enc is not None and fp32:  # core loaded it at the text-encoder dtype: reload the same tensors at fp32
        _full_precision(enc, True).load_sd(sd)
    return enc


def clip_text_encoder(config: dict, state_dict: dict, fp32: bool = True):
    """Core's CLIP text transformer (``comfy.clip_model.CLIPTextModel``, the class its CLIP-L / CLIP-G
    text encoders use) with its text projection, under a ModelPatcher on the text-encoder devices.
    Returns (patcher, missing keys)."""
    import comfy.clip_model
    import comfy.model_patcher
    import comfy.ops
    import torch

    mm = comfy.model_management
    load, offload = mm.text_encoder_device(), mm.text_encoder_offload_device()
    dtype = torch.float32 if fp32 else mm.text_encoder_dtype(load)
    model = comfy.clip_model.CLIPTextModel(config, dtype, offload, comfy.ops.manual_cast)
    missing, _unexpected = model.load_state_dict(state_dict, strict=False)
    model.eval()
    patcher_cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return patcher_cls(model, load_device=load, offload_device=offload), list(missing)


def load_for_use(patcher) -> None:
    """Bring one model onto its device through ComfyUI's memory manager (it evicts others as needed)."""
    comfy.model_management.load_models_gpu([patcher])
