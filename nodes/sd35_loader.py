"""SD3.5 Loader: one node for the SD3.5 diffusion model, its three text encoders, the VAE, the
sampling shift and the recommended settings for the detected variant.

References: Stability AI's SD3.5 reference implementation (sd3_infer.py: shift 3.0; Medium 50 steps
cfg 5 / 4 with SLG, dpmpp_2m; Large 40 steps cfg 4.5; Large Turbo 4 steps cfg 1 euler) and
Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis"
(arXiv:2403.03206; MMDiT, timestep shift). Loading goes through the host's public API
(``comfy.sd.load_diffusion_model`` / ``load_checkpoint_guess_config`` / ``load_clip`` with
``CLIPType.SD3`` / ``comfy.sd.VAE``); the shift is applied like core's ``ModelSamplingSD3``.
Every file is checked from its safetensors header before anything is loaded.
"""

from __future__ import annotations

import logging
import os

import comfy.model_sampling
import comfy.sd
import comfy.utils
import folder_paths
import torch
from comfy_api.v0_0_2 import io

from ..sd35wb import folders, hub, presets
from ..sd35wb import overrides as O
from ..sd35wb import sd3_inspect as si
from . import _compat as C

LOG = logging.getLogger("sd35-workbench")

SETTINGS = io.Custom("SD35WB_SETTINGS")
NONE = "none"
FROM_CHECKPOINT = "from checkpoint"
TAESD3 = "taesd3"
TE_DEFAULTS = {"clip_l": "clip_l.safetensors", "clip_g": "clip_g.safetensors", "t5xxl": "t5xxl_fp8_e4m3fn.safetensors"}  # README and every template: fp8 (4.9 GB)
MODEL_FOLDERS = ("checkpoints", "diffusion_models")


def _known(folder: str) -> list[str]:
    return [f.name for f in hub.KNOWN_FILES.values() if f.folder == folder]


def model_options() -> list[str]:
    """Every file in checkpoints/ and diffusion_models/, then the known hub names not present
    (so a shared workflow naming sd3.5_large.safetensors validates and can be fetched)."""
    have = sorted({n for f in MODEL_FOLDERS for n in folder_paths.get_filename_list(f)})
    return have + [n for n in _known("checkpoints") if n not in have]


def default_model_name(options: list[str]) -> str:
    """An SD3.5 file to start on (published names, SD3.5 in the name, then an SD3 header)."""
    have = [n for n in options if _first_path(MODEL_FOLDERS, n)]

    def is_sd3(name: str) -> bool:
        try:
            si.inspect_model(_first_path(MODEL_FOLDERS, name), "model_name")
        except (OSError, ValueError):
            return False
        return True

    return si.default_model(have, _known("checkpoints")[0], is_sd3)


def text_encoder_options() -> list[str]:
    have = folder_paths.get_filename_list("text_encoders")
    return [NONE] + have + [n for n in _known("text_encoders") if n not in have]


def vae_options() -> list[str]:
    approx = TAESD3 in C.vae_names()
    return [FROM_CHECKPOINT] + folder_paths.get_filename_list("vae") + ([TAESD3] if approx else [])


def _searched(*kinds: str) -> dict[str, list[str]]:
    return {k: folder_paths.get_folder_paths(k) for k in kinds}


def _first_path(folders, name: str) -> str | None:
    for folder in folders:
        p = folder_paths.get_full_path(folder, name)
        if p:
            return p
    return None


class _Fetch:
    """Fetches with ComfyUI's progress bar; errors become ValueErrors naming the input."""

    def __init__(self, allow: bool, preferred_repo: str | None):
        self.allow = allow
        self.preferred_repo = preferred_repo

    def __call__(self, what: str, name: str, folder: str, searched: tuple[str, ...] = ()) -> str:
        """Fetch into ``folder``; ``searched``: every folder kind the file was looked for in."""
        dests = folder_paths.get_folder_paths(folder)
        if not self.allow:
            kinds = searched or (folder,)
            raise ValueError(folders.not_found(
                what, name, _searched(*kinds),
                ("Place it in one of them" if len(kinds) > 1 else "Place it there") + ", or turn on fetch_missing to get it from "
                f"{hub.repo_url(hub.KNOWN_FILES[name].repos[0])} (a gated repo: accept its license first)."))
        bar = comfy.utils.ProgressBar(1000)

        def progress(n: int, total: int) -> None:
            bar.update_absolute(int(1000 * n / max(total, 1)))

        try:
            return hub.resolve(name, dests, progress=progress, preferred_repo=self.preferred_repo,
                               log=lambda m: LOG.info("[sd35-workbench] SD3.5 Loader: %s", m))
        except hub.HubError as e:
            raise ValueError(f"{what}: {e}") from e


