"""High-sigma and zero-terminal-SNR schedulers, CFG rescale, and a picture of every schedule.

* NovelAI Diffusion V3 (arXiv 2409.15997): sigma_max should grow with the canvas side.
* Esser et al. 2024 (SD3 paper, sec. 5.3.2): for flow models the same idea is the
  resolution-dependent timestep shift, shift x sqrt(pixels / base pixels).
* Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"): zero terminal
  SNR, trailing timesteps, v-prediction and CFG rescale (phi 0.7).

The math lives in ``sd35wb/sigmas.py``; the drawing in ``sd35wb/sigma_plot.py``.
"""

from __future__ import annotations

import logging
import math

import comfy.model_sampling
import comfy.patcher_extension
import comfy.samplers
import folder_paths
import torch
from comfy_api.v0_0_2 import io, ui

from ..sd35wb import finetune, grid, sigma_plot, sigmas
from . import _compat as C

LOG = logging.getLogger("sd35-workbench")
CATEGORY = "SD3.5 Workbench/schedulers"
PATCH_CATEGORY = "SD3.5 Workbench/model patches"  # MODEL in, MODEL out: not schedulers
GUIDER_CATEGORY = "SD3.5 Workbench/sampling"  # beside the SLG guider
KSAMPLER_SCHEDULER = "sd35wb_ztsnr_trailing"


# ----------------------------------------------------------------------------- helpers

def _model_sampling(model):
    return model.get_model_object("model_sampling")


def is_flow(ms) -> bool:
    return isinstance(ms, (comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.ModelSamplingFlux,
                           comfy.model_sampling.CONST))


def model_family(model) -> tuple[str, int]:
    """(family, base resolution): 512 for SD1.5, 768 for SD2 v-prediction, 1024 for SDXL and SD3."""
    import comfy.latent_formats
    import comfy.model_base

    base = model.model
    if isinstance(base, comfy.model_base.SD3):
        return "SD3", 1024
    if isinstance(base, (comfy.model_base.SDXL, comfy.model_base.SDXLRefiner)):
        return "SDXL", 1024
    if isinstance(base.latent_format, comfy.latent_formats.SD15):
        if base.model_type == comfy.model_base.ModelType.V_PREDICTION:
            return "SD2 (v)", 768
        return "SD1.5", 512
    return type(base.model_config).__name__, 1024


def canvas_size(width: int, height: int, latent: dict | None) -> tuple[int, int, str]:
    if latent is not None:
        samples = latent["samples"]
        h, w = int(samples.shape[-2]) * 8, int(samples.shape[-1]) * 8
        return w, h, "latent"
    w, h = sigmas.check_size(width, height)
    return w, h, "width/height"


def to_sigmas(arr) -> torch.Tensor:
    return torch.from_numpy(sigmas.check_schedule(arr)).float()


def core_schedule(model, scheduler: str, steps: int):
    ms = _model_sampling(model)
    return comfy.samplers.calculate_sigmas(ms, scheduler, steps).cpu().double().numpy()


def plot_tensor(series: list[sigma_plot.Series], title: str) -> torch.Tensor:
    img = sigma_plot.render(series, title)
    return torch.from_numpy(grid.to_array(img))[None]


def preview_ui(image: torch.Tensor, cls) -> ui.PreviewImage:
    return ui.PreviewImage(image, cls=cls)


def check_ddpm(ms, who: str) -> None:
    """Zero terminal SNR rescales a DDPM beta schedule: refuse EDM / cascade / continuous samplings."""
    ms_mod = comfy.model_sampling
    if not isinstance(ms, ms_mod.ModelSamplingDiscrete) or isinstance(ms, (ms_mod.ModelSamplingDiscreteEDM,
                                                                         ms_mod.StableCascadeSampling)):
        raise ValueError(f"model: {who} needs a discrete DDPM-schedule model (SD1.5 / SD2 / SDXL eps or v); this one "
                         f"samples with {type(ms).__name__}, which has no beta schedule to rescale.")


# ----------------------------------------------------------------------------- KSampler dropdown

def _ztsnr_handler(model_sampling, steps: int) -> torch.Tensor:
    """KSampler scheduler: zero-terminal-SNR trailing schedule of the model's own table."""
    if is_flow(model_sampling):
        raise ValueError(f"scheduler {KSAMPLER_SCHEDULER}: the model is a flow-matching model (SD3/Flux); zero terminal "
                         "SNR applies to discrete eps / v-prediction models only. Pick another scheduler.")
    check_ddpm(model_sampling, f"scheduler {KSAMPLER_SCHEDULER}")
    table = model_sampling.sigmas.detach().cpu().double().numpy()
    if not getattr(model_sampling, "zsnr", False):
        table = sigmas.rescale_sigma_table_zero_terminal_snr(table)
    return torch.from_numpy(sigmas.ztsnr_sigmas_from_table(table, steps, sigmas.COMFY_ZSNR_SIGMA)).float()


