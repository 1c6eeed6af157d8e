"""API tier: the sync route (training roots only), the link + sweep graph workflow and the sweep CLI,
against a real ComfyUI server with a SimpleTuner run saved by diffusers under the training root."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import simpletuner_helpers as sth
from PIL import Image

from tools import simpletuner_fixtures as stf
from tools.comfy_server import PromptFailed

REPO = Path(__file__).resolve().parents[2]
PX = 64
ROUTE = "/sd35wb/simpletuner/sync"


@pytest.fixture(scope="module")
def api_run(training_root):
    out = training_root / "api-run"
    if not out.exists():
        stf.diffusers_checkpoint(out, 100)
        stf.diffusers_checkpoint(out, 250)
        stf.diffusers_checkpoint(out, 1000)
        stf.fake_checkpoint(out, 1250, markers=False)  # still being saved
    return out


def _post(server, body, raw: bytes | None = None):
    if raw is not None:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(server.url + ROUTE, data=raw, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
    status, data = server.request(ROUTE, body)
    return status, json.loads(data)


def test_sync_route_refuses_paths_outside_the_training_roots(server, training_root, tmp_path):
    outside = tmp_path / "outside-run"
    stf.fake_checkpoint(outside, 10)
    escape = training_root / "escape-link"
    if not escape.is_symlink():
        os.symlink(outside, escape)
    models_before = {k: sorted(v) for k, v in _unet_and_lora_lists(server).items()}
    for body, why in [
        ({"output_dir": "../outside-run"}, "'..'"),
        ({"output_dir": f"{training_root}/../x"}, "'..'"),
        ({"output_dir": str(outside)}, "outside the training roots"),
        ({"output_dir": "/etc"}, "outside the training roots"),
        ({"output_dir": "escape-link"}, "symlink escape"),
        ({"output_dir": str(escape)}, "outside the training roots"),
    ]:
        status, data = _post(server, body)
        assert status == 403, (body, data)
        assert why in data["error"], (body, data)
    for body, why in [({"run": "x"}, "output_dir"), ({"output_dir": 5}, "output_dir"),
                      ({"output_dir": "api-run", "run": "../up"}, "run:"),
                      ({"output_dir": "api-run", "include": "full,bogus"}, "include:")]:
        status, data = _post(server, body)
        assert status == 400 and why in data["error"], (body, data)
    status, data = _post(server, None, raw=b"not json")
    assert status == 400 and "JSON" in data["error"]
    assert {k: sorted(v) for k, v in _unet_and_lora_lists(server).items()} == models_before


def _unet_and_lora_lists(server) -> dict:
    info = server.get_json("/object_info/UNETLoader")["UNETLoader"]["input"]["required"]["unet_name"]
    lora = server.get_json("/object_info/LoraLoaderModelOnly")["LoraLoaderModelOnly"]["input"]["required"]["lora_name"]
    return {"unet": info[0], "lora": lora[0]}


def test_sync_route_links_a_run_and_the_host_lists_it(server, api_run):
    status, data = _post(server, {"output_dir": "api-run", "run": "api-run"})
    assert status == 200, data
    names = [f"api-run/checkpoint-{s}.safetensors" for s in (100, 250, 1000)]
    assert data["exposed"]["diffusion_models"] == names
    assert [n for n, _ in data["linked"]] == names and data["bytes_copied"] == 0
    assert any("checkpoint-1250" in p and "in progress" in why for p, why in data["skipped"])
    assert set(names) <= set(_unet_and_lora_lists(server)["unet"])
    status, again = _post(server, {"output_dir": str(api_run), "run": "api-run"})  # absolute path under the root
    assert status == 200 and not again["linked"] and again["unchanged"] == names


def test_graph_workflow_links_and_sweeps(server, api_run):
    prompt = sth.tiny(sth.load("simpletuner_sweep.json"), px=PX, prefix="st_graph")
    prompt["1"]["inputs"].update(output_dir=str(api_run), run="api-graph")
    prompt["7"]["inputs"]["seed_count"] = 1
    entry = server.run(prompt)
    pngs = server.images(entry, node_id="8")
    assert len(pngs) == 1, "one grid page"
    page = np.asarray(Image.open(io.BytesIO(pngs[0])).convert("RGB"))
    singles = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in server.images(entry, node_id="9")]
    assert len(singles) == 3
    head_h, label_w = page.shape[0] - 3 * PX, page.shape[1] - PX
    tiles = [page[head_h + r * PX:head_h + (r + 1) * PX, label_w:] for r in range(3)]  # one row per checkpoint
    assert all(np.abs(t.astype(int) - s.astype(int)).max() <= 1 for t, s in zip(tiles, singles))
    assert all(not np.array_equal(tiles[i], tiles[j]) for i in range(3) for j in range(i + 1, 3))


def test_link_node_in_a_prompt_obeys_the_training_roots(server, tmp_path):
    outside = tmp_path / "outside-run"
    stf.fake_checkpoint(outside, 10)
    prompt = sth.tiny(sth.load("simpletuner_sweep.json"), px=PX, prefix="st_outside")
    prompt["1"]["inputs"].update(output_dir=str(outside), run="outside")
    with pytest.raises(PromptFailed) as e:
        server.run(prompt)
    assert "outside the training roots" in e.value.error["exception_message"]
    assert "outside/checkpoint-10.safetensors" not in _unet_and_lora_lists(server)["unet"]
