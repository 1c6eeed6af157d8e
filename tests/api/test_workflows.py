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
        ui = json.loads((WF / f"{name}.json").read_text())
        shown = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] in ("MarkdownNote", "Note")]
        assert shown == [(WF / "notes" / f"{name}.md").read_text()], \
            f"{name}: the note in the UI file is not notes/{name}.md (python -m tools.make_workflows)"
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


def _file_names(prompt: dict) -> set[str]:
    return {v for n in prompt.values() for v in n["inputs"].values() if isinstance(v, str) and v.endswith(MODEL_EXTS)}


def test_every_file_a_template_names_is_published_or_documented():
    """A user can find every file a template asks for: the hub client fetches it, or the README,
    docs/ or the template's own note names it (a published original or an explicit placeholder)."""
    from sd35wb import hub

    docs = (REPO / "README.md").read_text() + "".join(p.read_text() for p in (REPO / "docs").glob("*.md"))
    for api in API:
        note = (WF / "notes" / f"{api.stem}.md").read_text()
        for path in _file_names(json.loads(api.read_text())):
            name = path.rsplit("/", 1)[-1]  # detect_from and linked runs give folder/file
            assert name != "sd3.5_vae.safetensors", f"{api.name}: Stability publishes no sd3.5_vae.safetensors"
            assert name in hub.KNOWN_FILES or name in docs or name in note or path in note, \
                f"{api.name}: {name} is neither a hub file (sd35wb/hub.py) nor named in the docs or its note"


def test_nodes_loading_public_files_carry_the_frontends_download_links():
    """properties.models ({name, url, directory}) on each node that names a public file, so the
    frontend's missing-models dialog can offer the download."""
    from tools.workflow_format import PUBLIC_MODELS

    for ui_path in UI:
        for node in json.loads(ui_path.read_text())["nodes"]:
            named = {v for v in node.get("widgets_values") or [] if isinstance(v, str) and v in PUBLIC_MODELS}
            models = {m["name"]: m for m in node.get("properties", {}).get("models", [])}
            assert set(models) == named, f"{ui_path.name}: node {node['id']} {node['type']}: {sorted(named)} vs {sorted(models)}"
            for m in models.values():
                assert m["url"].startswith("https://huggingface.co/") and "/resolve/main/" in m["url"] and \
                    m["url"].endswith(m["name"]) and m["directory"] in ("checkpoints", "text_encoders"), m


def test_sd35_large_samples_with_the_loaders_settings():
    """Swapping in Turbo must give Turbo's steps/cfg: the sampler takes them from the loader's settings."""
    prompt = json.loads((WF / "api" / "sd35_large.json").read_text())
    samplers = [n for n in prompt.values() if "latent_image" in n["inputs"]]
    assert samplers and all(n["class_type"] == "SD35WB_SLGSampler" and n["inputs"].get("sampling_from_settings")
                            and prompt[str(n["inputs"]["settings"][0])]["class_type"] == "SD35WB_SD35Loader"
                            for n in samplers), samplers


@pytest.mark.parametrize("name", [p.stem for p in API])
def test_node_ids_a_note_names_are_those_nodes(name):
    """A note's "`KSampler` (node 6)" is node 6 of that class in the API file and in the UI file."""
    import re

    note = (WF / "notes" / f"{name}.md").read_text()
    refs = re.findall(r"`(\w+)`\s*\(node (\d+)\)", note)
    api = json.loads((WF / "api" / f"{name}.json").read_text())
    ui = {str(n["id"]): n["type"] for n in json.loads((WF / f"{name}.json").read_text())["nodes"]}
    if name == "simpletuner_sweep_cli":
        assert len(refs) >= 3, "the CLI note names the loader, prompt and sampler nodes"
    for cls, nid in refs:
        assert api[nid]["class_type"] == cls and ui[nid] == cls, f"{name}: note says {cls} is node {nid}"