def register_ksampler_scheduler() -> bool:
    """Add our schedule to core's scheduler registry (KSampler, KSamplerAdvanced, BasicScheduler), once."""
    return C.register_scheduler(KSAMPLER_SCHEDULER, _ztsnr_handler, use_ms=True)


register_ksampler_scheduler()


# ----------------------------------------------------------------------------- high sigma

class HighSigmaScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WB_HighSigmaScheduler",
            **C.search_aliases("sigma max", "high resolution schedule", "novelai sigma"),
            display_name="High-Sigma Scheduler (resolution-scaled)",
            category=CATEGORY,
            description=(
                "Scales the noise schedule with the canvas size. Discrete (eps / v) models: sigma_max x canvas "
                "factor, as NovelAI Diffusion V3 (arXiv 2409.15997) found SDXL's 14.6 too low for high-resolution "
                "coherence (2x canvas side -> 2x sigma_max). Flow models (SD3 / SD3.5): the resolution-dependent "
                "timestep shift of the SD3 paper (Esser et al. 2024, sec. 5.3.2): shift x sqrt(pixels / base "
                "pixels). The info output and the preview title say which rule was applied."),
            inputs=[
                io.Model.Input("model", tooltip="The model to schedule for: its family sets the base resolution and "
                                                "its model sampling the sigma range."),
                io.Int.Input("steps", default=30, min=1, max=10000,
                             tooltip="Sampling steps; the output has steps + 1 sigmas, ending at 0."),
                io.Int.Input("width", default=1024, min=8, max=16384, step=8,
                             tooltip="Canvas width in pixels (ignored when a latent is connected)."),
                io.Int.Input("height", default=1024, min=8, max=16384, step=8,
                             tooltip="Canvas height in pixels (ignored when a latent is connected)."),
                io.Combo.Input("shape", options=list(sigmas.SHAPES), default="karras",
                               tooltip="Spacing of the sigmas between sigma_max and sigma_min (k-diffusion formulas). "
                                       "Flow models ignore it and use the shifted flow schedule."),
                io.Float.Input("rho", default=7.0, min=0.1, max=100.0, step=0.1,
                               tooltip="Karras rho (7 in Karras et al. 2022) or the polyexponential power (1 = exponential)."),
                io.Int.Input("base_resolution", default=0, min=0, max=8192, step=8,
                             tooltip="Side of the resolution the model was trained at. 0 = from the model family: 512 "
                                     "SD1.5, 768 SD2-v, 1024 SDXL / SD3."),
                io.Combo.Input("rule", options=list(sigmas.RESOLUTION_RULES), default="novelai_linear",
                               tooltip="Discrete models. novelai_linear: factor = longer canvas side / base side "
                                       "(NovelAI V3). area: factor = sqrt(canvas pixels / base pixels). Equal for squares."),
                io.Combo.Input("flow_rule", options=list(sigmas.FLOW_RULES), default="sqrt_area",
                               tooltip="Flow models. sqrt_area: model shift x sqrt(pixels / base pixels) (SD3 paper). "
                                       "diffusers_dynamic: exp(calculate_shift(tokens)) as diffusers' "
                                       "use_dynamic_shifting (0.5 at 256 tokens -> 1.15 at 4096). none: the model's shift."),
                io.Boolean.Input("only_scale_up", default=True,
                                 tooltip="Never lower sigma_max / shift below the model's own for canvases smaller than the base."),
                io.Float.Input("sigma_max_override", **C.advanced(), default=0.0, min=0.0, max=sigmas.SIGMA_MAX_LIMIT, step=0.01,
                               tooltip="Discrete models: use this sigma_max instead of the scaled one (0 = off). Up to "
                                       "20000 (NovelAI's zero-terminal-SNR approximation)."),
                io.Float.Input("sigma_min_override", **C.advanced(), default=0.0, min=0.0, max=1000.0, step=0.0001,
                               tooltip="Discrete models: sigma_min instead of the model's own (0 = from the model)."),
                io.Float.Input("shift_override", **C.advanced(), default=0.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Flow models: use this shift instead of the rule's (0 = off)."),
                io.Latent.Input("latent", optional=True, tooltip="If connected, the canvas size is read from it."),
            ],
            outputs=[io.Sigmas.Output(display_name="SIGMAS"),
                     io.String.Output(display_name="info", tooltip="Which rule was applied and the numbers it gave.")],
        )

    @classmethod
    def execute(cls, model, steps: int, width: int, height: int, shape: str, rho: float, base_resolution: int,
                rule: str, flow_rule: str, only_scale_up: bool, sigma_max_override: float, sigma_min_override: float,
                shift_override: float, latent=None) -> io.NodeOutput:
        steps = sigmas.check_steps(steps)
        w, h, size_from = canvas_size(width, height, latent)
        family, auto_base = model_family(model)
        base = base_resolution or auto_base
        for name, v in (("rho", rho), ("sigma_max_override", sigma_max_override),
                        ("sigma_min_override", sigma_min_override), ("shift_override", shift_override)):
            sigmas.check_finite(v, name)
        ms = _model_sampling(model)

        if is_flow(ms):
            if not isinstance(ms, comfy.model_sampling.ModelSamplingDiscreteFlow):
                raise ValueError(f"model: {type(ms).__name__} is not SD3-style flow sampling; this node shifts SD3 / SD3.5 "
                                 "(ModelSamplingDiscreteFlow) schedules only.")
            model_shift = float(ms.shift)
            if shift_override > 0:
                shift, how = shift_override, f"shift_override {shift_override:g}"
            elif flow_rule == "sqrt_area":
                factor = sigmas.resolution_factor(w, h, base, "area")
                if only_scale_up:
                    factor = max(1.0, factor)
                shift, how = model_shift * factor, f"sqrt_area: shift {model_shift:g} x {factor:.4g}"
            elif flow_rule == "diffusers_dynamic":
                shift, tokens = sigmas.diffusers_dynamic_shift(w, h)
                how = f"diffusers_dynamic: exp(calculate_shift({tokens} tokens))"
            elif flow_rule == "none":
                shift, how = model_shift, "none: model shift"
            else:
                raise ValueError(f"flow_rule: unknown rule {flow_rule!r}; expected one of {list(sigmas.FLOW_RULES)}.")
            out = sigmas.flow_sigmas(steps, shift)
            ref = sigmas.flow_sigmas(steps, model_shift)
            info = (f"{family} flow model: {how} -> shift {shift:.4g} (model {model_shift:g}); canvas {w}x{h} "
                    f"({size_from}) vs base {base}; shape ignored for flow models")
            title = f"{family} {w}x{h}: {how} -> shift {shift:.3g}"
            series = [sigma_plot.Series(f"shift {shift:.3g}", out), sigma_plot.Series(f"model shift {model_shift:g}", ref)]
        else:
            model_min, model_max = float(ms.sigma_min), float(ms.sigma_max)
            smin = sigma_min_override or model_min
            if sigma_max_override > 0:
                smax, how = sigma_max_override, f"sigma_max_override {sigma_max_override:g}"
            else:
                smax, factor = sigmas.scaled_sigma_max(model_max, w, h, base, rule, only_scale_up)
                how = f"{rule}: sigma_max {model_max:.4g} x {factor:.4g}"
            sigmas.check_sigma_range(smin, smax, min_name="sigma_min" + ("_override" if sigma_min_override else " (model)"),
                                     max_name="sigma_max" + ("_override" if sigma_max_override else " (scaled)"))
            out = sigmas.shaped(shape, steps, smin, smax, rho)
            ref = sigmas.shaped(shape, steps, model_min, model_max, rho)
            info = (f"{family} discrete model: {how} -> sigma_max {smax:.4g}, sigma_min {smin:.4g}; canvas {w}x{h} "
                    f"({size_from}) vs base {base}; {shape}" + (f" rho {rho:g}" if shape != "exponential" else ""))
            title = f"{family} {w}x{h}: {how} -> {smax:.4g}"
            series = [sigma_plot.Series(f"{shape} to {smax:.4g}", out), sigma_plot.Series(f"{shape} model max {model_max:.4g}", ref)]
        result = to_sigmas(out)
        return io.NodeOutput(result, info, ui=preview_ui(plot_tensor(series, title), cls))


