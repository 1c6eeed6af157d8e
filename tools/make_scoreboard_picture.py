"""The README / docs pictures of a scored LoRA sweep: the scoreboard and the grid with its scores, drawn by
the sweep node itself from a real sweep of the test models.

    python -m tools.make_scoreboard_picture   # writes docs/img/scoreboard.png and docs/img/sweep_scores_grid.png

A SimpleTuner LoRA run of four checkpoints (a different random LoRA per step, SimpleTuner's saver) on the
tiny SD3.5-Medium-shaped model, strengths 0 (the base), 0.8 and 1, two trained prompts and one held out,
two seeds, scored by tiny random CLIP and DINOv2 models in Hugging Face format against a folder of
training images. Random weights: the scores mean nothing, but every panel, line, label and the
recommendation are exactly what a user gets from a real run.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tools.sweep_host import REPO, boot, link_clip_l

OUT = REPO / "docs" / "img"
STEPS = (500, 1000, 1500, 2000)
PROMPTS = ["a photo of sks dog on a beach", "a photo of sks dog in a bucket", "[held out] a red car parked in the rain"]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sd35wb-scoreboard-picture-") as tmp:
        work = Path(tmp)
        nodes, sweep_node = boot(work, threads=1)
        import folder_paths
        import numpy as np
        import torch
        from PIL import Image

        from tools import lora_fixtures
        from tools.score_fixtures import write_tiny_clip, write_tiny_dino, write_training_images

        for folder in ("loras", "clip_vision"):
            folder_paths.add_model_folder_path(folder, str(work / folder), is_default=True)
        run = work / "training" / "my-lora-run"
        lora_fixtures.lora_run(run, steps=STEPS)
        names = []
        for step in STEPS:
            link = work / "loras" / "my-lora-run" / f"checkpoint-{step}.safetensors"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(run / f"checkpoint-{step}" / "pytorch_lora_weights.safetensors")
            names.append(f"my-lora-run/checkpoint-{step}.safetensors")
        write_tiny_clip(work / "clip_vision" / "openai-clip-tiny")
        write_tiny_dino(work / "clip_vision" / "dinov2-tiny")
        write_training_images(work / "training" / "my-lora-run-images", n=6)
        os.environ["SD35WB_TRAINING_ROOTS"] = str(work / "training")
        (clip,) = nodes.CLIPLoader().load_clip(link_clip_l(work), type="sd3")
        (neg,) = nodes.CLIPTextEncode().encode(clip, "blurry, low quality")
        (vae,) = nodes.VAELoader().load_vae("taesd3")
        (base,) = nodes.UNETLoader().load_unet("tiny-sd35m.safetensors", "default")
        scorer_cls = importlib_node("SweepScores")
        scorer = scorer_cls.execute(clip_model="openai-clip-tiny/model.safetensors",
                                    dino_model="dinov2-tiny/model.safetensors",
                                    training_images=str(work / "training" / "my-lora-run-images"),
                                    max_memorisation=0.9, max_drift=0.5).result[0]
        latent = {"samples": torch.zeros([1, 16, 16, 16])}  # 128 x 128 px
        with torch.inference_mode():
            out = sweep_node.execute(models="\n".join(names), negative=neg, latent_image=latent, vae=vae,
                                     prompts="\n".join(PROMPTS), clip=clip, seed=42, seed_count=2, steps=4, cfg=5.0,
                                     sampler_name="euler", scheduler="sgm_uniform", max_tile=128, model=base,
                                     strengths="0, 0.8, 1", scorer=scorer)
        _, pages, _, report, scores_json, board, _csv = out.result
        OUT.mkdir(parents=True, exist_ok=True)
        for name, t in (("scoreboard.png", board[0]), ("sweep_scores_grid.png", pages[0])):
            Image.fromarray((t.numpy() * 255).round().clip(0, 255).astype(np.uint8)).save(OUT / name)
            print(f"wrote docs/img/{name} ({t.shape[1]} x {t.shape[0]} px)")
        rec = json.loads(scores_json)["recommended"]
        print(f"recommended: {rec['label']} @ {rec['strength']}: {rec['why']}")
        print(report.splitlines()[-1])


def importlib_node(name: str):
    import importlib

    return getattr(importlib.import_module("sd35wb_pack.nodes.scores"), name)


if __name__ == "__main__":
    main()
