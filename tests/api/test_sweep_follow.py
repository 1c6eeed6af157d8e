"""API tier: ``python -m sd35wb.sweep --follow`` against a real ComfyUI on 127.0.0.1 while a stand-in
trainer (tools/simpletuner_trainer.py) saves LoRA checkpoints in SimpleTuner's order: temporary-N/,
half-written, renamed, markers last, rotation by a checkpoint limit. Every finished checkpoint is
rendered once and only once it is complete; rotation after a render keeps its row, rotation before
it is reported; a follower killed with SIGKILL and started again renders nothing twice; it stops at
the final save. A trainer that pushes SimpleTuner's webhook gets its checkpoints rendered without
the follower scanning the disk."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time

import numpy as np
from PIL import Image
from sweep_helpers import cli, rest_of, wait_idle

from tools import lora_fixtures
from tools.simpletuner_trainer import Trainer
from tools.sweep_host import lora_workflow

PX = 64


def _workflow(path, prefix: str):
    path.write_text(json.dumps(lora_workflow(PX, prefix)))
    return path


def _state(out) -> dict:
    try:
        return json.loads(out.with_name(out.stem + ".sweep.json").read_text())["cells"]
    except (OSError, ValueError):
        return {}


def _wait_state(out, model: str, proc=None, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(e["model"] == model for e in _state(out).values()):
            return
        assert proc is None or proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    raise AssertionError(f"{model} never rendered; state: {_state(out)}")


def _renders(server, run: str) -> dict[str, list[float]]:
    """lora_name -> start times (s) of each successful execution of this run's LoRAs on the server."""
    out: dict[str, list[float]] = {}
    for entry in server.get_json("/history?max_items=100000").values():
        prompt = entry["prompt"][2]
        name = prompt.get("2", {}).get("inputs", {}).get("lora_name", "")
        status = entry.get("status", {})
        if not name.startswith(run + "/") or status.get("status_str") != "success":
            continue
        start = next(d["timestamp"] for kind, d in status["messages"] if kind == "execution_start")
        out.setdefault(name, []).append(start / 1000)
    return out


def _in_thread(fn, *a):
    t = threading.Thread(target=fn, args=a, daemon=True)
    t.start()
    return t


def _busy(server, wf, steps=300):
    """Someone else's prompt at the head of the server's queue: seconds of work (150 times our image's), so a
    checkpoint queued behind it waits long enough to be rotated away first, however fast the machine."""
    p = json.loads(wf.read_text())
    p["6"]["inputs"].update(model=["1", 0], steps=steps, seed=int(time.time()))
    del p["2"]
    return server.queue(p)