# ----------------------------------------------------------------------------- zero terminal SNR

class ZTSNRScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WB_ZTSNRScheduler",
            **C.search_aliases("zero terminal snr", "ztsnr", "zsnr", "trailing"),
            display_name="Zero-Terminal-SNR Scheduler (trailing)",
            category=CATEGORY,
            description=(
                "Lin et al. 2023 ('Common Diffusion Noise Schedules and Sample Steps are Flawed'): the model's betas "
                "rescaled to zero terminal SNR (Algorithm 1) and trailing timestep spacing, equal to diffusers' "
                "DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing='trailing'). The infinite first sigma is "
                "replaced by a finite stand-in. For discrete eps / v-prediction models (use a v-prediction model: "
                "SD35WB_ZTSNRModelPatch makes ComfyUI sample it so)."),
            inputs=[
                io.Model.Input("model", tooltip="A discrete (eps / v-prediction) model; its sigma table gives the "
                                                "trailing spacing."),
                io.Int.Input("steps", default=28, min=1, max=1000,
                             tooltip="Sampling steps; trailing spacing always starts at the last training timestep."),
                io.Combo.Input("terminal_sigma", options=list(sigmas.TERMINAL_STANDINS), default="comfyui (4518.76)",
                               tooltip="Finite stand-in for the infinite terminal sigma: ComfyUI's zsnr value (last "
                                       "alpha_bar 4.897e-8 -> 4518.76), NovelAI V3's 20000, or custom_terminal_sigma."),
                io.Float.Input("custom_terminal_sigma", **C.advanced(), default=20000.0, min=1.0, max=sigmas.SIGMA_MAX_LIMIT, step=1.0,
                               tooltip="Used when terminal_sigma is 'custom'."),
            ],
            outputs=[io.Sigmas.Output(display_name="SIGMAS"), io.String.Output(display_name="info")],
        )

    @classmethod
    def execute(cls, model, steps: int, terminal_sigma: str, custom_terminal_sigma: float) -> io.NodeOutput:
        steps = sigmas.check_steps(steps)
        ms = _model_sampling(model)
        if is_flow(ms):
            raise ValueError("model: this is a flow-matching model (SD3 / SD3.5 / Flux sampling); zero terminal SNR "
                             "rescales the betas of discrete eps / v-prediction models. Use SD35WB_HighSigmaScheduler for "
                             "flow models.")
        check_ddpm(ms, "SD35WB_ZTSNRScheduler")
        top = sigmas.terminal_standin(terminal_sigma, custom_terminal_sigma)
        settings = getattr(model.model.model_config, "sampling_settings", {}) or {}
        schedule = settings.get("beta_schedule", "linear")
        n_train = int(getattr(ms, "num_timesteps", len(ms.sigmas)))
        if schedule == "linear" and len(ms.sigmas) == n_train:
            out = sigmas.ztsnr_sigmas(steps, top, "linear", n_train, settings.get("linear_start", 0.00085),
                                      settings.get("linear_end", 0.012))
            source = f"betas linear {settings.get('linear_start', 0.00085)}..{settings.get('linear_end', 0.012)}"
        else:  # any other table: rescale the model's own sigmas
            table = ms.sigmas.detach().cpu().double().numpy()
            if not getattr(ms, "zsnr", False):
                table = sigmas.rescale_sigma_table_zero_terminal_snr(table)
            out = sigmas.ztsnr_sigmas_from_table(table, steps, top)
            source = f"the model's {len(table)}-entry sigma table"
        is_v, is_zsnr = isinstance(ms, comfy.model_sampling.V_PREDICTION), bool(getattr(ms, "zsnr", False))
        warn = ""
        if not (is_v and is_zsnr):
            warn = (f" | model sampling is {'v-prediction' if is_v else 'eps'}, {'zsnr' if is_zsnr else 'not zsnr'}: "
                    "for a ZTSNR v-pred fine-tune add SD35WB_ZTSNRModelPatch")
        info = f"ZTSNR trailing, {steps} steps from {source}; terminal sigma {top:.6g} ({terminal_sigma}){warn}"
        series = [sigma_plot.Series("ZTSNR trailing", out)]
        try:
            series.append(sigma_plot.Series("core normal", core_schedule(model, "normal", steps)))
        except Exception as e:  # noqa: BLE001 - the comparison is optional
            LOG.debug("[sd35-workbench] no comparison schedule: %s", e)
        title = f"ZTSNR trailing, terminal {top:.6g} ({terminal_sigma})"
        return io.NodeOutput(to_sigmas(out), info, ui=preview_ui(plot_tensor(series, title), cls))


