"""Per-variant SD3.5 sampling defaults and SLG presets, with where each number comes from.

Shared contract: the SD3.5 loader emits a *settings* dict (type ``SD35WB_SETTINGS``) built by
:func:`recommended_settings`; the SLG guider / sampler consume it. Keys:
``variant, steps, cfg, sampler_name, scheduler, shift, slg`` where ``slg`` is
``{"layers": [int], "scale": float, "start": float, "end": float, "gating": "steps" | "sigma"}``
(``scale == 0`` or no layers means "no SLG").
"""

from __future__ import annotations

import copy

# Stability AI's SD3.5 reference (sd3_infer.py): Medium + SLG skips layers 7,8,9 of the positive
# pass, scale 2.5, in the first 1 %-20 % of *steps*, with cfg 4.0.
SLG_STABILITY_MEDIUM = {"layers": [7, 8, 9], "scale": 2.5, "start": 0.01, "end": 0.20, "gating": "steps"}
# ComfyUI core SkipLayerGuidanceSD3 defaults: same layers, scale 3.0, 1 %-15 % of the *sigma* range.
SLG_COMFY_CORE = {"layers": [7, 8, 9], "scale": 3.0, "start": 0.01, "end": 0.15, "gating": "sigma"}
SLG_OFF = {"layers": [], "scale": 0.0, "start": 0.01, "end": 0.20, "gating": "steps"}

SLG_PRESETS = {
    "SD3.5 Medium (Stability reference)": SLG_STABILITY_MEDIUM,
    "ComfyUI core defaults": SLG_COMFY_CORE,
    "off": SLG_OFF,
}

# Stability's reference: Medium 50 steps cfg 5 (4.0 with SLG) dpmpp_2m; Large 40 steps cfg 4.5
# dpmpp_2m; Large Turbo 4 steps cfg 1 euler; shift 3.0 for all. Users report SLG [7,8,9] breaks
# Large, so Large gets no SLG by default.
VARIANTS = {
    "medium": {"steps": 50, "cfg": 4.0, "sampler_name": "dpmpp_2m", "scheduler": "sgm_uniform", "shift": 3.0,
               "slg": SLG_STABILITY_MEDIUM},
    "large": {"steps": 40, "cfg": 4.5, "sampler_name": "dpmpp_2m", "scheduler": "sgm_uniform", "shift": 3.0,
              "slg": SLG_OFF},
    "large_turbo": {"steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "sgm_uniform", "shift": 3.0,
                    "slg": SLG_OFF},
}


def recommended_settings(variant: str) -> dict:
    """A fresh settings dict for ``variant`` ("medium", "large", "large_turbo")."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: unknown SD3.5 variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return {"variant": variant, **copy.deepcopy(VARIANTS[variant])}
