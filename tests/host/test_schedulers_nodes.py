"""Host tier: the scheduler nodes against ComfyUI's own schedules, model sampling and RescaleCFG."""

import math

import numpy as np
import pytest
import torch
from helpers import call

import sd35wb.sigmas as S


@pytest.fixture(scope="module", autouse=True)
def temp_previews(host, tmp_path_factory):
    """Preview PNGs go to a test folder, not the shared host's ComfyUI/temp."""
    old = host.folder_paths.get_temp_directory()
    host.folder_paths.set_temp_directory(str(tmp_path_factory.mktemp("previews")))
    yield
    host.folder_paths.set_temp_directory(old)


@pytest.fixture(scope="module")
def sd15(host):
    (model,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd15.safetensors", weight_dtype="default")
    return model


@pytest.fixture(scope="module")
def sd3(host):
    (model,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")
    return model


def high_sigma(host, model, **kw):
    args = dict(model=model, steps=10, width=1024, height=1024, shape="karras", rho=7.0, base_resolution=0,
                rule="novelai_linear", flow_rule="sqrt_area", only_scale_up=True, sigma_max_override=0.0,
                sigma_min_override=0.0, shift_override=0.0)
    args.update(kw)
    return call(host.nodes, "SD35WB_HighSigmaScheduler", **args)


def ztsnr(host, model, steps, terminal="comfyui (4518.76)", custom=20000.0):
    return call(host.nodes, "SD35WB_ZTSNRScheduler", model=model, steps=steps, terminal_sigma=terminal,
                custom_terminal_sigma=custom)


# --------------------------------------------------------------------------- ZTSNR


@pytest.mark.parametrize("steps", [1, 4, 25, 1000])
@pytest.mark.parametrize("terminal, expected", [("comfyui (4518.76)", S.COMFY_ZSNR_SIGMA), ("novelai (20000)", 20000.0),
                                                ("custom", 7777.0)])
def test_ztsnr_sigmas_equal_the_hosts_zsnr_table(host, sd15, steps, terminal, expected):
    (core_zsnr,) = call(host.nodes, "ModelSamplingDiscrete", model=sd15, sampling="v_prediction", zsnr=True)
    table = core_zsnr.get_model_object("model_sampling").sigmas.double().numpy()
    assert table[-1] == pytest.approx(4518.76, rel=1e-5), "the host's finite stand-in"
    sig, info = ztsnr(host, sd15, steps, terminal, 7777.0)
    assert sig.dtype == torch.float32 and sig.shape == (steps + 1,)
    ts = S.trailing_timesteps(steps)
    np.testing.assert_allclose(sig.double().numpy()[1:-1], table[ts][1:], rtol=5e-5)
    assert sig[0].item() == pytest.approx(expected, rel=1e-6) and sig[-1].item() == 0.0
    assert "ZTSNR trailing" in info and "add SD35WB_ZTSNRModelPatch" in info  # the unpatched model is eps, not zsnr


def test_ksampler_dropdown_gets_the_ztsnr_schedule_without_losing_core_names(host, sd15):
    import comfy.samplers

    names = comfy.samplers.KSampler.SCHEDULERS
    assert names is comfy.samplers.SCHEDULER_NAMES
    assert names[:9] == ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                         "linear_quadratic", "kl_optimal"]
    assert names.count("sd35wb_ztsnr_trailing") == 1
    ksampler_list = host.nodes.NODE_CLASS_MAPPINGS["KSampler"].INPUT_TYPES()["required"]["scheduler"][0]
    assert "sd35wb_ztsnr_trailing" in ksampler_list and "karras" in ksampler_list
    (patched, _) = call(host.nodes, "SD35WB_ZTSNRModelPatch", model=sd15, prediction="v_prediction", zsnr="on")
    for model in (sd15, patched):  # unpatched: the table is rescaled; patched: already zsnr
        (via_core,) = call(host.nodes, "BasicScheduler", model=model, scheduler="sd35wb_ztsnr_trailing", steps=25, denoise=1.0)
        np.testing.assert_allclose(via_core.numpy(), ztsnr(host, model, 25)[0].numpy(), rtol=5e-5)


# --------------------------------------------------------------------------- high sigma


def test_high_sigma_karras_and_exponential_equal_k_diffusion(host, sd15):
    from comfy.k_diffusion.sampling import get_sigmas_exponential, get_sigmas_karras

    ms = sd15.get_model_object("model_sampling")
    smin, smax = float(ms.sigma_min), float(ms.sigma_max)
    sig, info = high_sigma(host, sd15, steps=12, width=1024, height=1024)  # SD1.5 base 512 -> x2
    np.testing.assert_allclose(sig.numpy(), get_sigmas_karras(12, smin, 2 * smax, rho=7.0).numpy(), rtol=1e-5)
    assert sig[0].item() == pytest.approx(2 * smax, rel=1e-6)
    assert "SD1.5 discrete model: novelai_linear" in info and "x 2" in info
    sig, _ = high_sigma(host, sd15, steps=12, width=512, height=512, shape="exponential")
    np.testing.assert_allclose(sig.numpy(), get_sigmas_exponential(12, smin, smax).numpy(), rtol=1e-5)
    # core's own karras scheduler at the model's sigma_max is the 1x case
    (core,) = call(host.nodes, "BasicScheduler", model=sd15, scheduler="karras", steps=12, denoise=1.0)
    np.testing.assert_allclose(high_sigma(host, sd15, steps=12, width=512, height=512)[0].numpy(), core.numpy(), rtol=1e-5)


def test_high_sigma_reads_the_canvas_from_a_latent_and_doubles_with_the_side(host, sd15):
    (lat1,) = call(host.nodes, "EmptyLatentImage", width=1024, height=1024, batch_size=1)
    (lat2,) = call(host.nodes, "EmptyLatentImage", width=2048, height=2048, batch_size=1)
    one, _ = high_sigma(host, sd15, latent=lat1, width=8, height=8)
    two, info = high_sigma(host, sd15, latent=lat2, width=8, height=8)
    assert two[0].item() == pytest.approx(2 * one[0].item(), rel=1e-6)
    assert "2048x2048 (latent)" in info
    over, info = high_sigma(host, sd15, sigma_max_override=20000.0)
    assert over[0].item() == pytest.approx(20000.0) and "sigma_max_override 20000" in info


def test_flow_model_gets_the_sd3_resolution_shift(host, sd3):
    (shifted6,) = call(host.nodes, "ModelSamplingSD3", model=sd3, shift=6.0)
    (core6,) = call(host.nodes, "BasicScheduler", model=shifted6, scheduler="simple", steps=10, denoise=1.0)
    sig, info = high_sigma(host, sd3, steps=10, width=2048, height=2048)  # base 1024, model shift 3 -> 6
    np.testing.assert_allclose(sig.numpy(), core6.numpy(), rtol=1e-5)
    assert "SD3 flow model: sqrt_area: shift 3 x 2" in info and "-> shift 6" in info
    (core3,) = call(host.nodes, "BasicScheduler", model=sd3, scheduler="simple", steps=10, denoise=1.0)
    np.testing.assert_allclose(high_sigma(host, sd3, steps=10)[0].numpy(), core3.numpy(), rtol=1e-5)
    dyn, info = high_sigma(host, sd3, steps=10, flow_rule="diffusers_dynamic")
    assert dyn[1].item() == pytest.approx(S.time_snr_shift(math.exp(1.15), 0.9), rel=1e-6) and "4096 tokens" in info


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw, message", [
    (dict(steps=0), "steps: must be a whole number >= 1"),
    (dict(width=1020), "width: 1020 is not a multiple of 8"),
    (dict(height=100), "height: 100 is not a multiple of 8"),
    (dict(sigma_min_override=30.0, sigma_max_override=20.0), "sigma_min_override (30) must be smaller than sigma_max_override (20)"),
    (dict(rho=float("nan")), "rho: must be a finite number"),
    (dict(sigma_max_override=float("inf")), "sigma_max_override: must be a finite number"),
])
def test_high_sigma_bad_input_is_named(host, sd15, kw, message):
    with pytest.raises(ValueError) as e:
        high_sigma(host, sd15, **kw)
    assert message in str(e.value)


