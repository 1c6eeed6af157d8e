"""API tier: the LCM example workflows render on the tiny Vega (SDXL family) through /prompt."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from lcm_helpers import tiny_sdxl, workflow_rule, write_loras
from PIL import Image

from tools.comfy_server import PromptRejected

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows" / "api"


@pytest.fixture(scope="module")
def rule(tiny_models, user_models):
    return workflow_rule(write_loras(tiny_models, user_models))


def _load(name):
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


@pytest.mark.parametrize("name", ["lcm_sdxl_4step", "lcm_style_lora"])
def test_example_workflow_renders_on_tiny_vega(server, rule, name):
    wf = _load(name)
    prompt = tiny_sdxl(wf, rule)
    steps = [n["inputs"]["steps"] for n in prompt.values() if "steps" in n["inputs"]]
    assert steps == [4], "the example runs as written: 4 LCM steps"
    entry = server.run(prompt, timeout=600)
    images = server.images(entry)
    assert len(images) == 1
    img = Image.open(io.BytesIO(images[0]))
    assert img.size == (128, 128)
    assert len(set(img.getdata())) > 100
    assert "lora key not loaded" not in server.log()


def test_steps_above_8_are_rejected_before_running(server, rule):
    prompt = tiny_sdxl(_load("lcm_sdxl_4step"), rule)
    next(n for n in prompt.values() if n["class_type"] == "SD35WB_LCMLoraSampler")["inputs"]["steps"] = 9
    with pytest.raises(PromptRejected) as e:
        server.queue(prompt)
    assert e.value.status == 400
    body = json.dumps(e.value.body)
    assert "steps" in body and "8" in body
