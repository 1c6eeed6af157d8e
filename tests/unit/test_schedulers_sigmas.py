"""Unit tier: the schedule math in sd35wb/sigmas.py against the papers' formulas and diffusers."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sd35wb.sigmas as S

# --------------------------------------------------------------------------- k-diffusion shapes


def karras_reference(n, smin, smax, rho):
    """Karras et al. 2022 eq. 5, written out per step."""
    out = []
    for i in range(n):
        r = i / (n - 1) if n > 1 else 0.0
        out.append((smax ** (1 / rho) + r * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho)
    return out + [0.0]


@pytest.mark.parametrize("n, rho", [(1, 7.0), (2, 7.0), (25, 7.0), (30, 3.0), (100, 12.5)])
def test_karras_is_the_paper_formula(n, rho):
    got = S.karras(n, 0.0292, 14.6146, rho)
    np.testing.assert_allclose(got, karras_reference(n, 0.0292, 14.6146, rho), rtol=1e-12)
    assert got[0] == pytest.approx(14.6146) and (n == 1 or got[-2] == pytest.approx(0.0292))


@pytest.mark.parametrize("n", [1, 2, 10, 57])
def test_exponential_and_polyexponential_are_log_linear_and_log_polynomial(n):
    lo, hi = 0.03, 29.2
    exp = S.exponential(n, lo, hi)
    ramp = [1 - i / (n - 1) if n > 1 else 1.0 for i in range(n)]
    np.testing.assert_allclose(exp[:-1], [math.exp(math.log(lo) + r * (math.log(hi) - math.log(lo))) for r in ramp], rtol=1e-12)
    np.testing.assert_allclose(S.polyexponential(n, lo, hi, 1.0), exp, rtol=1e-12)  # rho 1 is exponential
    poly = S.polyexponential(n, lo, hi, 2.0)
    np.testing.assert_allclose(poly[:-1], [math.exp(math.log(lo) + r ** 2 * (math.log(hi) - math.log(lo))) for r in ramp], rtol=1e-12)
    assert exp[-1] == poly[-1] == 0.0


# --------------------------------------------------------------------------- resolution rules

@pytest.mark.parametrize("rule", S.RESOLUTION_RULES)
def test_doubling_the_canvas_side_doubles_sigma_max_exactly(rule):
    one, f1 = S.scaled_sigma_max(14.614642, 1024, 1024, 1024, rule)
    two, f2 = S.scaled_sigma_max(14.614642, 2048, 2048, 1024, rule)
    assert (f1, f2) == (1.0, 2.0)
    assert two == 2 * one == 2 * 14.614642
    assert S.exponential(20, 0.0292, two)[0] == pytest.approx(2 * S.exponential(20, 0.0292, one)[0], rel=1e-14)


def test_rules_differ_only_for_non_square_canvases():
    assert S.resolution_factor(2048, 1024, 1024, "novelai_linear") == 2.0  # the longer side
    assert S.resolution_factor(2048, 1024, 1024, "area") == pytest.approx(math.sqrt(2))
    assert S.resolution_factor(1024, 512, 512, "area") == pytest.approx(math.sqrt(2))
    # smaller canvases never lower sigma_max unless asked
    assert S.scaled_sigma_max(14.6, 512, 512, 1024)[0] == 14.6
    assert S.scaled_sigma_max(14.6, 512, 512, 1024, only_scale_up=False)[0] == 7.3
    assert S.scaled_sigma_max(14.6, 8192 * 2, 8192 * 2, 8, "area")[0] == S.SIGMA_MAX_LIMIT  # capped


def test_sd3_resolution_shift_composes_like_the_paper():
    # SD3 paper: shift alpha = sqrt(m / n); shifts compose multiplicatively, so shift 3 at 1024^2
    # becomes 6 at 2048^2, and shifting twice equals shifting by the product.
    assert S.sd3_resolution_shift(3.0, 2048, 2048, 1024) == 6.0
    assert S.sd3_resolution_shift(3.0, 1024, 1024, 1024) == 3.0
    t = np.linspace(0.001, 1, 50)
    np.testing.assert_allclose(S.time_snr_shift(2.0, S.time_snr_shift(3.0, t)), S.time_snr_shift(6.0, t), rtol=1e-12)
    sig = S.flow_sigmas(4, 3.0)
    np.testing.assert_allclose(sig, [1.0, 0.9, 0.75, 0.5, 0.0], rtol=1e-12)


def needs_diffusers() -> None:
    """diffusers (with torch) is the reference here; the host venv has both, a host-free venv may not."""
    for mod in ("torch", "diffusers"):
        pytest.importorskip(mod, reason="the diffusers reference needs `pip install torch diffusers` (make setup's host has them)")


def test_dynamic_shift_equals_diffusers_calculate_shift():
    needs_diffusers()
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    for w, h in [(256, 256), (1024, 1024), (1024, 768), (2048, 2048)]:
        shift, tokens = S.diffusers_dynamic_shift(w, h)
        assert tokens == (h // 16) * (w // 16)
        assert shift == pytest.approx(math.exp(calculate_shift(tokens)), rel=1e-12)
    assert S.diffusers_dynamic_shift(1024, 1024)[0] == pytest.approx(math.exp(1.15))  # 4096 tokens: max_shift


# --------------------------------------------------------------------------- zero terminal SNR

def diffusers_ztsnr_sigmas(steps):
    needs_diffusers()
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                          rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
                          clip_sample=False, set_alpha_to_one=False)
    sched.set_timesteps(steps)
    ts = sched.timesteps.numpy()
    ac = sched.alphas_cumprod.double().numpy()[ts]
    with np.errstate(divide="ignore"):
        return ts, np.sqrt((1 - ac) / ac)


@pytest.mark.parametrize("steps", [1, 4, 25, 1000])
@pytest.mark.parametrize("choice, expected_top", [("comfyui (4518.76)", 4518.7637), ("novelai (20000)", 20000.0)])
def test_ztsnr_sigmas_equal_diffusers_ddim_trailing(steps, choice, expected_top):
    ts, ref = diffusers_ztsnr_sigmas(steps)
    np.testing.assert_array_equal(S.trailing_timesteps(steps), ts)
    ours = S.ztsnr_sigmas(steps, S.terminal_standin(choice))
    assert len(ours) == steps + 1 and ours[-1] == 0.0
    assert math.isinf(ref[0]), "diffusers' terminal sigma is infinite (alpha_bar 0)"
    assert ours[0] == pytest.approx(expected_top, rel=1e-7)
    finite = np.isfinite(ref)
    np.testing.assert_allclose(ours[:-1][finite], ref[finite], rtol=5e-5)


def test_ztsnr_custom_terminal_and_table_path():
    assert S.ztsnr_sigmas(4, S.terminal_standin("custom", 12345.0))[0] == 12345.0
    table = np.sqrt((1 - np.cumprod(1 - S.beta_schedule())) / np.cumprod(1 - S.beta_schedule()))
    via_table = S.ztsnr_sigmas_from_table(S.rescale_sigma_table_zero_terminal_snr(table), 25, 20000.0)
    np.testing.assert_allclose(via_table, S.ztsnr_sigmas(25, 20000.0), rtol=1e-9)


def test_lin_algorithm_1_zero_terminal_and_first_unchanged():
    betas = S.beta_schedule()
    new = S.rescale_zero_terminal_snr(betas)
    ac_old, ac_new = np.cumprod(1 - betas), np.cumprod(1 - new)
    assert ac_new[-1] == 0.0
    assert ac_new[0] == pytest.approx(ac_old[0], rel=1e-12)
    assert np.all(np.diff(ac_new) < 0)


# --------------------------------------------------------------------------- properties

@settings(max_examples=150, deadline=None)
@given(steps=st.integers(1, 400), shape=st.sampled_from(S.SHAPES), rho=st.floats(0.2, 30.0),
       side=st.integers(1, 512).map(lambda k: 8 * k), other=st.integers(1, 512).map(lambda k: 8 * k),
       base=st.sampled_from([512, 768, 1024]), rule=st.sampled_from(S.RESOLUTION_RULES))
def test_high_sigma_schedules_are_valid(steps, shape, rho, side, other, base, rule):
    if shape == "karras":
        rho = max(rho, 1.0)
    if shape == "polyexponential":
        rho = min(rho, 4.0)  # a higher power flattens the tail into equal float64 sigmas (k-diffusion does too)
    smax, _ = S.scaled_sigma_max(14.614642, side, other, base, rule)
    s = S.shaped(shape, steps, 0.0291675, smax, rho)
    assert len(s) == steps + 1 and s[-1] == 0.0 and s[0] == pytest.approx(smax)
    assert np.all(np.diff(s) < 0), "strictly decreasing"
    S.check_schedule(s)


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 1000), top=st.floats(2300.0, 20000.0))
def test_ztsnr_schedules_are_valid(steps, top):
    s = S.ztsnr_sigmas(steps, top)
    assert len(s) == steps + 1 and s[-1] == 0.0 and s[0] == top
    assert np.all(np.diff(s) < 0)


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 500), shift=st.floats(0.1, 20.0))
def test_flow_schedules_are_valid(steps, shift):
    s = S.flow_sigmas(steps, shift)
    assert len(s) == steps + 1 and s[0] == pytest.approx(1.0) and s[-1] == 0.0
    assert np.all(np.diff(s) < 0)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, message", [
    (lambda: S.karras(0, 0.03, 14.6), "steps: must be a whole number >= 1"),
    (lambda: S.exponential(-3, 0.03, 14.6), "steps: must be a whole number >= 1"),
    (lambda: S.karras(10, 14.6, 14.6), "sigma_min (14.6) must be smaller than sigma_max (14.6)"),
    (lambda: S.karras(10, 20.0, 14.6), "sigma_min (20) must be smaller than sigma_max"),
    (lambda: S.karras(10, float("nan"), 14.6), "sigma_min: must be a finite number"),
    (lambda: S.exponential(10, 0.03, float("inf")), "sigma_max: must be a finite number"),
    (lambda: S.karras(10, 0.03, 14.6, float("nan")), "rho: must be a finite number"),
    (lambda: S.karras(10, 0.03, 14.6, 0.5), "rho: karras needs rho >= 1"),
    (lambda: S.karras(10, 0.03, 30000.0), "sigma_max: 30000 is above the supported maximum 20000"),
    (lambda: S.resolution_factor(1020, 1024, 1024), "width: 1020 is not a multiple of 8 (latents are 1/8 of the image); use 1016 or 1024"),
    (lambda: S.resolution_factor(1024, 1001, 1024), "height: 1001 is not a multiple of 8"),
    (lambda: S.resolution_factor(1024, 1024, 1024, "diagonal"), "rule: unknown resolution rule"),
    (lambda: S.terminal_standin("custom", float("inf")), "custom_terminal_sigma: must be a finite number"),
    (lambda: S.terminal_standin("huge"), "terminal_sigma: unknown choice"),
    (lambda: S.ztsnr_sigmas(1001), "steps: 1001 is more than the model's 1000 training timesteps"),
    (lambda: S.ztsnr_sigmas(1000, 10.0), "terminal_sigma: 10 must be larger than the next sigma"),
    (lambda: S.check_schedule([1.0, float("nan"), 0.0]), "sigmas: contains NaN or infinity"),
    (lambda: S.check_schedule([1.0, 2.0, 0.0]), "sigmas: sigmas must not increase"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert message in str(e.value)


def test_plot_draws_labelled_log_axes():
    from sd35wb import sigma_plot

    img = sigma_plot.render([sigma_plot.Series("a", S.ztsnr_sigmas(10)), sigma_plot.Series("b", S.karras(10, 0.03, 14.6))],
                            "title")
    assert img.size == (768, 480) and img.mode == "RGB"
    colors = set(img.getdata())
    assert sigma_plot.COLORS[0] in colors and sigma_plot.COLORS[1] in colors
    assert sigma_plot.log_range([sigma_plot.Series("a", S.ztsnr_sigmas(10))]) == (-1.0, 4.0)  # 0.2 .. 4518
