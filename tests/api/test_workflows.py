"""Every example workflow: valid against the live /object_info, the UI and API twins describe the
same graph, and every API workflow runs to completion on the tiny models (names remapped)."""

import io
import json

import pytest
from PIL import Image

from tools.comfy_server import REPO
from tools.tiny_remap import tinyify
from tools.workflow_format import fill_defaults, input_specs, same_graph, ui_to_api

WF = REPO / "workflows"
API = sorted((WF / "api").glob("*.json"))
UI = sorted(WF.glob("*.json"))
MODEL_EXTS = (".safetensors", ".sft", ".gguf")


def test_every_api_workflow_has_a_ui_twin_note_and_thumbnail():
    assert API, "no example workflows shipped"
    for api in API:
        name = api.stem
        assert (WF / f"{name}.json").exists(), f"{name}: no UI workflow (python -m tools.make_workflows)"
        assert (WF / "notes" / f"{name}.md").exists(), f"{name}: no note"
        thumb = WF / f"{name}.jpg"
        assert thumb.exists(), f"{name}: no thumbnail"
        assert Image.open(thumb).size[0] >= 400
    assert {p.stem for p in UI} == {p.stem for p in API}


@pytest.mark.parametrize("ui_path", UI, ids=lambda p: p.stem)
def test_ui_workflow_is_valid_and_matches_its_api_twin(server, ui_path):
    object_info = server.get_json("/object_info")
    ui = json.loads(ui_path.read_text())
    notes = [n for n in ui["nodes"] if n["type"] in ("MarkdownNote", "Note")]
    assert notes and len(notes[0]["widgets_values"][0]) > 200, "each workflow explains its settings in a note"
    for node in ui["nodes"]:
        if node in notes:
            continue
        assert node["type"] in object_info, f"{ui_path.name}: node type {node['type']} unknown to the host"
    prompt = ui_to_api(ui, object_info)
    for nid, node in prompt.items():
        for name, typ, _ in input_specs(object_info[node["class_type"]]):
            val = node["inputs"].get(name)
            if typ != "COMBO" or val is None or isinstance(val, list):
                continue
            choices = object_info[node["class_type"]]["input"].get("required", {}).get(name) or \
                object_info[node["class_type"]]["input"]["optional"][name]
            options = choices[0] if isinstance(choices[0], list) else choices[1].get("options", [])
            assert val in options or str(val).endswith(MODEL_EXTS) or val in ("none",), \
                f"{ui_path.name}: node {nid} {node['class_type']}.{name}={val!r} not among {options[:8]}"
    twin = json.loads((WF / "api" / ui_path.name).read_text())
    diff = same_graph(fill_defaults(prompt, object_info), fill_defaults(twin, object_info))
    assert not diff, "\n".join(diff)


@pytest.mark.parametrize("api_path", API, ids=lambda p: p.stem)
def test_api_workflow_runs_on_tiny_models(server, api_path, workflow_fixtures):
    prompt = tinyify(json.loads(api_path.read_text()), extra_rules=workflow_fixtures)
    entry = server.run(prompt, timeout=900)
    images = server.images(entry)
    assert images, f"{api_path.name} produced no image"
    for data in images:
        im = Image.open(io.BytesIO(data))
        assert im.size[0] >= 64 and im.size[1] >= 64