def test_flow_model_is_refused_by_the_ztsnr_nodes(host, sd3):
    for node, kw in (("SD35WB_ZTSNRScheduler", dict(steps=4, terminal_sigma="comfyui (4518.76)", custom_terminal_sigma=1.0)),
                     ("SD35WB_ZTSNRModelPatch", dict(prediction="v_prediction", zsnr="on"))):
        with pytest.raises(ValueError) as e:
            call(host.nodes, node, model=sd3, **kw)
        assert str(e.value).startswith("model: this is a flow-matching model (SD3 / SD3.5 / Flux sampling)")


def test_ztsnr_bad_input_is_named(host, sd15):
    with pytest.raises(ValueError, match="steps: must be a whole number >= 1"):
        ztsnr(host, sd15, 0)
    with pytest.raises(ValueError, match="custom_terminal_sigma: must be a finite number"):
        ztsnr(host, sd15, 4, "custom", float("nan"))


# --------------------------------------------------------------------------- model patch, CFG rescale, guider


def sample(host, model, sigmas, guider=None, cfg=5.0, seed=3, size=64):
    from testnodes import make_conditioning

    pos, neg = make_conditioning("sd15", 1), make_conditioning("sd15", 2)
    if guider is None:
        (guider,) = call(host.nodes, "CFGGuider", model=model, positive=pos, negative=neg, cfg=cfg)
    (noise,) = call(host.nodes, "RandomNoise", noise_seed=seed)
    (sampler,) = call(host.nodes, "KSamplerSelect", sampler_name="euler")
    (latent,) = call(host.nodes, "EmptyLatentImage", width=size, height=size, batch_size=1)
    out, _ = call(host.nodes, "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                  latent_image=latent)
    return out["samples"]


def test_ztsnr_model_patch_equals_core_model_sampling_discrete(host, sd15):
    (ours, _) = call(host.nodes, "SD35WB_ZTSNRModelPatch", model=sd15, prediction="v_prediction", zsnr="on")
    (core,) = call(host.nodes, "ModelSamplingDiscrete", model=sd15, sampling="v_prediction", zsnr=True)
    ms_o, ms_c = ours.get_model_object("model_sampling"), core.get_model_object("model_sampling")
    assert torch.equal(ms_o.sigmas, ms_c.sigmas) and ms_o.zsnr
    import comfy.model_sampling

    assert isinstance(ms_o, comfy.model_sampling.V_PREDICTION)
    assert sd15.get_model_object("model_sampling").sigma_max.item() < 20, "the input model is untouched"
    sig, info = ztsnr(host, ours, 2)
    assert "add SD35WB_ZTSNRModelPatch" not in info
    torch.testing.assert_close(sample(host, ours, sig), sample(host, core, sig), rtol=0, atol=0)


def cfg_args(sigma, seed=0, dtype=torch.float64):
    """What core's cfg_function hands a sampler_cfg_function / post-cfg function, in float64."""
    g = torch.Generator().manual_seed(seed)
    x0_c, x0_u, eps = (torch.randn((2, 4, 8, 8), generator=g, dtype=dtype) for _ in range(3))
    sig = torch.tensor([sigma, sigma], dtype=dtype)
    x = x0_c + eps * sigma
    return x, x0_c, x0_u, sig


@pytest.mark.parametrize("sigma", [0.03, 1.0, 14.6, 4518.76])
@pytest.mark.parametrize("mult, scale", [(0.7, 5.0), (1.0, 7.5), (0.3, 2.0)])
def test_rescale_cfg_equals_core_rescale_cfg_numerically(host, sd15, sigma, mult, scale):
    (ours,) = call(host.nodes, "SD35WB_RescaleCFG", model=sd15, multiplier=mult)
    (core,) = call(host.nodes, "RescaleCFG", model=sd15, multiplier=mult)
    x, c, u, sig = cfg_args(sigma)
    core_fn = core.model_options["sampler_cfg_function"]
    expected = x - core_fn({"cond": x - c, "uncond": x - u, "cond_scale": scale, "sigma": sig, "input": x})
    (post,) = ours.model_options["sampler_post_cfg_function"]
    got = post({"denoised": u + (c - u) * scale, "cond_denoised": c, "uncond_denoised": u, "cond_scale": scale,
                "sigma": sig, "input": x, "model": sd15.model})
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * sigma)
    assert not torch.allclose(got, u + (c - u) * scale), "the rescale changes the result"


