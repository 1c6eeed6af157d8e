"""API tier: ``python -m sd35wb.sweep --scores`` against a real ComfyUI on 127.0.0.1: each queued workflow
scores its images on the server (the pack's Score Images node, tiny random CLIP and DINOv2 in the server's
models/clip_vision); the CLI writes the scores JSON / CSV and the scoreboard next to the grid, names the
recommended checkpoint, keeps the scores in its resume state, and a second run renders nothing again."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
from PIL import Image
from sweep_helpers import cli, executed

from tools import lora_fixtures
from tools.score_fixtures import write_tiny_clip, write_tiny_dino, write_training_images
from tools.sweep_host import lora_workflow

RUN = "cli-score-run"


def _workflow(path, clip_name):
    path.write_text(json.dumps(lora_workflow(prefix="score_sweep", clip_name=clip_name)))
    return path


def test_cli_scores_every_image_on_its_server_and_names_the_best_checkpoint(server, user_models, training_root,
                                                                            clip_link, tmp_path):
    files = lora_fixtures.build_all()
    run = user_models / "loras" / RUN
    run.mkdir(parents=True, exist_ok=True)
    for step in (100, 200):
        shutil.copyfile(files["sd3-peft"], run / f"checkpoint-{step}.safetensors")
    write_tiny_clip(user_models / "clip_vision" / "openai-clip-tiny")
    write_tiny_dino(user_models / "clip_vision" / "dinov2-tiny")
    train = training_root / "cli-score-images"
    write_training_images(train, n=3)
    out = tmp_path / "scored.png"
    args = ["--workflow", _workflow(tmp_path / "wf.json", clip_link.name), "--lora-run", RUN, "--strengths", "0,1",
            "--prompt", "a red fox in the snow", "--prompt", "[held out] a lighthouse at night", "--seeds", "1,2",
            "--server", server.url, "--out", out, "--scores", "--clip-model", "openai-clip-tiny/model.safetensors",
            "--dino-model", "dinov2-tiny/model.safetensors", "--training-images", str(train)]
    r = cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.with_name("scored.scores.json").read_text())
    assert list(doc["metrics"]) == ["clip", "memorisation", "diversity", "drift"]
    rows = {(r_["label"], r_["strength"]): r_ for r_ in doc["rows"]}
    assert set(rows) == {(f"checkpoint-{s}", w) for s in (100, 200) for w in (0.0, 1.0)}
    for (_, strength), row in rows.items():
        sc = row["scores"]
        assert sc["clip"]["n"] == 4 and sc["memorisation"]["n"] == 4 and sc["drift"]["n"] == 2
        assert sc["memorisation"]["nearest"].startswith("train_")
        assert (sc["drift"]["mean"] < 1e-6) == (strength == 0), "drift is 0 exactly at strength 0"
    assert doc["recommended"]["strength"] == 1.0 and doc["recommended"]["step"] == 100, "same LoRA: the earlier step"
    assert "recommended: checkpoint-100 @ 1 (" in r.stdout and "rule: the highest prompt adherence" in r.stdout
    table = list(csv.DictReader(out.with_name("scored.scores.csv").read_text().splitlines()))
    assert len(table) == 4
    board = np.asarray(Image.open(out.with_name("scored-scoreboard.png")))
    assert board.shape[1] >= 600 and board.std() > 10
    state = json.loads(out.with_name("scored.sweep.json").read_text())["cells"]
    assert len(state) == 16 and all(len(e["scores"]) == 1 and len(e["scores"][0]["look"]) == 32 for e in state.values())
    before = executed(server)
    again = cli(*args)
    assert again.returncode == 0 and "16 reused" in again.stdout, again.stdout + again.stderr
    assert executed(server) == before, "the scores were kept with the images: nothing rendered or scored again"
    assert json.loads(out.with_name("scored.scores.json").read_text()) == doc


def test_cli_scores_refuse_flags_without_scores_and_a_workflow_that_saves_nothing(server, tmp_path, clip_link):
    wf = _workflow(tmp_path / "wf.json", clip_link.name)
    r = cli("--workflow", wf, "--loras", "a.safetensors", "--server", server.url, "--out", tmp_path / "g.png",
            "--dino-model", "dinov2-tiny/model.safetensors")
    assert r.returncode == 2 and "--dino-model: only with --scores" in r.stderr, r.stderr
    doc = json.loads(wf.read_text())
    del doc["9"]
    wf.write_text(json.dumps(doc))
    r = cli("--workflow", wf, "--loras", "a.safetensors", "--server", server.url, "--out", tmp_path / "g.png", "--scores")
    assert r.returncode == 2 and "--scores: the workflow saves no images" in r.stderr, r.stderr
