"""Host tier: Skip Layer Guidance in the checkpoint sweep node, through the SLG sampler's own presets
and guider: slg_* axes render plain CFG (equal to core KSampler) and SLG (equal to the pack's SLG
Sampler) side by side; 'from settings' takes the loader's SLG values; a layer list the model does not
have, a window that closes before it opens and 'from settings' without settings fail before anything
renders."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import call, sweep_node_inputs

from tools import lora_fixtures

PX = 64
CKPT = "tiny-sd35m.safetensors"  # 4 joint blocks
pytestmark = pytest.mark.usefixtures("cold_render_cache")


def _inputs(host, **kw):
    return sweep_node_inputs(host, PX, steps=3, seed=5, **kw)


def _decode(host, samples, inp):
    return call(host.nodes, "VAEDecode", samples=samples, vae=inp["vae"])[0]


def _slg_sampler(host, model, inp, **slg):
    samples, *_ = call(host.nodes, "SD35WB_SLGSampler", model=model, positive=inp["positive"],
                      negative=inp["negative"], latent_image=inp["latent_image"], seed=5, steps=3, cfg=4.0,
                      sampler_name="euler", scheduler="simple", denoise=1.0, **slg)
    return _decode(host, samples, inp)


def test_an_slg_scale_axis_renders_plain_cfg_and_slg_equal_to_ksampler_and_the_slg_sampler(host):
    (model,) = call(host.nodes, "UNETLoader", unet_name=CKPT, weight_dtype="default")
    inp = _inputs(host, models=CKPT, slg="off", axes="slg_scale=0, 2.5; slg_layers=1 2; slg_start=0; slg_end=1")
    images, _, labels, report, *_ = call(host.nodes, "SD35WB_CheckpointSweep", **inp)
    assert images.shape[0] == 2
    assert "axis slg_scale: 0, 2.5" in report and "axis slg_layers: 1 2" in report, report
    assert "slg: off: layers 7, 8, 9 (swept in axes), scale 2.5 (swept in axes)" in report, report
    (plain,) = call(host.nodes, "KSampler", model=model, seed=5, steps=3, cfg=4.0, sampler_name="euler",
                    scheduler="simple", positive=inp["positive"], negative=inp["negative"],
                    latent_image=inp["latent_image"], denoise=1.0)
    assert torch.allclose(images[0:1], _decode(host, plain, inp), atol=1e-5), "slg_scale 0 is plain CFG"
    ref = _slg_sampler(host, model, inp, preset="custom", layers="1, 2", scale=2.5, start=0.0, end=1.0,
                       gating="steps")
    assert torch.allclose(images[1:2], ref, atol=1e-5), "slg_scale 2.5 is the SLG sampler's image"
    assert not torch.allclose(images[0], images[1], atol=1e-3), "SLG changes the image"


def test_slg_from_settings_takes_the_loaders_values(host):
    (model,) = call(host.nodes, "UNETLoader", unet_name=CKPT, weight_dtype="default")
    settings = {"variant": "medium", "slg": {"layers": [0, 3], "scale": 3.0, "start": 0.0, "end": 0.7,
                                             "gating": "sigma"}}
    inp = _inputs(host, models=CKPT, slg="from settings", settings=settings)
    images, _, _, report, *_ = call(host.nodes, "SD35WB_CheckpointSweep", **inp)
    assert "slg: from settings: layers 0, 3, scale 3, start 0, end 0.7, gating sigma" in report, report
    ref = _slg_sampler(host, model, inp, preset="from settings", layers="9", scale=1.0, start=0.5, end=0.6,
                       gating="steps", settings=settings, sampling_from_settings=False)
    assert torch.allclose(images, ref, atol=1e-5)


def test_a_layer_list_the_base_lacks_fails_a_lora_sweep_before_any_render(host, user_models):
    src = lora_fixtures.build_all()["sd3-peft"]
    dst = user_models / "loras" / "slg-run" / "sd3-peft.safetensors"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    (base,) = call(host.nodes, "UNETLoader", unet_name=CKPT, weight_dtype="default")
    inp = _inputs(host, model=base, models="slg-run/sd3-peft.safetensors", slg="SD3.5 Medium (Stability reference)")
    with pytest.raises(ValueError, match=r"slg: layers: block (7|8|9) does not exist; this model has 4 joint blocks"):
        call(host.nodes, "SD35WB_CheckpointSweep", **inp)
    with pytest.raises(ValueError, match="slg: .*slg_start / slg_end"):
        call(host.nodes, "SD35WB_CheckpointSweep", **{**inp, "slg": "off", "axes": "slg_layers=1; slg_end=0.5; slg_start=0.6"})
    with pytest.raises(ValueError, match="slg: 'from settings' needs the SD3.5 loader's SETTINGS"):
        call(host.nodes, "SD35WB_CheckpointSweep", **{**inp, "slg": "from settings"})