def test_rescale_cfg_samples_like_core_rescale_cfg(host, sd15):
    (vpred, _) = call(host.nodes, "SD35WB_ZTSNRModelPatch", model=sd15, prediction="v_prediction", zsnr="off")
    (sig,) = call(host.nodes, "BasicScheduler", model=vpred, scheduler="karras", steps=2, denoise=1.0)
    (ours,) = call(host.nodes, "SD35WB_RescaleCFG", model=vpred, multiplier=0.7)
    (core,) = call(host.nodes, "RescaleCFG", model=vpred, multiplier=0.7)
    torch.testing.assert_close(sample(host, ours, sig), sample(host, core, sig), rtol=1e-4, atol=1e-4)


def test_rescale_cfg_chains_after_another_cfg_function(host, sd15):
    (vpred, _) = call(host.nodes, "SD35WB_ZTSNRModelPatch", model=sd15, prediction="v_prediction", zsnr="on")
    (core,) = call(host.nodes, "RescaleCFG", model=vpred, multiplier=0.7)
    (both,) = call(host.nodes, "SD35WB_RescaleCFG", model=core, multiplier=0.7)
    assert "sampler_cfg_function" in both.model_options, "core's cfg function is kept"
    assert len(both.model_options["sampler_post_cfg_function"]) == 1


