"""Each UI workflow, dropped onto the canvas as a user would, loads with no missing-node dialog, alert
or toast, offers download links (and a note's links) that name files the repos publish, and is
queued successfully, its bypassed stages left out (model names pointed at the tiny models first, as
a user picks their own)."""

import json
import re

import pytest
from browser.ui_ready import drop_workflow

from sd35wb import hub
from tools.comfy_server import REPO
from tools.tiny_remap import TINY_MODEL, TINY_VAE, family_of
from tools.workflow_format import PUBLISHED, model_repo, ui_to_api

UI = sorted((REPO / "workflows").glob("*.json"))

# Point model widgets at the tiny models, the way a user picks their own files in the combos.
RETARGET_JS = """
([model, vae]) => {
  for (const node of window.app.graph._nodes) {
    for (const w of node.widgets ?? []) {
      if (['unet_name', 'model_name'].includes(w.name)) w.value = model;
      if (w.name === 'vae_name') w.value = vae;
      if (['clip_l', 'clip_g', 't5xxl'].includes(w.name)) w.value = 'none';
      if (w.name === 'vae' && node.comfyClass === 'SD35WB_SD35Loader') w.value = 'taesd3';
      // Any other file the user must pick: the first one this install has.
      const values = w.options?.values;
      if (Array.isArray(values) && values.length && !values.includes(w.value)) w.value = values[0];
    }
  }
}
"""


# What the loaded graph offers: every node's download links (node.properties.models, read by the
# frontend's missing-models dialog) and the note's text, as the frontend holds them after the drop.
LINKS_JS = """
() => window.app.graph._nodes.map(n => ({id: n.id, type: n.type, mode: n.mode, models: n.properties?.models ?? [],
                                        note: n.type === 'MarkdownNote' ? String(n.widgets_values?.[0] ?? '') : null}))
"""
HF_URL = re.compile(r"https://huggingface\.co/([\w.-]+/[\w.-]+)(?:/(?:resolve|blob)/main/([^\s)`'\"<>]+))?")


def published_at(repo: str, path: str) -> str | None:
    """The file name ``repo`` publishes at ``path``: sd35wb/hub.py's table for the SD3.5 files (what
    fetch_missing fetches), tools/workflow_format.py's for the other public originals."""
    for f in hub.KNOWN_FILES.values():
        if repo in f.repos and f.repo_path == path:
            return f.name
    return next((f.name for f in PUBLISHED.values() if f.name not in hub.KNOWN_FILES and repo in f.repos
                 and f.repo_path == path), None)


def link_problems(name: str, graph: list[dict], prompt: dict) -> list[str]:
    """Every download link of the graph and every Hugging Face link in its note, against the tables."""
    repos = {r for f in PUBLISHED.values() for r in f.repos}
    want_repo = model_repo(prompt)
    bad = []
    for node in graph:
        for m in node["models"]:
            got = HF_URL.fullmatch(m["url"])
            if not got or not got.group(2):
                bad.append(f"node {node['id']}: {m['url']} is no Hugging Face file link")
            elif published_at(got.group(1), got.group(2)) != m["name"]:
                bad.append(f"node {node['id']}: {got.group(1)} publishes no {m['name']} at {got.group(2)}")
            elif want_repo and got.group(1) != want_repo and want_repo in PUBLISHED[m["name"]].repos:
                bad.append(f"node {node['id']}: {m['name']} links {got.group(1)}, not {want_repo} (the model's repo)")
    for note in (n["note"] for n in graph if n["note"]):
        for repo, path in HF_URL.findall(note):
            repo = repo.rstrip(".")
            if path and published_at(repo, path.rstrip(".,")) is None:
                bad.append(f"note: {repo} publishes nothing at {path}")
            elif not path and repo not in repos:
                bad.append(f"note: {repo} is no repo the templates' files come from")
    return [f"{name}: {b}" for b in bad]


@pytest.fixture(scope="module")
def placeholder_files(user_models):
    """Workflows with core checkpoint / text-encoder loaders need some file there to pick; queueing
    only validates names (the test stops the run), so a tiny placeholder file is enough."""
    import torch
    from safetensors.torch import save_file

    for folder in ("text_encoders", "checkpoints"):
        path = user_models / folder / f"placeholder_{folder}.safetensors"
        if not path.exists():
            save_file({"placeholder": torch.ones(4)}, str(path))


