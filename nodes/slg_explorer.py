"""SLG layer explorer: find Skip Layer Guidance layers for SD3.5 Large and fine-tunes by looking.

Stability tuned SLG only for SD3.5 Medium (joint blocks 7, 8, 9); users report those break Large,
and a fine-tune moves which blocks carry anatomy. Two nodes:

* **SD3.5 SLG Sensitivity Map** (``SD35WB_SLGSensitivityMap``): samples plain CFG up to one or a
  few steps inside the SLG window and there measures, for every joint block, how far skipping it
  moves the positive prediction (RMS of ``cond - cond_with_block_skipped``, relative to
  RMS(cond), and the cosine): a bar chart and JSON numbers, in about the time of a few steps.
* **SD3.5 SLG Layer Explorer** (``SD35WB_SLGLayerExplorer``): renders the same seed with plain
  CFG and once per candidate layer set, returning the images and one labelled grid.

Both evaluate many skip variants of the positive pass at one input. Every variant is identical to
the positive pass up to its first skipped block, so one batched ``calc_cond_batch`` call carries
the positive, the negative and the variants (sorted by first skipped block) and
``("dit", "double_block", i)`` replace patches compute each block once per distinct prefix: the
guider's fast path (nodes/slg.py) generalised to many variants. Chunks are matched by uuid; a
variant the host split away from its positive computes its own prefix, as a separate pass would.
The explorer's runs share more: until the SLG window opens every candidate follows the baseline
exactly, so those steps are computed once (reused only where the input is bitwise the same), and
at the window's first step all candidates' skip passes come from one shared variant call.

With a sampler that treats every batch row alone and draws no noise (``E.LOCKSTEP_SAMPLERS``), the
baseline and the candidates are stepped together ("lanes" of one batch), so every later step is one
batched model call for all renders instead of one per render: the same block rows, far fewer
calls (the point on a GPU, where a small batch leaves the device idle). Lanes per run are bounded
by the host's memory estimate; other samplers run one render at a time.
"""

from __future__ import annotations

import json
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

from ..sd35wb import grid as G
from ..sd35wb import overrides as O
from ..sd35wb import presets as presets_mod
from ..sd35wb import slg as S
from ..sd35wb import slg_explorer as E
from .slg import (
    _ROW_LIST_KEYS,
    SKIP_INDEX,
    SLGGuider,
    _assembled,
    _call,
    _run_rows,
    apply_slg,
    mmdit_block_count,
    public_rows_wrapper,
)

VARIANT_ROWS_KEY = "sd35wb_slg_cond_or_uncond"  # the real cond indices, as the guider's fast path names them
_REF = presets_mod.SLG_STABILITY_MEDIUM
_MEDIUM = presets_mod.VARIANTS["medium"]

CITE = ("SLG (Stability AI's SD3.5 reference, ComfyUI core SkipLayerGuidanceSD3; inspired by Perturbed Attention "
        "Guidance, arXiv 2403.17377) was tuned only for SD3.5 Medium (blocks 7,8,9). ")


# ---------------------------------------------------------------------------------------------
# Many skip variants in one batched call


