"""Every example workflow: valid against the live /object_info, the UI and API twins describe the
same graph, and every API workflow runs to completion on the tiny models (names remapped)."""

import io
import json

import pytest
from PIL import Image

from tools.comfy_server import REPO
from tools.tiny_remap import tinyify
from tools.workflow_format import BYPASS, fill_defaults, first_queue, input_specs, same_graph, ui_to_api

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


def test_readme_gallery_shows_every_templates_output_small_and_labelled():
    """python -m tools.make_template_gallery wrote each template's render; README shows it as a random-weight one."""
    readme = (REPO / "README.md").read_text()
    gallery = readme[readme.index("## Gallery"):readme.index("\n## ", readme.index("## Gallery") + 3)]
    assert "random-weight" in gallery
    for api in API:
        pic = REPO / "docs" / "img" / f"template_{api.stem}.png"
        assert pic.exists() and pic.stat().st_size < 100_000, f"{pic.name}: missing or 100 KB or more"
        assert f"(docs/img/{pic.name})" in gallery, f"README's gallery does not show {pic.name}"


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
    modes = {nid: n.get("_meta", {}).get("mode", 0) for nid, n in twin.items()}
    assert {nid: n.get("_meta", {}).get("mode", 0) for nid, n in prompt.items()} == modes, \
        f"{ui_path.name}: the UI file's bypassed nodes are not its API twin's (python -m tools.make_workflows)"


@pytest.mark.parametrize("api_path", API, ids=lambda p: p.stem)
def test_api_workflow_runs_on_tiny_models(server, api_path, workflow_fixtures):
    """Every node, the bypassed stages too: a user switches them on after the first Queue."""
    prompt = tinyify(json.loads(api_path.read_text()), extra_rules=workflow_fixtures)
    entry = server.run(prompt, timeout=900)
    images = server.images(entry)
    assert images, f"{api_path.name} produced no image"
    for data in images:
        im = Image.open(io.BytesIO(data))
        assert im.size[0] >= 64 and im.size[1] >= 64
    for nid, node in prompt.items():
        if node["class_type"] in ("SaveImage", "PreviewImage"):
            assert server.images(entry, nid), f"{api_path.name}: node {nid} {node['class_type']} saved nothing"


STAGED = [p for p in API if any(n.get("_meta", {}).get("mode") == BYPASS for n in json.loads(p.read_text()).values())]


def test_the_explorer_template_is_staged():
    assert [p.stem for p in STAGED] == ["slg_layer_explorer"]
    prompt = json.loads(STAGED[0].read_text())
    off = {n["class_type"] for n in prompt.values() if n.get("_meta", {}).get("mode") == BYPASS}
    assert off == {"SD35WB_SLGLayerExplorer", "SaveImage"}, off


@pytest.mark.parametrize("api_path", STAGED, ids=lambda p: p.stem)
def test_first_queue_of_a_staged_template_runs_its_first_stage_only(server, api_path, workflow_fixtures):
    """What the frontend queues from the template as shipped (bypassed nodes left out) validates and runs:
    the sensitivity map and its numbers, and no explorer render."""
    full = tinyify(json.loads(api_path.read_text()), extra_rules=workflow_fixtures)
    prompt = first_queue(full)
    assert set(full) - set(prompt) and not any(n["class_type"] == "SD35WB_SLGLayerExplorer" for n in prompt.values())
    entry = server.run(prompt, timeout=900)
    saved = [nid for nid, n in prompt.items() if n["class_type"] == "SaveImage"]
    assert saved and all(server.images(entry, nid) for nid in saved)
    assert set(entry["outputs"]) <= set(prompt)


def _file_names(prompt: dict) -> set[str]:
    return {v for n in prompt.values() for v in n["inputs"].values() if isinstance(v, str) and v.endswith(MODEL_EXTS)}


def test_every_template_note_names_the_files_it_wants_and_links_their_repo():
    """A user reads in the template's own note every file it asks for, and for each published one the
    page of the repo its download link points at (a gated repo's licence is accepted there)."""
    from tools.workflow_format import PUBLISHED, download_links

    for api in API:
        note = (WF / "notes" / f"{api.stem}.md").read_text()
        prompt = json.loads(api.read_text())
        for path in _file_names(prompt):
            name = path.rsplit("/", 1)[-1]  # detect_from and linked runs give folder/file
            assert name != "sd3.5_vae.safetensors", f"{api.name}: Stability publishes no sd3.5_vae.safetensors"
            assert name in note, f"{api.name}: its note does not name {name}"
            if name in PUBLISHED:
                repo = download_links(prompt)[name]["url"].split("/resolve/")[0]
                assert repo in note, f"{api.name}: its note does not link {repo}, where {name} downloads from"


def test_nodes_loading_public_files_carry_the_frontends_download_links():
    """properties.models ({name, url, directory}) on each node that names a public file, so the
    frontend's missing-models dialog can offer the download; each from the repo of the model the
    template loads (Large's text encoders from the Large repo: its licence is the one the user accepted)."""
    from sd35wb import hub
    from tools.workflow_format import PUBLISHED

    for ui_path in UI:
        nodes = json.loads(ui_path.read_text())["nodes"]
        for node in nodes:
            named = {v for v in node.get("widgets_values") or [] if isinstance(v, str) and v in PUBLISHED}
            models = {m["name"]: m for m in node.get("properties", {}).get("models", [])}
            assert set(models) == named, f"{ui_path.name}: node {node['id']} {node['type']}: {sorted(named)} vs {sorted(models)}"
            for m in models.values():
                assert m["url"].startswith("https://huggingface.co/") and "/resolve/main/" in m["url"] and \
                    m["url"].endswith(m["name"]) and m["directory"] in ("checkpoints", "text_encoders", "vae"), m
        urls = [m["url"] for n in nodes for m in n.get("properties", {}).get("models", [])]
        if "large" in ui_path.stem or ui_path.stem == "slg_layer_explorer":  # both load sd3.5_large
            assert urls and all(u.startswith(f"https://huggingface.co/{hub.REPOS['large']}/") for u in urls), urls
        elif ui_path.stem.startswith(("sd35_medium", "simpletuner")):
            assert urls and all(u.startswith(f"https://huggingface.co/{hub.REPOS['medium']}/") for u in urls), urls


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
