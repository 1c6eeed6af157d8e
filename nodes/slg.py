"""Skip Layer Guidance (SLG) for SD3.5: a GUIDER for SamplerCustomAdvanced and an all-in-one sampler.

References: Stability AI's SD3.5 reference implementation (``sd3_infer.py`` / ``sd3_impls.py``,
``SkipLayerCFGDenoiser``: Medium skips joint blocks 7, 8, 9 at scale 2.5 in the first 1-20 % of
the steps), ComfyUI core ``SkipLayerGuidanceSD3`` (same formula as a post-CFG function, sigma
window), and Perturbed Attention Guidance (Ahn et al. 2024, arXiv 2403.17377) which inspired it.

The formula is the reference's: ``cfg_result + (cond - cond_with_layers_skipped) * scale``.

Fast path: the positive pass and the skip pass are identical up to the first skipped block, so
one batched ``calc_cond_batch`` call carries three conds (positive, negative, positive-for-skip)
and ``("dit", "double_block", i)`` replace patches, set on a *copy* of the sampling
``model_options``, compute that prefix once: before the first skipped block the original block
runs only on the other rows and, at the last prefix block, the positive rows' ``img``/``txt`` are
copied into the skip rows; in the skipped blocks the skip rows pass through. Rows are matched by
the cond entries' ``uuids``, so chunk order, batch size > 1, combined conditioning and the host
splitting the batch under memory pressure (the skip rows then arrive without their positive twin
and are computed in full, as core's separate pass would) all give core's result.
"""

from __future__ import annotations

import logging
import math
import uuid

import comfy.model_management
import comfy.model_patcher
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.v0_0_2 import io

from ..sd35wb import overrides as O
from ..sd35wb import presets as presets_mod
from ..sd35wb import slg as S
from . import _compat as C

LOG = logging.getLogger("sd35-workbench")

SETTINGS = io.Custom("SD35WB_SETTINGS")
SKIP_INDEX = 2  # position of the positive-for-skip cond in our calc_cond_batch call
PRESETS = presets_mod.SLG_PRESETS
PRESET_NAMES = ["from settings", *PRESETS, "custom"]
IMPLEMENTATIONS = ["batched", "separate pass"]
# Appended as the last output: saved workflows link outputs by index.


def _report_output():
    return io.String.Output("report", display_name="report", tooltip=(
        "The values that ran (sampling, SLG layers / scale / window) and where each came from; a warning line for "
        "every value on the node that settings or the preset replaced. Also shown on the node."))
_REF = presets_mod.SLG_STABILITY_MEDIUM  # widget defaults: Stability's SD3.5 Medium reference

CITE = ("SLG after Stability AI's SD3.5 reference (sd3_impls.SkipLayerCFGDenoiser) and ComfyUI core "
        "SkipLayerGuidanceSD3, inspired by Perturbed Attention Guidance (arXiv 2403.17377): adds "
        "(cond - cond with joint blocks skipped) x scale to the CFG result. Computes the shared prefix of the "
        "positive and skip passes once (one batched call), so it costs less than core's extra pass; same result.")


# ---------------------------------------------------------------------------------------------
# Model checks


def mmdit_block_count(model) -> int:
    """Number of MMDiT joint blocks; a clear error for models without them (UNets, other DiTs)."""
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    blocks = getattr(dm, "joint_blocks", None)
    if blocks is None:
        kind = type(getattr(getattr(model, "model", None), "model_config", None)).__name__
        raise ValueError(
            f"model: this {kind} model has no MMDiT joint blocks, so SD3.5 Skip Layer Guidance cannot skip any; "
            "connect an SD3 / SD3.5 model (for Flux and other DiTs use core's SkipLayerGuidanceDiT)")
    return len(blocks)