def recorded_cfg_scales(host, model, guider_kw, sigmas):
    from testnodes import make_conditioning

    seen = []

    def record(args):
        seen.append((float(args["sigma"].max()), float(args["cond_scale"]), args["uncond"] is not None))
        return args["denoised"]

    m = model.clone()
    m.set_model_sampler_post_cfg_function(record)
    (guider,) = call(host.nodes, "SD35WB_ZTSNRGuider", model=m, positive=make_conditioning("sd15", 1),
                     negative=make_conditioning("sd15", 2), **guider_kw)
    out = sample(host, m, sigmas, guider=guider)
    return seen, out


def test_guider_skips_cfg_on_the_first_step_only(host, sd15):
    (vpred, _) = call(host.nodes, "SD35WB_ZTSNRModelPatch", model=sd15, prediction="v_prediction", zsnr="on")
    sig, _ = ztsnr(host, vpred, 3)
    seen, out = recorded_cfg_scales(host, vpred, dict(cfg=5.0, cond_only_steps=1), sig)
    assert [s[1] for s in seen] == [1.0, 5.0, 5.0]
    assert seen[0][0] == pytest.approx(S.COMFY_ZSNR_SIGMA, rel=1e-5)
    assert seen[0][2] is False, "no negative pass on the first step"
    assert all(s[2] for s in seen[1:])
    # 0 = the core CFG guider
    sig1, _ = ztsnr(host, vpred, 1)
    seen0, out0 = recorded_cfg_scales(host, vpred, dict(cfg=5.0, cond_only_steps=0), sig1)
    assert [s[1] for s in seen0] == [5.0]
    torch.testing.assert_close(out0, sample(host, vpred, sig1, cfg=5.0))
    # one step with the first step skipped == core CFG at cfg 1
    _, one = recorded_cfg_scales(host, vpred, dict(cfg=5.0, cond_only_steps=1), sig1)
    torch.testing.assert_close(one, sample(host, vpred, sig1, cfg=1.0))


def test_end_to_end_sd15_ztsnr_vpred_in_process(host, sd15):
    (vpred, _) = call(host.nodes, "SD35WB_ZTSNRModelPatch", model=sd15, prediction="v_prediction", zsnr="on")
    (rescaled,) = call(host.nodes, "SD35WB_RescaleCFG", model=vpred, multiplier=0.7)
    sig, _ = ztsnr(host, rescaled, 4, "novelai (20000)")
    out = sample(host, rescaled, sig, size=128)
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- preview


