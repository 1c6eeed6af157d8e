"""API tier: the SD3.5 Loader through a real ComfyUI server: a prompt renders, the shipped SD3.5
Large workflow runs on the tiny models, and a bad file fails with the loader's own message."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tools.comfy_server import PromptFailed

REPO = Path(__file__).resolve().parents[2]
CLIP_L = "sd35wb-api-clip_l.safetensors"


@pytest.fixture(scope="module")
def clip_l(user_models):
    from tools import sd35_fixtures

    dest = user_models / "text_encoders" / CLIP_L
    if not dest.exists():
        dest.symlink_to(sd35_fixtures.clip_l_file())
    return CLIP_L


def loader(**kw) -> dict:
    inputs = dict(model_name="tiny-sd35m.safetensors", variant="auto", clip_l="none", clip_g="none", t5xxl="none",
                  t5_dtype="default", vae="taesd3", shift=3.0, fetch_missing=False)
    inputs.update(kw)
    return {"class_type": "SD35WB_SD35Loader", "inputs": inputs}


def diffusers_model(tiny_models, user_models) -> str:
    """SimpleTuner's layout: transformer/diffusion_pytorch_model.safetensors, linked into diffusion_models."""
    name = "sd35wb-api-diffusers-layout.safetensors"
    dest = user_models / "diffusion_models" / name
    if not dest.exists():
        dest.symlink_to(tiny_models / "diffusers" / "tiny-sd35m" / "transformer" / "diffusion_pytorch_model.safetensors")
    return name


@pytest.mark.parametrize("layout", ["single-file", "diffusers"])
def test_loader_samples_and_decodes_with_its_vae(server, tiny_models, user_models, layout):
    name = "tiny-sd35m.safetensors" if layout == "single-file" else diffusers_model(tiny_models, user_models)
    prompt = {
        "1": loader(model_name=name),
        "2": {"class_type": "SD35WBTest_Conditioning", "inputs": {"family": "sd3", "seed": 1, "width": 128, "height": 128}},
        "3": {"class_type": "SD35WBTest_Conditioning", "inputs": {"family": "sd3", "seed": 2, "width": 128, "height": 128}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                    "latent_image": ["4", 0], "seed": 5, "steps": 3, "cfg": 4.0,
                                                    "sampler_name": "euler", "scheduler": "sgm_uniform", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": f"sd35wb_loader_api_{layout}"}},
    }
    imgs = server.images(server.run(prompt))
    assert len(imgs) == 1
    img = Image.open(io.BytesIO(imgs[0]))
    assert img.size == (128, 128) and len(set(img.getdata())) > 100


def test_object_info_lists_the_loader(server):
    info = server.get_json("/object_info/SD35WB_SD35Loader")["SD35WB_SD35Loader"]
    assert info["display_name"] == "SD3.5 Loader"
    assert info["output"] == ["MODEL", "CLIP", "VAE", "SD35WB_SETTINGS", "STRING"]  # the report goes last
    assert list(info["input"]["required"]) == ["model_name", "variant", "clip_l", "clip_g", "t5xxl", "t5_dtype", "vae",
                                               "shift", "fetch_missing"]
    assert list(info["input"]["optional"]) == ["weight_dtype"]  # prompts without it keep validating


def large_workflow_on_tiny_models(clip_l: str) -> dict:
    wf = json.loads((REPO / "workflows" / "api" / "sd35_large.json").read_text())
    wf = copy.deepcopy(wf)
    ld = wf["1"]["inputs"]
    ld.update(model_name="tiny-sd35m.safetensors", clip_l=clip_l, clip_g="none", t5xxl="none", vae="taesd3")
    wf["4"]["inputs"].update(width=128, height=128)
    wf["5"]["inputs"].update(steps=4)
    wf["7"]["inputs"]["filename_prefix"] = "sd35wb_large_wf"
    return wf


def test_sd35_large_workflow_is_what_stability_recommends():
    wf = json.loads((REPO / "workflows" / "api" / "sd35_large.json").read_text())
    assert wf["1"]["class_type"] == "SD35WB_SD35Loader" and wf["1"]["inputs"]["model_name"] == "sd3.5_large.safetensors"
    ks = wf["5"]["inputs"]
    from sd35wb.presets import recommended_settings

    large = recommended_settings("large")
    assert (ks["steps"], ks["cfg"], ks["sampler_name"], ks["scheduler"]) == \
        (large["steps"], large["cfg"], large["sampler_name"], large["scheduler"])
    assert wf["1"]["inputs"]["shift"] == large["shift"]
    assert (REPO / "workflows" / "notes" / "sd35_large.md").read_text().startswith("# SD3.5 Large")


def test_sd35_large_workflow_runs_on_tiny_models(server, clip_l):
    """The shipped workflow, with real CLIPTextEncode on the random CLIP-L, models remapped to tiny ones."""
    imgs = server.images(server.run(large_workflow_on_tiny_models(clip_l)))
    assert len(imgs) == 1
    img = Image.open(io.BytesIO(imgs[0]))
    assert img.size == (128, 128) and len(set(img.getdata())) > 100


def test_the_real_names_validate_and_fail_with_the_loaders_message(server, user_models):
    """Missing stabilityai files still pass validation (the loader lists them) and then fail
    before any loading, saying where to put them or how to fetch them."""
    wf = json.loads((REPO / "workflows" / "api" / "sd35_large.json").read_text())
    with pytest.raises(PromptFailed) as e:
        server.run(wf)
    assert e.value.error["node_type"] == "SD35WB_SD35Loader"
    msg = e.value.error["exception_message"]
    assert msg.startswith("model_name: sd3.5_large.safetensors is not in models/checkpoints ("), msg
    # the user's diffusion_models folder (extra_model_paths.yaml) is named as searched too
    assert "or models/diffusion_models (" in msg and str(user_models / "diffusion_models") in msg, msg
    assert "Place it in one of them, or turn on fetch_missing" in msg


def test_a_unet_file_fails_with_a_clear_message(server):
    prompt = {"1": loader(model_name="tiny-sd15.safetensors"),
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 3]}}}
    with pytest.raises(PromptFailed) as e:
        server.run(prompt)
    assert e.value.error["exception_type"] == "ValueError"
    assert e.value.error["exception_message"].startswith(
        "model_name: tiny-sd15.safetensors is not an SD3 / SD3.5 (MMDiT) model: it looks like a Stable Diffusion 1.x UNet")
