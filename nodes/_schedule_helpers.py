"""What the schedule nodes ask of a model and draw: its sampling (flow or discrete, DDPM or not), family
and base resolution, the canvas size, core's own schedule for comparison, the preview picture."""

from __future__ import annotations

import comfy.model_sampling
import comfy.samplers
import torch
from comfy_api.v0_0_2 import ui

from ..sd35wb import grid, sigma_plot, sigmas


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


def _check_discrete(model, node: str):
    ms = _model_sampling(model)
    if is_flow(ms):
        raise ValueError(f"model: this is a flow-matching model (SD3 / SD3.5 / Flux sampling); {node} patches "
                         "discrete eps / v-prediction models only.")
    return ms