def test_sigma_preview_draws_the_schedule_and_core_comparison(host, sd15):
    from sd35wb import sigma_plot

    sig, _ = high_sigma(host, sd15, steps=20, width=1024, height=1024)
    cls = host.nodes.NODE_CLASS_MAPPINGS["SD35WB_SigmaPreview"]
    out = cls.execute(sigmas=sig, title="", compare_with="karras", model=sd15)
    (img,) = out.result
    assert img.shape == (1, 480, 768, 3) and img.dtype == torch.float32
    pixels = {tuple(int(round(c * 255)) for c in px) for px in img[0].reshape(-1, 3).tolist()}
    assert sigma_plot.COLORS[0] in pixels and sigma_plot.COLORS[1] in pixels, "both schedules drawn"
    ui = out.ui.as_dict() if hasattr(out.ui, "as_dict") else out.ui
    assert ui["images"] and ui["images"][0]["type"] == "temp"
    alone = cls.execute(sigmas=sig, title="mine", compare_with="karras", model=None).result[0]
    pixels = {tuple(int(round(c * 255)) for c in px) for px in alone[0].reshape(-1, 3).tolist()}
    assert sigma_plot.COLORS[1] not in pixels
    with pytest.raises(ValueError, match="sigmas: a schedule needs at least 2 sigmas"):
        cls.execute(sigmas=torch.tensor([1.0]), title="", compare_with="none", model=None)


def test_scheduler_nodes_show_their_own_preview(host, sd15):
    cls = host.nodes.NODE_CLASS_MAPPINGS["SD35WB_ZTSNRScheduler"]
    out = cls.execute(model=sd15, steps=8, terminal_sigma="novelai (20000)", custom_terminal_sigma=1.0)
    ui = out.ui.as_dict() if hasattr(out.ui, "as_dict") else out.ui
    assert len(ui["images"]) == 1


@pytest.mark.parametrize("sigma", [0.05, 0.5, 0.95])
def test_rescale_cfg_on_flow_models_matches_the_positive_velocity_spread(host, sd3, sigma):
    """Flow models: phi = 1 gives a result whose velocity (x - x0) / sigma has the positive's per-sample std."""
    (ours,) = call(host.nodes, "SD35WB_RescaleCFG", model=sd3, multiplier=1.0)
    (post,) = ours.model_options["sampler_post_cfg_function"]
    x, c, u, sig = cfg_args(sigma, seed=4)
    cfg = u + (c - u) * 4.0
    got = post({"denoised": cfg, "cond_denoised": c, "uncond_denoised": u, "cond_scale": 4.0, "sigma": sig, "input": x,
                "model": sd3.model})
    v_got, v_cond, v_cfg = ((x - t) / sigma for t in (got, c, cfg))
    torch.testing.assert_close(v_got.std(dim=(1, 2, 3)), v_cond.std(dim=(1, 2, 3)), rtol=1e-9, atol=0)
    torch.testing.assert_close(v_got / v_got.std(dim=(1, 2, 3), keepdim=True), v_cfg / v_cfg.std(dim=(1, 2, 3), keepdim=True))


def test_ztsnr_refuses_models_without_a_beta_schedule(host, sd15):
    (edm,) = call(host.nodes, "ModelSamplingContinuousEDM", model=sd15, sampling="v_prediction", sigma_max=120.0, sigma_min=0.002)
    with pytest.raises(ValueError) as e:
        ztsnr(host, edm, 4)
    assert str(e.value).startswith("model: SD35WB_ZTSNRScheduler needs a discrete DDPM-schedule model")
    with pytest.raises(ValueError, match="scheduler sd35wb_ztsnr_trailing needs a discrete DDPM-schedule model"):
        call(host.nodes, "BasicScheduler", model=edm, scheduler="sd35wb_ztsnr_trailing", steps=4, denoise=1.0)