@pytest.mark.parametrize("ui_path", UI, ids=lambda p: p.stem)
def test_dropped_workflow_loads_and_queues(page, server, ui_path, placeholder_files):
    text = ui_path.read_text()
    wf = json.loads(text)
    drop_workflow(page, text, ui_path.name)
    expected = len(wf["nodes"])
    page.wait_for_function("(n) => window.app.graph._nodes.length === n", arg=expected, timeout=20_000)
    assert not page.locator("text=/missing node/i").count(), "the missing-nodes dialog appeared"
    types = page.evaluate("() => window.app.graph._nodes.map(n => n.type)")
    assert sorted(types) == sorted(n["type"] for n in wf["nodes"])
    page.wait_for_timeout(300)  # a toast from the load renders
    assert not page.watch.problems(), page.watch.report()  # no alert, toast or error from loading it
    graph = page.evaluate(LINKS_JS)
    prompt = ui_to_api(wf, server.get_json("/object_info"))
    assert not link_problems(ui_path.stem, graph, prompt), "\n".join(link_problems(ui_path.stem, graph, prompt))
    assert any(n["models"] for n in graph) == any(v in PUBLISHED for n in prompt.values() for v in n["inputs"].values()
                                                  if isinstance(v, str))
    fam = family_of(prompt)
    page.evaluate(RETARGET_JS, [TINY_MODEL[fam], TINY_VAE[fam]])
    # Only loading and queueing are under test: the models were pointed at placeholder files and no
    # text encoders, so a run the host starts before the interrupt below fails on exactly those.
    page.watch.expect(r"^error dialog: .*placeholder_(checkpoints|text_encoders)\.safetensors")
    page.watch.expect(r"^error dialog: CLIPTextEncode\s.*clip input is invalid: None")
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST", timeout=30_000) as resp:
        page.evaluate("() => window.app.queuePrompt(0)")
    body = resp.value.json()
    server.request("/queue", {"clear": True})
    server.request("/interrupt", {})
    assert resp.value.status == 200, body
    assert body.get("prompt_id") and not body.get("node_errors"), body
    # The first Queue leaves a template's bypassed stage out (the explorer until the user picks candidates).
    queued = set(resp.value.request.post_data_json["prompt"])
    assert queued == {str(n["id"]) for n in wf["nodes"] if n["type"] != "MarkdownNote" and n["mode"] == 0}, queued


def test_a_missing_model_tells_the_user_every_folder_searched(page, server, user_models):
    """The SD3.5 Large example as shipped, queued by a user who has not downloaded the model: the
    run fails and the dialog the user reads names checkpoints *and* diffusion_models, with paths."""
    path = REPO / "workflows" / "sd35_large.json"
    text = path.read_text()
    drop_workflow(page, text, path.name)
    page.wait_for_function("(n) => window.app.graph._nodes.length === n", arg=len(json.loads(text)["nodes"]), timeout=20_000)
    page.watch.expect(r"^error (dialog|toast): .*sd3\.5_large\.safetensors is not in")  # provoked: the run must fail
    page.evaluate("() => window.app.queuePrompt(0)")
    page.wait_for_function("() => document.querySelector('.comfy-error-report') || "
                           "document.body.innerText.includes('SD3.5 Loader failed')", timeout=120_000)
    report = page.locator(".comfy-error-report")
    if report.count():  # frontend 1.32 (ComfyUI 0.3.75): the error-report dialog holds the message
        shown = report.inner_text()
    else:
        # Newer frontends (1.49, 1.58) flag the node ("SD3.5 Loader failed") and keep the message of the
        # execution error they received for their error panel: read that same message from the host.
        errors = [m[1]["exception_message"] for e in server.get_json("/history").values()
                  for m in e.get("status", {}).get("messages", []) if m[0] == "execution_error"]
        shown = next((m for m in reversed(errors) if "sd3.5_large.safetensors" in m), "\n".join(errors))
    assert "sd3.5_large.safetensors is not in models/checkpoints (" in shown, shown
    assert "models/diffusion_models (" in shown and str(user_models / "diffusion_models") in shown, shown
