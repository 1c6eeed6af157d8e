"""Host tier: the checkpoint sweep node on a SimpleTuner run (saved by diffusers, linked by the
linker node) in the real in-process host: checkpoints x prompts x seeds, batched latents, the paged
grid, SimpleTuner's validation images beside the rows, a bad checkpoint skipped, and resume after
an interrupt without rendering anything twice."""

from __future__ import annotations

import contextlib

import comfy.model_management as mm
import numpy as np
import pytest
import torch
from helpers import call, progress_events
from PIL import Image
from testnodes import make_conditioning

from sd35wb import grid
from tools import sd35_fixtures
from tools import simpletuner_fixtures as stf

pytestmark = pytest.mark.usefixtures("training_roots_env", "cold_render_cache")

RUN = "host-sweep"
PX = 64


@pytest.fixture(scope="module", autouse=True)
def link_into_user_models(host, user_models):
    """As in test_simpletuner: the session's user folder is the host's default model folder here."""
    fp = host.folder_paths
    saved = {f: fp.get_folder_paths(f) for f in ("diffusion_models", "loras", "text_encoders")}
    for f in saved:
        fp.add_model_folder_path(f, str(user_models / f), is_default=True)
    yield
    for f, paths in saved.items():
        fp.folder_names_and_paths[f][0][:] = paths


@pytest.fixture(scope="module")
def run_models(host, tmp_path_factory):
    """checkpoint-100 and -200 saved by diffusers, checkpoint-50 a safetensors file that is no model,
    a SimpleTuner validation image for step 100 only; linked by the linker node."""
    out = tmp_path_factory.mktemp("sweep-run") / RUN
    for step in (100, 200):
        stf.diffusers_checkpoint(out, step)
    stf.fake_checkpoint(out, 50)
    v = out / "validation_images"
    v.mkdir()
    for step, color in ((100, (255, 0, 0)),):
        Image.new("RGB", (PX, PX), color).save(v / f"step_{step}_validation_{PX}x{PX}.png")
    models, *_ = call(host.nodes, "SD35WB_SimpleTunerLink", output_dir=str(out), run=RUN, full=True, ema=False,
                        lora=False, final=False)
    return models.splitlines()


def _base(host, batch=1):
    (latent,) = call(host.nodes, "EmptySD3LatentImage", width=PX, height=PX, batch_size=batch)
    (vae,) = call(host.nodes, "VAELoader", vae_name="taesd3")
    return dict(negative=make_conditioning("sd3", 2, PX, PX), latent_image=latent, vae=vae, steps=2, cfg=4.0,
                sampler_name="euler", scheduler="simple", denoise=1.0, weight_dtype="default", order="numeric")


@contextlib.contextmanager
def sampling(stop_after=None, steps=2):
    """Records the sampler's steps (the progress hook) and can interrupt the sweep after n images."""

    def on_event(value, total):
        if stop_after is not None and value >= stop_after * steps:
            mm.interrupt_current_processing(True)  # as the Cancel button does; the node stops before the next image

    try:
        with progress_events(on_event) as events:
            yield events
    finally:
        mm.interrupt_current_processing(False)


def _render(host, name, cond, seed, batch=1):
    (model,) = call(host.nodes, "UNETLoader", unet_name=name, weight_dtype="default")
    b = _base(host, batch)
    (samples,) = call(host.nodes, "KSampler", model=model, seed=seed, steps=2, cfg=4.0, sampler_name="euler",
                      scheduler="simple", positive=cond, negative=b["negative"], latent_image=b["latent_image"],
                      denoise=1.0)
    (img,) = call(host.nodes, "VAEDecode", samples=samples, vae=b["vae"])
    return img


@pytest.fixture(scope="module")
def clip(host, user_models):
    dest = user_models / "text_encoders" / "sweep_clip_l.safetensors"
    if not dest.exists():
        dest.symlink_to(sd35_fixtures.clip_l_file())
    (c,) = call(host.nodes, "CLIPLoader", clip_name=dest.name, type="sd3", device="default")
    return c


