"""The explorer's and the map's guiders: a baseline that records the steps every run shares and
candidates that reuse them (one render at a time), lock-step lanes (every render in one batch), and
the map's plain CFG that evaluates every skip variant at the probe steps."""

from __future__ import annotations

import math

import comfy.model_management
import comfy.model_patcher
import comfy.samplers
import torch

from ..sd35wb import slg as S
from ..sd35wb import slg_explorer as E
from ._slg_variants import VARIANT_ROWS_KEY, VariantPass
from .slg import (
    _ROW_LIST_KEYS,
    SKIP_INDEX,
    SLGGuider,
    _assembled,
    _call,
    _run_rows,
    apply_slg,
    public_rows_wrapper,
)


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
