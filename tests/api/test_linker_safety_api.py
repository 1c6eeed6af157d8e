"""API tier: the sync route of a real server under hostile input and next to CLI syncs of the same
run (issue 12). The server writes where the CLI does (models/diffusion_models/<run>/ of its base
folder), both take the same per-run lock, and the manifest ends equal to the disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from linker_helpers import assert_manifest_equals_disk

from sd35wb import linker, simpletuner
from tools import simpletuner_fixtures as stf

REPO = Path(__file__).resolve().parents[2]
ROUTE = "/sd35wb/simpletuner/sync"


def _post(server, body):
    status, data = server.request(ROUTE, body, timeout=120)
    return status, json.loads(data)


@pytest.fixture(scope="module")
def busy_run(training_root):
    out = training_root / "busy-run"
    if not out.exists():
        stf.fake_checkpoint(out, 100, ema="sharded")
        stf.fake_checkpoint(out, 200, kind="lora", ema="lora")
        stf.fake_checkpoint(out, 300, suffix="-rolling", ema="sharded")
        stf.write_fake_safetensors(out / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors", seed=7)
        stf.write_fake_safetensors(out / "pytorch_lora_weights.safetensors", seed=8)
    return out


BAD_BODIES = [
    ({"output_dir": "/" + "a" * 5000}, "output_dir", "4095-byte path limit"),
    ({"output_dir": "/tmp/" + "b" * 300 + "/run"}, "output_dir", "300-byte component"),
    ({"output_dir": "busy-run\n"}, "output_dir", "control characters"),
    ({"output_dir": "%2e%2e/outside"}, "output_dir", "looks URL-encoded"),
    ({"output_dir": "\uff0e\uff0e/outside"}, "output_dir", "look-alike Unicode"),
    ({"output_dir": "busy-run", "run": "r" * 255}, "run", "255 bytes long"),
    ({"output_dir": "busy-run", "run": "r" * 300}, "run", "300 bytes long"),
    ({"output_dir": "busy-run", "run": "x\ny"}, "run", "control characters"),
    ({"output_dir": "busy-run", "run": "\uff0e\uff0e"}, "run", "not a plain folder name"),
    ({"output_dir": "busy-run", "run": "a%2fb"}, "run", "looks URL-encoded"),
    ({"output_dir": "busy-run", "run": "CON"}, "run", "Windows"),
    ({"output_dir": "busy-run", "run": 5}, "run", "run must be a string"),
    ({"output_dir": "busy-run", "include": 7}, "include", "include must be"),
    ({"output_dir": "busy-run", "include": "full,bogus"}, "include", "include:"),
]


def test_route_answers_400_naming_the_field_never_500(server, busy_run):
    for body, field, msg in BAD_BODIES:
        status, data = _post(server, body)
        assert status == 400, (body, status, data)
        assert data["field"] == field and msg in data["error"], (body, data)
    status, data = _post(server, ["not", "an", "object"])
    assert status == 400 and "JSON object" in data["error"]
    print(f"\nbad bodies tried on the route: {len(BAD_BODIES) + 1}, all 400 with the field named")


def test_route_refuses_file_symlinks_out_of_the_root(server, training_root, tmp_path):
    outside = stf.write_fake_safetensors(tmp_path / "secret" / "pytorch_lora_weights.safetensors", seed=3)
    out = training_root / "sneaky-file-run"
    stf.fake_checkpoint(out, 10)
    stf.fake_checkpoint(out, 20, kind="lora")
    lora = out / "checkpoint-20" / "pytorch_lora_weights.safetensors"
    lora.unlink()
    os.symlink(outside, lora)
    status, data = _post(server, {"output_dir": "sneaky-file-run"})
    assert status == 200, data
    assert data["exposed"] == {"diffusion_models": ["sneaky-file-run/checkpoint-10.safetensors"], "loras": []}
    assert any(n == "sneaky-file-run/checkpoint-20.safetensors" and "outside the training roots" in why
               for n, why in data["skipped"]), data["skipped"]
    lora_list = server.get_json("/object_info/LoraLoaderModelOnly")["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0]
    assert "sneaky-file-run/checkpoint-20.safetensors" not in lora_list


def test_route_and_cli_sync_the_same_run_at_once_and_agree(server, busy_run, training_root):
    models = server.base / "models"
    dest = linker.models_dir_destinations(models)
    run = "busy"
    results, errors = [], []

    def post():
        try:
            results.append(_post(server, {"output_dir": str(busy_run), "run": run}))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    env = {**os.environ, "PYTHONPATH": str(REPO), linker.ROOTS_ENV: str(training_root)}
    rounds, survived = 4, 0
    for r in range(rounds):
        threads = [threading.Thread(target=post) for _ in range(2)]
        procs = [subprocess.Popen([sys.executable, "-m", "sd35wb.link", str(busy_run), "--models-dir", str(models),
                                   "--run", run, "--json"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for t in threads:
            t.start()
        if r == 2:  # SimpleTuner rotates underneath
            import shutil

            shutil.rmtree(busy_run / "checkpoint-100")
            stf.fake_checkpoint(busy_run, 400, ema="sharded")
        for p in procs:
            so, se = p.communicate(timeout=300)
            assert p.returncode == 0, se
            rep = json.loads(so)
            assert not any("collision" in w or "not pruned" in w for _, w in rep["skipped"]), rep["skipped"]
            survived += 1
        for t in threads:
            t.join(300)
        assert not errors, errors
        for status, data in results:
            assert status == 200, data
            assert not any("collision" in w or "not pruned" in w for _, w in data["skipped"]), data["skipped"]
        survived += len(results)
        results.clear()
    dm, lo = Path(dest.dirs["diffusion_models"]) / run, Path(dest.dirs["loras"]) / run
    want = len(simpletuner.scan(busy_run, run).artifacts)
    assert assert_manifest_equals_disk(dm, lo) == want
    status, final = _post(server, {"output_dir": str(busy_run), "run": run})
    assert status == 200 and not final["linked"] and not final["pruned"] and not final["repaired"], final
    assert not (models / "unet" / run).exists(), "the route writes into diffusion_models/, as the CLI does"
    unet_list = server.get_json("/object_info/UNETLoader")["UNETLoader"]["input"]["required"]["unet_name"][0]
    assert set(final["exposed"]["diffusion_models"]) <= set(unet_list)
    print(f"\nconcurrent syncs survived (2 CLI + 2 route per round, {rounds} rounds): {survived}")