def _check_discrete(model, node: str):
    ms = _model_sampling(model)
    if is_flow(ms):
        raise ValueError(f"model: this is a flow-matching model (SD3 / SD3.5 / Flux sampling); {node} patches "
                         "discrete eps / v-prediction models only.")
    return ms


PREDICTION_CHOICES = ["auto", "v_prediction", "eps"]
ZSNR_CHOICES = ["auto", "on", "off"]
WARNING_KEY = "sd35wb_zsnr_sampler_warning"
ZSNR_LIKE_SIGMA = 1000.0  # a first sigma this high is a zero-SNR stand-in (SDXL's own sigma_max is 14.6)


def detect_from_choices() -> list[str]:
    """The files auto can read: ``checkpoints/<name>`` and ``diffusion_models/<name>`` (.safetensors)."""
    out = ["none"]
    for folder in ("checkpoints", "diffusion_models"):
        try:
            names = folder_paths.get_filename_list(folder)
        except Exception:  # noqa: BLE001 - a host without the folder lists nothing
            names = []
        out += [f"{folder}/{n}" for n in names if n.lower().endswith(".safetensors")]
    return out


def resolve_detect_from(choice: str) -> str:
    folder, _, name = choice.partition("/")
    path = folder_paths.get_full_path(folder, name) if folder in ("checkpoints", "diffusion_models") and name else None
    if not path:
        raise ValueError(f"detect_from: {choice!r} is not a file in checkpoints/ or diffusion_models/; pick the file "
                         "the model was loaded from (refresh the node list if it was just added).")
    return path


