"""API tier: ``python -m sd35wb.sweep`` against real ComfyUI servers on 127.0.0.1: checkpoints x
prompts x seeds over two servers, resume after Ctrl-C without rendering twice, a server killed
mid-sweep, and bad input (an empty prompt list, a checkpoint that is no model, a refused prompt)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
from PIL import Image
from sweep_helpers import PX, RUN, cli, executed, link, rest_of, start_server, wait_for, wait_idle, workflow

from tools import simpletuner_fixtures as stf


def test_grid_over_two_servers_then_resume_after_ctrl_c(server, second_server, linked, clip_link, tmp_path):
    wf = workflow(tmp_path, "cli_grid")
    out = tmp_path / "sweep" / "grid.png"
    args = ["--workflow", wf, "--run", RUN, "--prompt", "a red fox in snow", "--prompt", "a lighthouse at night",
            "--seeds", "1,2", "--server", server.url, "--server", second_server.url, "--out", out]
    before = executed(server) + executed(second_server)
    proc = cli(*args, popen=True)
    lines = []
    wait_for(proc, lambda s: s.startswith("[2/12]"), lines)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    rest = rest_of(proc, 120)
    lines += rest.splitlines(keepends=True)
    text = "".join(lines)
    assert proc.returncode == 130, text
    assert "run the same command again to resume" in text
    state = json.loads(out.with_name("grid.sweep.json").read_text())
    done_first = len(state["cells"])
    assert 2 <= done_first < 12
    for srv in (server, second_server):  # let each server finish (or stop) what it was running
        wait_idle(srv)
    first_run = executed(server) + executed(second_server) - before

    r = cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resume: {done_first} of 12 images already rendered" in r.stdout
    assert f"{12 - done_first} rendered, {done_first} reused" in r.stdout
    total = executed(server) + executed(second_server) - before
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
    again = cli(*args, "--validation-images", val.parent)
    assert again.returncode == 0 and "0 rendered, 12 reused" in again.stdout
    page = np.asarray(Image.open(out).convert("RGB"))
    assert page.shape[1] == label_w + 5 * PX
    assert tuple(page[head_h + PX + PX // 2, label_w + 4 * PX + PX // 2]) == (255, 0, 0)
    assert (page[head_h:head_h + PX, label_w + 4 * PX:] == (24, 24, 24)).all(), "step 100 has none"


def test_a_server_killed_mid_sweep_hands_its_work_to_the_other(server, linked, clip_link, tmp_path,
                                                               tiny_models, user_models, training_root):
    doomed = start_server(tmp_path / "doomed", tiny_models, user_models, training_root)
    try:
        link(doomed)
        wf = workflow(tmp_path, "cli_dead")
        out = tmp_path / "dead.png"
        proc = cli("--workflow", wf, "--run", RUN, "--seeds", "11,12,13", "--server", doomed.url,
                    "--server", server.url, "--out", out, popen=True)
        lines = []
        wait_for(proc, lambda s: s.startswith("[") and f"({doomed.url};" in s, lines)
        doomed.proc.kill()  # the machine goes away mid-checkpoint
        rest = rest_of(proc, 600)
    finally:
        doomed.stop()
    text = "".join(lines) + rest
    assert proc.returncode == 0, text
    assert f"server {doomed.url} stopped answering" in text and "go to the other server(s)" in text
    assert "[9/9]" in text
    assert len(list((tmp_path / "dead-images").glob("*.png"))) == 9
    assert out.exists()


def test_bad_input_is_named_and_the_rest_completes(server, linked, clip_link, tmp_path):
    wf = workflow(tmp_path, "cli_bad")
    empty = tmp_path / "prompts.txt"
    empty.write_text("# nothing but a comment\n\n")
    r = cli("--workflow", wf, "--run", RUN, "--prompts", empty, "--server", server.url, "--out", tmp_path / "e.png")
    assert r.returncode == 2 and "--prompts" in r.stderr and "the prompt list is empty" in r.stderr
    # A checkpoint that is no model, and a name the server refuses; the good one still renders.
    broken = f"{RUN}-broken"
    stf.fake_checkpoint(Path(server.env["SD35WB_TRAINING_ROOTS"]) / broken, 5)
    status, _ = server.request("/sd35wb/simpletuner/sync", {"output_dir": broken, "run": broken})
    assert status == 200
    out = tmp_path / "bad.png"
    r = cli("--workflow", wf, "--models", f"{linked[1]},{RUN}/checkpoint-9.safetensors,{broken}/checkpoint-5.safetensors",
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
    bare = start_server(tmp_path / "bare", tiny_models, user_models, training_root)
    try:
        wf = workflow(tmp_path, "cli_refuse")
        out = tmp_path / "refuse.png"
        r = cli("--workflow", wf, "--models", ",".join(linked[:2]), "--server", bare.url, "--server", server.url,
                 "--out", out)
    finally:
        bare.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"on {bare.url}: rejected (HTTP 400)" in r.stdout and "trying another server" in r.stdout
    assert "2 rendered, 0 reused" in r.stdout