class VariantPass:
    """Evaluate the positive, the negative and a skip variant of the positive per candidate at one input.

    ``__call__`` returns ``(cond, uncond, skips)`` with ``skips[k]`` the positive prediction with
    ``candidates[k]`` skipped: equal (within float rounding of a larger batch) to core's separate
    SLG pass ``calc_cond_batch([positive])`` with identity patches on those blocks.
    """

    def __init__(self, model_patcher, candidates, per_call: int = 0):
        self.candidates = [tuple(c) for c in candidates]
        self.per_call = int(per_call)
        self.order = E.variant_order(self.candidates)
        dm = getattr(model_patcher.model, "diffusion_model", None)
        self.blocks = getattr(dm, "joint_blocks", None)
        self._src = None
        self.twins: list = []
        self.variants: dict = {}
        self.calls = 0  # batched calls made (for the block-row count)

    def _twins_for(self, positive):
        """Per candidate, the (sampling-processed) positive entries again under new uuids, made once per run."""
        if self._src is not positive:
            seen = [c.get("uuid") for c in positive]
            self.twins, self.variants = [], {}
            for layers in self.candidates:
                entries = []
                for c in positive:
                    twin = c.copy()
                    twin["uuid"] = uuid.uuid4()
                    # an entry whose uuid is not unique cannot be told apart: its twin computes its own prefix
                    self.variants[twin["uuid"]] = (c.get("uuid") if seen.count(c.get("uuid")) == 1 else None, layers)
                    entries.append(twin)
                self.twins.append(entries)
            self._src = positive
        return self.twins

    def per_call_for(self, model, x) -> int:
        """Variants per call: the node's setting, or (0 = auto) as many as the host's own memory
        estimate lets one batch hold beside the positive and the negative."""
        if self.per_call > 0:
            return self.per_call
        k = len(self.candidates)
        free = comfy.model_management.get_free_memory(x.device)
        while k > 1 and model.memory_required([(2 + k) * x.shape[0], *x.shape[1:]]) * 1.5 >= free:
            k = (k + 1) // 2
        return k

    def options(self, model_options, group):
        opts = model_options.copy()
        opts["transformer_options"] = dict(opts.get("transformer_options", {}))
        existing = opts["transformer_options"].get("patches_replace", {}).get("dit", {})
        chosen = [self.candidates[k] for k in group]
        variants = {u: v for u, v in self.variants.items() if v[1] in chosen}
        for j in range(E.patched_blocks(chosen)):
            prev = existing.get(("double_block", j))  # another pack's patch: called as the block, never dropped
            block = self.blocks[j] if self.blocks is not None and j < len(self.blocks) else None
            patch = _variant_patch(variants, j, prev, block)
            opts = comfy.model_patcher.set_model_options_patch_replace(opts, patch, "dit", "double_block", j)
        opts["model_function_wrapper"] = public_rows_wrapper(opts.get("model_function_wrapper"),  # variants show as 0
                                                        lambda rows: [r if r in (0, 1) else 0 for r in rows], VARIANT_ROWS_KEY)
        return opts

    def __call__(self, model, x, timestep, positive, negative, model_options):
        twins = self._twins_for(positive)
        skips: list = [None] * len(self.candidates)
        cond = uncond = None
        for n, group in enumerate(E.chunk_variants(self.order, self.per_call_for(model, x))):
            conds = [positive, negative if n == 0 else None] + [twins[k] for k in group]
            out = comfy.samplers.calc_cond_batch(model, conds, x, timestep, self.options(model_options, group))
            self.calls += 1
            if n == 0:
                cond, uncond = out[0], out[1]
            for k, o in zip(group, out[2:]):
                skips[k] = o
        return cond, uncond, skips


def _variant_patch(variants, j, prev, block):
    def sd35wb_slg_variants(args, extra):
        to = args["transformer_options"]
        uuids = to.get("uuids", ())
        n = len(uuids)
        img = args["img"]
        plan = E.variant_block_plan(uuids, variants, j, to.get(VARIANT_ROWS_KEY)) if n else None
        if plan is None or img.shape[0] % n:
            return _call(prev, args, extra, block)
        run, sources = plan
        if not run:
            return args
        rows = img.shape[0] // n
        out = _run_rows(prev, args, extra, run, n, rows, block)
        return _assembled(out, args, img, sources, rows)

    return sd35wb_slg_variants


# ---------------------------------------------------------------------------------------------
# Guiders: a baseline that records the steps every run shares, and candidates that reuse them


def _cfg_result(model, out, conds, x, timestep, cfg, model_options, positive, negative):
    """What core's sampling_function does after calc_cond_batch (pre-CFG functions, then CFG)."""
    for fn in model_options.get("sampler_pre_cfg_function", []):
        out = fn({"conds": conds, "conds_out": out, "cond_scale": cfg, "timestep": timestep, "input": x,
                  "sigma": timestep, "model": model, "model_options": model_options})
    return comfy.samplers.cfg_function(model, out[0], out[1], cfg, x, timestep, model_options=model_options,
                                       cond=positive, uncond=negative)


class SharedSteps:
    """Model outputs of the steps every run shares, keyed by sigma, with the input they were made at."""

    def __init__(self, runner: VariantPass | None):
        self.runner = runner
        self.entries: dict[float, tuple] = {}
        self.closed = False  # set once the baseline has passed the window's first model call

    def lookup(self, sigma: float, x):
        e = self.entries.get(sigma)
        if e is not None and e[0].shape == x.shape and torch.equal(e[0], x):
            return e
        return None


