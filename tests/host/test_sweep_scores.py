"""Host tier: the Checkpoint Sweep with a Sweep Scores node, in the real in-process host on the tiny
models and tiny random scoring models (Hugging Face format, in models/clip_vision as a user places them):
a LoRA run x strengths with a held-out prompt; drift 0 at strength 0, a render copied into the training
images scores ~1 and is named, seed diversity 0 when every seed gives the same image; the scores JSON,
the scoreboard picture, the report's recommendation and its rule."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from helpers import call, sweep_node_inputs
from PIL import Image

from tools import lora_fixtures, sd35_fixtures
from tools.score_fixtures import write_tiny_clip, write_tiny_dino

PX = 64
pytestmark = pytest.mark.usefixtures("cold_render_cache")


@pytest.fixture(scope="module")
def setup(host, user_models, training_root):
    files = lora_fixtures.build_all()
    loras = []
    for name in ("sd3-peft",):
        dst = user_models / "loras" / "score-run" / f"{name}.safetensors"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            shutil.copyfile(files[name], dst)
        loras.append(f"score-run/{name}.safetensors")
    write_tiny_clip(user_models / "clip_vision" / "openai-clip-tiny")
    write_tiny_dino(user_models / "clip_vision" / "dinov2-tiny")
    te = user_models / "text_encoders" / "scores_clip_l.safetensors"
    if not te.exists():
        te.symlink_to(sd35_fixtures.clip_l_file())
    (clip,) = call(host.nodes, "CLIPLoader", clip_name=te.name, type="sd3", device="default")
    (base,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")
    return {"loras": loras, "clip": clip, "base": base, "train": training_root / "score-run-images"}


def _scorer(host, training_images="", **kw):
    return call(host.nodes, "SD35WB_SweepScores", clip_model="openai-clip-tiny/model.safetensors",
                dino_model="dinov2-tiny/model.safetensors", training_images=training_images, max_memorisation=0.9,
                max_drift=0.5, **kw)[0]


def _sweep(host, setup, scorer, **kw):
    inp = sweep_node_inputs(host, PX, steps=2, seed=3, model=setup["base"], clip=setup["clip"],
                            models="\n".join(setup["loras"]), strengths="0, 1",
                            prompts="a red fox in the snow\n[held out] a lighthouse at night", seed_count=2,
                            scorer=scorer, **kw)
    inp.pop("positive")
    return call(host.nodes, "SD35WB_CheckpointSweep", **inp)


def test_a_lora_sweep_with_scores_reports_every_score_and_recommends_a_checkpoint(host, setup):
    images, pages, labels, report, scores_json, board, scores_csv = _sweep(host, setup, _scorer(host))
    doc = json.loads(scores_json)
    table = list(csv.DictReader(scores_csv.splitlines()))
    assert [(r["label"], float(r["strength"])) for r in table] == [("sd3-peft", 0.0), ("sd3-peft", 1.0)]
    assert list(doc["metrics"]) == ["clip", "diversity", "drift"], "no training images: no memorisation"
    rows = {(r["label"], r["strength"]): r for r in doc["rows"]}
    assert set(rows) == {("sd3-peft", 0.0), ("sd3-peft", 1.0)}
    for (_label, strength), r in rows.items():
        assert r["base"] == (strength == 0)
        assert r["scores"]["clip"]["n"] == 4, "2 prompts x 2 seeds, each image with its own prompt"
        assert r["scores"]["drift"]["n"] == 2, "drift only on the held-out prompt's 2 seeds"
        if strength == 0:
            assert r["scores"]["drift"]["mean"] == pytest.approx(0.0, abs=1e-6), "strength 0 is the base itself"
        else:
            assert r["scores"]["drift"]["mean"] > 1e-4, "the LoRA changes the held-out render"
        assert r["scores"]["diversity"]["mean"] > 0, "two seeds give two images"
    rec = doc["recommended"]
    assert rec["strength"] == 1.0 and rec["label"] == "sd3-peft", "the base is never recommended"
    assert "the highest prompt adherence (mean CLIP score)" in rec["rule"] and "the base itself is never" in rec["rule"]
    assert f"recommended: {rec['label']} @ 1" in report and "rule: " in report
    assert "prompt" not in labels and board.shape[0] == 1 and board.shape[2] >= 600, board.shape
    # the held-out mark is not part of the prompt the model sees: same images as without the mark
    assert images.shape[0] == 2 * 2 * 2


def test_memorisation_names_the_training_image_a_render_copies(host, setup, training_root, monkeypatch):
    monkeypatch.setenv("SD35WB_TRAINING_ROOTS", str(training_root))  # as ComfyUI is started for the linker
    images, *_ = _sweep(host, setup, None)
    setup["train"].mkdir(parents=True, exist_ok=True)
    copied = images[5].numpy()  # a strength-1 render (rows: strength 0, then 1; 2 prompts x 2 seeds each)
    Image.fromarray((copied * 255).clip(0, 255).astype(np.uint8)).save(setup["train"] / "copied.png")
    Image.fromarray(np.full((PX, PX, 3), 128, np.uint8)).save(setup["train"] / "grey.png")
    _, _, _, report, scores_json, *_ = _sweep(host, setup, _scorer(host, training_images=str(setup["train"])))
    doc = json.loads(scores_json)
    mem = {(r["label"], r["strength"]): r["scores"]["memorisation"] for r in doc["rows"]}
    assert mem[("sd3-peft", 1.0)]["max"] == pytest.approx(1.0, abs=2e-3)
    assert mem[("sd3-peft", 1.0)]["nearest"] == "copied.png"
    # 0.9 is the threshold: the row that copies a training image is left out, and nothing else passes
    assert doc["recommended"]["label"] is None, doc["recommended"]
    assert "sd3-peft @ 1: memorisation 1.000 > 0.9 (nearest copied.png)" in doc["recommended"]["why"]
    assert "recommended: none" in report


def test_seed_diversity_is_zero_when_every_seed_gives_the_same_image(host, setup):
    scorer = call(host.nodes, "SD35WB_SweepScores", clip_model="none", dino_model="dinov2-tiny/model.safetensors",
                  training_images="", max_memorisation=0.9, max_drift=0.5)[0]
    doc = json.loads(_sweep(host, setup, scorer, denoise=0.0)[4])  # denoise 0: the empty latent, whatever the seed
    assert all(r["scores"]["diversity"]["mean"] == pytest.approx(0.0, abs=1e-6) for r in doc["rows"])
    doc = json.loads(_sweep(host, setup, scorer)[4])
    assert all(r["scores"]["diversity"]["mean"] > 1e-4 for r in doc["rows"])


def test_bad_scorer_inputs_name_the_input_and_the_fix(host, setup, training_root, monkeypatch):
    monkeypatch.setenv("SD35WB_TRAINING_ROOTS", str(training_root))
    with pytest.raises(ValueError, match="clip_model / dino_model: both are 'none'"):
        call(host.nodes, "SD35WB_SweepScores", clip_model="none", dino_model="none", training_images="",
             max_memorisation=0.9, max_drift=0.5)
    with pytest.raises(ValueError, match="clip_model: dinov2-tiny/model.safetensors is not a full CLIP model"):
        call(host.nodes, "SD35WB_SweepScores", clip_model="dinov2-tiny/model.safetensors", dino_model="none",
             training_images="", max_memorisation=0.9, max_drift=0.5)
    with pytest.raises(PermissionError, match="training_images: '/etc' is outside the training roots"):
        _sweep(host, setup, _scorer(host, training_images="/etc"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as here: the hub cannot be reached
    with pytest.raises(ValueError, match="clip_model: openai/clip-vit-large-patch14-336/config.json is not in the Hugging "
                                         "Face cache and the hub is offline .*models/clip_vision/"):
        call(host.nodes, "SD35WB_SweepScores", clip_model="openai/clip-vit-large-patch14-336 (Hugging Face cache / fetch)",
             dino_model="none", training_images="", max_memorisation=0.9, max_drift=0.5)