def show_warning(text: str) -> None:
    """A warning the user sees: the log, and as text on the node that is running (the sampler)."""
    LOG.warning("[sd35-workbench] %s", text)
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer

        ctx = get_executing_context()
        inst = getattr(PromptServer, "instance", None)
        if ctx is not None and inst is not None and hasattr(inst, "send_progress_text"):
            inst.send_progress_text(f"warning: {text}", ctx.node_id)
    except Exception as e:  # noqa: BLE001 - the log line above already carries the warning
        LOG.debug("[sd35-workbench] no node text for the warning: %s", e)


def sampler_name_of(sampler) -> str:
    fn = getattr(sampler, "sampler_function", None)
    name = getattr(fn, "__name__", "") or ""
    return name[len("sample_"):] if name.startswith("sample_") else name


def _zsnr_sampler_check(executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
    """OUTER_SAMPLE wrapper: warn (never stop) when a zero-SNR model meets a sampler that collapses on it."""
    text = finetune.sampler_warning(sampler_name_of(sampler), comfy.samplers.KSAMPLER_NAMES)
    if text:
        show_warning(text)
    return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)


def _sampling_class(prediction: str):
    if prediction == "v_prediction":
        return comfy.model_sampling.V_PREDICTION
    if prediction == "eps":
        return comfy.model_sampling.EPS
    raise ValueError(f"prediction: unknown {prediction!r}; expected one of {PREDICTION_CHOICES}.")


def apply_detection(model, detection: finetune.Detection | None, prediction: str = "auto", zsnr: str = "auto",
                    only_if_needed: bool = False):
    """Sample ``model`` as ``detection`` says (explicit ``prediction`` / ``zsnr`` win); return (model, summary).

    The sweep calls this once per checkpoint with ``only_if_needed``: a model the host already samples
    as detected (eps files, flow models, files with marker keys) is returned as it is, unpatched."""
    if prediction not in PREDICTION_CHOICES:
        raise ValueError(f"prediction: unknown {prediction!r}; expected one of {PREDICTION_CHOICES}.")
    if zsnr not in ZSNR_CHOICES:
        raise ValueError(f"zsnr: unknown {zsnr!r}; expected one of {ZSNR_CHOICES}.")
    ms = _model_sampling(model)
    flow = is_flow(ms)
    if flow or (detection is not None and detection.prediction.value == "flow" and prediction == "auto"):
        if only_if_needed:
            return model, f"flow matching: left as loaded ({detection.summary() if detection else 'no detection'})"
        raise ValueError("model: this is a flow-matching model (SD3 / SD3.5 / Flux sampling); SD35WB_ZTSNRModelPatch "
                         "patches discrete eps / v-prediction models only.")
    is_v = isinstance(ms, comfy.model_sampling.V_PREDICTION)  # V_PREDICTION subclasses EPS
    # No file to read: 'auto' is what ComfyUI itself made of the model (its loader reads the v_pred /
    # ztsnr marker keys into model_sampling; an upstream ModelSamplingDiscrete shows there too).
    loaded = f"as ComfyUI loaded it, {'v-prediction' if is_v else 'eps'}"
    if prediction == "auto":
        if detection is None:
            pred, pred_src = ("v_prediction" if is_v else "eps"), f"auto: {loaded}"
        else:
            pred = "v_prediction" if detection.prediction.value == "v" else "eps"
            pred_src = f"auto: {detection.prediction.source}"
    else:
        pred, pred_src = prediction, "set on the node"
    if zsnr == "auto":
        if detection is None:
            on = bool(getattr(ms, "zsnr", False))
            zsnr_src = f"auto: {loaded}, zsnr {'on' if on else 'off'}"
        else:
            on = detection.zsnr.value == "yes"
            zsnr_src = f"auto: {detection.zsnr.source}" + (" (unknown: left off)" if detection.zsnr.value == "unknown" else "")
    else:
        on, zsnr_src = zsnr == "on", "set on the node"
    sampling_type = _sampling_class(pred)
    lines: list[str] = []
    if detection is not None:
        lines.append(f"detected: {detection.summary()}")
    elif "auto" in (prediction, zsnr):
        lines.append("detected: no detect_from file, so 'auto' follows what ComfyUI loaded (it reads the v_pred / "
                     "ztsnr marker keys); pick the file in detect_from to read its metadata and training configs too")
    lines.append(f"applied: {pred} [{pred_src}], zsnr {'on' if on else 'off'} [{zsnr_src}]")
    if on:
        lines.append(f"zero-SNR: avoid {' / '.join(finetune.ZSNR_UNSAFE_SAMPLERS)} (they collapse); "
                     f"{finetune.ZSNR_ALTERNATIVE if finetune.ZSNR_ALTERNATIVE in comfy.samplers.KSAMPLER_NAMES else finetune.ZSNR_FALLBACK} "
                     "is the safe choice")
    summary = "\n".join(lines)
    same = isinstance(ms, comfy.model_sampling.ModelSamplingDiscrete) and is_v == (pred == "v_prediction") \
        and bool(getattr(ms, "zsnr", False)) == on
    as_loaded = detection is None and prediction == zsnr == "auto"  # nothing to change: keep any custom sampling
    if as_loaded or (only_if_needed and (same or (pred == "eps" and not on))):  # eps + no zsnr: ComfyUI's own choice (EDM too)
        if not on:
            return model, summary + "\n(the host already samples it so: left as loaded)"
        m = model.clone()  # only for the sampler warning
        summary += "\n(the host already samples it so: sampling left as loaded)"
    else:
        class ModelSamplingZTSNR(comfy.model_sampling.ModelSamplingDiscrete, sampling_type):
            pass

        m = model.clone()
        m.add_object_patch("model_sampling", ModelSamplingZTSNR(model.model.model_config, zsnr=on))
    if on:
        m.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WARNING_KEY)
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WARNING_KEY, _zsnr_sampler_check)
    return m, summary