class ExplorerGuider(SLGGuider):
    """An SLG guider for one explorer run. The baseline (``candidate=None``) adds no SLG and records
    the shared steps; a candidate run reuses them where its input is bitwise the baseline's."""

    def set_explorer(self, shared: SharedSteps, candidate: int | None):
        self.shared, self.candidate = shared, candidate

    def _negative(self, model_options):
        neg = self.conds.get("negative", None)
        if math.isclose(self.cfg, 1.0) and not model_options.get("disable_cfg1_optimization", False):
            return None  # the host's cfg-1 shortcut
        return neg

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - the host's signature
        shared, model = self.shared, self.inner_model
        positive = self.conds.get("positive", None)
        usable = shared.runner is not None and model_options.get("sampler_calc_cond_batch_function") is None
        if not usable:
            if self.candidate is None:
                return comfy.samplers.sampling_function(model, x, timestep, self.conds.get("negative", None),
                                                        positive, self.cfg, model_options=model_options, seed=seed)
            return super().predict_noise(x, timestep, model_options, seed)
        active = self.slg_active(timestep, model_options)
        sigma = float(timestep.reshape(-1)[0])
        negative = self._negative(model_options)
        conds = [positive, negative]
        if self.candidate is None:
            if shared.closed:
                return comfy.samplers.sampling_function(model, x, timestep, self.conds.get("negative", None),
                                                        positive, self.cfg, model_options=model_options, seed=seed)
            if active:  # the window's first call: every candidate's skip pass in one shared call
                cond, uncond, skips = shared.runner(model, x, timestep, positive, negative, model_options)
                shared.closed = True
            else:
                cond, uncond = comfy.samplers.calc_cond_batch(model, conds, x, timestep, model_options)
                skips = None
            shared.entries[sigma] = (x.clone(), cond, uncond, skips)
            return _cfg_result(model, [cond, uncond], conds, x, timestep, self.cfg, model_options, positive, negative)
        e = shared.lookup(sigma, x)
        if e is None or (active and e[3] is None):
            return super().predict_noise(x, timestep, model_options, seed)
        _, cond, uncond, skips = e
        result = _cfg_result(model, [cond, uncond], conds, x, timestep, self.cfg, model_options, positive, negative)
        if active:
            result = apply_slg(result, cond, skips[self.candidate], self.slg_scale, self.slg_rescale)
        return result


def _lane_patch(twins, lanes, j, prev, block):
    n_lanes = len(lanes)

    def sd35wb_slg_lanes(args, extra):
        to = args["transformer_options"]
        uuids = to.get("uuids", ())
        n = len(uuids)
        img = args["img"]
        plan = E.lane_block_plan(uuids, twins, lanes, j, to.get(VARIANT_ROWS_KEY)) if n else None
        if plan is None or img.shape[0] % (n * n_lanes):
            return _call(prev, args, extra, block)
        run, sources = plan
        if not run:
            return args
        rows = img.shape[0] // (n * n_lanes)
        lane_to = dict(to)  # per-chunk lists, one entry per lane segment, so the rows the block sees match
        for key in _ROW_LIST_KEYS:
            if isinstance(to.get(key), list) and len(to[key]) == n:
                lane_to[key] = [v for v in to[key] for _ in range(n_lanes)]
        out = _run_rows(prev, {**args, "transformer_options": lane_to}, extra, run, n * n_lanes, rows, block)
        return _assembled(out, args, img, sources, rows)

    return sd35wb_slg_lanes


