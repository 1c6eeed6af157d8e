"""API tier: ``python -m sd35wb.sweep`` against real ComfyUI servers on 127.0.0.1: checkpoints x
prompts x seeds over two servers, resume after Ctrl-C without rendering twice, a server killed
mid-sweep, and bad input (an empty prompt list, a checkpoint that is no model, a refused prompt)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import simpletuner_helpers as sth
from conftest import TESTS, model_roots
from PIL import Image

from tools import simpletuner_fixtures as stf
from tools.comfy_server import ComfyServer, prepare_base

REPO = Path(__file__).resolve().parents[2]
PX = 64
RUN = "cli-sweep"


@pytest.fixture(scope="module")
def linked(server, training_root):
    out = training_root / RUN
    if not out.exists():
        for step in (100, 250, 1000):
            stf.diffusers_checkpoint(out, step)
    _link(server)
    return [f"{RUN}/checkpoint-{s}.safetensors" for s in (100, 250, 1000)]


def _start(base, tiny_models, user_models, training_root) -> ComfyServer:
    cfg = prepare_base(base, model_roots(tiny_models, user_models), {"sd35wb_testnodes": TESTS / "testnodes"})
    return ComfyServer(base, cfg, env={"SD35WB_TRAINING_ROOTS": str(training_root)}).start()


def _link(srv) -> None:
    """Each server box links the run into its own models folder (Sync now on each)."""
    status, body = srv.request("/sd35wb/simpletuner/sync", {"output_dir": RUN, "run": RUN})
    assert status == 200, body


@pytest.fixture(scope="module")
def second_server(tiny_models, user_models, training_root, tmp_path_factory, linked):
    """Another ComfyUI on the same training root, with the run linked too (a second GPU box)."""
    srv = _start(tmp_path_factory.mktemp("comfy-base-2"), tiny_models, user_models, training_root)
    _link(srv)
    yield srv
    srv.stop()


def _workflow(tmp_path, prefix):
    prompt = sth.tiny(sth.load("simpletuner_sweep_cli.json"), px=PX, steps=1, prefix=prefix)
    # The prompts really go through a text encoder: a random-weight CLIP-L as SD3's (the sweep swaps node 3's text).
    prompt["3"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "placeholder", "clip": ["10", 0]}}
    prompt["10"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny-sweep-clip_l.safetensors", "type": "sd3",
                                                           "device": "default"}}
    wf = tmp_path / f"{prefix}.json"
    wf.write_text(json.dumps(prompt))
    return wf


@pytest.fixture(scope="module")
def clip_link(user_models):
    from tools import sd35_fixtures

    dest = user_models / "text_encoders" / "tiny-sweep-clip_l.safetensors"
    if not dest.exists():
        dest.symlink_to(sd35_fixtures.clip_l_file())
    return dest


def _cli(*args, popen=False):
    cmd = [sys.executable, "-u", "-m", "sd35wb.sweep", *map(str, args)]
    # Keep the caller's PYTHONPATH: scripts/test.sh layers the test tools (websocket-client) there.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if popen:  # Ctrl-C reaches it as in a terminal, even when this run was started in the background (SIG_IGN)
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)


def _executed(srv) -> int:
    return len(srv.get_json("/history?max_items=100000"))


def _wait_idle(srv, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        q = srv.get_json("/queue")
        if not q["queue_running"] and not q["queue_pending"]:
            return
        time.sleep(0.3)
    raise AssertionError(f"{srv.url} still busy after {timeout} s")


def _wait_for(proc, pattern, lines, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if pattern(line):
            return line
    raise AssertionError("never saw the line; output:\n" + "".join(lines))


def test_grid_over_two_servers_then_resume_after_ctrl_c(server, second_server, linked, clip_link, tmp_path):
    wf = _workflow(tmp_path, "cli_grid")
    out = tmp_path / "sweep" / "grid.png"
    args = ["--workflow", wf, "--run", RUN, "--prompt", "a red fox in snow", "--prompt", "a lighthouse at night",
            "--seeds", "1,2", "--server", server.url, "--server", second_server.url, "--out", out]
    before = _executed(server) + _executed(second_server)
    proc = _cli(*args, popen=True)
    lines = []
    _wait_for(proc, lambda s: s.startswith("[2/12]"), lines)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    rest, _ = proc.communicate(timeout=120)
    lines += rest.splitlines(keepends=True)
    text = "".join(lines)
    assert proc.returncode == 130, text
    assert "run the same command again to resume" in text
    state = json.loads(out.with_name("grid.sweep.json").read_text())
    done_first = len(state["cells"])
    assert 2 <= done_first < 12
    for srv in (server, second_server):  # let each server finish (or stop) what it was running
        _wait_idle(srv)
    first_run = _executed(server) + _executed(second_server) - before

    r = _cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resume: {done_first} of 12 images already rendered" in r.stdout
    assert f"{12 - done_first} rendered, {done_first} reused" in r.stdout
    total = _executed(server) + _executed(second_server) - before
    assert total - first_run == 12 - done_first, "the second run queued only what was missing"
    # Each server was handed whole checkpoints (one load each); both took part.
    assert "over 2 server(s)" in r.stdout
    used = {url for url in (server.url, second_server.url) if url + ";" in text + r.stdout}
    assert used == {server.url, second_server.url}
    files = sorted((out.parent / "grid-images").glob("*.png"))
    assert len(files) == 12
    page = np.asarray(Image.open(out).convert("RGB"))
    head_h, label_w = page.shape[0] - 3 * PX, page.shape[1] - 4 * PX
    assert head_h > 0 and label_w > 0, "3 rows (checkpoints) x 4 columns (2 prompts x 2 seeds) of 64 px tiles"
    # Row 2 (checkpoint-250), column 4 (prompt 2, seed 2) is that image.
    img = np.asarray(Image.open(next(f for f in files if f.name.startswith("checkpoint-250-p2-") and
                                     f.name.endswith("-s2-1.png"))).convert("RGB"))
    assert np.array_equal(page[head_h + PX:head_h + 2 * PX, label_w + 3 * PX:], img)
    arrs = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    assert len({a.tobytes() for a in arrs}) == 12, "every checkpoint x prompt x seed differs"
    # A third run renders nothing; with SimpleTuner's validation image of step 250 beside its row.
    val = Path(server.env["SD35WB_TRAINING_ROOTS"]) / RUN / "validation_images"
    val.mkdir(exist_ok=True)
    Image.new("RGB", (PX, PX), (255, 0, 0)).save(val / f"step_250_validation_{PX}x{PX}.png")
    again = _cli(*args, "--validation-images", val.parent)
    assert again.returncode == 0 and "0 rendered, 12 reused" in again.stdout
    page = np.asarray(Image.open(out).convert("RGB"))
    assert page.shape[1] == label_w + 5 * PX
    assert tuple(page[head_h + PX + PX // 2, label_w + 4 * PX + PX // 2]) == (255, 0, 0)
    assert (page[head_h:head_h + PX, label_w + 4 * PX:] == (24, 24, 24)).all(), "step 100 has none"


def test_a_server_killed_mid_sweep_hands_its_work_to_the_other(server, linked, clip_link, tmp_path,
                                                               tiny_models, user_models, training_root):
    doomed = _start(tmp_path / "doomed", tiny_models, user_models, training_root)
    try:
        _link(doomed)
        wf = _workflow(tmp_path, "cli_dead")
        out = tmp_path / "dead.png"
        proc = _cli("--workflow", wf, "--run", RUN, "--seeds", "11,12,13", "--server", doomed.url,
                    "--server", server.url, "--out", out, popen=True)
        lines = []
        _wait_for(proc, lambda s: s.startswith("[") and f"({doomed.url};" in s, lines)
        doomed.proc.kill()  # the machine goes away mid-checkpoint
        rest, _ = proc.communicate(timeout=600)
    finally:
        doomed.stop()
    text = "".join(lines) + rest
    assert proc.returncode == 0, text
    assert f"server {doomed.url} stopped answering" in text and "go to the other server(s)" in text
    assert "[9/9]" in text
    assert len(list((tmp_path / "dead-images").glob("*.png"))) == 9
    assert out.exists()


def test_bad_input_is_named_and_the_rest_completes(server, linked, clip_link, tmp_path):
    wf = _workflow(tmp_path, "cli_bad")
    empty = tmp_path / "prompts.txt"
    empty.write_text("# nothing but a comment\n\n")
    r = _cli("--workflow", wf, "--run", RUN, "--prompts", empty, "--server", server.url, "--out", tmp_path / "e.png")
    assert r.returncode == 2 and "--prompts" in r.stderr and "the prompt list is empty" in r.stderr
    # A checkpoint that is no model, and a name the server refuses; the good one still renders.
    broken = f"{RUN}-broken"
    stf.fake_checkpoint(Path(server.env["SD35WB_TRAINING_ROOTS"]) / broken, 5)
    status, _ = server.request("/sd35wb/simpletuner/sync", {"output_dir": broken, "run": broken})
    assert status == 200
    out = tmp_path / "bad.png"
    r = _cli("--workflow", wf, "--models", f"{linked[1]},{RUN}/checkpoint-9.safetensors,{broken}/checkpoint-5.safetensors",
             "--server", server.url, "--out", out)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "failed: checkpoint-9 p1 seed 42: rejected (HTTP 400)" in r.stdout
    assert "failed: checkpoint-5 p1 seed 42: RuntimeError: ERROR: Could not detect model type" in r.stdout
    assert "1 rendered, 0 reused" in r.stdout
    page = np.asarray(Image.open(out).convert("RGB"))
    assert page.shape[0] > 3 * PX, "three rows: the rendered one and two that say why they failed"


def test_a_server_that_refuses_hands_the_image_to_one_that_accepts(server, linked, clip_link, tmp_path,
                                                                   tiny_models, user_models, training_root):
    """A server without the run linked answers HTTP 400 for its checkpoints: they go to the other server."""
    bare = _start(tmp_path / "bare", tiny_models, user_models, training_root)
    try:
        wf = _workflow(tmp_path, "cli_refuse")
        out = tmp_path / "refuse.png"
        r = _cli("--workflow", wf, "--models", ",".join(linked[:2]), "--server", bare.url, "--server", server.url,
                 "--out", out)
    finally:
        bare.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"on {bare.url}: rejected (HTTP 400)" in r.stdout and "trying another server" in r.stdout
    assert "2 rendered, 0 reused" in r.stdout
