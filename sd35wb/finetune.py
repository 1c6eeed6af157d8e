"""What a fine-tune is, read from its files: family and flavour, prediction type, zero terminal SNR.

ComfyUI samples a UNet file as v-prediction only when it carries the ``v_pred`` marker key (and
uses the zero-SNR table only with ``ztsnr`` too); everything else is sampled as eps. Many v-pred
fine-tunes say what they are elsewhere:

* kohya-ss (sd-scripts) metadata: ``ss_v_parameterization`` and ``ss_zero_terminal_snr`` ("True" /
  "False"), ``ss_base_model_version`` (``sdxl_base_v1-0``, ``sd_v1``, ``sd_v2``...);
* Stability's ModelSpec: ``modelspec.prediction_type`` (``epsilon`` / ``v``) and
  ``modelspec.architecture`` (``stable-diffusion-xl-v1-base``, ``stable-diffusion-v1``, ...);
* naifu: ``prediction_type`` = ``v`` / ``epsilon``;
* a SimpleTuner run folder: the training config (``config.json`` with ``--prediction_type`` /
  ``--rescale_betas_zero_snr``) and the diffusers scheduler config
  (``pipeline/scheduler/scheduler_config.json``: ``prediction_type``, ``rescale_betas_zero_snr``),
  since SimpleTuner 4.10.1 never writes the marker keys into its safetensors.

Prediction and zero-SNR are decided separately (turning zero-SNR on for every v-pred model breaks
some, e.g. EasyFluff): zero-SNR is "yes" or "no" only when a source says so, otherwise "unknown".
Every answer carries its source; sources that disagree give a message naming both, and the
strongest source wins (marker keys, which ComfyUI itself reads, then the file's metadata, then the
run's training config, then its scheduler config, then the weights' shapes).

Plain module: no torch / ComfyUI.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import sd3_inspect

PREDICTIONS = ("eps", "v", "flow")
ZSNR = ("yes", "no", "unknown")
FAMILIES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sd3": "SD3 / SD3.5", "flux": "Flux", "unknown": "unknown"}
FLOW_FAMILIES = ("sd3", "flux")

# Samplers reported to collapse on zero-terminal-SNR schedules (ComfyUI pull request 11360: heun is
# step-size sensitive there; heunpp2 shares its sigma-space Heun step). exp_heun_2_x0 (data
# prediction in logSNR time) was added to ComfyUI as their alternative.
ZSNR_UNSAFE_SAMPLERS = ("heun", "heunpp2")
ZSNR_ALTERNATIVE = "exp_heun_2_x0"
ZSNR_FALLBACK = "euler"

# SDXL-family UNets ComfyUI knows, by transformer depth per input block (supported_models.py).
_SDXL_SHAPES = {(0, 0, 2, 2, 10, 10): "SDXL", (0, 0, 2, 2, 4, 4): "SSD-1B", (0, 0, 1, 1, 2, 2): "Segmind Vega",
                (0, 2, 5): "KOALA-700M", (0, 2, 2): "KOALA-1B"}
_RANK = {"marker": 0, "metadata": 1, "training config": 2, "scheduler config": 3, "weights": 4, "default": 5}
RUN_CONFIGS = ("config.json", "config/config.json")
SCHEDULER_CONFIGS = ("pipeline/scheduler/scheduler_config.json", "scheduler/scheduler_config.json")


def _read_header(path: str | os.PathLike):
    """The one place this module reads a safetensors header (repoint here when the readers merge)."""
    return sd3_inspect.read_header(str(path), "model file")


@dataclass(frozen=True)
class Finding:
    value: str
    source: str  # e.g. "metadata ss_v_parameterization=True"
    kind: str = "default"  # marker / metadata / training config / scheduler config / weights / default


@dataclass
class Detection:
    path: str
    family: Finding
    flavour: Finding
    prediction: Finding
    zsnr: Finding
    conflicts: list[str] = field(default_factory=list)

    @property
    def is_v(self) -> bool:
        return self.prediction.value == "v"

    def summary(self) -> str:
        fam = FAMILIES.get(self.family.value, self.family.value)
        flav = f" ({self.flavour.value})" if self.flavour.value not in ("", fam) else ""
        pred = {"v": "v-prediction", "eps": "eps", "flow": "flow matching"}.get(self.prediction.value,
                                                                               self.prediction.value)
        out = (f"{fam}{flav}; prediction {pred} [{self.prediction.source}]; zero-SNR {self.zsnr.value} "
               f"[{self.zsnr.source}]")
        if self.conflicts:
            out += " | " + " | ".join(self.conflicts)
        return out

    def as_dict(self) -> dict:
        def f(x: Finding) -> dict:
            return {"value": x.value, "source": x.source}

        return {"file": self.path, "family": f(self.family), "flavour": f(self.flavour),
                "prediction": f(self.prediction), "zsnr": f(self.zsnr), "conflicts": list(self.conflicts),
                "summary": self.summary()}


# ----------------------------------------------------------------------------- value parsing

def _truth(raw) -> bool | None:
    if isinstance(raw, bool):
        return raw
    s = str(raw).strip().lower()
    if s in ("true", "1", "yes", "on"):
        return True
    if s in ("false", "0", "no", "off", "none", ""):
        return False
    return None


def _prediction(raw) -> str | None:
    s = str(raw).strip().lower().replace("-", "_")
    if s in ("v", "v_prediction", "v_pred", "vpred", "v_parameterization"):
        return "v"
    if s in ("eps", "epsilon", "noise"):
        return "eps"
    if s in ("flow", "flow_matching", "flow_prediction", "rectified_flow", "rf"):
        return "flow"
    return None


def _family_from_architecture(arch: str) -> tuple[str, str] | None:
    """ModelSpec ``modelspec.architecture`` -> (family, flavour)."""
    a = arch.strip().lower()
    base = a.partition("/")[0]
    flavour = arch.strip()
    for prefix, fam in (("stable-diffusion-xl", "sdxl"), ("stable-diffusion-v1", "sd1"), ("stable-diffusion-v2", "sd2"),
                        ("stable-diffusion-3", "sd3"), ("flux", "flux")):
        if base.startswith(prefix):
            return fam, flavour
    return None


def _family_from_kohya(version: str) -> str | None:
    v = version.strip().lower()
    if v.startswith("sdxl"):
        return "sdxl"
    if v.startswith(("sd_v1", "sd_1", "v1")):
        return "sd1"
    if v.startswith(("sd_v2", "sd_2", "v2")):
        return "sd2"
    if v.startswith("sd3"):
        return "sd3"
    if v.startswith("flux"):
        return "flux"
    return None


# ----------------------------------------------------------------------------- claims from each source

Claim = tuple[str, str, str, str]  # (field, value, source, kind)


def _marker_claims(tensors: dict) -> list[Claim]:
    out = []
    if "v_pred" in tensors:
        out.append(("prediction", "v", "marker key 'v_pred'", "marker"))
    if "ztsnr" in tensors:
        out.append(("zsnr", "yes", "marker key 'ztsnr'", "marker"))
    return out


def _metadata_claims(meta: dict) -> list[Claim]:
    out: list[Claim] = []
    if "ss_v_parameterization" in meta:
        t = _truth(meta["ss_v_parameterization"])
        if t is not None:
            out.append(("prediction", "v" if t else "eps", f"metadata ss_v_parameterization={meta['ss_v_parameterization']}",
                        "metadata"))
    if "ss_zero_terminal_snr" in meta:
        t = _truth(meta["ss_zero_terminal_snr"])
        if t is not None:
            out.append(("zsnr", "yes" if t else "no", f"metadata ss_zero_terminal_snr={meta['ss_zero_terminal_snr']}",
                        "metadata"))
    for key in ("modelspec.prediction_type", "prediction_type"):
        if key in meta:
            p = _prediction(meta[key])
            if p is not None:
                out.append(("prediction", p, f"metadata {key}={meta[key]}", "metadata"))
    for key in ("modelspec.zero_terminal_snr", "zero_terminal_snr", "ztsnr"):
        if key in meta:
            t = _truth(meta[key])
            if t is not None:
                out.append(("zsnr", "yes" if t else "no", f"metadata {key}={meta[key]}", "metadata"))
    if "modelspec.architecture" in meta:
        fam = _family_from_architecture(str(meta["modelspec.architecture"]))
        if fam is not None:
            out.append(("family", fam[0], f"metadata modelspec.architecture={meta['modelspec.architecture']}", "metadata"))
            if fam[0] == "sd2" and str(meta["modelspec.architecture"]).lower().split("/")[0].endswith("-v"):
                out.append(("prediction", "v", f"metadata modelspec.architecture={meta['modelspec.architecture']}",
                            "metadata"))
    if "ss_base_model_version" in meta:
        fam = _family_from_kohya(str(meta["ss_base_model_version"]))
        if fam is not None:
            out.append(("family", fam, f"metadata ss_base_model_version={meta['ss_base_model_version']}", "metadata"))
    return out


def _depths(keys, pattern: re.Pattern) -> tuple[int, ...]:
    """Transformer depth per res block of the input blocks (the stem conv and downsamplers skipped)."""
    blocks: dict[int, int] = {}
    skip = set()
    for k in keys:
        m = pattern.match(k)
        if m:
            i, j = int(m.group(1)), m.group(2)
            blocks.setdefault(i, 0)
            if j is not None:
                blocks[i] = max(blocks[i], int(j) + 1)
            if k.endswith((f"input_blocks.{i}.0.op.weight", f"input_blocks.{i}.0.weight")):
                skip.add(i)  # downsampler / stem conv
    return tuple(blocks[i] for i in sorted(blocks) if i not in skip)


_INPUT_BLOCK = re.compile(r"^(?:model\.diffusion_model\.)?input_blocks\.(\d+)\.\d+\.(?:transformer_blocks\.(\d+)\.)?")


def _weights_claims(tensors: dict) -> tuple[list[Claim], str | None]:
    """(claims, flavour) from tensor names and shapes alone."""
    keys = list(tensors)

    def has(sub: str) -> bool:
        return any(sub in k for k in keys)

    src = "weights"
    if has("joint_blocks.0.context_block") or (has("transformer_blocks.0.attn.add_q_proj") and has("context_embedder")):
        attn2 = has(".x_block.attn2.") or has(".attn2.add_q_proj") or has("transformer_blocks.0.attn2.to_q")
        return [("family", "sd3", "weights (MMDiT joint blocks)", src)], "MMDiT-X" if attn2 else "MMDiT"
    if has("double_blocks.0.img_attn") or has("single_transformer_blocks.0."):
        return [("family", "flux", "weights (Flux double/single blocks)", src)], None
    ctx = [t.shape[1] for k, t in tensors.items() if k.endswith("attn2.to_k.weight") and len(t.shape) == 2]
    if not ctx:
        return [], None
    fam = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(ctx[0])
    if fam is None:
        return [], None
    claims = [("family", fam, f"weights (cross-attention width {ctx[0]})", src)]
    flavour = None
    if fam == "sdxl":
        depth = _depths([k for k in keys if "input_blocks." in k], _INPUT_BLOCK)
        flavour = _SDXL_SHAPES.get(depth)
        if flavour is None:
            adm = [t.shape[1] for k, t in tensors.items() if k.endswith("label_emb.0.0.weight")]
            flavour = "SDXL refiner" if adm and adm[0] == 2560 else None
    return claims, flavour


def _config_claims(doc: dict, source: str, kind: str) -> list[Claim]:
    """SimpleTuner training config (keys with or without the leading ``--``) or a diffusers scheduler config."""
    out: list[Claim] = []

    def get(name: str):
        for k in (name, f"--{name}"):
            if k in doc:
                return k, doc[k]
        return None, None

    k, v = get("prediction_type")
    if k is not None and v is not None:
        p = _prediction(v)
        if p is not None:
            out.append(("prediction", p, f"{source} {k.lstrip('-')}={v}", kind))
    k, v = get("rescale_betas_zero_snr")
    if k is not None:
        t = _truth(v)
        if t is not None:
            out.append(("zsnr", "yes" if t else "no", f"{source} {k.lstrip('-')}={v}", kind))
    cls = str(doc.get("_class_name", ""))
    if cls.startswith("FlowMatch"):
        out.append(("prediction", "flow", f"{source} _class_name={cls}", kind))
    k, v = get("model_family")
    if k is not None and isinstance(v, str):
        fam = {"sdxl": "sdxl", "sd3": "sd3", "flux": "flux", "legacy": "sd1"}.get(v.strip().lower())
        if fam is not None:
            out.append(("family", fam, f"{source} {k.lstrip('-')}={v}", kind))
    return out


def _load_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def run_claims(run_dir: str | os.PathLike | None) -> list[Claim]:
    """What a SimpleTuner run folder says about its model (training config, scheduler config)."""
    if not run_dir:
        return []
    run = Path(run_dir)
    out: list[Claim] = []
    for rel in RUN_CONFIGS:
        doc = _load_json(run / rel)
        # a training config names its model family; a bare diffusers config.json does not
        if doc is not None and any(k.lstrip("-") in ("model_family", "prediction_type") for k in doc):
            out += _config_claims(doc, f"training config {rel}", "training config")
            break
    for rel in SCHEDULER_CONFIGS:
        doc = _load_json(run / rel)
        if doc is not None:
            out += _config_claims(doc, rel, "scheduler config")
            break
    return out


# ----------------------------------------------------------------------------- resolution

def _resolve(name: str, claims: list[Claim], conflicts: list[str]) -> Finding | None:
    mine = sorted((c for c in claims if c[0] == name), key=lambda c: _RANK[c[3]])
    if not mine:
        return None
    best = mine[0]
    for other in mine[1:]:
        if other[1] != best[1]:
            conflicts.append(f"{name}: {best[2]} says {best[1]} but {other[2]} says {other[1]}; using {best[1]} "
                             f"({best[3]} wins over {other[3]}). Fix the file's metadata or set {name} explicitly")
    return Finding(best[1], best[2], best[3])


def _decide(path: str, claims: list[Claim], flavour: str | None) -> Detection:
    conflicts: list[str] = []
    family = _resolve("family", claims, conflicts) or Finding("unknown", "no source names the family")
    prediction = _resolve("prediction", claims, conflicts)
    if prediction is None:
        if family.value in FLOW_FAMILIES:
            prediction = Finding("flow", f"the family ({FAMILIES[family.value]}) is flow matching", "weights")
        else:
            prediction = Finding("eps", "no marker key, metadata or run config says v: ComfyUI's default, eps")
    elif family.value in FLOW_FAMILIES and prediction.value != "flow":
        conflicts.append(f"prediction: {prediction.source} says {prediction.value} but {family.source} is a "
                         "flow-matching family; check the file")
    zsnr = _resolve("zsnr", claims, conflicts)
    if zsnr is None:
        if prediction.value == "flow":
            zsnr = Finding("no", "flow matching has no beta schedule to rescale", "weights")
        else:
            zsnr = Finding("unknown", "no marker key, metadata or run config says; ComfyUI leaves it off")
    fl = Finding(flavour or FAMILIES.get(family.value, family.value), family.source, family.kind)
    return Detection(path, family, fl, prediction, zsnr, conflicts)


def detect(path: str | os.PathLike, run_dir: str | os.PathLike | None = None,
           run: list[Claim] | None = None) -> Detection:
    """Detect family / prediction / zero-SNR of one safetensors file, with the source of each answer.

    ``run_dir``: the SimpleTuner ``output_dir`` the file comes from (its configs are read);
    ``run``: :func:`run_claims` already read (the linker reads them once per run).
    Raises :class:`sd3_inspect.ModelFileError` for a file that is not a complete safetensors file."""
    header = _read_header(path)
    claims = _marker_claims(header.tensors) + _metadata_claims(header.metadata)
    weights, flavour = _weights_claims(header.tensors)
    claims += weights
    claims += run if run is not None else run_claims(run_dir)
    return _decide(str(path), claims, flavour)


_CHECKPOINT_DIR = re.compile(r"^checkpoint-\d+(-rolling)?$")
LINK_MANIFEST = ".sd35wb-links.json"


def run_dir_for(path: str | os.PathLike) -> Path | None:
    """The SimpleTuner ``output_dir`` a (linked) model file comes from, or None.

    ``output_dir/checkpoint-N/unet/...`` and ``output_dir/pipeline/unet/...`` are recognised through
    the link; a merged file (no link to follow) through the linker's manifest beside it."""
    real = Path(os.path.realpath(path))
    if len(real.parents) >= 3:
        holder = real.parents[1]
        if _CHECKPOINT_DIR.match(holder.name) or holder.name == "pipeline":
            return holder.parent
    doc = _load_json(Path(path).parent / LINK_MANIFEST)
    out = doc.get("output_dir") if doc else None
    return Path(out) if isinstance(out, str) and os.path.isdir(out) else None


