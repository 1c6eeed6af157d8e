"""Noise-schedule math for the high-sigma and zero-terminal-SNR schedulers (numpy / math only).

Every schedule here is a float64 numpy array of ``steps + 1`` sigmas in the k-diffusion
convention: strictly decreasing, the last one 0. ComfyUI's SIGMAS type is the same list as a
float32 torch tensor, so the nodes convert with ``torch.from_numpy(...).float()``.

References
----------
* Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models"),
  eq. 5, and k-diffusion's ``get_sigmas_karras`` / ``get_sigmas_exponential`` /
  ``get_sigmas_polyexponential`` (the same code ships in ComfyUI as
  ``comfy/k_diffusion/sampling.py``).
* NovelAI Diffusion V3 (Ossa et al. 2024, arXiv 2409.15997): SDXL's sigma_max (14.6) is too low
  at high resolution; doubling the canvas side should roughly double sigma_max; zero terminal SNR
  approximated with sigma_max about 20000.
* Esser et al. 2024 ("Scaling Rectified Flow Transformers", the SD3 paper), section 5.3.2:
  resolution-dependent timestep shift ``t_m = a t_n / (1 + (a - 1) t_n)`` with
  ``a = sqrt(m / n)`` for ``m`` pixels at the target and ``n`` at the base resolution. Shifts
  compose multiplicatively (``shift(a, shift(b, t)) == shift(a b, t)``), so a model trained with
  shift ``s`` at the base resolution gets ``s * sqrt(m / n)``.
* diffusers' ``calculate_shift`` (pipeline_flux.py, copied into pipeline_stable_diffusion_3.py)
  with ``FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)``: ``mu`` linear in the
  latent token count from 0.5 at 256 tokens to 1.15 at 4096, and shift ``exp(mu)``.
* Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"),
  Algorithm 1 (rescale betas to zero terminal SNR) and "trailing" timestep spacing (table 2),
  as in diffusers' ``rescale_zero_terminal_snr`` and ``timestep_spacing="trailing"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

# ComfyUI's zsnr stand-in for the infinite terminal sigma: comfy/model_sampling.py sets the last
# alpha_bar to this value, so sigma_max = sqrt((1 - a) / a) ~= 4518.76.
COMFY_ZSNR_ALPHA_BAR = 4.8973451890853435e-08
COMFY_ZSNR_SIGMA = math.sqrt((1.0 - COMFY_ZSNR_ALPHA_BAR) / COMFY_ZSNR_ALPHA_BAR)
# NovelAI Diffusion V3 (arXiv 2409.15997) approximates zero terminal SNR with sigma_max 20000.
NOVELAI_ZSNR_SIGMA = 20000.0
SIGMA_MAX_LIMIT = 20000.0  # the largest sigma_max the nodes accept (ComfyUI's own inputs stop at 5000)

TERMINAL_STANDINS = {
    "comfyui (4518.76)": COMFY_ZSNR_SIGMA,
    "novelai (20000)": NOVELAI_ZSNR_SIGMA,
    "custom": None,
}

SHAPES = ("karras", "exponential", "polyexponential")
RESOLUTION_RULES = ("novelai_linear", "area")
FLOW_RULES = ("sqrt_area", "diffusers_dynamic", "none")


# ----------------------------------------------------------------------------- validation

def check_steps(steps, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"{name}: must be a whole number >= 1, got {steps!r}; set at least 1 step.")
    return int(steps)


def check_finite(value, name: str, *, positive: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}.") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}: must be a finite number, got {v!r} (NaN and infinity are not sigmas).")
    if positive and v <= 0:
        raise ValueError(f"{name}: must be greater than 0, got {v!r}.")
    return v


def check_sigma_range(sigma_min, sigma_max, *, min_name: str = "sigma_min", max_name: str = "sigma_max") -> tuple[float, float]:
    lo = check_finite(sigma_min, min_name, positive=True)
    hi = check_finite(sigma_max, max_name, positive=True)
    if lo >= hi:
        raise ValueError(f"{min_name} ({lo:g}) must be smaller than {max_name} ({hi:g}); lower {min_name} or raise {max_name}.")
    if hi > SIGMA_MAX_LIMIT:
        raise ValueError(f"{max_name}: {hi:g} is above the supported maximum {SIGMA_MAX_LIMIT:g}.")
    return lo, hi


def check_size(width, height) -> tuple[int, int]:
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 8:
            raise ValueError(f"{name}: expected a pixel size of at least 8, got {v!r}.")
        if v % 8:
            raise ValueError(f"{name}: {v} is not a multiple of 8 (latents are 1/8 of the image); use {v - v % 8} or {v - v % 8 + 8}.")
    return int(width), int(height)


def check_rho(rho, name: str = "rho") -> float:
    return check_finite(rho, name, positive=True)


def check_schedule(sigmas, name: str = "sigmas") -> np.ndarray:
    """A valid k-diffusion schedule: 1-D, at least 2 entries, finite, >= 0, non-increasing, last 0."""
    s = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if s.size < 2:
        raise ValueError(f"{name}: a schedule needs at least 2 sigmas (1 step), got {s.size}.")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name}: contains NaN or infinity; replace an infinite terminal sigma with a finite stand-in.")
    if np.any(s < 0):
        raise ValueError(f"{name}: contains negative sigmas.")
    if np.any(np.diff(s) > 0):
        raise ValueError(f"{name}: sigmas must not increase from one step to the next.")
    return s


# ----------------------------------------------------------------------------- k-diffusion shapes

def karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022 eq. 5: ``(max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho``, then 0."""
    n = check_steps(steps)
    lo, hi = check_sigma_range(sigma_min, sigma_max)
    rho = check_rho(rho)
    if rho < 1.0:  # below 1 the 1/rho powers cancel catastrophically in float64
        raise ValueError(f"rho: karras needs rho >= 1 (7 in Karras et al. 2022), got {rho:g}.")
    ramp = np.linspace(0.0, 1.0, n)
    min_inv, max_inv = lo ** (1.0 / rho), hi ** (1.0 / rho)
    return np.append((max_inv + ramp * (min_inv - max_inv)) ** rho, 0.0)


