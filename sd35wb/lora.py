"""LoRA files without ComfyUI: key formats, modules, and which modules land on a model.

A LoRA file holds, per patched layer ("module"), a down and an up matrix (and maybe an alpha).
The host's loader (comfy/lora.py) builds a map {LoRA module name: model weight key} for the
model in hand and patches every module whose name is in it; any other key is only logged as
"lora key not loaded" and the image comes out as if the LoRA were not there. This module
groups a file's keys into modules, says which naming scheme wrote them, and matches the
modules against a key map and the model's weight shapes, so a LoRA for another model is an
error naming the file instead of a silently unchanged image.

Formats seen from SimpleTuner / diffusers / PEFT / kohya (``detect_format``):

- ``peft``: ``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` (``unet.`` for SDXL), no
  alpha tensors (diffusers' ``save_lora_weights`` with PEFT's state dict);
- ``diffusers``: the same with ``lora.down.weight`` / ``lora.up.weight`` on some or all modules
  (``convert_state_dict_to_diffusers``, which SimpleTuner applies before saving);
- ``simpletuner-comfyui``: SimpleTuner's ``--lora_format=comfyui``: ``lora_A`` / ``lora_B`` plus an
  ``alpha`` tensor per module, ``transformer.`` kept for SD3, ``unet.`` replaced by
  ``diffusion_model.`` for SDXL;
- ``comfyui``: ``diffusion_model.<ComfyUI module>.lora_up`` / ``lora_down`` (ComfyUI's own names);
- ``kohya``: ``lora_unet_...`` / ``lora_te...``; ``lycoris``: ``lycoris_...``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# (suffix, role), longest first so ".lora_A.default.weight" wins over ".weight" forms.
_PARTS = (
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_mid.weight", "mid"), (".lora_A", "down"), (".lora_B", "up"),
    (".alpha", "alpha"), (".dora_scale", "dora"),
    (".diff", "diff"), (".diff_b", "diff"), (".w_norm", "diff"), (".b_norm", "diff"), (".set_weight", "diff"),
    (".hada_w1_a", "other"), (".hada_w1_b", "other"), (".hada_w2_a", "other"), (".hada_w2_b", "other"),
    (".lokr_w1", "other"), (".lokr_w2", "other"), (".lokr_w1_a", "other"), (".lokr_w1_b", "other"),
    (".lokr_w2_a", "other"), (".lokr_w2_b", "other"), (".oft_blocks", "other"), (".oft_diag", "other"),
)
_PARTS = tuple(sorted(_PARTS, key=lambda p: -len(p[0])))

FORMAT_PEFT = "peft"
FORMAT_DIFFUSERS = "diffusers"
FORMAT_SIMPLETUNER_COMFYUI = "simpletuner-comfyui"
FORMAT_COMFYUI = "comfyui"
FORMAT_KOHYA = "kohya"
FORMAT_LYCORIS = "lycoris"
FORMAT_UNKNOWN = "unknown"

_TE_PREFIXES = ("lora_te", "text_encoder", "te_", "te1_", "te2_", "text_encoders.", "lora_te1_", "lora_te2_",
                "lora_te3_", "text_model.")


def split_key(key: str) -> tuple[str, str] | None:
    """(module, role) of one LoRA tensor name; None when the key is no LoRA part."""
    for suffix, role in _PARTS:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], role
    return None


def is_text_encoder(module: str) -> bool:
    return module.startswith(_TE_PREFIXES)


@dataclass
class Module:
    name: str
    down: tuple | None = None  # shape of the down / A matrix: [rank, in, ...]
    up: tuple | None = None  # shape of the up / B matrix: [out, rank, ...]
    roles: set = field(default_factory=set)

    @property
    def complete(self) -> bool:
        """Has what the host's loader needs to build a patch."""
        return (self.down is not None and self.up is not None) or "diff" in self.roles or "other" in self.roles


def group_modules(shapes: Mapping[str, Iterable[int]]) -> tuple[dict[str, Module], list[str]]:
    """({module name: Module}, keys that are no LoRA part) from ``{tensor name: shape}``."""
    modules: dict[str, Module] = {}
    stray = []
    for key, shape in shapes.items():
        parsed = split_key(key)
        if parsed is None:
            stray.append(key)
            continue
        name, role = parsed
        m = modules.setdefault(name, Module(name))
        m.roles.add(role)
        if role == "down":
            m.down = tuple(shape)
        elif role == "up":
            m.up = tuple(shape)
    return modules, sorted(stray)