class LockstepGuider(SLGGuider):
    """Several explorer renders as one sampling run: lane ``l`` is rows ``l*B .. (l+1)*B`` of the batch,
    plain CFG for a lane with no layers (the baseline), SLG with its layers otherwise.

    While every lane's input is bitwise the same (before the window, and at its first step) one lane
    is computed and shared, as the one-render-at-a-time path does; after that one batched call
    carries the positive, the negative and a skip twin of the positive for every lane, and each
    block runs only the rows that need it (``E.lane_block_plan``)."""

    def set_lanes(self, lanes, batch: int, runner: VariantPass, shared: dict):
        self.lanes, self.batch, self.runner, self.shared = [tuple(x) for x in lanes], int(batch), runner, shared
        self._cand_index = {}
        for layers in self.lanes:
            if layers and layers not in self._cand_index:
                self._cand_index[layers] = runner.candidates.index(layers)

    def _lane_options(self, model_options):
        opts = model_options.copy()
        opts["transformer_options"] = dict(opts.get("transformer_options", {}))
        existing = opts["transformer_options"].get("patches_replace", {}).get("dit", {})
        blocks = getattr(getattr(self.inner_model, "diffusion_model", None), "joint_blocks", None)
        with_layers = [x for x in self.lanes if x]
        # a baseline lane's twin rows are never read: carried through every block, not computed
        depth = len(blocks) if blocks is not None and len(with_layers) < len(self.lanes) else 0
        for j in range(max(depth, E.patched_blocks(with_layers))):
            prev = existing.get(("double_block", j))  # another pack's patch: called as the block, never dropped
            block = blocks[j] if blocks is not None and j < len(blocks) else None
            patch = _lane_patch(self._skip_map, self.lanes, j, prev, block)
            opts = comfy.model_patcher.set_model_options_patch_replace(opts, patch, "dit", "double_block", j)
        opts["model_function_wrapper"] = public_rows_wrapper(opts.get("model_function_wrapper"),
                                                            lambda rows: S.public_cond_or_uncond(rows, SKIP_INDEX),
                                                            VARIANT_ROWS_KEY)
        return opts

    def _per_lane(self, result, cond, skip):
        parts = []
        for n, layers in enumerate(self.lanes):
            sl = slice(n * self.batch, (n + 1) * self.batch)
            r = result[sl]
            if layers:
                s = skip[self._cand_index[layers]] if isinstance(skip, list) else skip[sl]
                r = apply_slg(r, cond[sl] if cond.shape[0] == result.shape[0] else cond, s, self.slg_scale,
                              self.slg_rescale)
            parts.append(r)
        return torch.cat(parts)

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - the host's signature
        model, b, n_lanes = self.inner_model, self.batch, len(self.lanes)
        positive = self.conds.get("positive", None)
        negative = self.conds.get("negative", None)
        active = self.slg_active(timestep, model_options)
        cfg_neg = None if math.isclose(self.cfg, 1.0) and not model_options.get("disable_cfg1_optimization",
                                                                                  False) else negative
        conds = [positive, cfg_neg]
        x0 = x[:b]
        if all(torch.equal(x0, x[n * b:(n + 1) * b]) for n in range(1, n_lanes)):
            t0 = timestep[:b] if timestep.shape[0] == x.shape[0] else timestep
            if active:  # the window's first call: every lane's skip pass from one shared variant call
                cond, uncond, skips = self.runner(model, x0, t0, positive, cfg_neg, model_options)
                r = _cfg_result(model, [cond, uncond], conds, x0, t0, self.cfg, model_options, positive, cfg_neg)
                return self._per_lane(r.repeat(n_lanes, *[1] * (r.ndim - 1)), cond, skips)
            sigma = float(timestep.reshape(-1)[0])
            e = self.shared.get(sigma)
            if e is not None and e[0].shape == x0.shape and torch.equal(e[0], x0):
                cond, uncond = e[1], e[2]
            else:
                cond, uncond = comfy.samplers.calc_cond_batch(model, conds, x0, t0, model_options)
                self.shared[sigma] = (x0.clone(), cond, uncond)
            r = _cfg_result(model, [cond, uncond], conds, x0, t0, self.cfg, model_options, positive, cfg_neg)
            return r.repeat(n_lanes, *[1] * (r.ndim - 1))
        if not active:
            return comfy.samplers.sampling_function(model, x, timestep, negative, positive, self.cfg,
                                                    model_options=model_options, seed=seed)
        twins = self._skip_conds_for(positive)
        cond, uncond, skip = comfy.samplers.calc_cond_batch(model, [positive, cfg_neg, twins], x, timestep,
                                                            self._lane_options(model_options))
        r = _cfg_result(model, [cond, uncond], conds, x, timestep, self.cfg, model_options, positive, cfg_neg)
        return self._per_lane(r, cond, skip)


def lanes_per_run(model, samples, lanes: int, per_call: int) -> int:
    """Renders stepped together: the node's ``variants_per_call`` (plus the baseline), or (0 = auto) as
    many as the host's memory estimate lets one call of positive, negative and skip rows hold beside
    the model's weights (on a GPU the part not loaded yet is still to come; on CPU they already sit in RAM)."""
    if per_call > 0:
        return min(lanes, per_call + 1)
    free = comfy.model_management.get_free_memory(model.load_device)
    if model.load_device != model.offload_device:
        free -= max(0, model.model_size() - model.loaded_size())
    k, b = lanes, samples.shape[0]
    estimate = model.get_model_object("memory_required")
    while k > 1 and estimate([3 * k * b, *samples.shape[1:]]) * 1.5 >= free:
        k = (k + 1) // 2
    return k