def _slice_rows(t, segments, rows_per_chunk):
    parts = [t.narrow(0, s * rows_per_chunk, (e - s) * rows_per_chunk) for _, s, e in segments]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _assemble(sources, tensors, rows_per_chunk):
    """The block's full-batch output from the computed rows (``"out"``) and the untouched input rows (``"in"``).

    The computed rows are written into the block's input tensor in place (the host's own block loop
    adds ControlNet residuals into it in place too), so no batch-sized tensor is allocated and the
    carried rows are not copied at every block; one concatenation when that cannot be done."""
    segments = S.merge_segments(sources)
    dst, src = tensors["in"], tensors["out"]
    in_place = (dst.is_contiguous() and dst.dtype == src.dtype and dst.device == src.device
                and dst.shape[1:] == src.shape[1:])
    pos = 0
    for key, s, e in segments:  # every carried chunk must already sit where the output wants it
        in_place &= key == "out" or s == pos
        pos += e - s
    if not in_place:
        parts = [tensors[k].narrow(0, s * rows_per_chunk, (e - s) * rows_per_chunk) for k, s, e in segments]
        return parts[0] if len(parts) == 1 else torch.cat(parts)
    pos = 0
    for key, s, e in segments:
        k = (e - s) * rows_per_chunk
        if key == "out":
            part, target = src.narrow(0, s * rows_per_chunk, k), dst.narrow(0, pos * rows_per_chunk, k)
            if part.data_ptr() != target.data_ptr():  # a patch that returned its input rows: already in place
                target.copy_(part)
        pos += e - s
    return dst


_ROW_LIST_KEYS = ("cond_or_uncond", "uuids", "sd35wb_slg_cond_or_uncond")


def _call(prev, args, extra, block=None):
    """Run what sits at this block: another pack's patch if there is one, else the block itself.

    With no other patch, the MMDiT joint block is called the way the model's own loop calls its
    unpatched blocks (no activation checkpointing: the host's ``original_block`` wrapper turns it
    on, which costs time at inference and changes nothing numerically)."""
    if prev is not None:
        return prev(args, extra)
    if block is not None:
        txt, img = block(args["txt"], args["img"], c=args["vec"], use_checkpoint=False,
                         transformer_options=args["transformer_options"])
        return {"img": img, "txt": txt}
    return extra["original_block"](args)


def _assembled(out, args, img, sources, rows_per_chunk):
    """The block's result with img (and txt, when the block returns one) rebuilt row by row from
    ``sources``: computed rows from ``out``, untouched ones from the block's input."""
    res = dict(out)
    res["img"] = _assemble(sources, {"out": out["img"], "in": img}, rows_per_chunk)
    txt_out = out.get("txt")
    res["txt"] = None if txt_out is None else _assemble(sources, {"out": txt_out, "in": args["txt"]}, rows_per_chunk)
    return res


def _run_rows(prev, args, extra, run, n_chunks, rows_per_chunk, block=None):
    """Run the block (or the patch another pack set on it) on the chunks in ``run`` only."""
    if len(run) == n_chunks:
        return _call(prev, args, extra, block)
    segments = S.merge_segments([("x", c) for c in run])
    sub = dict(args)
    for key in ("img", "txt", "vec"):
        t = args.get(key)
        if isinstance(t, torch.Tensor) and t.shape[0] == n_chunks * rows_per_chunk:
            sub[key] = _slice_rows(t, segments, rows_per_chunk)
    to = dict(args["transformer_options"])
    for key in _ROW_LIST_KEYS:  # per-chunk lists must describe the rows the block actually sees
        if isinstance(to.get(key), list) and len(to[key]) == n_chunks:
            to[key] = [to[key][c] for c in run]
    sub["transformer_options"] = to
    return _call(prev, sub, extra, block)


# ---------------------------------------------------------------------------------------------
# The guider


def public_rows_wrapper(prev, public_rows, key: str):
    """A model_function_wrapper that shows our extra rows (skip / variant) to other code as positive
    rows (0), the way core's separate pass tags them; the real tags travel in transformer_options[key].
    Chains ``prev`` (another pack's wrapper) instead of replacing it."""

    def sd35wb_slg_rows(apply_model, args):
        rows = list(args["cond_or_uncond"])
        public = public_rows(rows)
        c = dict(args["c"])
        to = dict(c.get("transformer_options", {}))
        to["cond_or_uncond"] = public
        to[key] = rows
        c["transformer_options"] = to
        new_args = dict(args)
        new_args["c"], new_args["cond_or_uncond"] = c, public
        if prev is not None:
            return prev(apply_model, new_args)
        return apply_model(new_args["input"], new_args["timestep"], **c)

    return sd35wb_slg_rows