def test_follow_renders_each_finished_checkpoint_once_survives_kill_and_stops_at_the_final(
        server, training_root, tmp_path):
    run = "follow-run"
    out_dir = training_root / run
    trainer = Trainer(out_dir, lora_fixtures.build_all()["sd3-peft"].read_bytes(), limit=2)
    wf = _workflow(tmp_path / "follow.json", "follow")
    out = tmp_path / "grid.png"
    args = ["--workflow", wf, "--lora-run", run, "--follow", out_dir, "--server", server.url, "--out", out,
            "--poll", "0.2"]
    first = cli(*args, popen=True)
    try:
        for step in (100, 200):
            saving = _in_thread(trainer.save, step)  # the follower runs while the save is half-way
            _wait_state(out, f"{run}/checkpoint-{step}.safetensors", first)
            saving.join()
        first.kill()  # SIGKILL: no goodbye, the lock file's lock goes with the process
        first.wait(60)
    finally:
        if first.poll() is None:
            first.kill()
    wait_idle(server)
    state_before = len(_state(out))
    renders_before = sum(map(len, _renders(server, run).values()))
    trainer.save(300)  # rotation (limit 2) deletes checkpoint-100: rendered, it stays in the grid
    second = cli(*args, popen=True)
    try:
        _wait_state(out, f"{run}/checkpoint-300.safetensors", second)
        # checkpoint-400 lands while the server is busy with other work, and is deleted before its turn.
        busy = _busy(server, wf)
        saving = _in_thread(trainer.save, 400)
        deadline = time.time() + 60
        while f"{run}/checkpoint-400.safetensors" not in json.dumps(server.get_json("/object_info/LoraLoaderModelOnly")):
            assert time.time() < deadline, "checkpoint-400 was never linked"
            time.sleep(0.05)
        saving.join()
        shutil.rmtree(out_dir / "checkpoint-400")
        server.wait(busy, timeout=120)
        trainer.save(500)
        trainer.final()
        rest = rest_of(second, 180)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, rest
    assert "follow: stopped: the run's final save (follow-run-final) is rendered" in rest, rest
    assert "rotated: checkpoint-100 was deleted by SimpleTuner's rotation" in rest and "stays in the grid" in rest, rest
    assert "rotated: checkpoint-400 was deleted by SimpleTuner's rotation (checkpoints_total_limit) before it was " \
           "rendered; it is not in the grid" in rest, rest
    assert "failed:" not in rest, rest

    state = _state(out)
    models = sorted(e["model"] for e in state.values())
    want = [f"{run}/checkpoint-{s}.safetensors" for s in (100, 200, 300, 500)] + [f"{run}/{run}-final.safetensors"]
    assert models == sorted(want), "every finished checkpoint once; none of temporary-N/; 400 rotated unrendered"
    renders = _renders(server, run)
    assert sorted(renders) == sorted(want) and all(len(t) == 1 for t in renders.values()), renders
    assert sum(map(len, renders.values())) - renders_before == len(state) - state_before, \
        "the restarted follower rendered exactly what the state lacked"
    for step in (200, 300, 500):  # never before its markers (checkpoint-100 came first: no markers rule yet)
        assert renders[f"{run}/checkpoint-{step}.safetensors"][0] >= trainer.times[step]["complete"] - 0.05, step
    assert renders[f"{run}/checkpoint-100.safetensors"][0] >= trainer.times[100]["renamed"] - 0.05
    assert not (out_dir / "checkpoint-100").exists() and 100 in trainer.rotated
    page = np.asarray(Image.open(out).convert("RGB"))
    assert page.shape[0] >= 5 * PX and page.shape[0] < 6 * PX + 200, "5 rows: 100, 200, 300, 500, final"


def _scored_rows(out) -> list[str]:
    try:
        return [r["label"] for r in json.loads(out.with_name(out.stem + ".scores.json").read_text())["rows"]]
    except (OSError, ValueError):
        return []


