"""Host tier: the checkpoint sweep node over a LoRA run in the real in-process host: PEFT-format and
ComfyUI-format LoRAs (written by PEFT's and diffusers' own save code) x strengths x a cfg axis, each
image equal to core UNETLoader + LoraLoaderModelOnly + KSampler; the base loaded once (never by the
sweep); strength 0 the base image; a LoRA that matches nothing a row error; the plan refused above
max_images; bad axes named."""

from __future__ import annotations

import shutil

import comfy.lora
import comfy.sd
import pytest
import torch
from helpers import call, sweep_node_inputs

from tools import lora_fixtures

PX = 64
pytestmark = pytest.mark.usefixtures("cold_render_cache")


@pytest.fixture(scope="module")
def loras(host, user_models):
    """The run's LoRA files in models/loras, as the linker links them."""
    files = lora_fixtures.build_all()
    out = {}
    for name in ("sd3-peft", "sd3-simpletuner-comfyui", "sd3-matches-nothing"):
        dst = user_models / "loras" / "lora-run" / f"{name}.safetensors"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            shutil.copyfile(files[name], dst)
        out[name] = f"lora-run/{name}.safetensors"
    return out


def _inputs(host, **kw):
    return sweep_node_inputs(host, PX, steps=2, seed=11, **kw)


def _core(host, base, lora_name, strength, cfg, inp):
    (m,) = call(host.nodes, "LoraLoaderModelOnly", model=base, lora_name=lora_name, strength_model=strength)
    (samples,) = call(host.nodes, "KSampler", model=m, seed=11, steps=2, cfg=cfg, sampler_name="euler",
                      scheduler="simple", positive=inp["positive"], negative=inp["negative"],
                      latent_image=inp["latent_image"], denoise=1.0)
    return call(host.nodes, "VAEDecode", samples=samples, vae=inp["vae"])[0]


def test_lora_sweep_equals_core_lora_loader_and_ksampler_with_the_base_loaded_once(host, loras, monkeypatch):
    (base,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")
    names = [loras["sd3-peft"], loras["sd3-simpletuner-comfyui"]]
    loads = []
    real = comfy.sd.load_diffusion_model
    monkeypatch.setattr(comfy.sd, "load_diffusion_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    merges = []
    real_merge = comfy.lora.calculate_weight
    monkeypatch.setattr(comfy.lora, "calculate_weight", lambda *a, **k: merges.append(a[2]) or real_merge(*a, **k))
    inp = _inputs(host, model=base, models="\n".join(names), strengths="0, 0.7", axes="cfg=2, 4")
    images, pages, labels, report, *_ = call(host.nodes, "SD35WB_CheckpointSweep", **inp)
    monkeypatch.undo()
    assert loads == [], "a LoRA sweep never loads a model: the base is the connected one"
    assert merges == [], "no weight is rewritten: the LoRAs run as side branches"
    assert "LoRA layers: 27 unmerged (a rank-r side branch each" in report and ", 0 merged by ComfyUI" in report, report
    assert images.shape == (2 * 2 * 2, PX, PX, 3)  # LoRA x strength x cfg
    assert labels.splitlines() == ["sd3-peft @ 0", "sd3-peft @ 0.7", "sd3-simpletuner-comfyui @ 0",
                                   "sd3-simpletuner-comfyui @ 0.7"]
    assert "plan: 8 images (4 rows x 2 columns), 1 model load, 2 LoRA patches" in report
    assert "2 LoRA patch(es) applied" in report and "axis cfg: 2, 4" in report
    k = 0
    for name in names:
        for strength in (0.0, 0.7):
            for cfg in (2.0, 4.0):
                ref = _core(host, base, name, strength, cfg, inp)
                assert torch.allclose(images[k:k + 1], ref, atol=1e-5), (name, strength, cfg)
                k += 1
    assert torch.equal(images[0], images[4]), "strength 0 is the base image, whichever LoRA"
    assert not torch.allclose(images[0], images[2], atol=1e-3), "strength 0.7 changes the image"
    assert not torch.allclose(images[0], images[1], atol=1e-3), "the cfg axis reaches the sampler"
    assert pages.shape[0] == 1 and pages.shape[2] > 2 * PX


def test_a_lora_that_matches_nothing_is_a_row_error_and_the_rest_renders(host, loras):
    (base,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")
    inp = _inputs(host, model=base, models=f"{loras['sd3-matches-nothing']}\n{loras['sd3-peft']}", strengths="1")
    images, pages, labels, report, *_ = call(host.nodes, "SD35WB_CheckpointSweep", **inp)
    assert images.shape[0] == 1, "only the LoRA that fits rendered"
    assert "row sd3-matches-nothing: " in report and "sd3-matches-nothing.safetensors" in report
    assert "only 0 of its 47 modules match the base model" in report, report
    page = pages[0].numpy()
    assert page.shape[0] > 2 * PX, "two rows: one says why it failed"


def test_a_plan_above_max_images_and_a_bad_axis_are_refused_before_any_work(host, loras):
    (base,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")
    inp = _inputs(host, model=base, models=loras["sd3-peft"], strengths="0.5, 1", axes="steps=1,2,3")
    with pytest.raises(ValueError, match="max_images: this plan renders 6 images, above the limit of 5.*raise max_images"):
        call(host.nodes, "SD35WB_CheckpointSweep", **inp, max_images=5)
    with pytest.raises(ValueError, match="axes: 'guidance' is not a setting this node sweeps; use cfg, steps"):
        call(host.nodes, "SD35WB_CheckpointSweep", **{**inp, "axes": "guidance=1,2"})
    with pytest.raises(ValueError, match="axes: sampler_name: 'nope' is not one of"):
        call(host.nodes, "SD35WB_CheckpointSweep", **{**inp, "axes": "sampler_name=euler,nope"})
    with pytest.raises(ValueError, match="models: .*sd3-peft.safetensors"):
        call(host.nodes, "SD35WB_CheckpointSweep", **{**inp, "model": None, "axes": ""})
