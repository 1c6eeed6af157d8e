"""The sweep CLI's API tests share these: a linked tiny run, a workflow whose prompts go through a real
(random-weight) text encoder, the CLI as a child process, and server bookkeeping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import simpletuner_helpers as sth
from conftest import TESTS, model_roots

from tools.comfy_server import ComfyServer, prepare_base

REPO = Path(__file__).resolve().parents[1]
PX = 64
RUN = "cli-sweep"


def start_server(base, tiny_models, user_models, training_root) -> ComfyServer:
    cfg = prepare_base(base, model_roots(tiny_models, user_models), {"sd35wb_testnodes": TESTS / "testnodes"})
    return ComfyServer(base, cfg, env={"SD35WB_TRAINING_ROOTS": str(training_root)}).start()


def link(srv) -> None:
    """Each server box links the run into its own models folder (Sync now on each)."""
    status, body = srv.request("/sd35wb/simpletuner/sync", {"output_dir": RUN, "run": RUN})
    assert status == 200, body


def workflow(tmp_path, prefix):
    prompt = sth.tiny(sth.load("simpletuner_sweep_cli.json"), px=PX, steps=1, prefix=prefix)
    # The prompts really go through a text encoder: a random-weight CLIP-L as SD3's (the sweep swaps node 3's text).
    prompt["3"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "placeholder", "clip": ["10", 0]}}
    prompt["10"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny-sweep-clip_l.safetensors", "type": "sd3",
                                                           "device": "default"}}
    wf = tmp_path / f"{prefix}.json"
    wf.write_text(json.dumps(prompt))
    return wf


def cli(*args, popen=False):
    cmd = [sys.executable, "-u", "-m", "sd35wb.sweep", *map(str, args)]
    # Keep the caller's PYTHONPATH: scripts/test.sh layers the test tools (websocket-client) there.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if popen:  # Ctrl-C reaches it as in a terminal, even when this run was started in the background (SIG_IGN)
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)


def executed(srv) -> int:
    return len(srv.get_json("/history?max_items=100000"))


def wait_idle(srv, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        q = srv.get_json("/queue")
        if not q["queue_running"] and not q["queue_pending"]:
            return
        time.sleep(0.3)
    raise AssertionError(f"{srv.url} still busy after {timeout} s")


def rest_of(proc, timeout: float) -> str:
    """The rest of a CLI's output until it exits.

    Not ``communicate(timeout=...)``: that reads the pipe's file descriptor itself, so whatever an
    earlier ``readline()`` pulled into the text buffer along with its line is lost."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.read()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        proc.kill()
        reader.join(10)
        raise AssertionError(f"still running after {timeout} s; output:\n" + "".join(got))
    proc.wait(10)
    return got[0]


def wait_for(proc, pattern, lines, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if pattern(line):
            return line
    raise AssertionError("never saw the line; output:\n" + "".join(lines))


def interrupt_then_resume(server, args: list, out: Path, total: int, why: str) -> None:
    """Ctrl-C the CLI after its 2nd image, then run the same command again: it resumes what is on
    disk and queues only the missing cells."""
    proc = cli(*args, popen=True)
    lines = []
    wait_for(proc, lambda s: s.startswith(f"[2/{total}]"), lines)
    proc.send_signal(signal.SIGINT)
    rest = rest_of(proc, 120)
    assert proc.returncode == 130, "".join(lines) + rest
    wait_idle(server)
    done = len(json.loads(out.with_name(out.stem + ".sweep.json").read_text())["cells"])
    assert 2 <= done < total
    before = executed(server)
    r = cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resume: {done} of {total} images already rendered" in r.stdout
    assert executed(server) - before == total - done, why
    assert len(list(out.with_name(out.stem + "-images").glob("*.png"))) == total