class SLGGuider(comfy.samplers.CFGGuider):
    """CFG + Skip Layer Guidance. ``predict_noise`` is the only sampling hook overridden."""

    def set_slg(self, layers, scale: float, start: float, end: float, gating: str, rescale: float = 0.0,
                batched: bool = True):
        S.validate_window(start, end, gating)
        self.slg_layers = tuple(sorted(set(int(i) for i in layers)))
        self.slg_scale = float(scale)
        self.slg_start, self.slg_end, self.slg_gating = float(start), float(end), gating
        self.slg_rescale = float(rescale)
        self.slg_batched = bool(batched)
        self.sigma_start = self.sigma_end = None
        if gating == "sigma":
            ms = self.model_patcher.get_model_object("model_sampling")
            self.sigma_start = float(ms.percent_to_sigma(start))
            self.sigma_end = float(ms.percent_to_sigma(end))
        self._skip_src = None
        self._skip_conds: list = []
        self._skip_map: dict = {}
        self._schedule_src = None
        self._schedule: list[float] = []

    # -- gating ---------------------------------------------------------------------------------

    def _host_schedule(self, model_options):
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None:
            return None
        if self._schedule_src is not sigmas:  # one device->host copy per sampling run, not per step
            self._schedule = [float(s) for s in sigmas.detach().to("cpu", torch.float64)]
            self._schedule_src = sigmas
        return self._schedule

    def slg_active(self, timestep, model_options) -> bool:
        if S.never_active(self.slg_scale, self.slg_layers, self.slg_start, self.slg_end):
            return False
        if S.always_active(self.slg_start, self.slg_end, self.slg_gating):
            return True
        sigma = float(timestep.reshape(-1)[0])  # the one host read needed to decide whether to run more
        if self.slg_gating == "sigma":
            return S.sigma_active(sigma, self.sigma_start, self.sigma_end)
        schedule = self._host_schedule(model_options)
        if schedule is None:
            raise RuntimeError("SLG step gating needs the run's sigmas (transformer_options['sample_sigmas']); "
                               "the host did not provide them: use gating 'sigma'")
        return S.step_active(S.nearest_step(sigma, schedule), len(schedule) - 1, self.slg_start, self.slg_end)

    # -- conds and patches ----------------------------------------------------------------------

    def _skip_conds_for(self, positive):
        """The positive entries again, each under a new uuid (so the host batches it as its own chunk)."""
        if self._skip_src is not positive:
            self._skip_conds, self._skip_map = [], {}
            seen = [c.get("uuid") for c in positive]
            for c in positive:
                twin = c.copy()
                twin["uuid"] = uuid.uuid4()
                # an entry whose uuid is not unique cannot be told apart: its twin computes its own prefix
                self._skip_map[twin["uuid"]] = c.get("uuid") if seen.count(c.get("uuid")) == 1 else None
                self._skip_conds.append(twin)
            self._skip_src = positive
        return self._skip_conds

    def _prefix_patch(self, prev, last_prefix: bool, block=None):
        skip_map = self._skip_map

        def sd35wb_slg_prefix(args, extra):
            to = args["transformer_options"]
            plan = S.plan_rows(to.get("uuids", ()), skip_map, to.get("sd35wb_slg_cond_or_uncond"))
            n = plan.n_chunks
            img = args["img"]
            if not plan.shared or n == 0 or img.shape[0] % n:
                return _call(prev, args, extra, block)
            rows = img.shape[0] // n
            run = plan.prefix_run()
            out = _run_rows(prev, args, extra, run, n, rows, block)
            at = {c: k for k, c in enumerate(run)}
            shared = plan.shared_map
            sources = []
            for c in range(n):
                if c in at:
                    sources.append(("out", at[c]))
                elif last_prefix:  # hand the skip rows the positive twin's hidden state
                    sources.append(("out", at[shared[c]]))
                else:  # not needed yet: carried along untouched, overwritten at the last prefix block
                    sources.append(("in", c))
            return _assembled(out, args, img, sources, rows)

        return sd35wb_slg_prefix

    def _skipped_patch(self, prev, block=None):
        skip_map = self._skip_map

        def sd35wb_slg_skip(args, extra):
            to = args["transformer_options"]
            plan = S.plan_rows(to.get("uuids", ()), skip_map, to.get("sd35wb_slg_cond_or_uncond"))
            n = plan.n_chunks
            img = args["img"]
            if not plan.skip or n == 0 or img.shape[0] % n:
                return _call(prev, args, extra, block)
            run = plan.skipped_run()
            if not run:
                return args
            rows = img.shape[0] // n
            out = _run_rows(prev, args, extra, run, n, rows, block)
            at = {c: k for k, c in enumerate(run)}
            sources = [("out", at[c]) if c in at else ("in", c) for c in range(n)]
            return _assembled(out, args, img, sources, rows)

        return sd35wb_slg_skip

    def _batched_options(self, model_options):
        opts = model_options.copy()
        opts["transformer_options"] = dict(opts.get("transformer_options", {}))
        existing = opts["transformer_options"].get("patches_replace", {}).get("dit", {})
        first, skipped = self.slg_layers[0], set(self.slg_layers)
        blocks = getattr(getattr(self.inner_model, "diffusion_model", None), "joint_blocks", None)
        for i in range(self.slg_layers[-1] + 1):
            prev = existing.get(("double_block", i))  # another pack's patch: called as the block, never dropped
            block = blocks[i] if blocks is not None and i < len(blocks) else None
            if i in skipped:
                patch = self._skipped_patch(prev, block)
            elif i < first:
                patch = self._prefix_patch(prev, last_prefix=(i == first - 1), block=block)
            else:
                continue
            opts = comfy.model_patcher.set_model_options_patch_replace(opts, patch, "dit", "double_block", i)
        opts["model_function_wrapper"] = public_rows_wrapper(opts.get("model_function_wrapper"),
                                                            lambda rows: S.public_cond_or_uncond(rows, SKIP_INDEX),
                                                            "sd35wb_slg_cond_or_uncond")
        return opts

    def _separate_options(self, model_options):
        """Core's way: identity patches on the skipped blocks for a separate positive pass."""
        opts = model_options.copy()
        opts["transformer_options"] = dict(opts.get("transformer_options", {}))
        for i in self.slg_layers:
            opts = comfy.model_patcher.set_model_options_patch_replace(opts, _pass_through, "dit", "double_block", i)
        return opts

    # -- the sampling hook ----------------------------------------------------------------------

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - the host's signature
        positive = self.conds.get("positive", None)
        negative = self.conds.get("negative", None)
        model = self.inner_model
        if not self.slg_active(timestep, model_options):
            return comfy.samplers.sampling_function(model, x, timestep, negative, positive, self.cfg,
                                                    model_options=model_options, seed=seed)
        if math.isclose(self.cfg, 1.0) and not model_options.get("disable_cfg1_optimization", False):
            negative = None
        conds = [positive, negative]
        batch_fn = model_options.get("sampler_calc_cond_batch_function")
        if self.slg_batched and batch_fn is None:
            skip = self._skip_conds_for(positive)
            opts = self._batched_options(model_options)
            cond_out, uncond_out, skip_out = comfy.samplers.calc_cond_batch(model, [positive, negative, skip], x,
                                                                            timestep, opts)
            out = [cond_out, uncond_out]
        else:
            # Another pack's cond-batch function expects [cond, uncond]: it keeps them, we add a separate pass.
            if batch_fn is not None:
                out = batch_fn({"conds": conds, "input": x, "sigma": timestep, "model": model,
                                "model_options": model_options})
            else:
                out = comfy.samplers.calc_cond_batch(model, conds, x, timestep, model_options)
            (skip_out,) = comfy.samplers.calc_cond_batch(model, [positive], x, timestep,
                                                         self._separate_options(model_options))
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn({"conds": conds, "conds_out": out, "cond_scale": self.cfg, "timestep": timestep, "input": x,
                      "sigma": timestep, "model": model, "model_options": model_options})
        cfg_result = comfy.samplers.cfg_function(model, out[0], out[1], self.cfg, x, timestep,
                                                 model_options=model_options, cond=positive, uncond=negative)
        return apply_slg(cfg_result, out[0], skip_out, self.slg_scale, self.slg_rescale)


