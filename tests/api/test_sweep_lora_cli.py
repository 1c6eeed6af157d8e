"""API tier: ``python -m sd35wb.sweep --lora-run`` against a real ComfyUI on 127.0.0.1: a LoRA run's
checkpoints x strengths through the workflow's LoraLoaderModelOnly, with the server's own loads
counted: ComfyUI keeps the base model loaded while only the LoRA changes; a LoRA that matches nothing
of the base is a row error (the pack's /sd35wb/lora/check), not the base image under its name."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image
from sweep_helpers import cli, interrupt_then_resume

from tools import lora_fixtures
from tools.sweep_host import lora_workflow

RUN = "cli-lora-run"


def _workflow(path):
    path.write_text(json.dumps(lora_workflow()))
    return path


def test_lora_run_sweep_keeps_the_base_loaded_on_the_server(server, user_models, tmp_path):
    files = lora_fixtures.build_all()
    run = user_models / "loras" / RUN
    run.mkdir(parents=True, exist_ok=True)
    for step, name in ((100, "sd3-peft"), (200, "sd3-simpletuner-comfyui"), (300, "sd3-matches-nothing")):
        shutil.copyfile(files[name], run / f"checkpoint-{step}.safetensors")
    wf = _workflow(tmp_path / "lora.json")
    out = tmp_path / "lora.png"
    before = server.log().count("model_type FLOW")
    r = cli("--workflow", wf, "--lora-run", RUN, "--strengths", "0,0.7", "--server", server.url, "--out", out)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "3 LoRA checkpoints x 2 strengths x 1 prompts x 1 seeds = 6 images" in r.stdout
    assert "the base model once per server" in r.stdout and "3 LoRA patch(es)" in r.stdout
    assert ("failed: checkpoint-300 strength 0.7 p1 seed 5: LoRA checkpoint-300.safetensors: only 0 of its 47 "
            "modules match tiny-sd35m.safetensors") in r.stdout, r.stdout
    assert "5 rendered, 0 reused" in r.stdout, "strength 0 of checkpoint-300 is the base: rendered"
    # ComfyUI logs "model_type FLOW" each time it builds an SD3 model object: once per load from the file, and
    # once for each of the 3 LoRA checks, which build the base on the meta device (header only, no weights).
    built = server.log().count("model_type FLOW") - before
    assert built >= 3, "the checks were made (else this count proves nothing)"
    assert built - 3 <= 1, "the base diffusion model was loaded from its file more than once"
    state = json.loads(out.with_name("lora.sweep.json").read_text())["cells"]
    imgs = {(e["model"], e["strength"]): np.asarray(Image.open(tmp_path / e["files"][0]).convert("RGB"))
            for e in state.values()}
    assert set(imgs) == {(f"{RUN}/checkpoint-{s}.safetensors", w) for s in (100, 200) for w in (0.0, 0.7)} | {
        (f"{RUN}/checkpoint-300.safetensors", 0.0)}
    a0, b0 = imgs[(f"{RUN}/checkpoint-100.safetensors", 0.0)], imgs[(f"{RUN}/checkpoint-200.safetensors", 0.0)]
    assert np.array_equal(a0, b0), "strength 0 renders the base, whichever LoRA"
    assert not np.array_equal(a0, imgs[(f"{RUN}/checkpoint-100.safetensors", 0.7)])
    page = np.asarray(Image.open(out).convert("RGB"))
    assert page.shape[0] > 6 * 64, "6 rows: LoRA checkpoint x strength"
    status, body = server.request("/sd35wb/lora/check?lora=nope.safetensors&model=tiny-sd35m.safetensors")
    body = json.loads(body)
    assert status == 400 and body["field"] == "lora" and "not in models/loras" in body["error"], body
    status, body = server.request(f"/sd35wb/lora/check?lora={RUN}/checkpoint-100.safetensors&model=tiny-sd35m.safetensors")
    body = json.loads(body)
    assert status == 200 and body["ok"] and body["matched"] == body["modules"] == 47, body


def test_ctrl_c_then_resume_of_a_lora_sweep_renders_only_what_is_missing(server, user_models, tmp_path):
    files = lora_fixtures.build_all()
    run = user_models / "loras" / f"{RUN}-resume"
    run.mkdir(parents=True, exist_ok=True)
    for step in (100, 200):
        shutil.copyfile(files["sd3-peft"], run / f"checkpoint-{step}.safetensors")
    wf = _workflow(tmp_path / "lora.json")
    out = tmp_path / "resume.png"
    args = ["--workflow", wf, "--lora-run", f"{RUN}-resume", "--strengths", "0.5,1", "--seeds", "1,2",
            "--server", server.url, "--out", out]
    interrupt_then_resume(server, args, out, 8, "only the missing LoRA x strength x seed cells were queued")