class MapGuider(comfy.samplers.CFGGuider):
    """Plain CFG that, at the probe steps, also evaluates every candidate's skip variant and stops
    sampling after the last one (the rest of the run is not needed for the map)."""

    class Done(Exception):
        pass

    def set_map(self, runner: VariantPass, probe_sigmas: list[float]):
        self.runner, self.pending = runner, list(probe_sigmas)
        self.results: list[tuple] = []  # (sigma, cond, skips)

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - the host's signature
        model, positive = self.inner_model, self.conds.get("positive", None)
        negative = self.conds.get("negative", None)
        sigma = float(timestep.reshape(-1)[0])
        if not self.pending or sigma != self.pending[0]:
            return comfy.samplers.sampling_function(model, x, timestep, negative, positive, self.cfg,
                                                    model_options=model_options, seed=seed)
        self.pending.pop(0)
        if math.isclose(self.cfg, 1.0) and not model_options.get("disable_cfg1_optimization", False):
            negative = None
        cond, uncond, skips = self.runner(model, x, timestep, positive, negative, model_options)
        self.results.append((sigma, cond, skips))
        if not self.pending:
            raise MapGuider.Done
        return _cfg_result(model, [cond, uncond], [positive, negative], x, timestep, self.cfg, model_options,
                           positive, negative)


# ---------------------------------------------------------------------------------------------
# Shared node plumbing


def _check_sampling(sampler_name: str, scheduler: str) -> None:
    if sampler_name not in comfy.samplers.SAMPLER_NAMES:
        raise ValueError(f"sampler_name: {sampler_name!r} is not a sampler this ComfyUI knows")
    if scheduler not in comfy.samplers.SCHEDULER_NAMES:
        raise ValueError(f"scheduler: {scheduler!r} is not a scheduler this ComfyUI knows")


def _prepare(model, latent_image, seed, steps, sampler_name, scheduler):
    ks = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                 scheduler=scheduler, denoise=1.0, model_options=model.model_options)
    samples = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
    noise = comfy.sample.prepare_noise(samples, seed, latent_image.get("batch_index"))
    return ks.sigmas, samples, noise


def _window_sigmas(model, start, end, gating):
    if gating != "sigma":
        return None, None
    ms = model.get_model_object("model_sampling")
    return float(ms.percent_to_sigma(start)), float(ms.percent_to_sigma(end))


class _Progress:
    """One progress bar (with previews) for several sampling runs."""

    def __init__(self, model, total: int):
        self.pbar = comfy.utils.ProgressBar(total)
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        self.total, self.offset = total, 0

    def callback(self, step, x0, x, total_steps):
        preview = self.previewer.decode_latent_to_preview_image("JPEG", x0) if self.previewer else None
        self.pbar.update_absolute(self.offset + step + 1, self.total, preview)


def _sampling_inputs(include_scale: bool) -> list:
    out = [
        io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                     tooltip="Noise seed: every render uses the same noise (same as KSampler for this seed)."),
        io.Int.Input("steps", default=_MEDIUM["steps"], min=1, max=10000, tooltip=(
            "Sampling steps of the run (the SLG window is a fraction of them). Stability: Medium 50, Large 40.")),
        io.Float.Input("cfg", default=_MEDIUM["cfg"], min=0.0, max=100.0, step=0.1, round=0.01, tooltip=(
            "CFG scale. Stability's reference: 4.0 for Medium with SLG, 4.5 Large.")),
        io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default=_MEDIUM["sampler_name"],
                       tooltip="Sampler; Stability's reference uses dpmpp_2m."),
        io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default=_MEDIUM["scheduler"],
                       tooltip="Scheduler; sgm_uniform matches the reference's linear timestep spacing."),
    ]
    if include_scale:
        out.append(io.Float.Input("scale", default=_REF["scale"], min=0.0, max=10.0, step=0.1, tooltip=(
            "SLG strength for every candidate: adds (cond - cond with the layers skipped) x scale. Stability 2.5.")))
    out += [
        io.Float.Input("start", default=_REF["start"], min=0.0, max=1.0, step=0.001, tooltip=(
            "Where the SLG window opens (fraction of the run; 0.01 = 1 %). Stability 0.01.")),
        io.Float.Input("end", default=_REF["end"], min=0.0, max=1.0, step=0.001, tooltip=(
            "Where the SLG window closes (fraction of the run). Stability 0.20 of steps, core 0.15 of sigma.")),
        io.Combo.Input("gating", options=list(S.GATINGS), default=_REF["gating"], tooltip=(
            "'steps': Stability's rule (step i of N when start*N < i < end*N). 'sigma': core's rule "
            "(percent_to_sigma(end) <= sigma <= percent_to_sigma(start)).")),
    ]
    return out