def detect_format(keys: Iterable[str]) -> str:
    """Which tool's naming wrote these keys (see the module docstring)."""
    keys = list(keys)
    has = lambda *subs: any(s in k for k in keys for s in subs)  # noqa: E731
    starts = lambda *p: any(k.startswith(p) for k in keys)  # noqa: E731
    if not keys:
        return FORMAT_UNKNOWN
    if starts("lycoris_"):
        return FORMAT_LYCORIS
    if starts("lora_unet_", "lora_te", "lora_transformer_"):
        return FORMAT_KOHYA
    ab = has(".lora_A.", ".lora_B.")
    alpha = any(k.endswith(".alpha") for k in keys)
    if starts("diffusion_model."):
        if ab and (has(".down_blocks.", ".up_blocks.", ".mid_block.", ".transformer_blocks.") or alpha):
            return FORMAT_SIMPLETUNER_COMFYUI
        return FORMAT_COMFYUI
    if starts("transformer.", "unet.", "text_encoder"):
        if has(".lora.down.", ".lora.up.", "_lora.down.", ".lora_linear_layer."):
            return FORMAT_DIFFUSERS
        if ab:
            return FORMAT_SIMPLETUNER_COMFYUI if alpha else FORMAT_PEFT
    return FORMAT_UNKNOWN


def _target_shape(target, model_shapes: Mapping[str, tuple]) -> tuple | None:
    """Shape of the weight (or the slice of a fused weight) a key-map entry points at."""
    if isinstance(target, str):
        return tuple(model_shapes[target]) if target in model_shapes else None
    key, sl = target[0], target[1] if len(target) > 1 else None
    if key not in model_shapes:
        return None
    shape = list(model_shapes[key])
    if sl is not None:
        dim, _start, length = sl
        shape[dim] = length
    return tuple(shape)


def _shape_fits(m: Module, weight: tuple) -> bool:
    if m.down is None or m.up is None or len(weight) < 2:
        return True  # not a down/up pair (diff, LoHa...): the host checks those itself
    return m.up[0] == weight[0] and m.down[1] == weight[1]


@dataclass
class LoraMatch:
    """How one LoRA file lands on one model. ``modules`` counts the file's modules that target what
    was checked (the diffusion model, plus the text encoders when a CLIP was given)."""

    file: str
    format: str
    modules: int
    matched: int
    unmatched: list[str] = field(default_factory=list)
    mismatched_shapes: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (module, lora (out, in), model)
    ignored_text_encoder: int = 0  # text-encoder modules left out (no CLIP given)
    stray_keys: list[str] = field(default_factory=list)  # tensors that are no LoRA part
    family_hint: str | None = None  # what the unmatched names look like (UNet / MMDiT / ...)

    def ok(self) -> bool:
        return self.modules > 0 and self.matched == self.modules

    def describe(self) -> str:
        """One line: for a grid label or a report row."""
        head = f"{self.file}: {self.matched}/{self.modules} LoRA modules match"
        extra = [self.format]
        if self.mismatched_shapes:
            extra.append(f"{len(self.mismatched_shapes)} of another width")
        if self.ignored_text_encoder:
            extra.append(f"{self.ignored_text_encoder} text-encoder modules not applied")
        return f"{head} ({', '.join(extra)})"


def _family_of_names(names: Iterable[str]) -> str | None:
    names = list(names)
    if not names:
        return None
    unet = sum(bool(re.search(r"(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)", n))
               for n in names)
    mmdit = sum(bool(re.search(r"(?<!single_)(transformer_blocks|joint_blocks)", n)) and not
                re.search(r"(down_blocks|up_blocks|mid_block|attentions)", n) for n in names)
    flux = sum(bool(re.search(r"(single_transformer_blocks|double_blocks|single_blocks)", n)) for n in names)
    best = max((unet, "a UNet model (SD1.5 / SDXL family)"), (mmdit, "an MMDiT model (SD3 / SD3.5)"),
               (flux, "a Flux-style model"))
    return best[1] if best[0] > len(names) // 2 else None


def match(file: str, shapes: Mapping[str, Iterable[int]], key_map: Mapping[str, object],
          model_shapes: Mapping[str, tuple], with_text_encoder: bool) -> LoraMatch:
    """Match a LoRA's modules (``{tensor name: shape}``) against the host's key map for a model
    (``{LoRA module name: weight key or (key, (dim, start, length))}``) and its weight shapes."""
    modules, stray = group_modules(shapes)
    fmt = detect_format(shapes.keys())
    counted = matched = ignored = 0
    unmatched, bad_shape = [], []
    for name in sorted(modules):
        m = modules[name]
        target = key_map.get(name)
        if target is None and not with_text_encoder and is_text_encoder(name):
            ignored += 1
            continue
        counted += 1
        if target is None or not m.complete:
            unmatched.append(name)
            continue
        weight = _target_shape(target, model_shapes)
        if weight is None:  # the map names a weight this model lacks: the host drops the patch ("NOT LOADED")
            unmatched.append(name)
            continue
        if not _shape_fits(m, weight):
            bad_shape.append((name, (m.up[0], m.down[1]), tuple(weight[:2])))
            continue
        matched += 1
    return LoraMatch(file, fmt, counted, matched, unmatched, bad_shape, ignored, stray,
                     _family_of_names(unmatched) if unmatched else None)


