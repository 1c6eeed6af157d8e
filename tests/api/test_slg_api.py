"""API tier: the SLG sampler and guider render through a real server on the tiny SD3.5 model.

The example workflow is written for real weights and the SD3.5 loader; here its loader becomes a
core UNETLoader + the tiny VAE, its text encoders the test-only conditioning node, and its SLG
layers fit the tiny model's 4 joint blocks. Everything else runs as written.
"""

from __future__ import annotations

import copy
import io
import json

import pytest
from PIL import Image

from tools.comfy_server import REPO, PromptFailed, PromptRejected

WORKFLOW = REPO / "workflows" / "api" / "sd35_medium_slg.json"


def on_tiny_model(prompt: dict, size: int = 128, steps: int = 4) -> dict:
    p = copy.deepcopy(prompt)
    loader = next(k for k, n in p.items() if n["class_type"] == "SD35WB_SD35Loader")
    p[loader] = {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-sd35m.safetensors", "weight_dtype": "default"}}
    p["90"] = {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}}
    for nid, node in p.items():
        inp = node["inputs"]
        if node["class_type"] == "CLIPTextEncode":
            node["class_type"] = "SD35WBTest_Conditioning"
            node["inputs"] = {"family": "sd3", "seed": int(nid), "width": size, "height": size}
        elif node["class_type"] == "EmptySD3LatentImage":
            inp["width"] = inp["height"] = size
        elif node["class_type"] == "SD35WB_SLGSampler":
            inp.pop("settings")  # the loader's output; the tiny run uses the widgets instead
            inp.update(preset="custom", layers="1, 2", steps=steps, start=0.0, end=1.0)
        for k, v in list(inp.items()):
            if v == [loader, 2]:
                inp[k] = ["90", 0]
    return p


def test_example_workflow_is_wired_through_the_loaders_settings():
    prompt = json.loads(WORKFLOW.read_text())
    loader = prompt["1"]
    assert loader["class_type"] == "SD35WB_SD35Loader" and loader["inputs"]["model_name"] == "sd3.5_medium.safetensors"
    sampler = next(n for n in prompt.values() if n["class_type"] == "SD35WB_SLGSampler")
    assert sampler["inputs"]["settings"] == ["1", 3] and sampler["inputs"]["preset"] == "from settings"
    assert sampler["inputs"]["model"] == ["1", 0]
    assert (REPO / "workflows" / "notes" / "sd35_medium_slg.md").read_text().count("scale") >= 2


def _png(server, entry):
    images = server.images(entry)
    assert len(images) == 1
    img = Image.open(io.BytesIO(images[0]))
    assert img.size == (128, 128)
    assert len(set(img.getdata())) > 100
    return img


def test_slg_sampler_workflow_renders_on_the_tiny_model(server):
    _png(server, server.run(on_tiny_model(json.loads(WORKFLOW.read_text()))))


def test_slg_guider_renders_through_sampler_custom_advanced(server):
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-sd35m.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "SD35WBTest_Conditioning", "inputs": {"family": "sd3", "seed": 1, "width": 128, "height": 128}},
        "3": {"class_type": "SD35WBTest_Conditioning", "inputs": {"family": "sd3", "seed": 2, "width": 128, "height": 128}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "SD35WB_SLGGuider", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 4.0, "preset": "custom",
            "layers": "1, 2", "scale": 2.5, "start": 0.01, "end": 0.5, "gating": "steps"}},
        "6": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}},
        "8": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "sgm_uniform", "steps": 6,
                                                         "denoise": 1.0}},
        "9": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["6", 0], "guider": ["5", 0],
                                                                "sampler": ["7", 0], "sigmas": ["8", 0],
                                                                "latent_image": ["4", 0]}},
        "10": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["10", 0]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "slg_guider"}},
    }
    _png(server, server.run(prompt))


def test_bad_layers_fail_with_the_message_not_a_stack_trace(server):
    prompt = on_tiny_model(json.loads(WORKFLOW.read_text()))
    sampler = next(n for n in prompt.values() if n["class_type"] == "SD35WB_SLGSampler")
    sampler["inputs"]["layers"] = "7, 8, 9"
    with pytest.raises((PromptFailed, PromptRejected)) as e:
        server.run(prompt)
    text = json.dumps(getattr(e.value, "entry", None) or getattr(e.value, "body", None) or str(e.value))
    assert "block 7 does not exist" in text and "4 joint blocks" in text


def test_presets_route_serves_the_shared_table(server):
    from sd35wb.presets import SLG_PRESETS

    data = server.get_json("/sd35wb/slg/presets")
    assert set(data["presets"]) == set(SLG_PRESETS)
    ref = data["presets"]["SD3.5 Medium (Stability reference)"]
    assert ref == {"layers": "7, 8, 9", "scale": 2.5, "start": 0.01, "end": 0.2, "gating": "steps"}