_PER_CALL = io.Int.Input("variants_per_call", default=0, min=0, max=256, optional=True, tooltip=(
    "Skip variants batched into one model call with the positive (memory bound); in the explorer also the "
    "candidates stepped together in one sampling run (plus the baseline). 0 = as many as the host's memory estimate "
    "allows. Fewer means less memory and more model calls."))


# ---------------------------------------------------------------------------------------------
# Nodes


class SLGSensitivityMapNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WB_SLGSensitivityMap",
            display_name="SD3.5 SLG Sensitivity Map",
            category="SD3.5 Workbench/SLG explorer",
            description=CITE + "This map shows which joint blocks matter for YOUR model: it samples plain CFG up to "
                        "one or a few steps inside the SLG window and there measures, per block, how much skipping "
                        "it changes the positive prediction (bar: RMS of the change relative to the prediction; "
                        "JSON also has the cosine). Costs about a few sampling steps. Tall bars are blocks SLG acts "
                        "strongly through; try them (and their neighbours) in the SLG Layer Explorer.",
            inputs=[
                io.Model.Input("model", tooltip="An SD3 / SD3.5 model (MMDiT): Medium has 24 joint blocks, Large 38."),
                io.Conditioning.Input("positive", tooltip="The prompt's conditioning; every skip variant is a "
                                                          "pass of this one with blocks skipped."),
                io.Conditioning.Input("negative", tooltip="The negative prompt's conditioning (plain CFG)."),
                io.Latent.Input("latent_image", tooltip="The latent you would sample (EmptySD3LatentImage)."),
                *_sampling_inputs(include_scale=False),
                io.Int.Input("probes", default=1, min=1, max=16, tooltip=(
                    "How many sigmas to measure at, spread evenly over the steps inside the SLG window; the "
                    "numbers are averaged over them. More probes = a steadier map, a little more time.")),
                io.String.Input("candidates", default=E.EACH, tooltip=(
                    "\"each\": every single joint block. Or groups separated by |, e.g. \"7,8,9 | 6 | 10,11\".")),
                _PER_CALL,
            ],
            outputs=[
                io.Image.Output("chart", display_name="chart",
                                tooltip="Bar chart: per block, RMS(cond - cond skipped) / RMS(cond)."),
                io.String.Output("numbers", display_name="numbers", tooltip=(
                    "JSON: rms, relative_rms, cosine per candidate (averaged and per probe), the probe steps and "
                    "sigmas, and the ranking.")),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed: int, steps: int, cfg: float, sampler_name: str,
                scheduler: str, start: float, end: float, gating: str, probes: int, candidates: str,
                variants_per_call: int = 0) -> io.NodeOutput:
        block_count = mmdit_block_count(model)
        cands = E.parse_candidates(candidates, block_count)
        S.validate_window(start, end, gating)
        _check_sampling(sampler_name, scheduler)
        sigmas, samples, noise = _prepare(model, latent_image, seed, steps, sampler_name, scheduler)
        schedule = [float(s) for s in sigmas]
        s_start, s_end = _window_sigmas(model, start, end, gating)
        probe = E.probe_steps(schedule, start, end, gating, probes, s_start, s_end)

        guider = MapGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        guider.set_map(VariantPass(model, cands, variants_per_call), [schedule[i] for i in probe])
        progress = _Progress(model, probe[-1] + 1)
        try:
            guider.sample(noise, samples, comfy.samplers.sampler_object(sampler_name), sigmas[:probe[-1] + 2],
                          denoise_mask=latent_image.get("noise_mask"), callback=progress.callback,
                          disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        except MapGuider.Done:
            progress.pbar.update_absolute(progress.total, progress.total)
        if len(guider.results) != len(probe):
            raise RuntimeError(f"the sampler never called the model at the probe sigmas {probe}; use a sampler that "
                               "evaluates at the schedule's sigmas (euler, dpmpp_2m)")
        per_probe = [E.sensitivity(cond.detach().float().cpu().numpy(), [s.detach().float().cpu().numpy() for s in skips])
                     for _, cond, skips in guider.results]
        report = E.map_report(cands, per_probe, probe, [r[0] for r in guider.results], block_count)
        chart = E.bar_chart(report["relative_rms"], report["labels"],
                            f"SLG sensitivity: {block_count} joint blocks, skip one candidate at a time",
                            f"probe step(s) {', '.join(str(s) for s in probe)} of {steps} "
                            f"(sigma {', '.join(f'{r[0]:.3g}' for r in guider.results)}); "
                            f"most sensitive: {', '.join(report['ranking'][:3])}")
        image = torch.from_numpy(G.to_array(chart))[None]
        return io.NodeOutput(image, json.dumps(report))


class SLGLayerExplorerNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WB_SLGLayerExplorer",
            display_name="SD3.5 SLG Layer Explorer",
            category="SD3.5 Workbench/SLG explorer",
            description=CITE + "This node renders one seed with plain CFG and once per candidate layer set, and "
                        "returns the images and one labelled grid (baseline first), so you can pick SLG layers for "
                        "Large or a fine-tune by looking. Steps before the SLG window are computed once for every "
                        "candidate, all candidates' first SLG step shares one batched call, and with a sampler that "
                        "draws no noise (euler, dpmpp_2m, ...) all renders step together as one batch: one model call "
                        "per step for all of them. Same result as separate SLG runs.",
            inputs=[
                io.Model.Input("model", tooltip="An SD3 / SD3.5 model (MMDiT): Medium has 24 joint blocks, Large 38."),
                io.Vae.Input("vae", tooltip="Decodes every render for the images and the grid."),
                io.Conditioning.Input("positive", tooltip="The prompt's conditioning; every skip variant is a "
                                                          "pass of this one with blocks skipped."),
                io.Conditioning.Input("negative", tooltip="The negative prompt's conditioning (plain CFG)."),
                io.Latent.Input("latent_image", tooltip="The latent to sample (EmptySD3LatentImage)."),
                *_sampling_inputs(include_scale=True),
                io.String.Input("candidates", default="7,8,9 | 6 | 10,11", tooltip=(
                    "Layer sets to try, separated by |: \"7,8,9 | 6 | 10,11\" renders three SLG images (skip 7,8,9; "
                    "skip 6; skip 10,11). \"each\" = every single joint block (24 renders on Medium, 38 on Large: "
                    "run the Sensitivity Map first to narrow it down).")),
                io.Int.Input("columns", default=0, min=0, max=64, tooltip="Grid columns; 0 = about square."),
                _PER_CALL,
            ],
            outputs=[
                io.Image.Output("images", display_name="images",
                                tooltip="Every render, baseline (plain CFG) first, then each candidate."),
                io.Image.Output("grid", display_name="grid",
                                tooltip="One labelled grid of all renders (baseline first)."),
                io.Latent.Output("latents", display_name="latents", tooltip="The renders' latents, in the same order."),
                io.String.Output("labels", display_name="labels", tooltip="One label per render, one per line."),
                # Appended as the last output: saved workflows link outputs by index.
                io.String.Output("report", display_name="report", tooltip=(
                    "What ran: sampling values, the SLG window and scale, each candidate's layers and how many steps "
                    "all renders shared. Also shown on the node.")),
            ],
        )

    @classmethod
    def execute(cls, model, vae, positive, negative, latent_image, seed: int, steps: int, cfg: float,
                sampler_name: str, scheduler: str, scale: float, start: float, end: float, gating: str,
                candidates: str, columns: int, variants_per_call: int = 0) -> io.NodeOutput:
        block_count = mmdit_block_count(model)
        cands = E.parse_candidates(candidates, block_count)
        S.validate_window(start, end, gating)
        _check_sampling(sampler_name, scheduler)
        sigmas, samples, noise = _prepare(model, latent_image, seed, steps, sampler_name, scheduler)
        lanes = [(), *cands]  # the baseline first
        per_run, why = _lockstep_plan(model, samples, sampler_name, scale, len(lanes), variants_per_call)
        sampler = comfy.samplers.sampler_object(sampler_name)
        mask = latent_image.get("noise_mask")
        if per_run > 1:
            latents, shared_steps, how = _render_lockstep(model, positive, negative, samples, noise, mask, seed, cfg,
                                                          sampler, sigmas, cands, scale, start, end, gating, lanes,
                                                          per_run, variants_per_call)
        else:
            latents, shared_steps = _render_one_by_one(model, positive, negative, samples, noise, mask, seed, cfg,
                                                       sampler, sigmas, cands, scale, start, end, gating,
                                                       variants_per_call)
            how = f"one sampling run per render ({why})"
        labels = ["baseline (CFG)"] + [E.candidate_label(c) for c in cands]
        batch = samples.shape[0]
        if batch > 1:
            labels = [f"{lab} #{i}" for lab in labels for i in range(batch)]
        images = []
        for lat in latents:
            img = vae.decode(lat)
            if img.ndim == 5:  # video VAEs decode a time axis
                img = img.reshape(-1, *img.shape[-3:])
            images.append(img)
        images = torch.cat(images)
        cols = columns or math.ceil(math.sqrt(len(images)))
        grid = G.labelled_strip([im.detach().float().cpu().numpy() for im in images], labels, columns=cols)
        out = latent_image.copy()
        out.pop("noise_mask", None)
        out.pop("batch_index", None)
        out["samples"] = torch.cat(latents)
        report = "\n".join([
            "SD3.5 SLG Layer Explorer",
            f"sampling: steps {steps}, cfg {cfg:g}, sampler_name {sampler_name}, scheduler {scheduler}, seed {seed}",
            "SLG for every candidate: " + S.describe_window({"scale": scale, "start": start, "end": end,
                                                              "gating": gating}),
            f"renders: baseline (plain CFG) + {len(cands)} candidate(s): "
            + " | ".join(S.format_layers(c) for c in cands) + f" of {block_count} joint blocks",
            f"shared: {shared_steps} model call(s) before the SLG window computed once for every render",
            f"batching: {how}",
            *O.report_lines("SD35WB_SLGLayerExplorer", {"scale": float(scale), "candidates": candidates}, {}, set()),
        ])
        return io.NodeOutput(images, torch.from_numpy(G.to_array(grid))[None], out, "\n".join(labels), report,
                             ui={"text": [report]})


