"""High-sigma and zero-terminal-SNR schedulers, CFG rescale, and a picture of every schedule.

* NovelAI Diffusion V3 (arXiv 2409.15997): sigma_max should grow with the canvas side.
* Esser et al. 2024 (SD3 paper, sec. 5.3.2): for flow models the same idea is the
  resolution-dependent timestep shift, shift x sqrt(pixels / base pixels).
* Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"): zero terminal
  SNR, trailing timesteps, v-prediction and CFG rescale (phi 0.7).

Here: the node classes. Their helpers, one job each: ``_schedule_helpers`` (what the nodes ask of a
model, the preview), ``_ksampler_scheduler`` (the KSampler dropdown entry), ``_ztsnr_patch`` (sample
as detected: v-prediction / zsnr, the sampler warning), ``_ztsnr_cfg`` (CFG rescale, first-steps guider).
The math lives in ``sd35wb/sigmas.py``; the drawing in ``sd35wb/sigma_plot.py``.
"""

from __future__ import annotations

import logging

import comfy.model_sampling
import comfy.samplers
from comfy_api.v0_0_2 import io, ui

from ..sd35wb import finetune, sigma_plot, sigmas
from . import _compat as C
from ._ksampler_scheduler import register_ksampler_scheduler
from ._schedule_helpers import (
    _check_discrete,
    _model_sampling,
    canvas_size,
    check_ddpm,
    core_schedule,
    is_flow,
    model_family,
    plot_tensor,
    preview_ui,
    to_sigmas,
)
from ._ztsnr_cfg import CondOnlyFirstStepsGuider, rescale_cfg_post
from ._ztsnr_patch import (
    FROM_LOADER,
    PREDICTION_CHOICES,
    ZSNR_CHOICES,
    apply_detection,
    auto_patch,  # noqa: F401 - the sweep's hook: nodes/sweep.py calls schedulers.auto_patch
    detect_from_choices,
    resolve_detect_from,
)

LOG = logging.getLogger("sd35-workbench")
CATEGORY = "SD3.5 Workbench/schedulers"
PATCH_CATEGORY = "SD3.5 Workbench/model patches"  # MODEL in, MODEL out: not schedulers
GUIDER_CATEGORY = "SD3.5 Workbench/sampling"  # beside the SLG guider

register_ksampler_scheduler()  # when the capability loads, as before any node runs


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


# ----------------------------------------------------------------------------- v-prediction / zsnr patch

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
                                       f"{FROM_LOADER!r}: whichever file the loader upstream picked (through LoRA "
                                       "loaders and patches), so swapping the checkpoint is one edit. none: 'auto' "
                                       "keeps what ComfyUI loaded. Explicit prediction / zsnr choices win over what "
                                       "it says."),
            ],
            outputs=[io.Model.Output(), io.String.Output(display_name="detected",
                                                         tooltip="What was detected (with sources) and applied.")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],  # FROM_LOADER walks the queued workflow
        )

    @classmethod
    def execute(cls, model, prediction: str, zsnr: str, detect_from: str = "none") -> io.NodeOutput:
        _check_discrete(model, "SD35WB_ZTSNRModelPatch")
        detection = None
        if detect_from and detect_from != "none":
            hidden = cls.hidden  # None when called outside an execution (then FROM_LOADER says so)
            path = resolve_detect_from(detect_from, getattr(hidden, "prompt", None), getattr(hidden, "unique_id", None))
            try:
                detection = finetune.detect_file(path)
            except ValueError as e:
                raise ValueError(f"detect_from: {e}") from e
        m, summary = apply_detection(model, detection, prediction, zsnr)
        LOG.info("[sd35-workbench] ZTSNR patch: %s", summary.replace("\n", "; "))
        return io.NodeOutput(m, summary, ui=ui.PreviewText(summary))


# ----------------------------------------------------------------------------- CFG rescale

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
