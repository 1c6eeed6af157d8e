"""Host tier: LCM-LoRA nodes against the real host on the tiny SD1.5 and Vega models.

The all-in-one node must equal the core chain bit for bit; every LoRA key must load (in all four
key formats) and change the weights; bad inputs give messages that say what to do."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import call, progress_events
from lcm_helpers import populate_hf_cache, write_loras
from testnodes import make_conditioning

from tools import lcm_fixtures

FORMATS = lcm_fixtures.FORMATS


@pytest.fixture(scope="module")
def loras(host, tiny_models, user_models):
    return write_loras(tiny_models, user_models)


@pytest.fixture(scope="module")
def sd15(host):
    return call(host.nodes, "UNETLoader", unet_name="tiny-sd15.safetensors", weight_dtype="default")[0]


@pytest.fixture(scope="module")
def vega(host):
    return call(host.nodes, "UNETLoader", unet_name="tiny-vega.safetensors", weight_dtype="default")[0]


def _latent(host, size=64):
    return call(host.nodes, "EmptyLatentImage", width=size, height=size, batch_size=1)[0]


def _conds(family, size=64):
    return make_conditioning(family, 1, size, size), make_conditioning(family, 2, size, size)


def core_chain(host, model, lora, strength, pos, neg, latent, seed, steps, cfg, scheduler="sgm_uniform", denoise=1.0,
               style=None, style_strength=0.0):
    m = model
    if lora is not None:
        (m,) = call(host.nodes, "LoraLoaderModelOnly", model=m, lora_name=lora, strength_model=strength)
    if style is not None:
        (m,) = call(host.nodes, "LoraLoaderModelOnly", model=m, lora_name=style, strength_model=style_strength)
    (m,) = call(host.nodes, "ModelSamplingDiscrete", model=m, sampling="lcm", zsnr=False)
    (out,) = call(host.nodes, "KSampler", model=m, seed=seed, steps=steps, cfg=cfg, sampler_name="lcm",
                  scheduler=scheduler, positive=pos, negative=neg, latent_image=latent, denoise=denoise)
    return out["samples"]


def ours(host, model, lora, strength, pos, neg, latent, seed, steps, cfg, scheduler="sgm_uniform", denoise=1.0,
         with_report=False):
    (out, report) = call(host.nodes, "SD35WB_LCMLoraSampler", model=model, lcm_lora=lora, strength=strength,
                         positive=pos, negative=neg, latent_image=latent, seed=seed, steps=steps, cfg=cfg,
                         scheduler=scheduler, denoise=denoise)
    return (out["samples"], report) if with_report else out["samples"]


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self)


def _not_loaded(lines):
    return [m for m in lines if "lora key not loaded" in m or m.startswith("NOT LOADED")]


# ---------------------------------------------------------------------------------------------
# every key of every format loads and changes the weights


@pytest.mark.parametrize("model_name", ["sd15", "vega"])
def test_every_lora_key_is_applied_and_changes_the_weights(host, loras, request, model_name):
    from safetensors import safe_open

    base = request.getfixturevalue(model_name)
    for fmt in FORMATS:
        name = loras[(model_name, fmt, "lcm")]
        with safe_open(str(host.folder_paths.get_full_path("loras", name)), "pt") as f:
            n_modules = len({k.rsplit(".lora", 1)[0].rsplit(".alpha", 1)[0] for k in f.keys()})
        with _Capture() as cap:
            (m, _clip) = call(host.nodes, "SD35WB_LCMLoraPatch", model=base, lcm_lora=name, strength=1.0)
        assert _not_loaded(cap.lines) == [], f"{fmt}: {_not_loaded(cap.lines)[:5]}"
        assert len(m.patches) == n_modules, f"{fmt}: {len(m.patches)} patched weights for {n_modules} LoRA modules"
        key = next(k for k in m.patches if "attn2.to_k" in k)
        before = base.model.state_dict()[key].clone()
        m.patch_weight_to_device(key)  # what loading the model does for every patched weight
        try:
            after = m.model.state_dict()[key].clone()
        finally:
            m.unpatch_model()
        assert not torch.equal(before, after), f"{fmt}: {key} unchanged after patching"
        assert torch.equal(base.model.state_dict()[key], before), "unpatching restores the base weight"
        assert m.get_model_object("model_sampling").__class__.__name__ == "ModelSamplingAdvanced"


def test_core_loader_misses_peft_attention_keys_that_ours_applies(host, loras, sd15):
    """Why the nodes re-key PEFT files: core's LoraLoader leaves their attention projections unloaded."""
    with _Capture() as cap:
        call(host.nodes, "LoraLoaderModelOnly", model=sd15, lora_name=loras[("sd15", "peft", "lcm")], strength_model=1.0)
    missed = _not_loaded(cap.lines)
    assert missed and all(".attn" in m and ".to_" in m for m in missed)


# ---------------------------------------------------------------------------------------------
# bit for bit equal to the core chain


