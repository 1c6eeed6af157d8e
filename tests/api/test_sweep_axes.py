"""API tier: ``python -m sd35wb.sweep --axis NODE.INPUT=...`` against a real ComfyUI on 127.0.0.1:
every axis value reaches its input and equals a separate run of that workflow; bad axes and an
oversized plan exit 2 before anything is queued; Ctrl-C and resume are keyed on every axis value;
results are read through the Jobs API where the host has it."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from PIL import Image
from sweep_helpers import PX, cli, executed, interrupt_then_resume, workflow

from sd35wb.sweep import Server, output_images


def _render_alone(url: str, prompt: dict) -> np.ndarray:
    """The workflow queued on its own, as a user would queue it in the editor."""
    srv = Server(url)
    pid = srv.queue(prompt)
    deadline = time.time() + 300
    while (res := srv.result(pid)) is None:
        assert time.time() < deadline, "no result"
        time.sleep(0.2)
    assert res.status == "success", res.error
    ims = output_images(res.outputs, None)
    path = os.path.join(os.path.dirname(__file__), "_alone.png")
    try:
        with open(path, "wb") as f:
            f.write(srv.view(ims[0]))
        return np.asarray(Image.open(path).convert("RGB"))
    finally:
        os.remove(path)


def test_each_axis_value_reaches_the_sampler_and_equals_a_separate_run(server, linked, clip_link, tmp_path):
    wf = workflow(tmp_path, "axes")
    doc = json.loads(wf.read_text())
    doc["6"]["inputs"]["steps"] = 2  # at one step heun ends in an euler step: the same image
    wf.write_text(json.dumps(doc))
    out = tmp_path / "axes.png"
    r = cli("--workflow", wf, "--models", linked[1], "--prompt", "a red fox in snow", "--seeds", "3",
            "--axis", "KSampler.cfg=1.5,4", "--axis", "6.sampler_name=euler|heun", "--server", server.url, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 checkpoints x 1 prompts x 1 seeds x 2 6.cfg x 2 6.sampler_name = 4 images" in r.stdout
    assert r.stdout.index("sweep: ") < r.stdout.index("[1/4]"), "the plan is stated before any image"
    files = sorted((tmp_path / "axes-images").glob("*.png"))
    assert len(files) == 4
    state = json.loads(out.with_name("axes.sweep.json").read_text())["cells"]
    got = {tuple(map(tuple, e["axes"])): np.asarray(Image.open(tmp_path / e["files"][0]).convert("RGB"))
           for e in state.values()}
    assert set(got) == {(("6.cfg", c), ("6.sampler_name", s)) for c in (1.5, 4.0) for s in ("euler", "heun")}
    base = json.loads(wf.read_text())
    for (cfg, sampler), img in got.items():
        p = json.loads(json.dumps(base))
        p["1"]["inputs"]["unet_name"] = linked[1]
        p["3"]["inputs"]["text"] = "a red fox in snow"
        p["6"]["inputs"].update(seed=3, cfg=cfg[1], sampler_name=sampler[1])
        assert np.array_equal(_render_alone(server.url, p), img), f"{cfg} {sampler} differs from its own run"
    assert len({a.tobytes() for a in got.values()}) == 4, "every axis value changed the image"
    # One row, four columns under four header levels (prompt, seed, cfg, sampler).
    page = np.asarray(Image.open(out).convert("RGB"))
    head_h = page.shape[0] - PX
    plain = cli("--workflow", wf, "--models", linked[1], "--prompt", "a red fox in snow", "--seeds", "3",
                "--server", server.url, "--out", tmp_path / "plain.png")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    plain_head = np.asarray(Image.open(tmp_path / "plain.png")).shape[0] - PX
    assert head_h == 2 * plain_head - 4, "two more header rows than prompt + seed"
    label_w = page.shape[1] - 4 * PX
    cell = np.asarray(Image.open(tmp_path / state[next(iter(state))]["files"][0]).convert("RGB"))
    assert any(np.array_equal(page[head_h:, label_w + k * PX:label_w + (k + 1) * PX], cell) for k in range(4))


def test_results_come_through_the_jobs_api_where_the_host_has_it(server):
    newest = tuple(int(x) for x in os.environ["SD35WB_HOST_VERSION"].split(".")[:2]) >= (0, 33)
    assert Server(server.url).jobs_api is newest


@pytest.mark.parametrize("axis, says", [
    ("Nope.cfg=1", "no node 'Nope' in the workflow"),
    ("KSampler.nope=1", "KSampler has no input 'nope'"),
    ("KSampler.steps=abc", "'abc' is not a whole number"),
    ("KSampler.steps=0", "0 is outside 1..10000"),
    ("KSampler.sampler_name=not_a_sampler", "'not_a_sampler' is not one of this server's options"),
    ("KSampler.cfg=", "has an empty value list"),
    ("CLIPTextEncode.text=x", "3.text is what the sweep already changes"),
    ("6.model=x", "is fed by a link, not a value"),
    ("KSampler.seed=1,2", "is what the sweep already changes"),
    ("cfg=1,2", "is not NODE.INPUT"),
])
def test_a_bad_axis_exits_2_before_anything_is_queued(server, linked, clip_link, tmp_path, axis, says):
    wf = workflow(tmp_path, "badaxis")
    before = executed(server)
    r = cli("--workflow", wf, "--models", linked[0], "--axis", axis, "--server", server.url, "--out", tmp_path / "b.png")
    assert r.returncode == 2, r.stdout + r.stderr
    assert says in r.stderr and f"--axis {axis}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert executed(server) == before and not (tmp_path / "b-images").exists()


def test_a_plan_above_max_images_is_refused_with_how_to_raise_it(server, linked, clip_link, tmp_path):
    wf = workflow(tmp_path, "toobig")
    before = executed(server)
    r = cli("--workflow", wf, "--run", "cli-sweep", "--seeds", "1,2", "--axis", "KSampler.steps=1,2",
            "--max-images", "11", "--server", server.url, "--out", tmp_path / "big.png")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "max_images: this plan renders 12 images, above the limit of 11" in r.stderr
    assert "--max-images N" in r.stderr
    assert executed(server) == before


def test_ctrl_c_then_resume_is_keyed_on_every_axis_value(server, linked, clip_link, tmp_path):
    wf = workflow(tmp_path, "axresume")
    out = tmp_path / "resume.png"
    args = ["--workflow", wf, "--models", ",".join(linked[:2]), "--seeds", "1", "--axis", "KSampler.cfg=1,2,3",
            "--server", server.url, "--out", out]
    interrupt_then_resume(server, args, out, 6, "only the missing axis values were queued")
    again = cli(*args[:4], "--seeds", "1", "--axis", "KSampler.cfg=1,2,3,4", "--server", server.url, "--out", out)
    assert again.returncode == 0 and "resume: 6 of 8 images already rendered" in again.stdout, again.stdout