def detect_file(path: str | os.PathLike) -> Detection:
    """:func:`detect` with the run folder found from the file itself (see :func:`run_dir_for`)."""
    return detect(path, run_dir_for(path))


def detect_checkpoint(path: str | os.PathLike, output_dir: str | os.PathLike | None = None,
                      run: list[Claim] | None = None) -> dict:
    """Linker hook: the detection of one exposed checkpoint as a JSON-ready dict; never raises
    (a file that cannot be read gets ``{"error": ...}`` so a sync is never stopped by it)."""
    try:
        return detect(path, output_dir, run).as_dict()
    except (ValueError, OSError) as e:
        return {"file": str(path), "error": str(e)}


def sampler_warning(sampler_name: str, available=()) -> str | None:
    """A warning for a sampler known to collapse on zero-SNR schedules, naming the alternative
    (``exp_heun_2_x0`` when the host has it, else euler); None for every other sampler."""
    if sampler_name not in ZSNR_UNSAFE_SAMPLERS:
        return None
    alt = ZSNR_ALTERNATIVE if ZSNR_ALTERNATIVE in available else ZSNR_FALLBACK
    why = "" if alt == ZSNR_ALTERNATIVE else f" ({ZSNR_ALTERNATIVE} needs a newer ComfyUI)"
    return (f"sampler '{sampler_name}' tends to collapse on zero-terminal-SNR schedules (ComfyUI PR 11360); "
            f"use '{alt}' instead{why}.")
