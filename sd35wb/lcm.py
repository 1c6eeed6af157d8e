"""LCM-LoRA logic without ComfyUI: model families, LoRA family detection from a safetensors
header, the known public LCM-LoRAs and fetching them from the Hugging Face Hub.

Latent Consistency Models (Luo et al. 2023, arXiv 2310.04378) and LCM-LoRA (Luo et al. 2023,
arXiv 2311.05556): a LoRA distilled from a base model turns it into a 4-8 step sampler used at
cfg 1-2 with the ``lcm`` sampler and LCM model sampling.

Nothing here imports torch or ComfyUI: the safetensors header is read as JSON.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import hub, safetensors_header

# ---------------------------------------------------------------------------------------------
# Families

SD15, SD2, SDXL, SSD1B, VEGA, KOALA_700M, KOALA_1B, SDXL_REFINER = (
    "SD1.5", "SD2.x", "SDXL", "SSD-1B", "Segmind Vega", "KOALA-700M", "KOALA-1B", "SDXL Refiner")

# ComfyUI model_config class name (comfy/supported_models.py) -> family. Walked along the class's
# MRO, so fine-tune variants that subclass SDXL (ip2p, inpaint, ...) read as SDXL, while SSD1B,
# Segmind_Vega and KOALA (also SDXL subclasses) match their own names first.
MODEL_CONFIG_FAMILIES = {
    "SD15": SD15, "SD20": SD2, "SDXLRefiner": SDXL_REFINER, "SSD1B": SSD1B, "Segmind_Vega": VEGA,
    "KOALA_700M": KOALA_700M, "KOALA_1B": KOALA_1B, "SDXL": SDXL,
}

# Cross-attention context width of each family (the in-features of attn2.to_k / to_v).
CONTEXT_DIM = {SD15: 768, SD2: 1024, SDXL_REFINER: 1280}
SDXL_CONTEXT = 2048
# SDXL-family members share the 2048 context: the depth of the deepest down-path transformer
# (ComfyUI's transformer_depth, comfy/supported_models.py) tells them apart.
SDXL_DOWN_DEPTH = {10: SDXL, 4: SSD1B, 2: VEGA, 5: KOALA_700M, 6: KOALA_1B}
SDXL_FAMILY = (SDXL, SSD1B, VEGA, KOALA_700M, KOALA_1B)


def model_family(config_class_names: list[str]) -> str | None:
    """Family of a loaded model from its model_config class and base classes (MRO order)."""
    for name in config_class_names:
        if name in MODEL_CONFIG_FAMILIES:
            return MODEL_CONFIG_FAMILIES[name]
    return None


# ---------------------------------------------------------------------------------------------
# Known public LCM-LoRAs (all Hugging Face repos publish pytorch_lora_weights.safetensors)


@dataclass(frozen=True)
class KnownLora:
    repo_id: str
    filename: str
    family: str

    @property
    def option(self) -> str:
        """The dropdown entry naming this LoRA."""
        return f"hf: {self.repo_id}"


KNOWN_LCM_LORAS = (
    KnownLora("latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors", SD15),
    KnownLora("latent-consistency/lcm-lora-sdxl", "pytorch_lora_weights.safetensors", SDXL),
    KnownLora("latent-consistency/lcm-lora-ssd-1b", "pytorch_lora_weights.safetensors", SSD1B),
    KnownLora("segmind/Segmind-VegaRT", "pytorch_lora_weights.safetensors", VEGA),
)
AUTO = "auto (the known LCM-LoRA for the model's family)"


def known_by_option(option: str) -> KnownLora | None:
    for k in KNOWN_LCM_LORAS:
        if option in (k.option, k.repo_id):
            return k
    return None


def known_for_family(family: str | None) -> KnownLora:
    for k in KNOWN_LCM_LORAS:
        if k.family == family:
            return k
    have = ", ".join(f"{k.family} ({k.repo_id})" for k in KNOWN_LCM_LORAS)
    raise ValueError(f"lcm_lora: no public LCM-LoRA is known for {family or 'this'} models; LCM-LoRAs exist "
                     f"for {have}. Pick an LCM-LoRA file trained for this model from the list instead of 'auto'.")


def lora_options(local_files: list[str]) -> list[str]:
    """Dropdown entries: auto, the known public LoRAs, then the files in models/loras."""
    return [AUTO, *(k.option for k in KNOWN_LCM_LORAS), *local_files]


# ---------------------------------------------------------------------------------------------
# Steps / strength

MIN_STEPS, MAX_STEPS, DEFAULT_STEPS = 1, 8, 4


def check_steps(steps: int, name: str = "steps") -> int:
    if not isinstance(steps, int) or not MIN_STEPS <= steps <= MAX_STEPS:
        raise ValueError(f"{name}: {steps!r} is out of range; LCM-LoRA samples in {MIN_STEPS}-{MAX_STEPS} steps "
                         f"(4 is the usual choice, 2-3 for drafts, 6-8 for a little more detail). For more steps "
                         f"use a normal sampler without the LCM-LoRA.")
    return steps


# ---------------------------------------------------------------------------------------------
# safetensors header and LoRA family detection


def read_safetensors_header(path: str | os.PathLike) -> dict[str, dict]:
    """The tensor entries of a complete .safetensors file: ``{name: {"dtype", "shape", ...}}``.

    The pack's one strict reader: a truncated LoRA fails here, naming the file, not later inside
    the host's loader."""
    return dict(safetensors_header.read_header(path).tensors)


