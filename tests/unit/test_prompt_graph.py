"""Unit tier: the file a node's model came from, walked back through an API-format prompt."""

from __future__ import annotations

import pytest

from sd35wb.prompt_graph import loaded_file
from sd35wb.sweep.workflow import find_base_model


def graph(**loader) -> dict:
    """checkpoint -> LoRA -> sampling patch -> the node that asks (id 9)."""
    return {
        "1": loader or {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sub/mine.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": "s.safetensors"}},
        "3": {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["2", 0], "sampling": "eps", "zsnr": False}},
        "9": {"class_type": "SD35WB_ZTSNRModelPatch", "inputs": {"model": ["3", 0], "prediction": "auto"}},
    }


def test_the_walk_passes_loras_and_patches_to_the_loader_and_its_folder():
    src = loaded_file(graph(), "9")
    assert (src.node_id, src.class_type, src.name, src.folders) == ("1", "CheckpointLoaderSimple",
                                                                    "sub/mine.safetensors", ("checkpoints",))
    unet = loaded_file(graph(class_type="UNETLoader", inputs={"unet_name": "u.safetensors"}), "9")
    assert (unet.name, unet.folders) == ("u.safetensors", ("diffusion_models",))
    peer = loaded_file(graph(class_type="SomePackLoader", inputs={"ckpt_name": "p.safetensors"}), "9")
    assert (peer.class_type, peer.folders) == ("SomePackLoader", ("checkpoints",)), "a peer loader by its input"
    ours = loaded_file(graph(class_type="SD35WB_SD35Loader", inputs={"model_name": "m.safetensors"}), "9")
    assert ours.folders == ("checkpoints", "diffusion_models")


@pytest.mark.parametrize("edit, message", [
    (lambda g: g["1"]["inputs"].update(ckpt_name=["7", 0]),
     "node 1 (CheckpointLoaderSimple): its 'ckpt_name' comes from another node"),
    (lambda g: g.update({"1": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["5", 0], "ratio": 1.0}}}),
     "node 1 (ModelMergeSimple) makes the model but is not a loader this reads"),
    (lambda g: g["3"]["inputs"].update(model=["44", 0]), "node 44 (linked into 'model') is not in the prompt"),
    (lambda g: g["9"]["inputs"].update(model="x"), "node 9: its 'model' input is not a link"),
    (lambda g: g["1"].update(class_type="ModelSamplingDiscrete", inputs={"model": ["3", 0]}), "more than 64 nodes"),
])
def test_where_the_walk_stops_is_said(edit, message):
    g = graph()
    edit(g)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        loaded_file(g, "9")


def test_the_sweeps_base_model_is_found_through_patches_too():
    g = graph(class_type="UNETLoader", inputs={"unet_name": "base.safetensors"})
    g["2"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["3", 0], "lora_name": "x.safetensors"}}
    g["3"]["inputs"]["model"] = ["1", 0]  # UNET -> sampling patch -> LoRA
    assert find_base_model(g, "2") == "base.safetensors"
    assert find_base_model(graph(), "2") is None, "a checkpoint is not a diffusion_models file the route can check"