@pytest.mark.parametrize("cfg", [1.0, 1.6])
def test_sampler_equals_core_chain_sd15(host, loras, sd15, cfg):
    pos, neg = _conds("sd15")
    lat = _latent(host)
    name = loras[("sd15", "kohya", "lcm")]
    a, report = ours(host, sd15, name, 1.0, pos, neg, lat, 11, 3, cfg, with_report=True)
    b = core_chain(host, sd15, name, 1.0, pos, neg, lat, 11, 3, cfg)
    assert torch.isfinite(a).all() and torch.equal(a, b)
    assert f"LCM-LoRA: {name} at strength 1 (lcm_lora {name!r}); model family SD1.5" in report, report
    assert f"sampling: sampler lcm, model sampling lcm, steps 3, cfg {cfg:g}, scheduler sgm_uniform, denoise 1, " \
           "seed 11" in report
    assert ("note: negative has no effect (unused at cfg 1)" in report) == (cfg == 1.0)
    plain = core_chain(host, sd15, None, 0.0, pos, neg, lat, 11, 3, cfg)
    assert not torch.equal(a, plain), "the LoRA changes the result"


def test_sampler_equals_core_chain_vega_img2img(host, loras, vega):
    pos, neg = _conds("sdxl", 64)
    lat = {"samples": torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))}
    name = loras[("vega", "kohya", "lcmattn")]  # attention-only: the patch is quick to apply on load
    a = ours(host, vega, name, 0.8, pos, neg, lat, 5, 2, 1.0, denoise=0.6)
    b = core_chain(host, vega, name, 0.8, pos, neg, lat, 5, 2, 1.0, denoise=0.6)
    assert torch.equal(a, b)


def test_patch_node_with_style_lora_equals_core_chain(host, loras, sd15):
    pos, neg = _conds("sd15")
    lat = _latent(host)
    lcm_name, style = loras[("sd15", "kohya", "lcm")], loras[("sd15", "kohya_ldm", "style")]
    (m, clip) = call(host.nodes, "SD35WB_LCMLoraPatch", model=sd15, lcm_lora=lcm_name, strength=1.0, style_lora=style,
                     style_strength=0.7)
    assert clip is None
    (out,) = call(host.nodes, "KSampler", model=m, seed=3, steps=2, cfg=1.0, sampler_name="lcm", scheduler="sgm_uniform",
                  positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    ref = core_chain(host, sd15, lcm_name, 1.0, pos, neg, lat, 3, 2, 1.0, style=style, style_strength=0.7)
    assert torch.equal(out["samples"], ref)


# ---------------------------------------------------------------------------------------------
# strength 0, steps, cfg, missing file, family mismatch


def test_strength_zero_means_lcm_sampling_without_the_lora(host, sd15):
    """Documented: strength 0 leaves the LoRA out (not read, not downloaded), LCM sampling stays."""
    pos, neg = _conds("sd15")
    lat = _latent(host)
    a, report = ours(host, sd15, "no-such-file.safetensors", 0.0, pos, neg, lat, 9, 2, 1.0, with_report=True)
    b = core_chain(host, sd15, None, 0.0, pos, neg, lat, 9, 2, 1.0)
    assert torch.equal(a, b)
    assert "LCM-LoRA: not applied (strength 0)" in report and "note: lcm_lora has no effect" in report


@pytest.mark.parametrize("steps", [0, 9, 25])
def test_steps_out_of_range_are_refused(host, sd15, steps):
    pos, neg = _conds("sd15")
    with pytest.raises(ValueError, match=r"steps: .* out of range; LCM-LoRA samples in 1-8 steps"):
        ours(host, sd15, "no-such-file.safetensors", 1.0, pos, neg, _latent(host), 0, steps, 1.0)
    with pytest.raises(ValueError, match=r"max_steps: .* out of range"):
        call(host.nodes, "SD35WB_LCMStepSweep", model=sd15, vae=None, lcm_lora="x", strength=1.0, positive=pos,
             negative=neg, latent_image=_latent(host), seed=0, max_steps=steps, cfg=1.0)


def test_cfg_far_above_lcm_range_is_refused(host, sd15):
    pos, neg = _conds("sd15")
    with pytest.raises(ValueError, match=r"cfg: 7.0 is out of range for LCM-LoRA; use 1.0"):
        ours(host, sd15, "x.safetensors", 1.0, pos, neg, _latent(host), 0, 4, 7.0)


def test_missing_lora_file_names_the_folder(host, sd15):
    pos, neg = _conds("sd15")
    with pytest.raises(ValueError, match=r"lcm_lora: 'gone.safetensors' is not in models/loras .* Put the file there"):
        ours(host, sd15, "gone.safetensors", 1.0, pos, neg, _latent(host), 0, 4, 1.0)


def test_pickled_lora_is_refused(host, sd15, user_models):
    (user_models / "loras" / "old-lcm.ckpt").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match=r"not a .safetensors file; only .safetensors LoRAs are loaded"):
        call(host.nodes, "SD35WB_LCMLoraPatch", model=sd15, lcm_lora="old-lcm.ckpt", strength=1.0)


