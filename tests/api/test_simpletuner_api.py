"""API tier: the sync route (training roots only), the link + sweep graph workflow and the sweep CLI,
against a real ComfyUI server with a SimpleTuner run saved by diffusers under the training root."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import simpletuner_helpers as sth
from PIL import Image

from sd35wb import grid
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
    entry = server.run(prompt)
    pngs = server.images(entry, node_id="8")
    assert len(pngs) == 1
    strip = Image.open(io.BytesIO(pngs[0]))
    band = grid.label_height(PX)
    assert strip.size == (3 * PX, PX + band)
    tiles = [np.asarray(strip)[band:, i * PX:(i + 1) * PX] for i in range(3)]
    assert all(not np.array_equal(tiles[i], tiles[j]) for i in range(3) for j in range(i + 1, 3))
    assert len(server.images(entry, node_id="9")) == 3


def test_link_node_in_a_prompt_obeys_the_training_roots(server, tmp_path):
    outside = tmp_path / "outside-run"
    stf.fake_checkpoint(outside, 10)
    prompt = sth.tiny(sth.load("simpletuner_sweep.json"), px=PX, prefix="st_outside")
    prompt["1"]["inputs"].update(output_dir=str(outside), run="outside")
    with pytest.raises(PromptFailed) as e:
        server.run(prompt)
    assert "outside the training roots" in e.value.error["exception_message"]
    assert "outside/checkpoint-10.safetensors" not in _unet_and_lora_lists(server)["unet"]


def _sweep_cli(*args):
    # Keep the caller's PYTHONPATH: scripts/test.sh layers the test tools (websocket-client) there.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "sd35wb.sweep", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": path})


def test_sweep_cli_spreads_prompts_and_writes_the_strip(server, api_run, tmp_path):
    status, _ = _post(server, {"output_dir": "api-run", "run": "api-run"})
    assert status == 200
    wf = tmp_path / "cli.json"
    wf.write_text(json.dumps(sth.tiny(sth.load("simpletuner_sweep_cli.json"), px=PX, prefix="st_cli")))
    out = tmp_path / "sweep" / "strip.png"
    r = _sweep_cli("--workflow", wf, "--run", "api-run", "--server", server.url, "--server", server.url + "/",
                   "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sweep: 3 checkpoints over 2 server(s): checkpoint-100, checkpoint-250, checkpoint-1000" in r.stdout
    assert "strip: " in r.stdout and "(3 tiles: checkpoint-100, checkpoint-250, checkpoint-1000)" in r.stdout
    assert "  checkpoint-1000: 2/2 (" in r.stdout, "step progress followed over the websocket"
    queued = [line.split()[1:4:2] for line in r.stdout.splitlines() if line.startswith("queued")]
    assert [q[1] for q in queued] == [server.url, server.url, server.url], "round robin over both --server URLs"
    strip = Image.open(out)
    band = grid.label_height(PX)
    assert strip.size == (3 * PX, PX + band)
    singles = [out.parent / f"strip-checkpoint-{s}.png" for s in (100, 250, 1000)]
    assert all(p.exists() for p in singles)
    arrs = [np.asarray(Image.open(p).convert("RGB")) for p in singles]
    assert all(not np.array_equal(arrs[i], arrs[j]) for i in range(3) for j in range(i + 1, 3))
    assert np.array_equal(np.asarray(strip)[band:, :PX], arrs[0]), "tile 1 is checkpoint-100's render"


def test_sweep_cli_reports_failed_checkpoints_and_keeps_the_rest(server, api_run, tmp_path):
    _post(server, {"output_dir": "api-run", "run": "api-run"})
    wf = tmp_path / "cli.json"
    wf.write_text(json.dumps(sth.tiny(sth.load("simpletuner_sweep_cli.json"), px=PX, prefix="st_cli_fail")))
    # A run whose checkpoint is a valid safetensors file but no model: it fails while executing.
    stf.fake_checkpoint(api_run.parent / "api-broken", 5)
    status, _ = _post(server, {"output_dir": "api-broken", "run": "api-broken"})
    assert status == 200
    out = tmp_path / "strip.png"
    r = _sweep_cli("--workflow", wf, "--models", "api-run/checkpoint-250.safetensors,api-run/checkpoint-9.safetensors,"
                   "api-broken/checkpoint-5.safetensors", "--server", server.url, "--out", out)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "failed: checkpoint-9: rejected (HTTP 400)" in r.stdout
    assert "failed: checkpoint-5: RuntimeError: ERROR: Could not detect model type" in r.stdout
    assert "(1 tiles: checkpoint-250)" in r.stdout
    assert (tmp_path / "strip-checkpoint-250.png").exists()
    assert Image.open(out).size == (PX, PX + grid.label_height(PX))
    bad = _sweep_cli("--workflow", wf, "--run", "no-such-run", "--server", server.url, "--out", out)
    assert bad.returncode == 2 and "no diffusion models under no-such-run/" in bad.stderr