def exponential(steps: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """Evenly spaced in log sigma from sigma_max to sigma_min, then 0 (k-diffusion)."""
    n = check_steps(steps)
    lo, hi = check_sigma_range(sigma_min, sigma_max)
    return np.append(np.exp(np.linspace(math.log(hi), math.log(lo), n)), 0.0)


def polyexponential(steps: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> np.ndarray:
    """Polynomial in log sigma (k-diffusion): ``exp(ramp^rho (log max - log min) + log min)``, ramp 1 -> 0."""
    n = check_steps(steps)
    lo, hi = check_sigma_range(sigma_min, sigma_max)
    rho = check_rho(rho)
    ramp = np.linspace(1.0, 0.0, n) ** rho
    return np.append(np.exp(ramp * (math.log(hi) - math.log(lo)) + math.log(lo)), 0.0)


def shaped(shape: str, steps: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    if shape == "karras":
        return karras(steps, sigma_min, sigma_max, rho)
    if shape == "exponential":
        return exponential(steps, sigma_min, sigma_max)
    if shape == "polyexponential":
        return polyexponential(steps, sigma_min, sigma_max, rho)
    raise ValueError(f"shape: unknown schedule shape {shape!r}; expected one of {list(SHAPES)}.")


# ----------------------------------------------------------------------------- resolution rules

def resolution_factor(width: int, height: int, base: int, rule: str = "novelai_linear") -> float:
    """How much larger the canvas is than the model's base resolution (``base`` x ``base``).

    ``novelai_linear``: longer canvas side / base side (NovelAI V3: noise must grow with the
    canvas side so the lowest frequencies, whose wavelength is the canvas, are destroyed).
    ``area``: sqrt(pixel count / base pixel count). The two agree for square canvases."""
    w, h = check_size(width, height)
    if isinstance(base, bool) or not isinstance(base, (int, np.integer)) or base < 8:
        raise ValueError(f"base_resolution: expected a pixel size of at least 8, got {base!r}.")
    if rule == "novelai_linear":
        return max(w, h) / base
    if rule == "area":
        return math.sqrt(w * h) / base
    raise ValueError(f"rule: unknown resolution rule {rule!r}; expected one of {list(RESOLUTION_RULES)}.")


def scaled_sigma_max(model_sigma_max: float, width: int, height: int, base: int, rule: str = "novelai_linear",
                     only_scale_up: bool = True) -> tuple[float, float]:
    """(sigma_max, factor): the model's sigma_max times the resolution factor (never below the
    model's own when ``only_scale_up``), capped at :data:`SIGMA_MAX_LIMIT`."""
    smax = check_finite(model_sigma_max, "model sigma_max", positive=True)
    factor = resolution_factor(width, height, base, rule)
    if only_scale_up:
        factor = max(1.0, factor)
    return min(smax * factor, SIGMA_MAX_LIMIT), factor


def sd3_resolution_shift(shift: float, width: int, height: int, base: int) -> float:
    """SD3 paper (Esser et al. 2024, sec. 5.3.2): shift x sqrt(pixels / base pixels)."""
    s = check_finite(shift, "shift", positive=True)
    return s * resolution_factor(width, height, base, "area")


def diffusers_calculate_shift(image_seq_len: float, base_seq_len: int = 256, max_seq_len: int = 4096,
                              base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """diffusers' ``calculate_shift``: mu linear in the token count (the shift is ``exp(mu)``)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def diffusers_dynamic_shift(width: int, height: int, vae_scale: int = 8, patch_size: int = 2) -> tuple[float, int]:
    """(shift, tokens): ``exp(calculate_shift(tokens))`` for the latent token count of this canvas."""
    w, h = check_size(width, height)
    tokens = (h // vae_scale // patch_size) * (w // vae_scale // patch_size)
    return math.exp(diffusers_calculate_shift(tokens)), tokens


def time_snr_shift(shift: float, t):
    """ComfyUI's / SD3's shift of flow time ``t`` in [0, 1]: ``a t / (1 + (a - 1) t)``."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def flow_sigmas(steps: int, shift: float) -> np.ndarray:
    """Flow-matching sigmas ``time_snr_shift(shift, 1 - i / steps)`` for i < steps, then 0.

    Equals ComfyUI's "simple" scheduler on ``ModelSamplingDiscreteFlow`` when ``steps`` divides
    the 1000-entry table (its table holds ``shift(k / 1000)``)."""
    n = check_steps(steps)
    s = check_finite(shift, "shift", positive=True)
    t = 1.0 - np.arange(n, dtype=np.float64) / n
    return np.append(time_snr_shift(s, t), 0.0)


# ----------------------------------------------------------------------------- zero terminal SNR

def beta_schedule(schedule: str = "linear", timesteps: int = 1000, linear_start: float = 0.00085,
                  linear_end: float = 0.012, cosine_s: float = 8e-3) -> np.ndarray:
    """ComfyUI's ``make_beta_schedule`` in float64 ("linear" there is diffusers' "scaled_linear")."""
    n = check_steps(timesteps, "timesteps")
    if schedule == "linear":
        return np.linspace(linear_start ** 0.5, linear_end ** 0.5, n, dtype=np.float64) ** 2
    if schedule == "cosine":
        ts = np.arange(n + 1, dtype=np.float64) / n + cosine_s
        alphas = np.cos(ts / (1 + cosine_s) * np.pi / 2) ** 2
        alphas = alphas / alphas[0]
        return np.clip(1 - alphas[1:] / alphas[:-1], 0, 0.999)
    if schedule == "sqrt_linear":
        return np.linspace(linear_start, linear_end, n, dtype=np.float64)
    if schedule == "sqrt":
        return np.linspace(linear_start, linear_end, n, dtype=np.float64) ** 0.5
    raise ValueError(f"beta_schedule: unknown schedule {schedule!r}.")


def rescale_zero_terminal_snr(betas) -> np.ndarray:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(alpha_bar) so the last is 0, the first unchanged."""
    betas = np.asarray(betas, dtype=np.float64)
    alphas_bar_sqrt = np.sqrt(np.cumprod(1.0 - betas))
    a0, aT = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = (alphas_bar_sqrt - aT) * (a0 / (a0 - aT))
    alphas_bar = alphas_bar_sqrt ** 2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1.0 - alphas


def sigmas_from_alphas_cumprod(alphas_cumprod) -> np.ndarray:
    """sigma = sqrt((1 - alpha_bar) / alpha_bar); infinite where alpha_bar is 0."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - ac) / ac)


def alphas_cumprod_from_sigmas(sigmas) -> np.ndarray:
    s = np.asarray(sigmas, dtype=np.float64)
    return 1.0 / (s * s + 1.0)


def ztsnr_sigma_table(schedule: str = "linear", timesteps: int = 1000, linear_start: float = 0.00085,
                      linear_end: float = 0.012) -> np.ndarray:
    """The 1000-entry (by default) sigma table after the zero-terminal-SNR rescale; last entry inf."""
    betas = rescale_zero_terminal_snr(beta_schedule(schedule, timesteps, linear_start, linear_end))
    return sigmas_from_alphas_cumprod(np.cumprod(1.0 - betas))


def rescale_sigma_table_zero_terminal_snr(table) -> np.ndarray:
    """Lin et al.'s rescale applied to an existing sigma table (as ComfyUI does); last entry inf."""
    ac = alphas_cumprod_from_sigmas(table)
    abs_ = np.sqrt(ac)
    a0, aT = abs_[0], abs_[-1]
    abs_ = (abs_ - aT) * (a0 / (a0 - aT))
    return sigmas_from_alphas_cumprod(abs_ ** 2)


def trailing_timesteps(steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """Lin et al. "trailing" spacing: ``round(T - i T / steps) - 1`` for the first ``steps`` i.

    diffusers writes it ``round(arange(T, 0, -T / steps)) - 1``, which for some step counts (61,
    for one) gets one extra element from float rounding, ending at timestep -1; counting the
    steps (keeping diffusers' floats, so round-half-to-even ties agree) drops it."""
    n = check_steps(steps)
    if n > num_train_timesteps:
        raise ValueError(f"steps: {n} is more than the model's {num_train_timesteps} training timesteps.")
    ts = np.arange(num_train_timesteps, 0, -num_train_timesteps / n)[:n]  # same floats as diffusers, no extra
    return np.round(ts).astype(np.int64) - 1


def terminal_standin(choice: str, custom: float | None = None) -> float:
    """The finite sigma that replaces the infinite terminal one."""
    if choice not in TERMINAL_STANDINS:
        raise ValueError(f"terminal_sigma: unknown choice {choice!r}; expected one of {list(TERMINAL_STANDINS)}.")
    value = TERMINAL_STANDINS[choice]
    if value is None:
        value = check_finite(custom, "custom_terminal_sigma", positive=True)
        if value > SIGMA_MAX_LIMIT:
            raise ValueError(f"custom_terminal_sigma: {value:g} is above the supported maximum {SIGMA_MAX_LIMIT:g}.")
    return float(value)


def ztsnr_sigmas_from_table(table, steps: int, terminal: float) -> np.ndarray:
    """Trailing-spaced sigmas from a zero-terminal-SNR table, the top one replaced by ``terminal``."""
    table = np.asarray(table, dtype=np.float64)
    ts = trailing_timesteps(steps, len(table))
    out = np.append(table[ts], 0.0)
    top = check_finite(terminal, "terminal_sigma", positive=True)
    if ts[0] == len(table) - 1:  # the infinite (or stand-in) terminal timestep
        if top <= out[1]:
            raise ValueError(f"terminal_sigma: {top:g} must be larger than the next sigma ({out[1]:g}).")
        out[0] = top
    return out


def ztsnr_sigmas(steps: int, terminal: float = COMFY_ZSNR_SIGMA, schedule: str = "linear", timesteps: int = 1000,
                 linear_start: float = 0.00085, linear_end: float = 0.012) -> np.ndarray:
    """Zero-terminal-SNR sigmas with trailing spacing (Lin et al. 2023) for a discrete model."""
    return ztsnr_sigmas_from_table(ztsnr_sigma_table(schedule, timesteps, linear_start, linear_end), steps, terminal)


# ----------------------------------------------------------------------------- description

def fmt_sigmas(sigmas: Iterable[float], limit: int = 6) -> str:
    s = [float(x) for x in sigmas]
    head = ", ".join(f"{x:.4g}" for x in s[:limit])
    return f"[{head}{', ...' if len(s) > limit else ''}] ({len(s) - 1} steps)"