def auto_patch(model, path: str):
    """Sweep hook: sample one loaded checkpoint as its files say (one call per checkpoint).

    Returns (model, note); a file whose detection fails is left as loaded, with the reason in the note."""
    try:
        detection = finetune.detect_file(path)
    except (ValueError, OSError) as e:
        return model, f"not detected ({e}): left as loaded"
    return apply_detection(model, detection, only_if_needed=True)


class ZTSNRModelPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WB_ZTSNRModelPatch",
            **C.search_aliases("zero terminal snr", "v-prediction", "zsnr"),
            display_name="ZTSNR / v-prediction Model Patch",
            category=PATCH_CATEGORY,
            description=(
                "Samples a discrete model as v-prediction and/or with the zero-terminal-SNR sigma table (Lin et al. "
                "2023), exactly like core ModelSamplingDiscrete. 'auto' reads the file the model came from "
                "(detect_from): marker keys, kohya / ModelSpec / naifu metadata, a SimpleTuner run's configs; "
                "prediction and zero-SNR are decided separately, each with its source shown on the node. For "
                "v-pred fine-tunes whose files lack the 'v_pred' / 'ztsnr' marker keys ComfyUI looks for."),
            inputs=[
                io.Model.Input("model", tooltip="A discrete SD1.5 / SD2 / SDXL-family model (not a flow model such as "
                                                "SD3.5); it comes back cloned, sampled as chosen."),
                io.Combo.Input("prediction", options=PREDICTION_CHOICES, default="auto",
                               tooltip="What the network predicts. auto: what detect_from's file says (eps when it "
                                       "says nothing); with no file, what ComfyUI loaded (its 'v_pred' marker key, "
                                       "or an upstream ModelSamplingDiscrete). ZTSNR needs v_prediction (eps is "
                                       "undefined at SNR 0)."),
                io.Combo.Input("zsnr", options=ZSNR_CHOICES, default="auto",
                               tooltip="Zero-terminal-SNR sigma table (terminal 4518.76). auto: on only when a source "
                                       "says the model was trained so (some v-pred models break with it, e.g. "
                                       "EasyFluff); with no file, as ComfyUI loaded it (its 'ztsnr' marker key)."),
                io.Combo.Input("detect_from", options=detect_from_choices(), default="none", optional=True,
                               tooltip="The file the model was loaded from, read for 'auto' (header only): metadata "
                                       "and a SimpleTuner run's configs, beyond the marker keys ComfyUI reads. "
                                       "none: 'auto' keeps what ComfyUI loaded. Explicit prediction / zsnr choices "
                                       "win over what it says."),
            ],
            outputs=[io.Model.Output(), io.String.Output(display_name="detected",
                                                         tooltip="What was detected (with sources) and applied.")],
        )

    @classmethod
    def execute(cls, model, prediction: str, zsnr: str, detect_from: str = "none") -> io.NodeOutput:
        _check_discrete(model, "SD35WB_ZTSNRModelPatch")
        detection = None
        if detect_from and detect_from != "none":
            path = resolve_detect_from(detect_from)
            try:
                detection = finetune.detect_file(path)
            except ValueError as e:
                raise ValueError(f"detect_from: {e}") from e
        m, summary = apply_detection(model, detection, prediction, zsnr)
        LOG.info("[sd35-workbench] ZTSNR patch: %s", summary.replace("\n", "; "))
        return io.NodeOutput(m, summary, ui=ui.PreviewText(summary))


