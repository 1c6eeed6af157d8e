"""CFG for zero-terminal-SNR sampling (Lin et al. 2023): the v-space CFG rescale as a chainable
post-CFG function, and a CFG guider that runs the first steps on the positive prompt alone."""

from __future__ import annotations

import math

import comfy.patcher_extension
import comfy.samplers
import torch

from ..sd35wb import finetune
from ._schedule_helpers import is_flow
from ._ztsnr_patch import WARNING_KEY, ZSNR_LIKE_SIGMA, sampler_name_of, show_warning


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