_TBLOCK = re.compile(r"(down_blocks|input_blocks|mid_block|middle_block|up_blocks|output_blocks)_.*?transformer_blocks_(\d+)_")
_DOWN_SUFFIX = re.compile(r"(lora_down_weight|lora_A_weight|lora_A_default_weight|lora_down_weight|lora_A)$")


def _flat(key: str) -> str:
    return key.replace(".", "_").replace("processor_", "")


@dataclass
class LoraInfo:
    family: str | None  # exact family, or None when the file does not say
    group: str | None  # SD1.5 / SD2.x / SDXL family / ... (context width)
    context_dim: int | None
    down_depth: int | None  # deepest transformer stack in the down path (SDXL family members differ)
    unet_keys: int
    other_keys: int  # text-encoder and unknown keys

    def describe(self) -> str:
        if self.family:
            return self.family
        if self.group:
            return f"{self.group} (exact model not recognisable)"
        return "unrecognised"


def detect_lora_family(header: dict[str, dict]) -> LoraInfo:
    """Which model family a LoRA was trained for, from its key names and shapes.

    Handles kohya (``lora_unet_<diffusers or LDM path>.lora_down.weight``), PEFT
    (``unet.<module>.lora_A.weight``), diffusers (``...lora.down.weight``, ``..._lora.down.weight``)
    and ComfyUI (``diffusion_model.<LDM path>...``) names. The context width comes from the
    down/A matrix of any ``attn2.to_k`` / ``to_v`` (its in-features); SDXL-family members are told
    apart by their deepest down-path transformer stack (SDXL 10, SSD-1B 4, Vega 2, KOALA 5/6).
    """
    context = None
    down_depth = None
    unet = other = 0
    for key, entry in header.items():
        flat = _flat(key)
        is_unet = key.startswith(("lora_unet_", "unet.", "diffusion_model.", "lycoris_")) or bool(_TBLOCK.search(flat)) \
            or flat.startswith(("down_blocks_", "up_blocks_", "mid_block_"))
        if not is_unet or key.startswith(("lora_te", "text_encoder", "te_")):
            other += 1
            continue
        unet += 1
        m = _TBLOCK.search(flat)
        if m and m.group(1) in ("down_blocks", "input_blocks"):
            d = int(m.group(2)) + 1
            down_depth = d if down_depth is None else max(down_depth, d)
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if context is None and shape and len(shape) == 2 and re.search(r"attn2_to_(k|v)_?", flat) and _DOWN_SUFFIX.search(flat):
            context = int(shape[1])
    group = family = None
    if context == SDXL_CONTEXT:
        group = "SDXL family"
        family = SDXL_DOWN_DEPTH.get(down_depth) if down_depth else None
    else:
        for fam, dim in CONTEXT_DIM.items():
            if context == dim:
                group = family = fam
    return LoraInfo(family, group, context, down_depth, unet, other)


def check_lora_matches(lora_info: LoraInfo, model_fam: str | None, lora_label: str, input_name: str = "lcm_lora") -> None:
    """Raise (before anything is loaded) when a LoRA was trained for a different family."""
    if model_fam is None or lora_info.group is None:
        return  # nothing reliable to compare; the host logs any key that does not load
    if lora_info.family is not None:
        ok = lora_info.family == model_fam
    else:  # only the group is known (a partial LoRA): compare groups
        ok = (lora_info.group == "SDXL family" and model_fam in SDXL_FAMILY) or lora_info.group == model_fam
    if not ok:
        raise ValueError(
            f"{input_name}: {lora_label} was trained for {lora_info.describe()} but the model is {model_fam}. "
            f"A LoRA for another family loads with hundreds of 'lora key not loaded' lines and draws garbage; "
            f"pick a LoRA trained for {model_fam}" + (f" (for LCM: {known_for_family(model_fam).repo_id})"
                                                      if has_known(model_fam) and input_name == "lcm_lora" else "") + ".")