def mismatch_message(m: LoraMatch, model_label: str) -> str:
    """Why a LoRA does not (fully) apply, and what to do: for LoraMismatch."""
    examples = [n for n in m.unmatched[:3]] or [s[0] for s in m.mismatched_shapes[:3]]
    lines = [f"LoRA {m.file}: only {m.matched} of its {m.modules} modules match {model_label}"
             + (f" (e.g. {', '.join(examples)})" if examples else "") + "."]
    if m.modules == 0:
        lines.append("The file holds no LoRA modules for this model (only " + (
            f"{m.ignored_text_encoder} text-encoder modules and no CLIP was given" if m.ignored_text_encoder
            else f"{len(m.stray_keys)} tensors that are no LoRA weights") + ").")
        lines.append("Fix: pick a LoRA file (down/up or lora_A/lora_B weights) trained for this model"
                     + (", or connect the CLIP." if m.ignored_text_encoder else "."))
        return " ".join(lines)
    if m.mismatched_shapes:
        name, lora_shape, model_shape = m.mismatched_shapes[0]
        lines.append(f"{len(m.mismatched_shapes)} modules have the right names but another width ({name}: LoRA "
                     f"{list(lora_shape)}, model {list(model_shape)}): it was trained on another base of this family "
                     "(e.g. an SD3.5 Large LoRA on SD3.5 Medium).")
    elif m.matched == 0 and m.family_hint:
        lines.append(f"Its module names are those of {m.family_hint}: it was trained for another model family "
                     "(e.g. an SDXL LoRA on SD3.5).")
    elif m.matched == 0:
        lines.append("None of its module names are known to this model: another model family, or a naming this "
                     "ComfyUI does not read.")
    else:
        lines.append("The rest name layers this model does not have: a LoRA for a deeper base (more blocks), a "
                     "file merged from several LoRAs, or one cut short.")
    lines.append(f"Fix: use a LoRA trained on the model you load here, or load the base it was trained on "
                 f"(format: {m.format}).")
    return " ".join(lines)


# ---------------------------------------------------------------------------------------------
# Key names the host's loader misses

_DIFFUSERS_UNET = r"(?:down_blocks|mid_block|up_blocks|conv_in|conv_out|conv_norm_out|time_embedding|add_embedding)"
_UNET_ATTN = re.compile(rf"^(unet\.|diffusion_model\.)?({_DIFFUSERS_UNET}\..*\.attn[12])\.(to_q|to_k|to_v|to_out\.0)"
                        r"\.(lora_A\.weight|lora_B\.weight|lora\.down\.weight|lora\.up\.weight|alpha)$")
_UNET_OTHER = re.compile(rf"^diffusion_model\.({_DIFFUSERS_UNET}(?:\..*)?)$")


def comfy_key_renames(keys: Iterable[str]) -> dict[str, str]:
    """Renames that let the host's loader read diffusers-named UNet LoRAs; ``{old: new}`` for those keys
    only (a re-keying, no tensor copies).

    ComfyUI (0.3.75 and 0.33.0, comfy/lora.py model_lora_keys_unet) maps diffusers UNet attention
    projections only in the attention-processor form (``attn1.processor.to_k``, ``processor.to_out``)
    under the prefixes "" and ``unet.``, so PEFT / diffusers >= 0.24 files (``unet.….attn1.to_k.lora_A.weight``)
    and SimpleTuner's ComfyUI format for SDXL (``diffusion_model.<diffusers path>``) would leave those
    keys "not loaded". SD3 / MMDiT names need none: the host maps ``transformer.<diffusers path>``."""
    out = {}
    for k in keys:
        m = _UNET_ATTN.match(k)
        if m:
            prefix = "unet." if m.group(1) else ""
            proj = m.group(3).replace("to_out.0", "to_out")
            out[k] = f"{prefix}{m.group(2)}.processor.{proj}.{m.group(4)}"
            continue
        m = _UNET_OTHER.match(k)
        if m:
            out[k] = f"unet.{m.group(1)}"
    return out
