"""Host tier: a SimpleTuner run written by diffusers/peft, linked by the node and loaded by the real
host (in-process ComfyUI, CPU, tiny SD3.5-Medium-shaped weights); the sweep is tests/host/test_sweep.py."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import call
from safetensors.torch import load_file
from testnodes import make_conditioning

from tools import simpletuner_fixtures as stf

RUN = "host-ft"
PX = 64


@pytest.fixture(scope="module")
def ft_run(tmp_path_factory):
    """Three checkpoints saved by diffusers: 800, 1600 (+ sharded fp32 EMA), 2400 (+ a peft LoRA);
    plus a save still in progress (temporary-3200)."""
    out = tmp_path_factory.mktemp("simpletuner") / "sd35m-finetune"
    stf.diffusers_checkpoint(out, 800)
    stf.diffusers_checkpoint(out, 1600, ema="sharded", ema_shard_size="10MB")
    stf.diffusers_checkpoint(out, 2400, lora=True)
    stf.write_fake_safetensors(out / "temporary-3200" / "transformer" / "diffusion_pytorch_model.safetensors")
    return out


pytestmark = pytest.mark.usefixtures("training_roots_env")


@pytest.fixture(scope="module", autouse=True)
def link_into_user_models(host, user_models):
    """The linker writes into the host's first diffusion_models / loras folder. In-process, the
    session put the tiny-model cache first; make the session's user folder the default (as a user's
    extra_model_paths.yaml with is_default would) so nothing lands in the shared cache."""
    fp = host.folder_paths
    saved = {f: fp.get_folder_paths(f) for f in ("diffusion_models", "loras")}
    for f in saved:
        fp.add_model_folder_path(f, str(user_models / f), is_default=True)
        assert fp.get_folder_paths(f)[0] == str(user_models / f)
    yield
    for f, paths in saved.items():
        fp.folder_names_and_paths[f][0][:] = paths


@pytest.fixture(scope="module")
def linked(host, ft_run):
    before = host.folder_paths.get_filename_list("diffusion_models")  # the host caches this list
    models, loras, report, _ = call(host.nodes, "SD35WB_SimpleTunerLink", output_dir=str(ft_run), run=RUN,
                                 full=True, ema=True, lora=True, final=True)
    return before, models.splitlines(), loras.splitlines(), report


def test_link_node_exposes_checkpoints_in_numeric_order(host, ft_run, linked):
    before, models, loras, report = linked
    assert models == [f"{RUN}/checkpoint-800.safetensors", f"{RUN}/checkpoint-1600.safetensors",
                      f"{RUN}/checkpoint-1600-ema.safetensors", f"{RUN}/checkpoint-2400.safetensors"]
    assert loras == [f"{RUN}/checkpoint-2400.safetensors"]
    assert not set(models) & set(before)
    # The host lists them right away (no restart), in its loaders' option lists too.
    assert set(models) <= set(host.folder_paths.get_filename_list("diffusion_models"))
    assert set(loras) <= set(host.folder_paths.get_filename_list("loras"))
    unet_opts = host.nodes.NODE_CLASS_MAPPINGS["UNETLoader"].INPUT_TYPES()["required"]["unet_name"][0]
    assert set(models) <= set(unet_opts)
    assert "temporary-3200" in report and "in progress" in report
    ema_src = ft_run / "checkpoint-1600" / "transformer_ema"
    assert len(list(ema_src.glob("diffusion_pytorch_model-*-of-*.safetensors"))) >= 3, "EMA really sharded"
    # A second run of the node changes nothing.
    again = call(host.nodes, "SD35WB_SimpleTunerLink", output_dir=str(ft_run), run=RUN, full=True, ema=True,
                 lora=True, final=True)
    assert "0 linked" in again[2] and "0 pruned" in again[2]


def test_merged_ema_equals_what_diffusers_saved(host, ft_run, linked):
    from diffusers import SD3Transformer2DModel

    dm = host.folder_paths.get_full_path("diffusion_models", f"{RUN}/checkpoint-1600-ema.safetensors")
    merged = load_file(dm)
    ref = SD3Transformer2DModel.from_pretrained(ft_run / "checkpoint-1600" / "transformer_ema").state_dict()
    assert sorted(merged) == sorted(ref)
    for k, v in ref.items():
        assert merged[k].dtype == torch.float32 and torch.equal(merged[k], v), k


def _render(host, model, seed=3):
    cond = make_conditioning("sd3", 1, PX, PX)
    neg = make_conditioning("sd3", 2, PX, PX)
    (latent,) = call(host.nodes, "EmptySD3LatentImage", width=PX, height=PX, batch_size=1)
    (samples,) = call(host.nodes, "KSampler", model=model, seed=seed, steps=2, cfg=4.0, sampler_name="euler",
                      scheduler="simple", positive=cond, negative=neg, latent_image=latent, denoise=1.0)
    (vae,) = call(host.nodes, "VAELoader", vae_name="taesd3")
    (img,) = call(host.nodes, "VAEDecode", samples=samples, vae=vae)
    return img


def test_linked_checkpoints_load_through_unetloader_and_render(host, linked):
    _, models, _, _ = linked
    imgs = []
    for name in (models[0], models[2]):  # a full checkpoint and the merged EMA
        (model,) = call(host.nodes, "UNETLoader", unet_name=name, weight_dtype="default")
        assert type(model.model).__name__ == "SD3"
        img = _render(host, model)
        assert img.shape == (1, PX, PX, 3) and torch.isfinite(img).all() and img.std() > 0.01
        imgs.append(img)
    assert not torch.equal(imgs[0], imgs[1])


def test_linked_lora_applies_without_unmapped_keys(host, linked, caplog):
    _, _, loras, _ = linked
    (base,) = call(host.nodes, "UNETLoader", unet_name=linked[1][0], weight_dtype="default")
    with caplog.at_level(logging.WARNING):
        (patched,) = call(host.nodes, "LoraLoaderModelOnly", model=base, lora_name=loras[0], strength_model=1.0)
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    # to_q/to_k/to_v/to_out of 4 joint blocks x (image + context [+ attn2 on blocks 0-1]) map onto the host's weights.
    assert len(patched.patches) >= 8


def test_rotation_resync_prunes_the_dangling_link(host, ft_run, linked, tmp_path):
    import shutil

    # A copy of the run, so the module's run stays intact for the other tests.
    run2 = tmp_path / "rotating"
    shutil.copytree(ft_run, run2, symlinks=True)
    call(host.nodes, "SD35WB_SimpleTunerLink", output_dir=str(run2), run="host-rot", full=True, ema=False,
         lora=False, final=False)
    names = host.folder_paths.get_filename_list("diffusion_models")
    assert "host-rot/checkpoint-800.safetensors" in names
    shutil.rmtree(run2 / "checkpoint-800")  # SimpleTuner's checkpoints_total_limit rotation
    models, _, report, _ = call(host.nodes, "SD35WB_SimpleTunerLink", output_dir=str(run2), run="host-rot",
                             full=True, ema=False, lora=False, final=False)
    assert "pruned    host-rot/checkpoint-800.safetensors  (source gone" in report
    assert models.splitlines() == ["host-rot/checkpoint-1600.safetensors", "host-rot/checkpoint-2400.safetensors"]
    assert "host-rot/checkpoint-800.safetensors" not in host.folder_paths.get_filename_list("diffusion_models")


def test_link_node_has_the_routes_roots_rule_even_when_roots_are_unset(host, ft_run, tmp_path, monkeypatch):
    import os

    outside = tmp_path / "elsewhere" / "run"
    stf.fake_checkpoint(outside, 10)
    inside_root = tmp_path / "root"
    (inside_root / "run").mkdir(parents=True)
    os.symlink(outside, inside_root / "escape")
    before = set(host.folder_paths.get_filename_list("diffusion_models"))
    monkeypatch.delenv("SD35WB_TRAINING_ROOTS")
    with pytest.raises(ValueError, match="no training roots configured: set SD35WB_TRAINING_ROOTS") as e:
        call(host.nodes, "SD35WB_SimpleTunerLink", output_dir=str(ft_run), run="no-roots", full=True, ema=True,
             lora=True, final=True)
    for way in ("export SD35WB_TRAINING_ROOTS=", "run_nvidia_gpu.bat", "Environment=SD35WB_TRAINING_ROOTS=",
                "Desktop app"):  # the node's user learns how to set it where ComfyUI starts
        assert way in str(e.value), way
    monkeypatch.setenv("SD35WB_TRAINING_ROOTS", str(inside_root))
    for out_dir, msg in [(str(outside), "outside the training roots"), ("escape", "symlink escape"),
                         (f"{inside_root}/run/../../elsewhere/run", "contains '..'"),
                         ("missing-run", "is not a folder"), ("x\ny", "control characters")]:
        with pytest.raises(ValueError, match=msg):
            call(host.nodes, "SD35WB_SimpleTunerLink", output_dir=out_dir, run="esc", full=True, ema=True,
                 lora=True, final=True)
    with pytest.raises(ValueError, match="run: .* is 255 bytes long"):
        call(host.nodes, "SD35WB_SimpleTunerLink", output_dir=str(ft_run), run="r" * 255, full=True, ema=True,
             lora=True, final=True)
    host.folder_paths.filename_list_cache.pop("diffusion_models", None)
    assert set(host.folder_paths.get_filename_list("diffusion_models")) == before
