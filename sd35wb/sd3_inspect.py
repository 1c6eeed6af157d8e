"""Tell what a ``.safetensors`` file holds from its JSON header alone (no tensor is read).

Used by the SD3.5 loader to check every file *before* the host loads it, so a wrong file gives
a message that names the file and what was expected instead of a stack trace from deep inside
the host:

* :func:`read_header` reads the header with the pack's one strict reader
  (``safetensors_header``) and words its errors for a loader input (a truncated download fails here).
* :func:`inspect_model` classifies a diffusion-model file: ComfyUI single-file
  (``model.diffusion_model.joint_blocks.N...`` or bare ``joint_blocks.N...``), diffusers layout
  (``transformer_blocks.N...``, e.g. SimpleTuner's ``transformer/diffusion_pytorch_model.safetensors``)
  or a full checkpoint with the VAE / text encoders inside; counts joint blocks, finds MMDiT-X
  ``attn2`` blocks and RMS qk-norm, and detects the SD3.5 variant:
  Medium = ``attn2`` present and 24 joint blocks, Large = 38 joint blocks without ``attn2``
  (Large Turbo has Large's exact shapes; only the user or the file name can tell), anything else
  "custom". A file that is not an MMDiT gets an error saying what family it looks like.
* :func:`inspect_text_encoder` tells CLIP-L (hidden 768, 12 layers), CLIP-G (1280, 32),
  CLIP-H (1024, 24) and T5 (``encoder.block.N.layer...``; XXL = d_model 4096) apart, and
  :func:`check_text_encoder` raises when a slot holds the wrong kind.

Plain module: imports no torch / ComfyUI.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from . import safetensors_header as st

COMFY_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TE_PREFIX = "text_encoders."

MEDIUM_BLOCKS = 24
LARGE_BLOCKS = 38

VARIANT_CHOICES = ("auto", "medium", "large", "large_turbo")


class ModelFileError(ValueError):
    """A file that cannot be used where it was given; the message says why and what to do."""


@dataclass
class Tensor:
    dtype: str
    shape: tuple[int, ...]


@dataclass
class Header:
    path: str
    tensors: dict[str, Tensor]
    metadata: dict[str, str]


def _name(path: str) -> str:
    return os.path.basename(path) or path


def read_header(path: str, what: str = "file") -> Header:
    """Parse ``path``'s safetensors header; raise :class:`ModelFileError` for anything that is not
    a complete safetensors file. ``what`` names the input in messages (e.g. ``"model_name"``)."""
    name = _name(path)
    if not os.path.exists(path):
        raise ModelFileError(f"{what}: {path} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext in st.PICKLE_SUFFIXES:
        raise ModelFileError(
            f"{what}: {name} is a {ext} file (a Python pickle, which can run code when loaded); this pack "
            "only loads .safetensors. Download the .safetensors version of the model.")
    try:
        h = st.read_header(path)
    except st.SafetensorsError as e:
        hint = " Download it again." if e.kind in ("truncated", "short") else \
            " Expected a .safetensors model file." if e.kind in ("not_json", "too_large") else ""
        raise ModelFileError(f"{what}: {e}.{hint}") from e
    tensors = {k: Tensor(v["dtype"], tuple(v["shape"])) for k, v in h.tensors.items()}
    return Header(path, tensors, {k: v for k, v in h.metadata.items() if isinstance(v, str)})


# ---------------------------------------------------------------------------------------------
# Diffusion models


@dataclass
class ModelInfo:
    path: str
    layout: str  # "comfy" (model.diffusion_model.*), "bare" (joint_blocks.* at top level), "diffusers"
    num_blocks: int
    attn2_blocks: list[int]
    qk_norm: bool
    hidden: int | None
    has_vae: bool = False
    text_encoders: list[str] = field(default_factory=list)  # of "clip_l", "clip_g", "t5xxl" found inside
    detected: str = "custom"  # "medium", "large" or "custom" (from shapes only)

    @property
    def is_checkpoint(self) -> bool:
        return self.has_vae or bool(self.text_encoders)

    def describe(self) -> str:
        bits = [f"{self.num_blocks} joint blocks"]
        if self.attn2_blocks:
            bits.append(f"MMDiT-X attn2 on {len(self.attn2_blocks)} blocks")
        if self.qk_norm:
            bits.append("RMS qk-norm")
        if self.hidden:
            bits.append(f"hidden {self.hidden}")
        bits.append({"comfy": "single-file", "bare": "single-file (no prefix)", "diffusers": "diffusers layout"}[self.layout])
        if self.has_vae:
            bits.append("VAE inside")
        if self.text_encoders:
            bits.append("text encoders inside: " + ", ".join(self.text_encoders))
        return ", ".join(bits)


def _indices(keys, pattern: str) -> set[int]:
    rx = re.compile(pattern)
    out = set()
    for k in keys:
        m = rx.match(k)
        if m:
            out.add(int(m.group(1)))
    return out


def guess_family(tensors: dict[str, Tensor]) -> str:
    """A short human description of what a non-MMDiT state dict looks like."""
    keys = list(tensors)

    def has(sub: str) -> bool:
        return any(sub in k for k in keys)

    te = _text_encoder_kind(tensors)
    if te is not None:
        return f"a {te[0]} text encoder"
    if has("lora_A.") or has("lora_B.") or has("lora_up.") or has("lora_down.") or any(k.startswith("lora_") for k in keys):
        return "a LoRA"
    if has("double_blocks.0.img_attn") or has("single_transformer_blocks.0."):
        return "a Flux model"
    if has("input_blocks.0.0.weight"):
        ctx = [t.shape[1] for k, t in tensors.items() if k.endswith("attn2.to_k.weight") and len(t.shape) == 2]
        fam = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x", 2048: "SDXL-family"}.get(ctx[0] if ctx else -1,
                                                                                                  "Stable Diffusion")
        return f"a {fam} UNet model (not SD3)"
    if has("down_blocks.0.resnets.0.conv1.weight") and has("conv_in.weight") and has("time_embedding"):
        return "a diffusers-layout UNet model (SD1.x/2.x/SDXL, not SD3)"
    if has("encoder.down.0.") or has("decoder.up.0.") or has("encoder.down_blocks.0.") or has("decoder.up_blocks.0."):
        return "a VAE"
    if has("blocks.0.attn.qkv") or has("final_layer.linear"):
        return "a DiT-style model of another family"
    return "an unrecognised model"


def inspect_model(path: str, what: str = "model_name") -> ModelInfo:
    """Classify ``path`` as an SD3 / SD3.5 MMDiT file or raise :class:`ModelFileError`."""
    h = read_header(path, what)
    t = h.tensors
    keys = list(t)
    name = _name(path)
    layout = None
    prefix = ""
    if any(k.startswith(COMFY_PREFIX + "joint_blocks.") for k in keys):
        layout, prefix = "comfy", COMFY_PREFIX
    elif any(k.startswith("joint_blocks.") for k in keys):
        layout = "bare"
    elif any(k.startswith("transformer_blocks.") for k in keys) and "pos_embed.proj.weight" in t \
            and "context_embedder.weight" in t and not any(k.startswith("single_transformer_blocks.") for k in keys):
        layout = "diffusers"
    if layout is None:
        family = guess_family(t)
        raise ModelFileError(
            f"{what}: {name} is not an SD3 / SD3.5 (MMDiT) model: it looks like {family}. Expected an SD3.5 model "
            "such as sd3.5_medium.safetensors or sd3.5_large.safetensors (single-file or diffusers "
            "transformer/diffusion_pytorch_model.safetensors).")
    has_vae = any(k.startswith(VAE_PREFIX) for k in keys)
    tes = [n for n in ("clip_l", "clip_g", "t5xxl") if any(k.startswith(f"{TE_PREFIX}{n}.") for k in keys)]
    if layout in ("comfy", "bare"):
        p = re.escape(prefix)
        blocks = _indices(keys, p + r"joint_blocks\.(\d+)\.")
        attn2 = _indices(keys, p + r"joint_blocks\.(\d+)\.x_block\.attn2\.")
        qk = any(re.match(p + r"joint_blocks\.\d+\.x_block\.attn\.ln_q\.weight$", k) for k in keys)
        emb = t.get(prefix + "x_embedder.proj.weight")
    else:
        blocks = _indices(keys, r"transformer_blocks\.(\d+)\.")
        attn2 = _indices(keys, r"transformer_blocks\.(\d+)\.attn2\.")
        qk = any(re.match(r"transformer_blocks\.\d+\.attn\.norm_q\.weight$", k) for k in keys)
        emb = t.get("pos_embed.proj.weight")
    info = ModelInfo(path=path, layout=layout, num_blocks=(max(blocks) + 1) if blocks else 0,
                     attn2_blocks=sorted(attn2), qk_norm=qk, hidden=emb.shape[0] if emb is not None else None,
                     has_vae=has_vae, text_encoders=tes)
    if info.num_blocks == 0:
        raise ModelFileError(f"{what}: {name} has no MMDiT joint blocks; expected an SD3 / SD3.5 model.")
    info.detected = detect_variant(info)
    return info


def detect_variant(info: ModelInfo) -> str:
    """"medium", "large" or "custom" from the shapes (Large Turbo cannot be told from Large)."""
    if info.attn2_blocks and info.num_blocks == MEDIUM_BLOCKS:
        return "medium"
    if not info.attn2_blocks and info.num_blocks == LARGE_BLOCKS:
        return "large"
    return "custom"


def resolve_variant(info: ModelInfo, choice: str, filename: str | None = None) -> tuple[str, str]:
    """(variant, reason) for the user's ``choice`` ("auto", "medium", "large", "large_turbo").

    "auto": Medium / Large from the shapes; Large whose file name contains "turbo" -> Large Turbo
    (the shapes are identical); other block counts -> "custom"."""
    if choice not in VARIANT_CHOICES:
        raise ModelFileError(f"variant: unknown choice {choice!r}; expected one of {list(VARIANT_CHOICES)}")
    fname = (filename or os.path.basename(info.path)).lower()
    if choice != "auto":
        if info.detected != "custom" and not (info.detected == "large" and choice == "large_turbo") \
                and info.detected != choice:
            return choice, f"variant set to {choice} by the user (the weights look like {info.detected})"
        return choice, f"variant set to {choice} by the user"
    if info.detected == "large" and "turbo" in fname:
        return "large_turbo", "Large shapes (38 blocks, no attn2) and 'turbo' in the file name"
    if info.detected == "medium":
        return "medium", "MMDiT-X attn2 blocks and 24 joint blocks"
    if info.detected == "large":
        return "large", "38 joint blocks without attn2 (name a file *turbo* or set variant for Large Turbo)"
    return "custom", (f"{info.num_blocks} joint blocks{' with attn2' if info.attn2_blocks else ''} match neither "
                      "Medium (24 + attn2) nor Large (38)")


# ---------------------------------------------------------------------------------------------
# Text encoders

TE_SLOTS = {  # slot -> (kind the slot expects, human label)
    "clip_l": ("CLIP-L", "CLIP-L (OpenAI CLIP ViT-L/14 text model: hidden 768, 12 layers), e.g. clip_l.safetensors"),
    "clip_g": ("CLIP-G", "CLIP-G (OpenCLIP ViT-bigG text model: hidden 1280, 32 layers), e.g. clip_g.safetensors"),
    "t5xxl": ("T5-XXL", "T5-XXL encoder (d_model 4096, 24 blocks), e.g. t5xxl_fp16.safetensors or "
                        "t5xxl_fp8_e4m3fn.safetensors"),
}

_CLIP_BY_HIDDEN = {768: "CLIP-L", 1024: "CLIP-H", 1280: "CLIP-G"}
_CLIP_BY_LAYERS = {12: "CLIP-L", 24: "CLIP-H", 32: "CLIP-G"}
_T5_BY_DMODEL = {4096: "T5-XXL", 2048: "T5-XL", 1024: "T5-large", 768: "T5-base", 512: "T5-small"}


def _text_encoder_kind(tensors: dict[str, Tensor]) -> tuple[str, str, int | None] | None:
    """(kind, details, width) for a bare text-encoder state dict, or None when it is not one."""
    keys = list(tensors)
    layers = _indices(keys, r"(?:.*\.)?text_model\.encoder\.layers\.(\d+)\.")
    if layers:
        n = max(layers) + 1
        hidden = None
        for k, v in tensors.items():
            if k.endswith("text_model.final_layer_norm.weight") or k.endswith("token_embedding.weight"):
                hidden = v.shape[-1]
                break
        kind = _CLIP_BY_HIDDEN.get(hidden) or _CLIP_BY_LAYERS.get(n) or "CLIP"
        return kind, f"{n} layers" + (f", hidden {hidden}" if hidden else ""), hidden
    blocks = _indices(keys, r"(?:.*\.)?encoder\.block\.(\d+)\.layer\.")
    if blocks:
        n = max(blocks) + 1
        d = None
        for k, v in tensors.items():
            if k.endswith("encoder.final_layer_norm.weight"):
                d = v.shape[0]
                break
        if d is None and "shared.weight" in tensors:
            d = tensors["shared.weight"].shape[-1]
        kind = _T5_BY_DMODEL.get(d) or ("T5-XXL" if n == 24 and any("wi_1" in k for k in keys) else "T5")
        dtypes = sorted({v.dtype for v in tensors.values() if len(v.shape) == 2})
        return kind, f"{n} blocks" + (f", d_model {d}" if d else "") + (f", {'/'.join(dtypes)}" if dtypes else ""), d
    return None


@dataclass
class TextEncoderInfo:
    path: str
    kind: str
    details: str
    dtype: str | None = None  # dominant dtype of the 2-D weights (e.g. "F16", "F8_E4M3")
    width: int | None = None  # CLIP hidden size / T5 d_model, when the header shows it


def inspect_text_encoder(path: str, what: str = "text encoder") -> TextEncoderInfo:
    h = read_header(path, what)
    kind = _text_encoder_kind(h.tensors)
    if kind is None:
        raise ModelFileError(f"{what}: {_name(path)} is not a text encoder: it looks like {guess_family(h.tensors)}.")
    counts: dict[str, int] = {}
    for v in h.tensors.values():
        if len(v.shape) == 2:
            counts[v.dtype] = counts.get(v.dtype, 0) + 1
    dtype = max(counts, key=counts.get) if counts else None
    return TextEncoderInfo(path, kind[0], kind[1], dtype, kind[2])


def check_text_encoder(path: str, slot: str) -> TextEncoderInfo:
    """Inspect ``path`` for the loader input ``slot`` ("clip_l", "clip_g", "t5xxl"); raise
    :class:`ModelFileError` naming the slot, the file, what it is and what was expected."""
    expected, label = TE_SLOTS[slot]
    try:
        info = inspect_text_encoder(path, slot)
    except ModelFileError as e:
        raise ModelFileError(f"{e} Expected {label}.") from e
    if info.kind != expected:
        raise ModelFileError(
            f"{slot}: {_name(path)} is a {info.kind} text encoder ({info.details}), not {expected}. Expected {label}."
            + (f" Put it in the {_slot_for(info.kind)} input instead." if _slot_for(info.kind) else ""))
    width = _TE_WIDTH[expected]
    if info.width is not None and info.width != width:  # right key names, wrong shapes: the host would fail late
        raise ModelFileError(
            f"{slot}: {_name(path)} has {expected}'s layout but width {info.width} ({info.details}); the host builds "
            f"{expected} with width {width}. Expected {label}.")
    return info


_TE_WIDTH = {"CLIP-L": 768, "CLIP-G": 1280, "T5-XXL": 4096}


def _slot_for(kind: str) -> str | None:
    for slot, (k, _) in TE_SLOTS.items():
        if k == kind:
            return slot
    return None


# ---------------------------------------------------------------------------------------------
# VAEs

SD3_LATENT_CHANNELS = 16


def check_vae(path: str, what: str = "vae") -> None:
    """Refuse a VAE file whose latent channels are not SD3's 16 (an SD1.x / SDXL VAE has 4)."""
    h = read_header(path, what)
    t = h.tensors
    for key in ("decoder.conv_in.weight", "first_stage_model.decoder.conv_in.weight", "vae.decoder.conv_in.weight"):
        if key in t and len(t[key].shape) == 4:
            ch = t[key].shape[1]
            break
    else:
        if not any(k.startswith(("decoder.", "encoder.", "first_stage_model.", "taesd_", "vae.")) for k in t):
            raise ModelFileError(f"{what}: {_name(path)} is not a VAE: it looks like {guess_family(t)}. Expected the "
                                 "SD3 / SD3.5 VAE (16 latent channels).")
        return
    if ch != SD3_LATENT_CHANNELS:
        fam = " (an SD1.x / SD2.x / SDXL VAE)" if ch == 4 else ""
        raise ModelFileError(f"{what}: {_name(path)} is a {ch}-channel VAE{fam}; SD3.5 needs the 16-channel SD3 VAE "
                             "(use 'from checkpoint' with Stability's single-file model, or taesd3 for previews).")


