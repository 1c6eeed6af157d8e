"""Sampling plumbing of the explorer nodes: checks, noise and sigmas as KSampler makes them, one
progress bar over several runs, and the two ways to render every candidate (lock-step or one by one)."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..sd35wb import slg_explorer as E
from ._slg_explorer_guiders import ExplorerGuider, LockstepGuider, SharedSteps, lanes_per_run
from ._slg_variants import VariantPass


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