def test_a_trainer_that_pushes_its_webhook_is_followed_without_disk_syncs(server, training_root, user_models, tmp_path):
    from tools.score_fixtures import write_tiny_dino, write_training_images

    write_tiny_dino(user_models / "clip_vision" / "dinov2-tiny")
    train = training_root / "push-run-images"
    write_training_images(train, n=2)
    run = "push-run"
    trainer = Trainer(training_root / run, lora_fixtures.build_all()["sd3-peft"].read_bytes(), limit=3,
                      webhook=f"{server.url}/sd35wb/simpletuner/webhook?run={run}", half_pause=0.1, marker_pause=0.1)
    wf = _workflow(tmp_path / "push.json", "push")
    out = tmp_path / "push.png"
    # No OUTPUT_DIR (the follower links nothing) and a 60 s poll: only the webhook's events can make it quick.
    # scored as they land: the scoreboard and scores grow a row per checkpoint (memorisation: no text prompt here)
    args = ["--workflow", wf, "--lora-run", run, "--follow", "--server", server.url, "--out", out, "--poll", "60",
            "--scores", "--clip-model", "none", "--dino-model", "dinov2-tiny/model.safetensors", "--training-images",
            str(train)]
    proc = cli(*args, popen=True)
    try:
        line = proc.stdout.readline()
        assert "follow: watching push-run (events from the webhook" in line, line
        t0 = time.time()
        for step in (10, 20):
            trainer.save(step)
            _wait_state(out, f"{run}/checkpoint-{step}.safetensors", proc, timeout=30)
        assert time.time() - t0 < 40, "the events, not the 60 s poll, woke the follower"
        deadline = time.time() + 20
        while _scored_rows(out) != ["checkpoint-10", "checkpoint-20"]:
            assert time.time() < deadline, f"the scores never showed both landed checkpoints: {_scored_rows(out)}"
            time.sleep(0.1)
        assert out.with_name("push-scoreboard.png").is_file()
        proc.send_signal(signal.SIGINT)  # Ctrl-C: exit 130, the grid written, resumable
        rest = rest_of(proc, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "run the same command again to resume following" in rest, rest
    assert out.exists()
    proc = cli(*args, popen=True)
    try:
        assert "follow: watching" in proc.stdout.readline()
        t0 = time.time()
        trainer.final()
        rest = rest_of(proc, 40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert time.time() - t0 < 40, "the final's event, not the 60 s poll, woke the follower"
    assert "resume: 2 of 2 images already rendered" in rest and "final save (push-run-final) is rendered" in rest, rest
    assert [a for a in trainer.answers if "event" in a[1]] and all(st in (200, 202) for st, _ in trainer.answers), \
        trainer.answers
    assert sorted(e["model"] for e in _state(out).values()) == [f"{run}/checkpoint-10.safetensors",
                                                                f"{run}/checkpoint-20.safetensors",
                                                                f"{run}/{run}-final.safetensors"]
    doc = json.loads(out.with_name("push.scores.json").read_text())
    assert [r["label"] for r in doc["rows"]] == ["checkpoint-10", "checkpoint-20", f"{run}-final"], "each row once"
    assert all(r["scores"]["memorisation"]["n"] == 1 and r["scores"]["memorisation"]["nearest"].startswith("train_")
               for r in doc["rows"])
    r = cli("--workflow", wf, "--lora-run", run, "--until-step", "5", "--server", server.url, "--out", out)
    assert r.returncode == 2 and "--until-step: only with --follow" in r.stderr, r.stderr


def test_two_servers_follow_one_run_each_linking_it_in_its_own_models_folder(server, tiny_models, user_models,
                                                                            training_root, tmp_path):
    from sweep_helpers import start_server

    run = "two-server-run"
    out_dir = training_root / run
    trainer = Trainer(out_dir, lora_fixtures.build_all()["sd3-peft"].read_bytes(), limit=5, half_pause=0.05,
                      marker_pause=0.05)
    other = start_server(tmp_path / "second", tiny_models, user_models, training_root)
    try:
        wf = _workflow(tmp_path / "two.json", "two")
        out = tmp_path / "two.png"
        proc = cli("--workflow", wf, "--lora-run", run, "--follow", out_dir, "--server", server.url, "--server",
                   other.url, "--out", out, "--poll", "2", popen=True)
        try:
            assert "follow: watching" in "".join(proc.stdout.readline() for _ in range(2))
            trainer.save(10)  # two checkpoints within one poll: one batch, one checkpoint per server
            trainer.save(20)
            _wait_state(out, f"{run}/checkpoint-20.safetensors", proc)
            _wait_state(out, f"{run}/checkpoint-10.safetensors", proc)
            trainer.final()
            rest = rest_of(proc, 120)
        finally:
            if proc.poll() is None:
                proc.kill()
        lora_lists = [_loras for _loras in (s.get_json("/object_info/LoraLoaderModelOnly")["LoraLoaderModelOnly"]
                                            ["input"]["required"]["lora_name"][0] for s in (server, other))]
    finally:
        other.stop()
    assert proc.returncode == 0, rest
    assert all(f"{run}/checkpoint-10.safetensors" in names for names in lora_lists), "each server linked the run"
    assert all((s.base / "models" / "loras" / run / ".sd35wb-links.json").is_file() for s in (server, other))
    assert f"({server.url};" in rest and f"({other.url};" in rest, rest
    assert sorted(e["model"] for e in _state(out).values()) == [f"{run}/checkpoint-10.safetensors",
                                                                f"{run}/checkpoint-20.safetensors",
                                                                f"{run}/{run}-final.safetensors"]