# Names SD3.5 files are published under (Stability's repos, Comfy-Org's fp8 repackages), and the
# words people keep when they rename them.
PUBLISHED_SD35 = ("sd3.5_medium.safetensors", "sd3.5_large.safetensors", "sd3.5_large_turbo.safetensors",
                  "sd3.5_large_fp8_scaled.safetensors", "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors")
_SD35_WORDS = re.compile(r"sd[\s._-]*3[._-]?5|stable[\s._-]*diffusion[\s._-]*3[._-]?5", re.IGNORECASE)
HEADER_PROBES = 32  # files whose headers a default may read (the node list is built on every /object_info)


def default_model(names, fallback: str, is_sd3=None) -> str:
    """The file a new SD3.5 Loader starts on: a published SD3.5 name on disk, then a file whose name
    says SD3.5, then any SD3 file (``is_sd3(name)``, a header check, also applied to the names that
    say SD3.5: a broken or renamed file is skipped); else ``fallback`` (a name fetch_missing can
    download). Never merely the alphabetically first file."""
    names = list(names)
    base = {n: re.split(r"[\\/]", n)[-1] for n in names}
    for pub in PUBLISHED_SD35:
        for n in names:
            if base[n] == pub:
                return n
    ok = is_sd3 or (lambda n: True)
    probes = [n for n in names if n.lower().endswith(".safetensors")][:HEADER_PROBES]
    said = [n for n in probes if _SD35_WORDS.search(base[n])]
    for n in said + ([n for n in probes if n not in said] if is_sd3 is not None else []):
        if ok(n):
            return n
    return fallback
