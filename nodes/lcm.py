"""LCM-LoRA sampling: one node that cannot be set up wrong, a patch node for any sampler, a step sweep.

Latent Consistency Models (Luo et al. 2023, arXiv 2310.04378) and LCM-LoRA (Luo et al. 2023,
arXiv 2311.05556). The nodes do exactly what the core chain does (LoraLoaderModelOnly ->
ModelSamplingDiscrete "lcm" -> KSampler with sampler "lcm"), with the family check, the known
public LoRAs and safe defaults (4 steps, cfg 1) on top. Logic lives in ``sd35wb/lcm.py``.
"""

from __future__ import annotations

import logging
import os

import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import torch
from comfy_api.v0_0_2 import io

from ..sd35wb import folders, lcm
from ..sd35wb import grid as grid_mod
from ..sd35wb import overrides as O
from . import _compat as C
from . import _lora

LOG = logging.getLogger("sd35-workbench")
CATEGORY = "SD3.5 Workbench/LCM"
NONE = "none"
DEFAULT_SCHEDULER = "sgm_uniform"  # ComfyUI's LCM examples; spaces LCM's 50 distilled timesteps evenly

STEPS_TIP = ("LCM-LoRA steps, 1-8. 4 is the usual choice; 1-3 give soft drafts (1 step is a blurry preview); "
             "5-8 add a little detail. Past 8 LCM stops improving: use a normal sampler without the LoRA instead.")
CFG_TIP = ("Classifier-free guidance. 1.0 (default) = no negative pass, half the model evaluations; the negative "
           "prompt only acts above 1.0. 1.0-2.0 is the LCM range; above about 2 images burn and degrade.")
STRENGTH_TIP = ("LoRA weight. 1.0 as trained; 0.5-1.0 softer. 0 = the LCM-LoRA is not applied at all (not read, "
                "not downloaded), LCM sampling is still used: handy for an A/B with the LoRA off.")
LORA_TIP = ("The latent-consistency LoRA. 'auto' picks the public LCM-LoRA for the model's family (SD1.5, SDXL, "
            "SSD-1B, Segmind Vega) and downloads it to the Hugging Face cache on first use; 'hf: ...' names one of "
            "them; other entries are files in models/loras. A LoRA for another family is refused.")


def _local_loras() -> list[str]:
    return folder_paths.get_filename_list("loras")


def model_family(model) -> str | None:
    """SD1.5 / SDXL / SSD-1B / ... from the host's model_config class; other models (SD3, Flux, ...)
    by their class name, so an LCM-LoRA is refused on them too."""
    cfg = getattr(getattr(model, "model", None), "model_config", None)
    if cfg is None:
        return None
    return lcm.model_family([c.__name__ for c in type(cfg).__mro__]) or type(cfg).__name__


def resolve_lora(option: str, model_fam: str | None, input_name: str = "lcm_lora") -> tuple[str, str]:
    """(path, label) of the chosen LoRA; known public LoRAs are checked against the model's family
    before anything is downloaded, local files by their safetensors header."""
    known = lcm.known_for_family(model_fam) if option == lcm.AUTO else lcm.known_by_option(option)
    if known is not None:
        if model_fam is not None and known.family != model_fam:
            raise ValueError(f"{input_name}: {known.repo_id} is the LCM-LoRA for {known.family} but the model is "
                             f"{model_fam}; pick " + (f"{lcm.known_for_family(model_fam).option} or 'auto'."
                                                      if lcm.has_known(model_fam) else "a LoRA trained for this model."))
        return str(lcm.fetch_known(known)), known.repo_id
    path = folder_paths.get_full_path("loras", option)
    if path is None or not os.path.isfile(path):
        raise ValueError(folders.not_found(input_name, repr(option), {"loras": folder_paths.get_folder_paths("loras")},
                                           "Put the file there and refresh (R), or pick another LoRA."))
    if not path.lower().endswith(".safetensors"):
        raise ValueError(f"{input_name}: {option!r} is not a .safetensors file; only .safetensors LoRAs are loaded "
                         f"(pickled .ckpt/.pt/.bin files can run code). Convert it or download the .safetensors.")
    return path, option


