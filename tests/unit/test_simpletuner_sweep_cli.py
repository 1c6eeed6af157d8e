"""Unit tier: the sweep CLI's workflow handling (finding the loader, model lists, labels)."""

from __future__ import annotations

import json

import pytest
from simpletuner_helpers import load

from sd35wb import sweep


def test_finds_the_loader_in_the_shipped_cli_workflow():
    prompt = load("simpletuner_sweep_cli.json")
    assert sweep.find_loader(prompt) == ("1", "unet_name")
    assert sweep.find_loader(prompt, "1") == ("1", "unet_name")


def test_our_sd35_loader_and_ambiguity():
    prompt = {"4": {"class_type": "SD35WB_SD35Loader", "inputs": {"model_name": "sd3.5_medium.safetensors"}},
              "5": {"class_type": "KSampler", "inputs": {"model": ["4", 0]}}}
    assert sweep.find_loader(prompt) == ("4", "model_name")
    prompt["6"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "x.safetensors", "weight_dtype": "default"}}
    with pytest.raises(ValueError, match=r"several loaders \(4, 6\); pick one with --loader-node"):
        sweep.find_loader(prompt)
    assert sweep.find_loader(prompt, "6") == ("6", "unet_name")
    with pytest.raises(ValueError, match="--loader-node: node 5 \\(KSampler\\) has no model-name input"):
        sweep.find_loader(prompt, "5")
    with pytest.raises(ValueError, match="--loader-node: no node '9'"):
        sweep.find_loader(prompt, "9")
    with pytest.raises(ValueError, match="no diffusion-model loader"):
        sweep.find_loader({"5": prompt["5"]})


def test_workflow_formats(tmp_path):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(ValueError, match="is a UI workflow; save it with 'Export \\(API\\)'"):
        sweep.load_workflow(ui)
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"prompt": load("simpletuner_sweep_cli.json")}))
    assert "1" in sweep.load_workflow(wrapped)


def test_model_lists_and_labels():
    text = "run/checkpoint-1600.safetensors\n\n# a comment\nrun/checkpoint-800.safetensors, run/checkpoint-800.safetensors"
    assert sweep.parse_model_list(text) == ["run/checkpoint-1600.safetensors", "run/checkpoint-800.safetensors"]
    assert sweep.model_label("run\\checkpoint-800-ema.safetensors") == "checkpoint-800-ema"
    assert sweep.model_label("plain") == "plain"


def test_labels_keep_the_run_only_when_needed():
    assert sweep.labels_for(["a/checkpoint-800.safetensors", "a/checkpoint-1600.safetensors"]) == \
        ["checkpoint-800", "checkpoint-1600"]
    assert sweep.labels_for(["a/checkpoint-800.safetensors", "b/checkpoint-800.safetensors"]) == \
        ["a/checkpoint-800", "b/checkpoint-800"]