def _lockstep_plan(model, samples, sampler_name, scale, n_lanes, per_call) -> tuple[int, str]:
    """Renders per sampling run (1 = one at a time) and, when 1, why."""
    if scale == 0:
        return 1, "scale 0: every render is the baseline"
    if sampler_name not in E.LOCKSTEP_SAMPLERS:
        return 1, f"sampler {sampler_name} draws batch-shaped noise or is not checked for lock-step"
    if model.model_options.get("sampler_calc_cond_batch_function") is not None:
        return 1, "another node set the model's cond-batch function"
    k = lanes_per_run(model, samples, n_lanes, per_call)
    return k, "" if k > 1 else "memory: one render per run"


def _repeat(t, n):
    return t.repeat(n, *[1] * (t.ndim - 1))


def _render_lockstep(model, positive, negative, samples, noise, mask, seed, cfg, sampler, sigmas, cands, scale, start,
                     end, gating, lanes, per_run, per_call):
    groups = E.lane_groups(len(lanes), per_run)
    progress = _Progress(model, (len(sigmas) - 1) * len(groups))
    shared: dict = {}
    latents, b = [], samples.shape[0]
    for n, group in enumerate(groups):
        group_lanes = [lanes[i] for i in group]
        with_layers = [x for x in group_lanes if x]
        guider = LockstepGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        guider.set_slg(with_layers[0], scale, start, end, gating)
        guider.set_lanes(group_lanes, b, VariantPass(model, with_layers, per_call), shared)
        progress.offset = n * (len(sigmas) - 1)
        out = guider.sample(_repeat(noise, len(group)), _repeat(samples, len(group)), sampler, sigmas,
                            denoise_mask=mask, callback=progress.callback,
                            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        out = out.to(comfy.model_management.intermediate_device())
        latents += [out[i * b:(i + 1) * b] for i in range(len(group))]
    how = (f"lock-step: {len(lanes)} renders in {len(groups)} sampling run(s) of up to {per_run}, one batched model "
           "call per step for all renders of a run")
    return latents, len(shared), how


def _render_one_by_one(model, positive, negative, samples, noise, mask, seed, cfg, sampler, sigmas, cands, scale,
                       start, end, gating, per_call):
    shared = SharedSteps(VariantPass(model, cands, per_call) if scale != 0 else None)
    runs = [None, *range(len(cands))]
    progress = _Progress(model, (len(sigmas) - 1) * len(runs))
    latents = []
    for n, k in enumerate(runs):
        guider = ExplorerGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        guider.set_slg(cands[0] if k is None else cands[k], scale, start, end, gating)
        guider.set_explorer(shared, k)
        progress.offset = n * (len(sigmas) - 1)
        out = guider.sample(noise, samples, sampler, sigmas, denoise_mask=mask, callback=progress.callback,
                            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        latents.append(out.to(comfy.model_management.intermediate_device()))
    shared_steps = len(shared.entries)
    shared.entries.clear()
    return latents, shared_steps


NODES = [SLGSensitivityMapNode, SLGLayerExplorerNode]