def check_lora(path: str, label: str, model_fam: str | None, input_name: str) -> lcm.LoraInfo:
    try:
        header = lcm.read_safetensors_header(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{input_name}: cannot read {label}: {e}") from e
    info = lcm.detect_lora_family(header)
    lcm.check_lora_matches(info, model_fam, label, input_name)
    return info


def apply_lora(model, clip, option: str, strength: float, clip_strength: float = 0.0, input_name: str = "lcm_lora"):
    """Family-checked LoRA through the host's patcher (weights are patched at load time, never copied).

    Returns (model, clip, label): label names the LoRA that was applied (what 'auto' became), or None."""
    if strength == 0 and (clip is None or clip_strength == 0):
        return model, clip, None
    fam = model_family(model)
    path, label = resolve_lora(option, fam, input_name)
    check_lora(path, label, fam, input_name)
    return (*_lora.apply(model, clip, _lora.load(path), strength, clip_strength, label), label)


def lcm_sampling(model):
    """Core ModelSamplingDiscrete with sampling "lcm" (an object patch on a clone)."""
    return C.model_sampling_discrete(model, "lcm")


def check_cfg(cfg: float) -> None:
    if not 0.0 <= cfg <= 4.0:
        raise ValueError(f"cfg: {cfg} is out of range for LCM-LoRA; use 1.0 (negative ignored) to 2.0. "
                         "Above about 2 images burn.")


def prepare(model, lcm_lora: str, strength: float) -> tuple:
    """LCM-LoRA + LCM model sampling on a clone of ``model``; also the report's LoRA line."""
    m, _, label = apply_lora(model, None, lcm_lora, strength)
    fam = model_family(model)
    if label is None:
        LOG.info("[sd35-workbench] LCM-LoRA strength 0: LoRA not applied, LCM sampling only")
        return lcm_sampling(m), f"LCM-LoRA: not applied (strength 0); model family {fam}"
    return lcm_sampling(m), f"LCM-LoRA: {label} at strength {strength:g} (lcm_lora {lcm_lora!r}); model family {fam}"


def lcm_report(node_id: str, title: str, lora_line: str, steps: str, cfg: float, scheduler: str, denoise: float,
               seed: int, strength: float, lcm_lora: str, connected) -> str:
    lines = [title, lora_line,
             f"sampling: sampler lcm, model sampling lcm, {steps}, cfg {cfg:g}, scheduler {scheduler}, "
             f"denoise {denoise:g}, seed {seed}"]
    lines += O.report_lines(node_id, {"cfg": float(cfg), "strength": float(strength), "lcm_lora": lcm_lora}, {},
                            connected)
    return "\n".join(lines)


def _report_output():
    # Appended as the last output: saved workflows link outputs by index.
    return io.String.Output("report", display_name="report", tooltip=(
        "What ran: the LCM-LoRA file ('auto' resolved) and strength, steps, cfg, scheduler, seed; a note when an "
        "input has no effect (the negative at cfg 1). Also shown on the node."))


def sample(model, seed, steps, cfg, scheduler, positive, negative, latent, denoise, callback=None):
    """What core's common_ksampler does with sampler "lcm"; ``callback(step, total)`` for a shared bar."""
    if callback is None:
        return C.ksampler(model, seed, steps, cfg, "lcm", scheduler, positive, negative, latent, denoise=denoise)
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    samples = comfy.sample.sample(model, noise, steps, cfg, "lcm", scheduler, positive, negative, latent_image,
                                  denoise=denoise, noise_mask=latent.get("noise_mask"),
                                  callback=lambda step, x0, x, total: callback(step, total),
                                  disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    out = latent.copy()
    out["samples"] = samples
    return out


def _lora_input(name: str = "lcm_lora"):
    return io.Combo.Input(name, options=lcm.lora_options(_local_loras()), default=lcm.AUTO, tooltip=LORA_TIP)


def _common_sampling_inputs(max_steps_name: str = "steps"):
    steps_tip = STEPS_TIP if max_steps_name == "steps" else "Render 1, 2, ... up to this many steps. " + STEPS_TIP
    return [
        io.Conditioning.Input("positive", tooltip="The prompt's conditioning (CLIPTextEncode)."),
        io.Conditioning.Input("negative", tooltip="Only used when cfg is above 1.0."),
        io.Latent.Input("latent_image", tooltip="The latent to sample: an empty latent for text-to-image, an "
                                                "encoded image with denoise below 1."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Noise seed: the same seed gives the same noise as KSampler (and every render of a "
                             "step sweep uses it)."),
        io.Int.Input(max_steps_name, default=lcm.DEFAULT_STEPS if max_steps_name == "steps" else lcm.MAX_STEPS,
                     min=lcm.MIN_STEPS, max=lcm.MAX_STEPS, tooltip=steps_tip),
        io.Float.Input("cfg", default=1.0, min=0.0, max=4.0, step=0.1, round=0.01, tooltip=CFG_TIP),
        io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default=DEFAULT_SCHEDULER,
                       tooltip="Sigma spacing. sgm_uniform (ComfyUI's LCM examples) or simple; "
                                              "karras/exponential skip the distilled timesteps badly."),
        io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="1.0 for text-to-image; lower for image-to-image (0.5-0.7 keeps the composition)."),
    ]


class LCMLoraSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WB_LCMLoraSampler",
            **C.search_aliases("lcm", "lcm-lora", "few step", "fast sampling"),
            display_name="LCM-LoRA Sampler",
            category=CATEGORY,
            description=("Applies a latent-consistency LoRA (LCM-LoRA, Luo et al. 2023, arXiv 2311.05556), switches "
                         "the model to LCM sampling and samples with the lcm sampler: 4 steps at cfg 1 instead of "
                         "25+ steps with cfg. Same result as LoraLoaderModelOnly + ModelSamplingDiscrete(lcm) + "
                         "KSampler(lcm). Refuses a LoRA trained for another model family."),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5, SDXL, SSD-1B or Segmind Vega model (or a fine-tune)."),
                _lora_input(),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.05, tooltip=STRENGTH_TIP),
                *_common_sampling_inputs(),
            ],
            outputs=[io.Latent.Output(), _report_output()],
        )

    @classmethod
    def execute(cls, model, lcm_lora: str, strength: float, positive, negative, latent_image, seed: int, steps: int,
                cfg: float, scheduler: str = DEFAULT_SCHEDULER, denoise: float = 1.0) -> io.NodeOutput:
        lcm.check_steps(steps)
        check_cfg(cfg)
        m, lora_line = prepare(model, lcm_lora, strength)
        report = lcm_report("SD35WB_LCMLoraSampler", "LCM-LoRA Sampler", lora_line, f"steps {steps}", cfg, scheduler,
                            denoise, seed, strength, lcm_lora, {"negative"} if negative is not None else set())
        return io.NodeOutput(sample(m, seed, steps, cfg, scheduler, positive, negative, latent_image, denoise), report,
                             ui={"text": [report]})


class LCMLoraPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WB_LCMLoraPatch",
            **C.search_aliases("lcm", "lcm-lora", "lcm model sampling"),
            display_name="LCM-LoRA Patch (+ style LoRA)",
            category=CATEGORY,
            description=("LCM-LoRA (arXiv 2311.05556) + LCM model sampling for any sampler node, with an optional "
                         "style LoRA (the 'LCM + style LoRA at 4 steps' recipe). Then sample with sampler 'lcm', "
                         "4-8 steps, cfg 1-2, scheduler sgm_uniform. Both LoRAs are family-checked."),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5, SDXL, SSD-1B or Segmind Vega model (or a fine-tune)."),
                _lora_input(),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.05, tooltip=STRENGTH_TIP),
                io.Combo.Input("style_lora", options=[NONE, *_local_loras()], default=NONE,
                               tooltip="An optional style/character LoRA from models/loras, applied after the LCM-LoRA."),
                io.Float.Input("style_strength", default=0.8, min=-2.0, max=2.0, step=0.05,
                               tooltip="Style LoRA weight on the model (and on CLIP when connected). With LCM, "
                                       "0.6-0.9 usually keeps the style without fighting the LCM-LoRA."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Connect to apply the style LoRA's text-encoder part too (the LCM-LoRA has none)."),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(tooltip="The CLIP with the style LoRA (None if not connected).")],
        )

    @classmethod
    def execute(cls, model, lcm_lora: str, strength: float, style_lora: str = NONE, style_strength: float = 0.8,
                clip=None) -> io.NodeOutput:
        if style_lora != NONE and style_lora in [k.option for k in lcm.KNOWN_LCM_LORAS] + [lcm.AUTO]:
            raise ValueError("style_lora: pick a style LoRA file from models/loras, not an LCM-LoRA.")
        if style_lora != NONE:  # check both before any work starts
            fam = model_family(model)
            path, label = resolve_lora(style_lora, fam, "style_lora")
            check_lora(path, label, fam, "style_lora")
        m, _, _ = apply_lora(model, None, lcm_lora, strength)
        if style_lora != NONE:
            m, clip, _ = apply_lora(m, clip, style_lora, style_strength, style_strength, input_name="style_lora")
        return io.NodeOutput(lcm_sampling(m), clip)


class LCMStepSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WB_LCMStepSweep",
            **C.search_aliases("lcm", "steps comparison", "xy plot"),
            display_name="LCM-LoRA Step Sweep",
            category=CATEGORY,
            description=("Renders the same seed with the LCM-LoRA at 1, 2, ... max_steps steps and returns every "
                         "image plus one labelled grid ('1 step', '2 steps', ...): the comparison for choosing a "
                         "step count (LCM-LoRA, arXiv 2311.05556). Each render equals the LCM-LoRA Sampler's."),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5, SDXL, SSD-1B or Segmind Vega model (or a fine-tune)."),
                io.Vae.Input("vae", tooltip="Decodes every render for the images and the grid (the model's own VAE, "
                                            "or taesd / taesdxl for fast previews)."),
                _lora_input(),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.05, tooltip=STRENGTH_TIP),
                *_common_sampling_inputs("max_steps"),
            ],
            outputs=[io.Image.Output("images", tooltip="Every render, 1 step first (batch of max_steps x latents)."),
                     io.Image.Output("grid", tooltip="The first image of each render, labelled with its step count."),
                     _report_output()],
        )

    @classmethod
    def execute(cls, model, vae, lcm_lora: str, strength: float, positive, negative, latent_image, seed: int,
                max_steps: int, cfg: float, scheduler: str = DEFAULT_SCHEDULER, denoise: float = 1.0) -> io.NodeOutput:
        lcm.check_steps(max_steps, "max_steps")
        check_cfg(cfg)
        m, lora_line = prepare(model, lcm_lora, strength)
        report = lcm_report("SD35WB_LCMStepSweep", "LCM-LoRA Step Sweep", lora_line, f"steps 1-{max_steps}", cfg,
                            scheduler, denoise, seed, strength, lcm_lora,
                            {"negative"} if negative is not None else set())
        counts = list(range(1, max_steps + 1))
        pbar = comfy.utils.ProgressBar(sum(counts))
        images = []
        done = 0
        for n in counts:
            def progress(step, total, base=done):
                pbar.update_absolute(base + step + 1)
            out = sample(m, seed, n, cfg, scheduler, positive, negative, latent_image, denoise, callback=progress)
            done += n
            pbar.update_absolute(done)
            img = vae.decode(out["samples"])
            if img.ndim == 5:  # video VAEs give [B, T, H, W, C]
                img = img.reshape(-1, *img.shape[-3:])
            images.append(img)
        grid = grid_mod.labelled_strip([im[0].detach().float().cpu().numpy() for im in images], grid_mod.step_labels(counts),
                                       columns=4 if len(counts) > 4 else None)
        return io.NodeOutput(torch.cat(images, dim=0), torch.from_numpy(grid_mod.to_array(grid))[None], report,
                             ui={"text": [report]})




NODES = [LCMLoraSampler, LCMLoraPatch, LCMStepSweep]