def test_wrong_family_lora_file_is_refused_naming_both(host, loras, sd15):
    for fmt in ("kohya", "peft"):
        with _Capture() as cap, pytest.raises(ValueError) as e:
            call(host.nodes, "SD35WB_LCMLoraPatch", model=sd15, lcm_lora=loras[("vega", fmt, "lcm")], strength=1.0)
        msg = str(e.value)
        assert "trained for Segmind Vega but the model is SD1.5" in msg and "latent-consistency/lcm-lora-sdv1-5" in msg
        assert _not_loaded(cap.lines) == [], "refused before loading"


def test_wrong_family_on_vega_and_style_lora_mismatch(host, loras, vega):
    with pytest.raises(ValueError, match=r"lcm_lora: .* trained for SD1.5 but the model is Segmind Vega.*Segmind-VegaRT"):
        call(host.nodes, "SD35WB_LCMLoraPatch", model=vega, lcm_lora=loras[("sd15", "kohya", "lcm")], strength=1.0)
    with pytest.raises(ValueError, match=r"style_lora: .* trained for SD1.5 but the model is Segmind Vega"):
        call(host.nodes, "SD35WB_LCMLoraPatch", model=vega, lcm_lora=loras[("vega", "kohya", "lcm")], strength=1.0,
             style_lora=loras[("sd15", "diffusers", "style")], style_strength=0.8)


def test_lcm_lora_on_a_non_unet_model_is_refused(host, loras):
    (sd3,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")
    with pytest.raises(ValueError, match=r"lcm_lora: .* trained for Segmind Vega but the model is SD3"):
        call(host.nodes, "SD35WB_LCMLoraPatch", model=sd3, lcm_lora=loras[("vega", "kohya", "lcm")], strength=1.0)
    with pytest.raises(ValueError, match=r"lcm_lora: no public LCM-LoRA is known for SD3 models"):
        call(host.nodes, "SD35WB_LCMLoraPatch", model=sd3, lcm_lora="auto (the known LCM-LoRA for the model's family)",
             strength=1.0)


def test_known_lora_for_another_family_is_refused_before_download(host, sd15, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # empty: a download would be attempted next
    with pytest.raises(ValueError, match=r"latent-consistency/lcm-lora-sdxl is the LCM-LoRA for SDXL but the model is SD1.5"):
        call(host.nodes, "SD35WB_LCMLoraPatch", model=sd15, lcm_lora="hf: latent-consistency/lcm-lora-sdxl", strength=1.0)
    assert list(tmp_path.iterdir()) == []


def test_auto_uses_the_hf_cache_offline(host, loras, sd15, monkeypatch, tmp_path):
    src = host.folder_paths.get_full_path("loras", loras[("sd15", "kohya", "lcm")])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    pos, neg = _conds("sd15")
    lat = _latent(host)
    with pytest.raises(ValueError, match=r"lcm-lora-sdv1-5/pytorch_lora_weights.safetensors is not in the Hugging Face "
                                         r"cache .*HF_HUB_OFFLINE is set.*models/loras"):
        ours(host, sd15, "auto (the known LCM-LoRA for the model's family)", 1.0, pos, neg, lat, 2, 2, 1.0)
    populate_hf_cache(tmp_path / "hub", "latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors", src)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    a = ours(host, sd15, "auto (the known LCM-LoRA for the model's family)", 1.0, pos, neg, lat, 2, 2, 1.0)
    b = core_chain(host, sd15, loras[("sd15", "kohya", "lcm")], 1.0, pos, neg, lat, 2, 2, 1.0)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# step sweep


def test_step_sweep_renders_each_count_like_the_sampler(host, loras, sd15):
    (vae,) = call(host.nodes, "VAELoader", vae_name="taesd")
    pos, neg = _conds("sd15")
    lat = _latent(host)
    name = loras[("sd15", "diffusers", "lcm")]
    with progress_events() as seen:
        images, grid, report = call(host.nodes, "SD35WB_LCMStepSweep", model=sd15, vae=vae, lcm_lora=name, strength=1.0,
                            positive=pos, negative=neg, latent_image=lat, seed=4, max_steps=3, cfg=1.0)
    assert images.shape == (3, 64, 64, 3) and "steps 1-3, cfg 1" in report and name in report
    sweep_totals = [v for v, t in seen if t == 6]
    assert sweep_totals[-1] == 6 and sweep_totals == sorted(sweep_totals), "one bar across 1+2+3 steps"
    for n in (1, 3):
        s = ours(host, sd15, name, 1.0, pos, neg, lat, 4, n, 1.0)
        assert torch.equal(vae.decode(s), images[n - 1:n])
    assert not torch.equal(images[0], images[2])
    # grid: one row of three 64 px cells under a label band
    assert grid.shape[0] == 1 and grid.shape[3] == 3 and grid.shape[2] == 3 * 64 and grid.shape[1] > 64
