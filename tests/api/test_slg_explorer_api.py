"""API tier: the SLG layer explorer and the sensitivity map through a real server on the tiny SD3
model (4 joint blocks): the example workflow renders, the explorer's renders equal separate runs
(core's KSampler for the baseline, our SLG sampler's separate pass per candidate) within 1e-5, and
bad input is refused with the message before any sampling."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tools.comfy_server import REPO, PromptFailed, PromptRejected
from tools.tiny_remap import tinyify

WORKFLOW = REPO / "workflows" / "api" / "slg_layer_explorer.json"
TOL = 1e-5
SIZE = 64


def base_nodes(size=SIZE):
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-sd35m.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "SD35WBTest_Conditioning", "inputs": {"family": "sd3", "seed": 1, "width": size,
                                                                  "height": size}},
        "3": {"class_type": "SD35WBTest_Conditioning", "inputs": {"family": "sd3", "seed": 2, "width": size,
                                                                  "height": size}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "10": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}},
    }


SAMPLING = dict(seed=11, steps=6, cfg=4.0, sampler_name="dpmpp_2m", scheduler="sgm_uniform")
WINDOW = dict(start=0.2, end=0.8, gating="steps")


def explorer_node(candidates="1 | 2 | 0,3", **over):
    inputs = {"model": ["1", 0], "vae": ["10", 0], "positive": ["2", 0], "negative": ["3", 0],
              "latent_image": ["4", 0], **SAMPLING, "scale": 3.0, **WINDOW, "candidates": candidates, "columns": 0}
    inputs.update(over)
    return {"class_type": "SD35WB_SLGLayerExplorer", "inputs": inputs}


def saved_latents(server, entry, node_id) -> torch.Tensor:
    (item,) = entry["outputs"][str(node_id)]["latents"]
    path = server.base / item.get("type", "output") / item.get("subfolder", "") / item["filename"]
    return load_file(str(path))["latent_tensor"]


def error_text(exc) -> str:
    return json.dumps(getattr(exc, "entry", None) or getattr(exc, "body", None) or str(exc))


def test_example_workflow_maps_then_explores():
    prompt = json.loads(WORKFLOW.read_text())
    types = {n["class_type"] for n in prompt.values()}
    assert {"SD35WB_SLGSensitivityMap", "SD35WB_SLGLayerExplorer", "SD35WB_SD35Loader"} <= types
    explorer = next(n for n in prompt.values() if n["class_type"] == "SD35WB_SLGLayerExplorer")["inputs"]
    smap = next(n for n in prompt.values() if n["class_type"] == "SD35WB_SLGSensitivityMap")["inputs"]
    assert smap["candidates"] == "each" and explorer["model"] == smap["model"] == ["1", 0]
    assert "7,8,9" in explorer["candidates"] and explorer["seed"] == smap["seed"]
    note = (REPO / "workflows" / "notes" / "slg_layer_explorer.md").read_text()
    assert "Large" in note and "map" in note.lower()


def test_example_workflow_renders_on_the_tiny_model(server, workflow_fixtures):
    prompt = tinyify(json.loads(WORKFLOW.read_text()), extra_rules=workflow_fixtures)
    entry = server.run(prompt, timeout=900)
    chart_id = next(k for k, n in prompt.items() if n["class_type"] == "SaveImage"
                    and n["inputs"]["images"][0] == next(i for i, m in prompt.items()
                                                         if m["class_type"] == "SD35WB_SLGSensitivityMap"))
    grid_id = next(k for k, n in prompt.items() if n["class_type"] == "SaveImage" and k != chart_id)
    (chart,) = server.images(entry, chart_id)
    (grid,) = server.images(entry, grid_id)
    chart, grid = Image.open(io.BytesIO(chart)), Image.open(io.BytesIO(grid))
    assert chart.width >= 4 * 10 and chart.height == 360
    assert grid.width == 2 * 128 and grid.height > 2 * 128  # baseline + 3 candidates, 2 x 2 with label bands
    assert len(set(grid.getdata())) > 100
    text_id = next(k for k, n in prompt.items() if n["class_type"] == "PreviewAny")
    report = json.loads(entry["outputs"][text_id]["text"][0])
    assert report["block_count"] == 4 and report["labels"] == ["0", "1", "2", "3"]
    assert len(report["relative_rms"]) == 4 and report["ranking"][0] == report["labels"][
        max(range(4), key=lambda i: report["relative_rms"][i])]


def test_explorer_equals_separate_runs_through_the_api(server):
    prompt = base_nodes()
    prompt["5"] = explorer_node()
    prompt["6"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 2], "filename_prefix": "latents/explorer"}}
    prompt["7"] = {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                        "latent_image": ["4", 0], **SAMPLING, "denoise": 1.0}}
    prompt["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "latents/baseline"}}
    for n, layers in enumerate(["1", "2", "0, 3"]):
        prompt[f"2{n}"] = {"class_type": "SD35WB_SLGSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], **SAMPLING,
            "denoise": 1.0, "preset": "custom", "layers": layers, "scale": 3.0, **WINDOW,
            "implementation": "separate pass"}}
        prompt[f"3{n}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"2{n}", 0],
                                                                  "filename_prefix": f"latents/separate{n}"}}
    prompt["40"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 1], "filename_prefix": "explorer_grid"}}
    entry = server.run(prompt, timeout=900)
    explored = saved_latents(server, entry, 6)
    assert explored.shape[0] == 4
    base = saved_latents(server, entry, 8)
    assert (explored[0] - base[0]).abs().max().item() <= TOL
    for n in range(3):
        ref = saved_latents(server, entry, f"3{n}")
        assert (explored[n + 1] - ref[0]).abs().max().item() <= TOL
        assert (ref - base).abs().max().item() > 1e-3, "SLG must really act, or equality proves nothing"


def test_sensitivity_map_through_the_api(server):
    prompt = base_nodes()
    prompt["5"] = {"class_type": "SD35WB_SLGSensitivityMap", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], **SAMPLING,
        **WINDOW, "probes": 2, "candidates": "each"}}
    prompt["6"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "slg_map"}}
    prompt["7"] = {"class_type": "PreviewAny", "inputs": {"source": ["5", 1]}}
    entry = server.run(prompt, timeout=900)
    report = json.loads(entry["outputs"]["7"]["text"][0])
    assert report["probe_steps"] == [2, 4] and len(report["per_probe"]) == 2  # active steps 2-4 of 6
    assert all(v > 0 for v in report["relative_rms"]) and all(c < 1 for c in report["cosine"])
    (png,) = server.images(entry, 6)
    assert Image.open(io.BytesIO(png)).height == 360


@pytest.mark.parametrize("node, change, message", [
    ("explorer", {"candidates": "1 | 7"}, "candidates: block 7 does not exist; this model has 4 joint blocks"),
    ("explorer", {"candidates": ""}, "candidates: the candidate list is empty"),
    ("map", {"candidates": "2 | 9"}, "candidates: block 9 does not exist"),
    ("explorer", {"model": "sd15"}, "model: this SD15 model has no MMDiT joint blocks"),
])
def test_bad_input_is_named_through_the_api(server, node, change, message):
    prompt = base_nodes()
    prompt["5"] = explorer_node()
    if node == "map":
        inp = {k: v for k, v in prompt["5"]["inputs"].items() if k not in ("vae", "scale", "columns")}
        prompt["5"] = {"class_type": "SD35WB_SLGSensitivityMap", "inputs": {**inp, "probes": 1}}
        prompt["6"] = {"class_type": "PreviewAny", "inputs": {"source": ["5", 1]}}
    else:
        prompt["6"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 1], "filename_prefix": "bad"}}
    if change.get("model") == "sd15":
        prompt["1"]["inputs"]["unet_name"] = "tiny-sd15.safetensors"
    else:
        prompt["5"]["inputs"].update(change)
    with pytest.raises((PromptFailed, PromptRejected)) as e:
        server.run(prompt)
    assert message in error_text(e.value)