# ----------------------------------------------------------------------------- CFG rescale

def rescale_cfg_post(multiplier: float):
    """Post-CFG function: Lin et al. 2023 sec. 3.4 CFG rescale, computed in v-space like core RescaleCFG.

    Works on the already combined ``denoised`` (so any other cfg function stays in charge of the
    combination): for a plain CFG combination the v-space combination equals the x0-space one,
    because the x0 -> v map is affine and the CFG weights sum to 1. Flow models use the flow
    velocity (x - x0) / sigma as their v."""

    def post(args):
        denoised = args["denoised"]
        cond_x0, uncond_x0 = args.get("cond_denoised"), args.get("uncond_denoised")
        if multiplier == 0 or cond_x0 is None or uncond_x0 is None or math.isclose(float(args["cond_scale"]), 1.0):
            return denoised
        x_orig = args["input"]
        sigma = args["sigma"]
        sigma = sigma.view(sigma.shape[:1] + (1,) * (denoised.ndim - 1)).to(denoised.dtype)
        ms = args["model"].model_sampling if hasattr(args["model"], "model_sampling") else None
        dims = tuple(range(1, denoised.ndim))
        if ms is not None and is_flow(ms):
            v_cond = (x_orig - cond_x0) / sigma
            v_cfg = (x_orig - denoised) / sigma
        else:
            x = x_orig / (sigma * sigma + 1.0)
            k = (sigma ** 2 + 1.0) ** 0.5 / sigma
            v_cond = (x - cond_x0) * k
            v_cfg = (x - denoised) * k
        ro_pos = torch.std(v_cond, dim=dims, keepdim=True)
        ro_cfg = torch.std(v_cfg, dim=dims, keepdim=True)
        v_final = multiplier * (v_cfg * (ro_pos / ro_cfg)) + (1.0 - multiplier) * v_cfg
        if ms is not None and is_flow(ms):
            return x_orig - v_final * sigma
        return x - v_final / k

    return post


class RescaleCFG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WB_RescaleCFG",
            **C.search_aliases("cfg rescale", "rescale cfg", "zero terminal snr"),
            display_name="ZTSNR Rescale CFG (v-space, chainable)",  # core has "RescaleCFG": tell them apart
            category=PATCH_CATEGORY,
            description=(
                "Lin et al. 2023 sec. 3.4: rescale the CFG result to the standard deviation of the positive prediction "
                "in v-space, blended by multiplier (phi; 0.7 in the paper), against over-exposure with zero terminal "
                "SNR. Same numbers as core RescaleCFG, but added as a post-CFG function so it chains with other "
                "packs' CFG functions instead of replacing them."),
            inputs=[
                io.Model.Input("model", tooltip="The model to add the CFG rescale to (a clone; other post-CFG "
                                                "functions already set stay in the chain)."),
                io.Float.Input("multiplier", default=0.7, min=0.0, max=1.0, step=0.01,
                               tooltip="phi: 0 = plain CFG, 1 = fully rescaled. 0.7 from Lin et al. 2023."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, multiplier: float) -> io.NodeOutput:
        mult = sigmas.check_finite(multiplier, "multiplier")
        if not 0.0 <= mult <= 1.0:
            raise ValueError(f"multiplier: {mult:g} is outside 0..1.")
        m = model.clone()
        m.set_model_sampler_post_cfg_function(rescale_cfg_post(mult))
        return io.NodeOutput(m)


# ----------------------------------------------------------------------------- first-step CFG skip

class CondOnlyFirstStepsGuider(comfy.samplers.CFGGuider):
    """CFG guider that uses the positive prediction alone (cfg 1, no uncond pass) for the first
    ``cond_only_steps`` steps of the schedule it samples, i.e. while sigma > sigmas[cond_only_steps]."""

    def set_cond_only_steps(self, n: int) -> None:
        self.cond_only_steps = int(n)

    def cfg_for(self, timestep, model_options) -> float:
        n = getattr(self, "cond_only_steps", 0)
        sched = (model_options.get("transformer_options") or {}).get("sample_sigmas")
        if n <= 0 or sched is None:
            return self.cfg
        if n >= len(sched) - 1:
            return 1.0
        threshold = float(sched[n])
        return 1.0 if float(timestep.max()) > threshold else self.cfg

    def sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
        if sigmas is not None and len(sigmas) and float(sigmas.max()) >= ZSNR_LIKE_SIGMA:
            text = finetune.sampler_warning(sampler_name_of(sampler), comfy.samplers.KSAMPLER_NAMES)
            patched = getattr(self.model_patcher, "wrappers", {}).get(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, {})
            if text and WARNING_KEY not in patched:  # a patched model warns from its own wrapper
                show_warning(text)
        return super().sample(noise, latent_image, sampler, sigmas, *args, **kwargs)

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - core's signature
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative", None),
                                                self.conds.get("positive", None), self.cfg_for(timestep, model_options),
                                                model_options=model_options, seed=seed)


class ZTSNRGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WB_ZTSNRGuider",
            **C.search_aliases("ztsnr", "cond only first steps"),
            display_name="ZTSNR CFG Guider (skip CFG on first steps)",  # core has "CFGGuider": tell them apart
            category=GUIDER_CATEGORY,
            description=(
                "Core CFG guider, except that the first step(s) of the schedule use the positive prediction alone "
                "(no negative pass). With zero terminal SNR the first step is at sigma ~4518-20000 where the input is "
                "pure noise and the model predicts the data mean; CFG there only extrapolates between two means. "
                "Connect to SamplerCustomAdvanced with the ZTSNR scheduler's SIGMAS."),
            inputs=[
                io.Model.Input("model", tooltip="The model to guide (typically patched by the ZTSNR Model Patch)."),
                io.Conditioning.Input("positive", tooltip="The prompt's conditioning."),
                io.Conditioning.Input("negative", tooltip="The negative prompt's conditioning; not evaluated on the "
                                                          "cond-only first steps."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="CFG scale for the remaining steps (NovelAI V3 uses 3.5-5 with ZTSNR)."),
                io.Int.Input("cond_only_steps", default=1, min=0, max=10000,
                             tooltip="How many leading steps skip CFG (0 = plain CFG guider). A step's evaluations "
                                     "above the next step's sigma count as that step."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg: float, cond_only_steps: int) -> io.NodeOutput:
        cfg = sigmas.check_finite(cfg, "cfg")
        if cond_only_steps < 0:
            raise ValueError(f"cond_only_steps: must be >= 0, got {cond_only_steps}.")
        guider = CondOnlyFirstStepsGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        guider.set_cond_only_steps(cond_only_steps)
        return io.NodeOutput(guider)


# ----------------------------------------------------------------------------- preview

class SigmaPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WB_SigmaPreview",
            **C.search_aliases("sigma plot", "schedule preview", "sigmas graph"),
            display_name="Sigma Schedule Preview",
            category=CATEGORY,
            description=("Draws a SIGMAS schedule (sigma per step, log axis) as an image and shows it on the node; "
                         "with a model connected, also core's schedule for the same model and step count."),
            inputs=[
                io.Sigmas.Input("sigmas", tooltip="The schedule to plot (any SIGMAS output: BasicScheduler, the "
                                                  "pack's schedulers)."),
                io.String.Input("title", default="", tooltip="Title line of the plot (empty: a summary of the schedule)."),
                io.Combo.Input("compare_with", options=["none", *comfy.samplers.SCHEDULER_NAMES], default="simple",
                               tooltip="Core scheduler drawn for comparison when a model is connected ('simple' is "
                                       "KSampler's default)."),
                io.Model.Input("model", optional=True, tooltip="Model whose core schedule is drawn for comparison."),
            ],
            outputs=[io.Image.Output()],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, sigmas, title: str, compare_with: str, model=None) -> io.NodeOutput:
        import numpy as np

        if sigmas is None or not hasattr(sigmas, "shape"):
            raise ValueError("sigmas: expected a SIGMAS tensor.")
        s = sigmas.detach().cpu().double().numpy().reshape(-1)
        if s.size < 2:
            raise ValueError(f"sigmas: a schedule needs at least 2 sigmas (1 step), got {s.size}.")
        if np.isnan(s).any():
            raise ValueError("sigmas: contains NaN.")
        series = [sigma_plot.Series("sigmas", s)]
        if model is not None and compare_with != "none":
            series.append(sigma_plot.Series(f"core {compare_with}", core_schedule(model, compare_with, s.size - 1)))
        img = plot_tensor(series, title or f"{s.size - 1} steps, sigma {s[0]:.4g} -> {s[-1]:.4g}")
        return io.NodeOutput(img, ui=preview_ui(img, cls))


NODES = [HighSigmaScheduler, ZTSNRScheduler, ZTSNRModelPatch, RescaleCFG, ZTSNRGuider, SigmaPreview]