def test_grid_of_checkpoints_x_prompts_x_seeds_with_every_batch_image(host, run_models, clip):
    prompts = ["a red fox sitting in fresh snow at dawn", "a lighthouse on a cliff at night"]
    listed = "\n".join(reversed(run_models))  # numeric order is restored
    mm.cleanup_models_gc()
    before = {id(lm.model) for lm in mm.current_loaded_models}  # earlier tests' models may still be loaded
    with sampling() as events:
        images, pages, labels, report, *_ = call(host.nodes, "SD35WB_CheckpointSweep", models=listed, prompts="\n".join(prompts),
                                     clip=clip, seed=5, seed_count=2, validation_images=True, **_base(host, batch=2))
    # The sweep left none of its models loaded.
    mm.cleanup_models_gc()
    assert [lm for lm in mm.current_loaded_models if lm.model is not None and id(lm.model) not in before
            and type(lm.model.model).__name__ == "SD3"] == []
    assert labels.splitlines() == ["checkpoint-50", "checkpoint-100", "checkpoint-200"]
    assert report.splitlines()[0].startswith("plan: 24 images (3 rows x 8 columns), 3 model loads")
    assert "checkpoint loads this run: 2" in report and "row checkpoint-50: not a diffusion model" in report
    # checkpoint-50 is no model: skipped before any work; the two others x 2 prompts x 2 seeds x batch 2.
    assert images.shape == (2 * 2 * 2 * 2, PX, PX, 3)
    totals = {t for _, t in events}
    assert totals == {2 * 4 * 2}, "one progress bar over the whole sweep (8 latents x 2 steps)"
    assert events[-1] == (16, 16)
    # Every image is exactly what core CLIPTextEncode + UNETLoader + KSampler + VAEDecode render.
    (cond,) = call(host.nodes, "CLIPTextEncode", clip=clip, text=prompts[1])
    ref = _render(host, f"{RUN}/checkpoint-200.safetensors", cond, seed=6, batch=2)
    # image order: checkpoint, prompt, seed, batch -> ckpt 200 is the 2nd rendered, prompt 2, seed 6
    first = (1 * 4 + 1 * 2 + 1) * 2
    ref = ref.detach()
    assert torch.allclose(images[first:first + 2], ref, atol=1e-5)
    flat = images.reshape(images.shape[0], -1)
    assert len({tuple(np.round(f[:64].numpy(), 4)) for f in flat}) == images.shape[0], "all images differ"
    # The grid: one page; 3 rows; 2 prompts x 2 seeds x 2 batch images + 1 SimpleTuner column.
    assert pages.shape[0] == 1
    page = (pages[0].numpy() * 255).round().astype(np.uint8)
    h, w = page.shape[:2]
    label_w, head_h = w - 9 * PX, h - 3 * PX
    assert 0 < label_w and 0 < head_h < PX
    tile = page[head_h + 2 * PX:head_h + 3 * PX, label_w + 7 * PX:label_w + 8 * PX]  # ckpt 200, p2 seed 6 #2
    assert np.abs(tile.astype(int) - (ref[1].numpy() * 255).round().astype(int)).max() <= 1
    v100 = page[head_h + PX + PX // 2, label_w + 8 * PX + PX // 2]
    assert tuple(v100) == (255, 0, 0), "SimpleTuner's own image beside its row"
    assert (page[head_h + 2 * PX:, label_w + 8 * PX:] == grid.BACKGROUND).all(), "step 200 has none"
    assert (page[head_h:head_h + PX, label_w:label_w + PX] != grid.BACKGROUND).any(), "checkpoint-50 says why"


def test_interrupted_sweep_resumes_without_rendering_twice(host, run_models):
    kw = dict(models="\n".join(run_models[1:]), positive=make_conditioning("sd3", 11, PX, PX), seed=123, seed_count=2,
              **_base(host))  # 2 checkpoints x 2 seeds
    with sampling(stop_after=3) as events, pytest.raises(mm.InterruptProcessingException):
        call(host.nodes, "SD35WB_CheckpointSweep", **kw)
    assert max(v for v, _ in events) == 3 * 2
    with sampling() as events:
        images, pages, _, _, *_ = call(host.nodes, "SD35WB_CheckpointSweep", **kw)
    steps_run = [v for v, _ in events if v % 2 == 1]  # the sampler's own step callbacks (odd values)
    assert len(steps_run) == 1, "only the image the interrupt left undone is sampled"
    assert images.shape[0] == 4
    # The reused images equal a fresh render of the same cell.
    ref = _render(host, run_models[1], kw["positive"], seed=123)
    assert torch.allclose(images[0], ref[0].detach(), atol=1e-5)
    with sampling() as events:
        call(host.nodes, "SD35WB_CheckpointSweep", **{**kw, "seed_count": 3})
    assert len([v for v, _ in events if v % 2 == 1]) == 2, "a third seed renders only the 2 new images"


def test_wide_sweeps_page_and_downscale(host, run_models):
    with sampling():
        images, pages, _, _, *_ = call(host.nodes, "SD35WB_CheckpointSweep", models=run_models[1],
                                positive=make_conditioning("sd3", 3, PX, PX), seed=1, seed_count=3, max_tile=32,
                                page_width=110, **_base(host))
    assert images.shape == (3, PX, PX, 3)
    assert pages.shape[0] >= 2, "columns that do not fit the page width continue on a second page"
    assert pages.shape[2] <= 110 and pages.shape[1] < 32 + PX, "tiles downscaled to 32 px"


def test_bad_inputs_are_named_before_work(host, run_models, clip):
    b = _base(host)
    with pytest.raises(ValueError, match="prompts: the prompt list is empty and no 'positive'"):
        call(host.nodes, "SD35WB_CheckpointSweep", models=run_models[1], prompts="", **b)
    with pytest.raises(ValueError, match="prompts: the prompt list is empty; give one prompt per line"):
        call(host.nodes, "SD35WB_CheckpointSweep", models=run_models[1], prompts="\n# nothing\n", clip=clip, **b)
    with pytest.raises(ValueError, match="clip: 'prompts' needs a text encoder"):
        call(host.nodes, "SD35WB_CheckpointSweep", models=run_models[1], prompts="a fox", **b)
    with pytest.raises(ValueError, match=r"models: nope/checkpoint-1.safetensors is not in models/diffusion_models \(.+\)\. Run the SimpleTuner linker"):
        call(host.nodes, "SD35WB_CheckpointSweep", models=f"{run_models[1]}\nnope/checkpoint-1.safetensors",
             prompts="a fox", clip=clip, **b)
    with pytest.raises(ValueError, match="models: none of them is a diffusion model.*checkpoint-50: not a diffusion"):
        call(host.nodes, "SD35WB_CheckpointSweep", models=run_models[0], prompts="a fox", clip=clip, **b)