def cast_t5_fp8(sd: dict) -> dict:
    """T5-XXL state dict with every floating tensor in float8_e4m3fn, like Comfy's
    t5xxl_fp8_e4m3fn.safetensors: the host then builds T5 in fp8 (``t5_xxl_detect``) and computes
    in the GPU's compute dtype, halving its memory (about 4.9 GB instead of 9.8 GB)."""
    fp8 = torch.float8_e4m3fn
    if "scaled_fp8" in sd or any(torch.is_tensor(v) and v.dtype in (fp8, torch.float8_e5m2) for v in sd.values()):
        return sd  # already quantised (t5xxl_fp8_e4m3fn, or a scaled-fp8 file whose scales must stay as they are)
    return {k: (v.to(fp8) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in sd.items()}


def shifted(model, shift: float):
    """A clone with SD3's discrete-flow model sampling at ``shift`` (exactly core ModelSamplingSD3)."""
    class ModelSamplingAdvanced(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    m = model.clone()
    ms = ModelSamplingAdvanced(model.model.model_config)
    ms.set_parameters(shift=shift, multiplier=1000)
    m.add_object_patch("model_sampling", ms)
    return m


def settings_for(variant: str, shift: float) -> dict:
    if variant == "custom":  # Medium's steps / cfg / sampler, but no SLG: its layers are tuned for 24 blocks
        s = presets.recommended_settings("medium")
        s["variant"] = "custom"
        s["slg"] = dict(presets.SLG_OFF, layers=list(presets.SLG_OFF["layers"]))
    else:
        s = presets.recommended_settings(variant)
    s["shift"] = float(shift)
    return s


def loader_report(model_name, info, chosen, why, settings, te_paths, ckpt_clip, vae, weight_dtype, dtype,
                  t5xxl, t5_dtype) -> str:
    """What the loader loaded and recommends, one line each (the node's report output and text)."""
    slg = settings["slg"]
    slg_text = (f"layers {', '.join(map(str, slg['layers']))}, scale {slg['scale']:g}, window {slg['start']:g}-"
                f"{slg['end']:g} of {slg['gating']}") if slg["layers"] and slg["scale"] else "off"
    if te_paths:
        te = ", ".join(f"{k} {os.path.basename(p)}" + (" (stored as fp8_e4m3fn)" if k == "t5xxl" and
                                                       t5_dtype == "fp8_e4m3fn" else "")
                       for k, p in te_paths.items())
    else:
        te = f"the {', '.join(info.text_encoders)} inside the file" if ckpt_clip else "none (CLIP output is None)"
    lines = [
        f"SD3.5 Loader: {model_name}: {info.describe()}",
        f"variant: {chosen} ({why})",
        f"settings: steps {settings['steps']}, cfg {settings['cfg']:g}, sampler {settings['sampler_name']}, "
        f"scheduler {settings['scheduler']}, shift {settings['shift']:g}; SLG {slg_text}",
        f"text encoders: {te}",
        f"vae: {'the one inside the file' if vae == FROM_CHECKPOINT else vae}",
        f"weights: {str(dtype).replace('torch.', '')} (weight_dtype {weight_dtype})",
    ]
    # t5_dtype counts as given only when set: its default is no choice the user made
    given = {"t5xxl": t5xxl, "t5_dtype": None if t5_dtype == "default" else t5_dtype}
    lines += O.report_lines("SD35WB_SD35Loader", given, {}, set())
    return "\n".join(lines)


class SD35Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        te_opts = text_encoder_options()
        models = model_options()
        return io.Schema(
            node_id="SD35WB_SD35Loader",
            **C.search_aliases("sd3.5", "stable diffusion 3.5", "mmdit loader", "sd3 loader"),
            display_name="SD3.5 Loader",
            category="SD3.5 Workbench/loaders",
            description=(
                "Loads an SD3.5 model (single-file from checkpoints/ or diffusion_models/, or a diffusers / "
                "SimpleTuner transformer/diffusion_pytorch_model.safetensors), its CLIP-L, CLIP-G and T5-XXL text "
                "encoders and the VAE, applies the sampling shift (3.0, Stability's reference) and outputs the "
                "recommended settings for the variant it detects (Medium: MMDiT-X attn2 + 24 blocks; Large: 38 blocks). "
                "Defaults follow Stability AI's SD3.5 reference (sd3_infer.py); MMDiT: Esser et al. 2024, "
                "arXiv:2403.03206. Every file is checked from its header before loading."),
            inputs=[
                io.Combo.Input("model_name", options=models, default=default_model_name(models),
                               tooltip="SD3.5 diffusion model from models/checkpoints or models/diffusion_models "
                                       "(single-file, with or without the VAE inside, or diffusers layout). "
                                       "sd3.5_medium / sd3.5_large / sd3.5_large_turbo are listed even when "
                                       "missing, so fetch_missing can download them. A new node starts on an "
                                       "SD3.5 file found on disk (else sd3.5_medium.safetensors)."),
                io.Combo.Input("variant", options=list(si.VARIANT_CHOICES), default="auto",
                               tooltip="auto: Medium (MMDiT-X attn2, 24 blocks) or Large (38 blocks) from the weights; "
                                       "Large Turbo has Large's shapes, so auto picks it only when the file name "
                                       "contains 'turbo'. Other block counts give 'custom' (Medium's steps/cfg, no "
                                       "SLG). Picks the recommended settings output."),
                io.Combo.Input("clip_l", options=te_opts, default=TE_DEFAULTS["clip_l"],
                               tooltip="CLIP-L text encoder (models/text_encoders, e.g. clip_l.safetensors), or none."),
                io.Combo.Input("clip_g", options=te_opts, default=TE_DEFAULTS["clip_g"],
                               tooltip="CLIP-G text encoder (models/text_encoders, e.g. clip_g.safetensors), or none."),
                io.Combo.Input("t5xxl", options=te_opts, default=TE_DEFAULTS["t5xxl"],
                               tooltip="T5-XXL text encoder: t5xxl_fp16 (9.8 GB), t5xxl_fp8_e4m3fn (4.9 GB), or none "
                                       "(SD3.5 still works without T5, with weaker prompt following and text "
                                       "rendering): dropping or quantising T5 is how SD3.5 fits 6-10 GB GPUs."),
                io.Combo.Input("t5_dtype", **C.advanced(), options=["default", "fp8_e4m3fn"], default="default",
                               tooltip="default: T5 in the file's own dtype. fp8_e4m3fn: store an fp16 T5 in fp8 "
                                       "(half the memory, like t5xxl_fp8_e4m3fn.safetensors) to fit 6-10 GB GPUs."),
                io.Combo.Input("vae", options=vae_options(), default=FROM_CHECKPOINT,
                               tooltip="'from checkpoint' uses the VAE inside the model file (Stability's single-file "
                                       "sd3.5_*.safetensors carry it); or a file from models/vae; taesd3 is the "
                                       "fast preview-quality decoder from models/vae_approx."),
                io.Float.Input("shift", default=3.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Timestep shift of SD3's flow sampling (like ModelSamplingSD3). 3.0 is Stability's "
                                       "reference for all SD3.5 variants; higher spends more steps at high noise."),
                io.Boolean.Input("fetch_missing", default=False,
                                 tooltip="Download missing stabilityai SD3.5 files from the Hugging Face hub into the "
                                         "right ComfyUI folders (or link them from the HF cache). The repos are gated: "
                                         "accept the license on huggingface.co, then `hf auth login` or set HF_TOKEN. "
                                         "The token is never a node input (inputs are saved in every PNG)."),
                # Appended, and optional: saved workflows and API prompts from before keep their widget order.
                io.Combo.Input("weight_dtype", **C.advanced(), options=C.weight_dtype_options(), default="default",
                               optional=True,
                               tooltip="Storage dtype of the diffusion model's weights, as in core's diffusion-model "
                                       "loader: fp8_e4m3fn / fp8_e5m2 halve its memory (Large: about 8 GB instead "
                                       "of 16, for 8-16 GB GPUs) at a small quality cost; fp8_e4m3fn_fast also "
                                       "computes in fp8 on GPUs that support it. default: the file's own dtype."),
            ],
            outputs=[
                io.Model.Output(),
                io.Clip.Output(tooltip="None when every text encoder is 'none' and the file carries none."),
                io.Vae.Output(),
                SETTINGS.Output(display_name="settings",
                                tooltip="Recommended steps, cfg, sampler, scheduler, shift and SLG for the variant "
                                        "(Stability's reference); feed the SD3.5 Workbench SLG sampler / guider."),
                # Appended as the last output: saved workflows link outputs by index.
                io.String.Output("report", display_name="report",
                                 tooltip="What was loaded: the file, the variant detected (and why), the settings "
                                         "it recommends, text encoders, VAE and the weights' dtype. Also shown on "
                                         "the node."),
            ],
        )

    @classmethod
    def execute(cls, model_name: str, variant: str, clip_l: str, clip_g: str, t5xxl: str, t5_dtype: str, vae: str,
                shift: float, fetch_missing: bool, weight_dtype: str = "default") -> io.NodeOutput:
        try:
            return cls._load(model_name, variant, clip_l, clip_g, t5xxl, t5_dtype, vae, shift, fetch_missing,
                             weight_dtype)
        except si.ModelFileError as e:  # shown as a plain ValueError, without our module path
            raise ValueError(str(e)) from None

    @classmethod
    def _load(cls, model_name: str, variant: str, clip_l: str, clip_g: str, t5xxl: str, t5_dtype: str, vae: str,
              shift: float, fetch_missing: bool, weight_dtype: str = "default") -> io.NodeOutput:
        if weight_dtype not in C.weight_dtype_options():
            raise ValueError(f"weight_dtype: unknown choice {weight_dtype!r}; expected one of "
                             f"{C.weight_dtype_options()} (what core's diffusion-model loader offers)")
        if variant not in si.VARIANT_CHOICES:
            raise ValueError(f"variant: unknown choice {variant!r}; expected one of {list(si.VARIANT_CHOICES)}")
        if t5_dtype not in ("default", "fp8_e4m3fn"):
            raise ValueError(f"t5_dtype: unknown choice {t5_dtype!r}; expected 'default' or 'fp8_e4m3fn'")
        preferred = hub.REPOS.get(variant)
        fetch = _Fetch(bool(fetch_missing), preferred)
        pending: list[tuple[str, str, str, tuple[str, ...]]] = []  # (input, name, folder, searched) to fetch

        # 1. Find every file and check what is on disk, before fetching or loading anything.
        model_path = _first_path(MODEL_FOLDERS, model_name)
        if model_path is None:
            if model_name not in hub.KNOWN_FILES:
                raise ValueError(folders.not_found("model_name", model_name, _searched(*MODEL_FOLDERS),
                                                   "Put the file in one of them and refresh (R), or pick another model."))
            pending.append(("model_name", model_name, "checkpoints", MODEL_FOLDERS))
        te_paths: dict[str, str | None] = {}
        for slot, name in (("clip_l", clip_l), ("clip_g", clip_g), ("t5xxl", t5xxl)):
            if name == NONE:
                continue
            p = folder_paths.get_full_path("text_encoders", name)
            if p is None:
                if name not in hub.KNOWN_FILES:
                    raise ValueError(folders.not_found(slot, name, _searched("text_encoders"),
                                                       "Put the file there and refresh (R), or pick another one."))
                pending.append((slot, name, "text_encoders", ("text_encoders",)))
            te_paths[slot] = p
        if vae not in (FROM_CHECKPOINT, TAESD3):
            vae_path = folder_paths.get_full_path("vae", vae)
            if vae_path is None:
                raise ValueError(folders.not_found("vae", vae, _searched("vae"),
                                                   "Put the file there and refresh (R), or pick another VAE."))
            si.check_vae(vae_path, "vae")
        elif vae == TAESD3 and TAESD3 not in C.vae_names():
            raise ValueError("vae: taesd3 needs taesd3_encoder and taesd3_decoder .safetensors in "
                             f"{folders.searched(_searched('vae_approx'))}.")
        info = si.inspect_model(model_path, "model_name") if model_path else None
        for slot, p in te_paths.items():
            if p:
                si.check_text_encoder(p, slot)
        if pending and not fetch_missing:
            fetch(*pending[0])  # raises the "place it or turn on fetch_missing" message
        if info is not None:
            cls._check_vae_choice(info, vae)

        # 2. Fetch what is missing (progress in ComfyUI's bar), then check it like the rest.
        for what, name, folder, searched in pending:
            path = fetch(what, name, folder, searched)
            if what == "model_name":
                model_path, info = path, si.inspect_model(path, "model_name")
                cls._check_vae_choice(info, vae)
            else:
                te_paths[what] = path
                si.check_text_encoder(path, what)

        chosen, why = si.resolve_variant(info, variant, model_name)
        settings = settings_for(chosen, shift)
        LOG.info("[sd35-workbench] SD3.5 Loader: %s: %s -> variant %s (%s)", model_name, info.describe(), chosen, why)
        if chosen == "custom":
            LOG.info("[sd35-workbench] SD3.5 Loader: %s is not a stock SD3.5 shape (%s): using Medium's steps/cfg/"
                     "sampler and no SLG recommendation (Stability's SLG layers 7, 8, 9 are tuned for Medium's 24 "
                     "blocks).", model_name, why)
        elif settings["slg"]["layers"] and max(settings["slg"]["layers"]) >= info.num_blocks:
            LOG.warning("[sd35-workbench] SD3.5 Loader: variant %s recommends SLG layers %s but %s has only %d joint "
                        "blocks.", chosen, settings["slg"]["layers"], model_name, info.num_blocks)

        # 3. Load through the host's public API.
        want_ckpt_clip = not te_paths and bool(info.text_encoders)
        if te_paths and info.text_encoders:
            LOG.info("[sd35-workbench] SD3.5 Loader: using the selected text encoder files, not the %s inside %s.",
                     ", ".join(info.text_encoders), model_name)
        embeddings = folder_paths.get_folder_paths("embeddings")
        out_vae = None
        dtype_options = C.weight_dtype_model_options(weight_dtype)
        if info.is_checkpoint and (vae == FROM_CHECKPOINT or want_ckpt_clip):
            model, ckpt_clip, ckpt_vae, _ = comfy.sd.load_checkpoint_guess_config(
                model_path, output_vae=(vae == FROM_CHECKPOINT), output_clip=want_ckpt_clip,
                embedding_directory=embeddings, model_options=dtype_options)
            out_vae = ckpt_vae
        else:  # core UNETLoader's call: a checkpoint whose VAE and text encoders are not used loads its MMDiT only
            model, ckpt_clip = comfy.sd.load_diffusion_model(model_path, model_options=dtype_options), None
        if type(model.model.model_config).__name__ != "SD3":
            raise ValueError(f"model_name: the host loaded {model_name} as {type(model.model.model_config).__name__}, "
                             "not SD3; expected an SD3.5 model.")
        clip = ckpt_clip if want_ckpt_clip else cls._load_clip(te_paths, t5_dtype, embeddings)
        if vae != FROM_CHECKPOINT:
            out_vae = C.load_vae(vae)
        report = loader_report(model_name, info, chosen, why, settings, te_paths, want_ckpt_clip, vae, weight_dtype,
                               model.model_dtype(), t5xxl, t5_dtype)
        return io.NodeOutput(shifted(model, shift), clip, out_vae, settings, report, ui={"text": [report]})

    @staticmethod
    def _check_vae_choice(info: si.ModelInfo, vae: str) -> None:
        if vae == FROM_CHECKPOINT and not info.has_vae:
            raise ValueError(
                f"vae: 'from checkpoint' but {os.path.basename(info.path)} has no VAE inside (a diffusion-model-only "
                "file); pick a VAE file from models/vae (SD3.5's 16-channel VAE), or taesd3 for fast previews.")

    @staticmethod
    def _load_clip(te_paths: dict[str, str], t5_dtype: str, embeddings):
        if not te_paths:
            LOG.info("[sd35-workbench] SD3.5 Loader: no text encoder selected; CLIP output is None.")
            return None
        order = [te_paths[s] for s in ("clip_l", "clip_g", "t5xxl") if s in te_paths]
        if t5_dtype == "fp8_e4m3fn" and "t5xxl" in te_paths:
            data = []
            for p in order:
                sd, meta = comfy.utils.load_torch_file(p, safe_load=True, return_metadata=True)
                if p == te_paths["t5xxl"]:
                    sd = cast_t5_fp8(sd)
                elif meta and meta.get("_quantization_metadata") is not None:
                    sd["_quantization_metadata"] = meta["_quantization_metadata"]
                data.append(sd)
            return comfy.sd.load_text_encoder_state_dicts(data, embedding_directory=embeddings,
                                                          clip_type=comfy.sd.CLIPType.SD3)
        return comfy.sd.load_clip(order, embedding_directory=embeddings, clip_type=comfy.sd.CLIPType.SD3)


NODES = [SD35Loader]