def has_known(family: str | None) -> bool:
    return any(k.family == family for k in KNOWN_LCM_LORAS)


# ---------------------------------------------------------------------------------------------
# Hugging Face Hub fetch (small and self-contained; public LCM-LoRAs need no token)


def hf_cache_dir() -> Path:
    """The hub cache, as the loader's fetch sees it (one hub path: sd35wb.hub)."""
    return Path(hub.hub_cache_dir())


def hf_offline() -> bool:
    return hub.is_offline()


def _download_hint(k: KnownLora) -> str:
    return (f"`hf download {k.repo_id} {k.filename}` on a machine with internet (then copy the Hugging Face cache), "
            f"or save the file into ComfyUI's models/loras folder and pick it from the list")


def explain_hub_error(k: KnownLora, exc: BaseException, cache: Path) -> str:
    """A message that says what went wrong fetching ``k`` and what to do (classified by hub.classify)."""
    where = f"{k.repo_id}/{k.filename}"
    kind = exc.kind if isinstance(exc, hub.DownloadFailed) else hub.classify(exc)
    exc = exc.exc if isinstance(exc, hub.DownloadFailed) else exc
    if kind == "disk_full":
        return (f"lcm_lora: not enough disk space to download {where} into {cache}: free some space (the file is "
                f"about 70-400 MB) or point HF_HOME / HF_HUB_CACHE at a bigger disk, then queue again.")
    if kind == "gated":
        return (f"lcm_lora: {k.repo_id} is gated: accept its terms at https://huggingface.co/{k.repo_id} with your account, "
                f"then log in once (`hf auth login`) or set HF_TOKEN for ComfyUI, and queue again.")
    if kind == "refused":
        return (f"lcm_lora: Hugging Face refused {where} (not found or not authorised). If you use a private mirror, "
                f"log in once (`hf auth login`) or set HF_TOKEN for ComfyUI; otherwise {_download_hint(k)}.")
    if kind in ("offline", "unreachable"):
        return _not_cached(k, cache)
    return f"lcm_lora: downloading {where} failed ({type(exc).__name__}: {exc}). {_download_hint(k)[0].upper()}{_download_hint(k)[1:]}."


def _not_cached(k: KnownLora, cache: Path) -> str:
    return (f"lcm_lora: {k.repo_id}/{k.filename} is not in the Hugging Face cache ({cache}) and could not be downloaded "
            f"({'HF_HUB_OFFLINE is set' if hf_offline() else 'no connection to the hub'}). "
            f"Connect and queue again, or {_download_hint(k)}.")


def cached_path(k: KnownLora, cache: Path | None = None) -> Path | None:
    """The file in the hub cache (huggingface_hub's own lookup, as for the loader), or None."""
    got = hub.cached(k.repo_id, k.filename, str(cache or hf_cache_dir()))
    return Path(got) if got else None


def fetch_known(k: KnownLora, cache: Path | None = None) -> Path:
    """Path of a known LCM-LoRA: from the hub cache, else downloaded (sd35wb.hub.download, the
    loader's path: HF_ENDPOINT, HF_HUB_CACHE / HF_HOME and HF_HUB_OFFLINE honoured).

    The token comes from HF_TOKEN or the login cache (``hf auth login``) only; offline mode
    never touches the network. Raises ValueError saying what to do."""
    cache = Path(cache) if cache else hf_cache_dir()
    try:
        hit = cached_path(k, cache)
        if hit is not None:
            return hit
        if hf_offline():
            raise ValueError(_not_cached(k, cache))
        token = hub._hf().get_token()  # HF_TOKEN, else the `hf auth login` cache; None is fine (public)
        return Path(hub.download(k.repo_id, k.filename, str(cache), token=token))
    except hub.DownloadFailed as e:
        raise ValueError(explain_hub_error(k, e, cache)) from e.exc
    except hub.HubError as e:  # huggingface_hub missing
        raise ValueError(f"lcm_lora: {e} ({k.repo_id} cannot be downloaded; or {_download_hint(k)})") from e
