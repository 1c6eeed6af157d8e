"""API tier: the LCM example workflows render on the tiny Vega (SDXL family) through /prompt.

Remapped exactly like the generic workflow test (tools.tiny_remap + the LCM rule in
``workflow_fixtures``), so the server's execution cache shares the renders between the two."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tools.comfy_server import PromptRejected
from tools.tiny_remap import tinyify

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows" / "api"


def _tiny(name, rules):
    return tinyify(json.loads((WORKFLOWS / f"{name}.json").read_text()), extra_rules=rules)


@pytest.mark.parametrize("name, lcm_node", [("lcm_sdxl_4step", "SD35WB_LCMLoraSampler"),
                                             ("lcm_style_lora", "SD35WB_LCMLoraPatch")])
def test_example_workflow_renders_on_tiny_vega(server, workflow_fixtures, name, lcm_node):
    prompt = _tiny(name, workflow_fixtures)
    assert {n["class_type"] for n in prompt.values()} >= {"UNETLoader", lcm_node, "VAEDecode", "SaveImage"}
    assert next(n for n in prompt.values() if n["class_type"] == "UNETLoader")["inputs"]["unet_name"] == "tiny-vega.safetensors"
    assert [n["inputs"]["steps"] for n in prompt.values() if "steps" in n["inputs"]] == [4], "4 LCM steps, as written"
    images = server.images(server.run(prompt, timeout=900))
    assert len(images) == 1
    img = Image.open(io.BytesIO(images[0]))
    assert img.size == (128, 128)
    assert len(set(img.getdata())) > 100
    assert "lora key not loaded" not in server.log()


def test_steps_above_8_are_rejected_before_running(server, workflow_fixtures):
    prompt = _tiny("lcm_sdxl_4step", workflow_fixtures)
    next(n for n in prompt.values() if n["class_type"] == "SD35WB_LCMLoraSampler")["inputs"]["steps"] = 9
    with pytest.raises(PromptRejected) as e:
        server.queue(prompt)
    assert e.value.status == 400
    body = json.dumps(e.value.body)
    assert "steps" in body and "8" in body
