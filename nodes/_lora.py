"""The pack's one LoRA loader: read a file, check which of its modules land on the model, patch.

Loading and key mapping are the host's own (``comfy.sd.load_lora_for_models``, what core LoraLoader /
LoraLoaderModelOnly do: patches on a clone, no weight copies); a sweep then keeps plain LoRAs
unmerged (``apply_unmerged``), so a switch rewrites no weights. On top: keys the host's
key map misses are re-keyed (``sd35wb.lora.comfy_key_renames``), and a LoRA that matches
nothing, or only part, of the model is an error naming the file (``LoraMismatch``) instead of
an unchanged image and a "lora key not loaded" log line. Matching logic lives in
``sd35wb/lora.py``; host reaches in ``nodes/_compat.py``. Not a node module (leading underscore).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import comfy.sd
import comfy.utils
import torch

from ..sd35wb import lora as L
from ..sd35wb import safetensors_header
from . import _compat as C

LoraMatch = L.LoraMatch
CACHE_SIZE = 2  # a sweep goes file by file: the current LoRA and the last one, never 40 files


class LoraMismatch(ValueError):
    """A LoRA whose modules do not (all) map onto the model; ``match`` says how many did."""

    def __init__(self, message: str, match: LoraMatch):
        super().__init__(message)
        self.match = match


_CACHE: OrderedDict[tuple, dict] = OrderedDict()


def load(path: str) -> dict:
    """The LoRA's tensors (the host's loader, safe_load), re-keyed where the host's key map misses
    names. The last ``CACHE_SIZE`` files stay in memory, keyed by (path, mtime, size)."""
    st = os.stat(path)
    stamp = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    hit = _CACHE.get(stamp)
    if hit is not None:
        _CACHE.move_to_end(stamp)
        return hit
    safetensors_header.read_header(path)  # a cut or renamed file fails here, naming the file
    sd = comfy.utils.load_torch_file(path, safe_load=True)
    renames = L.comfy_key_renames(sd)
    if renames:
        sd = {renames.get(k, k): v for k, v in sd.items()}
    _CACHE[stamp] = sd
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return sd


def _model_label(model) -> str:
    cfg = getattr(getattr(model, "model", None), "model_config", None)
    return f"the {type(cfg).__name__} model" if cfg is not None else "the model"


def check(model, clip, lora_sd: dict, name: str) -> LoraMatch:
    """Which of the LoRA's modules map onto ``model`` (and ``clip`` when given), by the host's own
    key map and the weights' shapes. Text-encoder modules count only when a CLIP is given."""
    sd = C.lora_convert(lora_sd)
    shapes = {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}
    return L.match(name, shapes, C.lora_key_map(model, clip), C.weight_shapes(model, clip), clip is not None)


def apply(model, clip, lora_sd: dict, strength_model: float, strength_clip: float, name: str,
          checked: bool = False):
    """(model, clip) with the LoRA patched on clones; the inputs are never changed.

    Raises ``LoraMismatch`` when the file's modules do not all map onto the model, unless the
    caller ran ``check`` on this model and LoRA already (``checked``: a sweep's strengths). Strength
    0 (and CLIP strength 0, or no CLIP) returns the inputs themselves."""
    if strength_model == 0 and (clip is None or strength_clip == 0):
        return model, clip
    use_clip = clip if strength_clip != 0 else None
    if not checked:
        m = check(model, use_clip, lora_sd, name)
        if not m.ok():
            raise LoraMismatch(L.mismatch_message(m, _model_label(model)), m)
    new_model, new_clip = comfy.sd.load_lora_for_models(model, use_clip, lora_sd, strength_model,
                                                        strength_clip if use_clip is not None else 0.0)
    return new_model, (new_clip if use_clip is not None else clip)


def apply_unmerged(model, lora_sd: dict, strength: float, name: str, checked: bool = False):
    """``apply`` to the diffusion model only, with the LoRA kept out of the weights: (model, layers
    as side branches, layers the host merges). The host's own loader still reads the file and maps
    its keys; only the plain-LoRA patches it produced become forward branches (``C.unmerge_lora``), so
    switching LoRAs on one resident base rewrites no weights. Strength 0 returns ``model``."""
    m, _ = apply(model, None, lora_sd, strength, 0.0, name, checked=checked)
    if m is model:
        return m, 0, 0
    branched, merged = C.unmerge_lora(model, m)
    return m, branched, merged


def check_file(lora_path: str, model_path: str) -> LoraMatch:
    """``check`` for files on disk without loading any weights: both safetensors headers, and the
    host's model object for the model file built on the meta device. Diffusion model only: the
    text-encoder modules a LoRA carries are counted in ``ignored_text_encoder``."""
    lora_h = safetensors_header.read_header(lora_path)
    model_h = safetensors_header.read_header(model_path)
    lora_keys = {k: torch.empty(v["shape"], device="meta") for k, v in lora_h.tensors.items()}
    renames = L.comfy_key_renames(lora_keys)
    lora_keys = C.lora_convert({renames.get(k, k): v for k, v in lora_keys.items()})
    tensors = {k: torch.empty(v["shape"], device="meta") for k, v in model_h.tensors.items()}
    model = C.meta_diffusion_model(tensors)
    name = os.path.basename(lora_path)
    if model is None:
        raise ValueError(f"{os.path.basename(model_path)}: this ComfyUI does not recognise it as a diffusion model, "
                         f"so {name} cannot be checked against it; pick a checkpoint or diffusion-model file.")
    key_map = C.base_lora_key_map(model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return L.match(name, {k: tuple(v.shape) for k, v in lora_keys.items()}, key_map, shapes, False)
