"""The KSampler dropdown's ``sd35wb_ztsnr_trailing``: the zero-terminal-SNR trailing schedule of the
model's own sigma table, registered in core's scheduler list once."""

from __future__ import annotations

import torch

from ..sd35wb import sigmas
from . import _compat as C
from ._schedule_helpers import check_ddpm, is_flow

KSAMPLER_SCHEDULER = "sd35wb_ztsnr_trailing"


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