def _pass_through(args, extra):
    return args


def apply_slg(cfg_result, cond, cond_skip, scale: float, rescale: float = 0.0):
    """The reference formula, plus core's optional std rescale of the result toward the positive."""
    result = cfg_result + (cond - cond_skip) * scale
    if rescale != 0:
        factor = cond.std() / result.std()
        result = result * (rescale * factor + (1 - rescale))
    return result


# ---------------------------------------------------------------------------------------------
# Shared node plumbing


def _check_settings(settings):
    if settings is not None and not isinstance(settings, dict):
        raise ValueError("settings: expected the SD3.5 loader's SETTINGS output (a settings dict), got "
                         f"{type(settings).__name__}")


def build_guider(model, positive, negative, cfg, preset, layers, scale, start, end, gating, rescale,
                 implementation, settings=None) -> tuple[SLGGuider, dict]:
    """Validate every input against the model, then make the guider (no work starts here).

    Returns the guider and the SLG values it runs with (for the node's report)."""
    _check_settings(settings)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation: {implementation!r} is not one of {IMPLEMENTATIONS}")
    slg = S.resolve_slg(preset, {"layers": layers, "scale": scale, "start": start, "end": end, "gating": gating},
                        settings, PRESETS)
    block_count = mmdit_block_count(model)
    layer_list = S.parse_layers(slg["layers"], block_count, "layers")
    S.validate_window(slg["start"], slg["end"], slg["gating"])
    if settings and settings.get("variant", "").startswith("large") and slg["scale"] > 0 and layer_list:
        LOG.warning("[sd35-workbench] SLG on SD3.5 %s: users report layers 7,8,9 break Large images; "
                    "preset 'from settings' turns it off for Large", settings.get("variant"))
    guider = SLGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    guider.set_slg(layer_list, slg["scale"], slg["start"], slg["end"], slg["gating"], rescale,
                   batched=(implementation == "batched"))
    return guider, {**slg, "layers": S.format_layers(layer_list)}


