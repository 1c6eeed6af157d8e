"""The README / docs picture of a checkpoint sweep grid, drawn by the sweep node itself.

    python -m tools.make_sweep_picture      # writes docs/img/sweep_grid.png

Four checkpoints of a SimpleTuner-layout run saved by diffusers (the tiny SD3.5-Medium-shaped model,
weights perturbed per step), two prompts encoded by a random-weight CLIP-L, two seeds, 128 px, 8 steps:
random weights draw noise, but the grid, its axes and its labels are exactly what a user gets.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tools.sweep_host import REPO, boot, link_clip_l

OUT = REPO / "docs" / "img" / "sweep_grid.png"
PROMPTS = ["a red fox sitting in fresh snow at dawn, detailed fur", "a lighthouse on a cliff at night, long exposure"]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sd35wb-sweep-picture-") as tmp:
        work = Path(tmp)
        nodes, sweep_node = boot(work, threads=1)  # the machine is shared; one thread each
        import torch
        from PIL import Image

        from sd35wb import grid
        from tools import simpletuner_fixtures as stf

        run = work / "training" / "my-sd35-run"
        names = []
        for step in (500, 1000, 1500, 2000):
            ck = stf.diffusers_checkpoint(run, step)
            link = work / "diffusion_models" / "my-sd35-run" / f"checkpoint-{step}.safetensors"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(ck / "transformer" / "diffusion_pytorch_model.safetensors")
            names.append(f"my-sd35-run/checkpoint-{step}.safetensors")
        (clip,) = nodes.CLIPLoader().load_clip(link_clip_l(work), type="sd3")
        (neg,) = nodes.CLIPTextEncode().encode(clip, "blurry, low quality")
        (vae,) = nodes.VAELoader().load_vae("taesd3")
        latent = {"samples": torch.zeros([1, 16, 16, 16])}  # EmptySD3LatentImage at 128 x 128
        with torch.inference_mode():
            out = sweep_node.execute(models="\n".join(names), negative=neg, latent_image=latent, vae=vae,
                                     prompts="\n".join(PROMPTS), clip=clip, seed=42, seed_count=2, steps=8, cfg=5.0,
                                     sampler_name="euler", scheduler="sgm_uniform", max_tile=128)
        page = out.result[1][0]
        OUT.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((page.numpy() * 255).round().clip(0, 255).astype("uint8")).save(OUT)
        print(f"wrote {OUT.relative_to(REPO)} ({page.shape[1]} x {page.shape[0]} px, tiles {grid.MAX_TILE} max)")


if __name__ == "__main__":
    main()
