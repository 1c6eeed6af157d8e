"""API tier: SimpleTuner's raw webhook on a real server (POST /sd35wb/simpletuner/webhook): its
``training.checkpoint`` payload links the run (the linker's rules) and the event shows in
GET /sd35wb/simpletuner/events; hostile payloads (paths outside the roots, ``..``, symlinks out, bad
JSON, huge bodies, wrong content types) get a 4xx JSON answer and nothing is linked."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request

from tools import simpletuner_fixtures as stf
from tools.simpletuner_trainer import checkpoint_payload, stage_payload

ROUTE = "/sd35wb/simpletuner/webhook"


def _post(server, body: bytes, ctype: str | None = "application/json", query: str = ""):
    req = urllib.request.Request(server.url + ROUTE + query, data=body, method="POST",
                                 headers={"Content-Type": ctype} if ctype else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _loras(server) -> list[str]:
    return server.get_json("/object_info/LoraLoaderModelOnly")["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0]


def test_a_checkpoint_event_links_the_run_and_is_recorded(server, training_root):
    out = training_root / "hook-run"
    stf.fake_checkpoint(out, 100, kind="lora")
    since = server.get_json("/sd35wb/simpletuner/events")["last"]
    payload = checkpoint_payload(str(out / "checkpoint-100"), "job-1")
    status, doc = _post(server, json.dumps(payload).encode(), "application/json; charset=utf-8", "?run=hook-run")
    assert status == 200, doc
    assert doc["event"]["linked"] == ["hook-run/checkpoint-100.safetensors"], doc
    assert doc["event"]["step"] == 100 and doc["event"]["run"] == "hook-run"
    assert "hook-run/checkpoint-100.safetensors" in _loras(server)
    ev = server.get_json(f"/sd35wb/simpletuner/events?since={since}&run=hook-run")
    assert [e["id"] for e in ev["events"]] == [doc["event"]["id"]] and ev["last"] >= doc["event"]["id"]
    assert server.get_json(f"/sd35wb/simpletuner/events?since={ev['last']}&run=hook-run")["events"] == []
    # The lifecycle event SimpleTuner sends before the rename links only what is complete (nothing new here).
    stf.fake_checkpoint(out, 200, kind="lora", markers=False)
    status, doc = _post(server, json.dumps(stage_payload("checkpoint_save", "Saving Checkpoint", "completed",
                                                         f"Saved checkpoint to {out / 'checkpoint-200'}", "job-1")
                                           ).encode(), query="?run=hook-run")
    assert status == 200 and doc["event"]["linked"] == [], doc
    assert any("checkpoint-200" in p and "in progress" in why for p, why in doc["report"]["skipped"]), doc
    # The final save: model_save is remembered, training_complete links the final LoRA.
    stf.write_fake_safetensors(out / "pytorch_lora_weights.safetensors", seed=9)
    status, doc = _post(server, json.dumps(stage_payload("model_save", "Saving Final Model", "running",
                                                         f"Finalizing model and saving to {out}", "job-1")).encode(),
                        query="?run=hook-run")
    assert status == 202 and "ignored" in doc, doc
    status, doc = _post(server, json.dumps(stage_payload("training_complete", "Training Complete", "completed",
                                                         "Training run complete.", "job-1")).encode(),
                        query="?run=hook-run")
    assert status == 200 and doc["event"]["final"] and "hook-run/hook-run-final.safetensors" in doc["event"]["linked"]
    for bad in ("since=-1", "since=x", "wait=31", "wait=nan"):
        st, body = server.request(f"/sd35wb/simpletuner/events?{bad}")
        assert st == 400 and json.loads(body)["field"] in ("since", "wait"), (bad, body)


def test_hostile_payloads_get_4xx_json_and_link_nothing(server, training_root, tmp_path):
    outside = tmp_path / "outside-run"
    stf.fake_checkpoint(outside, 5, kind="lora")
    (training_root / "evil-link").symlink_to(outside, target_is_directory=True)  # a run folder leading out
    half = training_root / "evil-checkpoint"
    stf.fake_checkpoint(half, 1, kind="lora")
    (half / "checkpoint-5").symlink_to(outside / "checkpoint-5", target_is_directory=True)  # one checkpoint out
    before = set(_loras(server))

    def ck(path) -> bytes:
        return json.dumps(checkpoint_payload(str(path), "job-x")).encode()

    cases = [
        (ck(outside / "checkpoint-5"), "application/json", 403, "outside the training roots"),
        (ck(f"{training_root}/evil-checkpoint/../../{outside.parent.name}/outside-run/checkpoint-5"),
         "application/json", 403, "'..'"),
        (ck(training_root / "evil-link" / "checkpoint-5"), "application/json", 403, "outside the training roots"),
        (ck(half / "checkpoint-5"), "application/json", 403, "outside the training roots"),
        (ck("/etc/checkpoint-1"), "application/json", 403, "outside the training roots"),
        (ck(training_root / "evil-checkpoint" / "secrets"), "application/json", 400, "not a checkpoint-N folder"),
        (json.dumps({"type": "training.checkpoint", "checkpoint": {"path": 5}}).encode(), "application/json", 400,
         "checkpoint.path"),
        (json.dumps({"type": "training.checkpoint"}).encode(), "application/json", 400, "checkpoint: an object"),
        (b"{not json", "application/json", 400, "not JSON"),
        (b"\xff\xfe", "application/json", 400, "not JSON"),
        (b"[1, 2]", "application/json", 400, "JSON object"),
        (ck(half / "checkpoint-1"), "text/plain", 415, "application/json"),
        (ck(half / "checkpoint-1"), "application/x-www-form-urlencoded", 415, "application/json"),
        (ck(half / "checkpoint-1"), None, 415, "application/json"),
        (b'{"type": "training.checkpoint", "pad": "' + b"x" * (70 * 1024) + b'"}', "application/json", 413, "limit"),
    ]
    for body, ctype, want, words in cases:
        status, doc = _post(server, body, ctype)
        assert status == want and words in doc["error"], (body[:120], ctype, status, doc)
    status, doc = _post(server, ck(half / "checkpoint-1"), query="?run=..")
    assert status == 400 and doc["field"] == "run", doc
    status, doc = _post(server, json.dumps({"type": "training.status", "data": {"status": "running"}}).encode())
    assert status == 202 and "not handled" in doc["ignored"], doc
    assert set(_loras(server)) == before, "nothing was linked by any refused payload"
    assert not list((server.base / "models").glob("*/evil-*")), "no run folder was even made"
    os.unlink(training_root / "evil-link")
    shutil.rmtree(half)