def slg_report(node_id: str, title: str, sampling: dict, sampling_src: str, slg: dict, given: dict, connected,
               preset: str, settings) -> str:
    """The node's report: the values that ran, where they came from, and a warning for every value
    the prompt gave that an override replaced (the overrides table decides which)."""
    lines = [title, "sampling: " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in sampling.items()) + f" (from {sampling_src})",
             S.describe_slg(slg, S.slg_source(preset, settings))]
    shown = {**given, "layers": S.normalize_layers(given["layers"])}
    lines += O.report_lines(node_id, shown, {**sampling, **slg}, connected)
    return "\n".join(lines)


def _sampling_source(settings, sampling_from_settings: bool) -> str:
    if settings and sampling_from_settings:
        return f"settings for {settings.get('variant', '?')}"
    return "the widgets" + (" (sampling_from_settings off)" if settings else "")


def slg_inputs() -> list:
    return [
        io.Combo.Input("preset", options=PRESET_NAMES, default="from settings", tooltip=(
            "'from settings': the loader's recommendation for the detected variant (Medium: Stability's "
            "reference; Large and Large Turbo: no SLG, users report layers 7,8,9 break Large); with no settings "
            "connected the fields below are used. 'SD3.5 Medium (Stability reference)': layers 7,8,9, scale 2.5, "
            "steps 1-20 %. 'ComfyUI core defaults': layers 7,8,9, scale 3.0, sigma 1-15 %. 'off': plain CFG. "
            "'custom': the fields below. Picking a preset in the UI fills the fields.")),
        io.String.Input("layers", default=S.format_layers(_REF["layers"]), tooltip=(
            "Joint (MMDiT) blocks skipped in the extra positive pass, e.g. \"7, 8, 9\" (Stability's choice for "
            "SD3.5 Medium, 24 blocks 0-23). Checked against the model's block count. Empty = no SLG.")),
        io.Float.Input("scale", default=_REF["scale"], min=0.0, max=10.0, step=0.1, tooltip=(
            "SLG strength: adds (cond - cond with layers skipped) x scale. Stability uses 2.5, core 3.0, diffusers "
            "2.8. 0 turns SLG off. Too high burns details; SLG is weak at very low step counts (Turbo).")),
        io.Float.Input("start", default=_REF["start"], min=0.0, max=1.0, step=0.001, tooltip=(
            "Where the SLG window opens, as a fraction of the run (0.01 = 1 %). Stability 0.01, core 0.01.")),
        io.Float.Input("end", default=_REF["end"], min=0.0, max=1.0, step=0.001, tooltip=(
            "Where the SLG window closes (fraction of the run). Stability 0.20 of steps, core 0.15 of sigma. "
            "Early steps set composition and anatomy, which is what SLG helps; a wider window costs more time.")),
        io.Combo.Input("gating", options=list(S.GATINGS), default=_REF["gating"], tooltip=(
            "'steps': Stability's rule, step i of N gets SLG when start*N < i < end*N (both strict, so step 0 "
            "never does). 'sigma': core's rule, active while percent_to_sigma(end) <= sigma <= "
            "percent_to_sigma(start).")),
        io.Float.Input("rescale", default=0.0, min=0.0, max=10.0, step=0.01, optional=True, tooltip=(
            "Optional (core's rescaling_scale): pulls the result's std back toward the positive prediction's "
            "when SLG is active. 0 = off (Stability's reference has none).")),
        io.Combo.Input("implementation", **C.advanced(), options=IMPLEMENTATIONS, default="batched", optional=True, tooltip=(
            "'batched': one model call computes positive, negative and the skip pass, sharing the blocks before "
            "the first skipped one (faster, same result). 'separate pass': core's way, an extra model call; use it "
            "to rule this node out when another pack's patches misbehave. Conflicts with step-caching nodes "
            "(TeaCache, FBCache) either way: they reuse blocks SLG needs to skip.")),
        SETTINGS.Input("settings", optional=True, tooltip=(
            "The SD3.5 loader's SETTINGS output: recommended SLG (preset 'from settings') and sampling values for "
            "the detected variant, from Stability's reference.")),
        io.Boolean.Input("sampling_from_settings", default=True, optional=True, tooltip=(
            "With settings connected, take the sampling values (cfg; for the sampler also steps, sampler and "
            "scheduler) from them instead of the widgets. Off: the widgets win.")),
    ]


# ---------------------------------------------------------------------------------------------
# Nodes


class SLGGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WB_SLGGuider",
            **C.search_aliases("skip layer guidance", "slg", "sd3.5 guidance"),
            display_name="SD3.5 SLG Guider",
            category="SD3.5 Workbench/sampling",
            description=CITE + " A GUIDER for SamplerCustomAdvanced.",
            inputs=[
                io.Model.Input("model", tooltip="An SD3 / SD3.5 model (MMDiT); SD3.5 Medium is what SLG was tuned for."),
                io.Conditioning.Input("positive", tooltip="The prompt's conditioning (CLIPTextEncode with the SD3.5 CLIP); the SLG pass skips layers on this one."),
                io.Conditioning.Input("negative", tooltip="The negative prompt's conditioning (an empty prompt is common for SD3.5)."),
                io.Float.Input("cfg", default=presets_mod.VARIANTS["medium"]["cfg"], min=0.0, max=100.0, step=0.1,
                               round=0.01, tooltip="CFG scale. Stability's reference: 4.0 for Medium with SLG, "
                                                   "4.5 Large, 1.0 Large Turbo."),
                *slg_inputs(),
            ],
            outputs=[io.Guider.Output(), _report_output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg: float, preset: str, layers: str, scale: float, start: float,
                end: float, gating: str, rescale: float = 0.0, implementation: str = "batched", settings=None,
                sampling_from_settings: bool = True) -> io.NodeOutput:
        _check_settings(settings)
        given = dict(cfg=cfg, preset=preset, layers=layers, scale=scale, start=start, end=end, gating=gating,
                     sampling_from_settings=sampling_from_settings)
        if settings and sampling_from_settings and "cfg" in settings:
            cfg = float(settings["cfg"])
        guider, slg = build_guider(model, positive, negative, cfg, preset, layers, scale, start, end, gating, rescale,
                                   implementation, settings)
        report = slg_report("SD35WB_SLGGuider", "SD3.5 SLG Guider", {"cfg": float(cfg)},
                            _sampling_source(settings, sampling_from_settings), slg, given,
                            {"settings"} if settings is not None else set(), preset, settings)
        return io.NodeOutput(guider, report, ui={"text": [report]})


class SLGSamplerNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        medium = presets_mod.VARIANTS["medium"]
        return io.Schema(
            node_id="SD35WB_SLGSampler",
            **C.search_aliases("skip layer guidance", "slg", "ksampler slg"),
            display_name="SD3.5 SLG Sampler",
            category="SD3.5 Workbench/sampling",
            description=CITE + " KSampler-shaped; with settings connected the defaults follow the model.",
            inputs=[
                io.Model.Input("model", tooltip="An SD3 / SD3.5 model (MMDiT); SD3.5 Medium is what SLG was tuned for."),
                io.Conditioning.Input("positive", tooltip="The prompt's conditioning (CLIPTextEncode with the SD3.5 CLIP); the SLG pass skips layers on this one."),
                io.Conditioning.Input("negative", tooltip="The negative prompt's conditioning (an empty prompt is common for SD3.5)."),
                io.Latent.Input("latent_image", tooltip="The latent to sample: EmptySD3LatentImage for text-to-image, "
                                                        "an encoded image with denoise below 1."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Noise seed (same noise as KSampler for the same seed)."),
                io.Int.Input("steps", default=medium["steps"], min=1, max=10000, tooltip=(
                    "Sampling steps. Stability: Medium 50, Large 40, Large Turbo 4. SLG needs steps: it is weak "
                    "at very low step counts.")),
                io.Float.Input("cfg", default=medium["cfg"], min=0.0, max=100.0, step=0.1, round=0.01, tooltip=(
                    "CFG scale. Stability's reference: 4.0 for Medium with SLG, 4.5 Large, 1.0 Large Turbo.")),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default=medium["sampler_name"],
                               tooltip="Sampler; Stability's reference uses dpmpp_2m (euler for Turbo)."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default=medium["scheduler"],
                               tooltip="Scheduler; sgm_uniform matches the reference's linear timestep spacing."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1.0 for text-to-image; lower keeps more of the input latent."),
                *slg_inputs(),
            ],
            outputs=[io.Latent.Output(), _report_output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed: int, steps: int, cfg: float, sampler_name: str,
                scheduler: str, denoise: float, preset: str, layers: str, scale: float, start: float, end: float,
                gating: str, rescale: float = 0.0, implementation: str = "batched", settings=None,
                sampling_from_settings: bool = True) -> io.NodeOutput:
        _check_settings(settings)
        given = dict(steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, preset=preset,
                     layers=layers, scale=scale, start=start, end=end, gating=gating,
                     sampling_from_settings=sampling_from_settings)
        if settings and sampling_from_settings:
            steps = int(settings.get("steps", steps))
            cfg = float(settings.get("cfg", cfg))
            sampler_name = settings.get("sampler_name", sampler_name)
            scheduler = settings.get("scheduler", scheduler)
        if sampler_name not in comfy.samplers.SAMPLER_NAMES:
            raise ValueError(f"sampler_name: {sampler_name!r} is not a sampler this ComfyUI knows")
        if scheduler not in comfy.samplers.SCHEDULER_NAMES:
            raise ValueError(f"scheduler: {scheduler!r} is not a scheduler this ComfyUI knows")
        guider, slg = build_guider(model, positive, negative, cfg, preset, layers, scale, start, end, gating, rescale,
                                   implementation, settings)
        sampling = {"steps": int(steps), "cfg": float(cfg), "sampler_name": sampler_name, "scheduler": scheduler,
                    "denoise": float(denoise), "seed": int(seed)}
        report = slg_report("SD35WB_SLGSampler", "SD3.5 SLG Sampler", sampling,
                            _sampling_source(settings, sampling_from_settings), slg, given,
                            {"settings"} if settings is not None else set(), preset, settings)
        callback = latent_preview.prepare_callback(model, steps)
        out = latent_image.copy()
        out["samples"] = sample_with_guider(guider, model, latent_image, seed, steps, sampler_name, scheduler, denoise,
                                            callback).to(comfy.model_management.intermediate_device())
        return io.NodeOutput(out, report, ui={"text": [report]})


def sample_with_guider(guider, model, latent_image: dict, seed: int, steps: int, sampler_name: str, scheduler: str,
                       denoise: float, callback=None):
    """Sample ``latent_image`` with a guider as KSampler would with its own: the same sigmas, the same
    noise for the seed, the same progress bar (the SLG sampler and the checkpoint sweep both use it)."""
    ks = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                 scheduler=scheduler, denoise=denoise, model_options=model.model_options)
    samples = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
    noise = comfy.sample.prepare_noise(samples, seed, latent_image.get("batch_index"))
    return guider.sample(noise, samples, comfy.samplers.sampler_object(sampler_name), ks.sigmas,
                         denoise_mask=latent_image.get("noise_mask"), callback=callback,
                         disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)


NODES = [SLGGuiderNode, SLGSamplerNode]


def presets_payload() -> dict:
    return {name: {"layers": S.format_layers(p["layers"]), "scale": p["scale"], "start": p["start"], "end": p["end"],
                   "gating": p["gating"]} for name, p in PRESETS.items()}


def register_routes(server) -> None:
    from aiohttp import web

    @server.routes.get("/sd35wb/slg/presets")
    async def slg_presets(request):
        return web.json_response({"presets": presets_payload(), "nodes": ["SD35WB_SLGGuider", "SD35WB_SLGSampler"]})
