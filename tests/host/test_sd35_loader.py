"""Host tier: the SD3.5 Loader in-process on the real ComfyUI host with the tiny SD3.5 model.

A user picks an SD3.5 file, text encoders and a VAE, and gets a MODEL that samples exactly like
core's UNETLoader + ModelSamplingSD3, a CLIP that encodes like core's, and the recommended
settings for the detected variant. Every bad input fails before loading with a message that
names the input and the file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import call, progress_events
from sd35_helpers import clip_keys, t5_keys, write

from sd35wb import presets

LOADER = "SD35WB_SD35Loader"
CLIP_L = "sd35wb-test-clip_l.safetensors"
CLIP_G = "sd35wb-test-clip_g.safetensors"


@pytest.fixture(scope="module")
def files(host, user_models):
    """Test files in the session's user model folders (links to cached fixtures, or tiny fakes)."""
    from tools import sd35_fixtures

    te, dm, ck = user_models / "text_encoders", user_models / "diffusion_models", user_models / "checkpoints"
    _link(sd35_fixtures.clip_l_file(), te / CLIP_L)
    _link(sd35_fixtures.clip_g_file(), te / CLIP_G)
    # key names (and widths, in the headers) of real CLIP-G / T5-XXL files, with tiny matrices
    write(te / "sd35wb-fake-clip_g.safetensors", clip_keys(32, 1280))
    write(te / "sd35wb-fake-t5.safetensors", t5_keys(24, 4096))
    write(te / "sd35wb-small-clip_g.safetensors", clip_keys(32, 8))
    write(user_models / "vae" / "sd35wb-sdxl-vae.safetensors", {"decoder.conv_in.weight": (8, 4, 3, 3)})
    # SimpleTuner's layout, symlinked into diffusion_models as users do
    diffusers = host.models / "diffusers" / "tiny-sd35m" / "transformer" / "diffusion_pytorch_model.safetensors"
    _link(diffusers, dm / "sd35wb-simpletuner" / "transformer" / "diffusion_pytorch_model.safetensors")
    tiny = host.models / "diffusion_models" / "tiny-sd35m.safetensors"
    data = tiny.read_bytes()
    (dm / "sd35wb-truncated.safetensors").write_bytes(data[: len(data) // 2])
    (dm / "sd35wb-pickle.safetensors").write_bytes(b"PK\x03\x04" + b"\0" * 64)
    if not (ck / "sd35wb-tiny-with-vae.safetensors").exists():
        _checkpoint(tiny, ck / "sd35wb-tiny-with-vae.safetensors")
    return user_models


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        dest.symlink_to(src)


def _checkpoint(tiny: Path, dest: Path, clip_l: Path | None = None) -> None:
    """A single-file checkpoint like Stability's sd3.5_*.safetensors (MMDiT + VAE inside), with
    the taesd3 decoder as its VAE so it stays tiny; optionally CLIP-L inside too, under the
    ``text_encoders.clip_l.transformer.`` prefix ComfyUI's SD3 checkpoints use."""
    import comfy.utils
    import nodes
    from safetensors.torch import save_file

    sd = comfy.utils.load_torch_file(str(tiny))
    sd.update({f"first_stage_model.{k}": v.contiguous() for k, v in nodes.VAELoader.load_taesd("taesd3").items()})
    if clip_l is not None:
        sd.update({f"text_encoders.clip_l.transformer.{k}": v for k, v in comfy.utils.load_torch_file(str(clip_l)).items()})
    save_file(sd, str(dest))


def load_all(host, **kw):
    """The loader's five outputs: model, clip, vae, settings, report."""
    args = dict(model_name="tiny-sd35m.safetensors", variant="auto", clip_l="none", clip_g="none", t5xxl="none",
                t5_dtype="default", vae="taesd3", shift=3.0, fetch_missing=False)
    args.update(kw)
    return call(host.nodes, LOADER, **args)


def load(host, **kw):
    """Model, clip, vae, settings (the report is checked where it matters)."""
    return load_all(host, **kw)[:4]


def sample(host, model, seed=3, steps=3):
    from testnodes import make_conditioning

    (latent,) = call(host.nodes, "EmptySD3LatentImage", width=64, height=64, batch_size=1)
    (out,) = call(host.nodes, "KSampler", model=model, seed=seed, steps=steps, cfg=4.0, sampler_name="euler",
                  scheduler="sgm_uniform", positive=make_conditioning("sd3", 1), negative=make_conditioning("sd3", 2),
                  latent_image=latent, denoise=1.0)
    return out["samples"]


def core_model(host, shift):
    (base,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")
    (m,) = call(host.nodes, "ModelSamplingSD3", model=base, shift=shift)
    return m


def test_schema_inputs_and_outputs(host, files):
    schema = host.nodes.NODE_CLASS_MAPPINGS[LOADER].GET_SCHEMA()
    assert schema.display_name == "SD3.5 Loader"
    # New inputs and outputs only ever go last: saved workflows address widgets and links by position.
    assert [i.id for i in schema.inputs] == ["model_name", "variant", "clip_l", "clip_g", "t5xxl", "t5_dtype", "vae",
                                             "shift", "fetch_missing", "weight_dtype"]
    assert [o.io_type for o in schema.outputs] == ["MODEL", "CLIP", "VAE", "SD35WB_SETTINGS", "STRING"]
    opts = {i.id: i for i in schema.inputs}
    assert opts["weight_dtype"].optional and opts["weight_dtype"].default == "default"
    assert opts["weight_dtype"].options == host.nodes.UNETLoader.INPUT_TYPES()["required"]["weight_dtype"][0]
    assert "tiny-sd35m.safetensors" in opts["model_name"].options
    assert "sd3.5_large.safetensors" in opts["model_name"].options  # fetchable even when missing
    assert os.path.join("sd35wb-simpletuner", "transformer", "diffusion_pytorch_model.safetensors") in opts["model_name"].options
    assert opts["clip_l"].options[0] == "none" and CLIP_L in opts["clip_l"].options
    assert {"clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors",
            "t5xxl_fp8_e4m3fn.safetensors"} <= set(opts["t5xxl"].options)
    assert opts["vae"].options[0] == "from checkpoint" and "taesd3" in opts["vae"].options
    assert opts["shift"].default == 3.0 and "Stability" in opts["shift"].tooltip
    assert opts["fetch_missing"].default is False and opts["variant"].default == "auto"


def test_a_new_node_starts_on_an_sd3_file_not_the_first_in_the_list(host, files):
    import folder_paths

    from sd35wb import sd3_inspect as si

    schema = host.nodes.NODE_CLASS_MAPPINGS[LOADER].GET_SCHEMA()
    opts = {i.id: i for i in schema.inputs}["model_name"]
    default = opts.default
    assert default != opts.options[0], f"{opts.options[0]!r} is only the alphabetically first file"
    path = folder_paths.get_full_path("diffusion_models", default) or folder_paths.get_full_path("checkpoints", default)
    assert path and si.inspect_model(path).num_blocks > 0, default  # its header says SD3
    assert "sd35wb-pickle.safetensors" in opts.options and default != "sd35wb-pickle.safetensors"


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"])
def test_weight_dtype_loads_the_weights_as_cores_unet_loader_does(host, files, weight_dtype):
    model, *_, report = load_all(host, weight_dtype=weight_dtype)
    (core,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype=weight_dtype)
    want = torch.float8_e5m2 if weight_dtype == "fp8_e5m2" else torch.float8_e4m3fn
    assert model.model_dtype() == core.model_dtype() == want
    assert model.model.diffusion_model.joint_blocks[0].x_block.attn.qkv.weight.dtype == want
    assert f"weights: {str(want).replace('torch.', '')} (weight_dtype {weight_dtype})" in report
    if weight_dtype == "fp8_e4m3fn":  # samples as core's fp8 UNETLoader + ModelSamplingSD3, exactly
        (m,) = call(host.nodes, "ModelSamplingSD3", model=core, shift=3.0)
        assert torch.equal(sample(host, model), sample(host, m))
    # A single-file checkpoint (VAE inside) goes through the checkpoint loader: same dtype there.
    ck, *_ = load(host, model_name="sd35wb-tiny-with-vae.safetensors", vae="from checkpoint", weight_dtype=weight_dtype)
    assert ck.model_dtype() == want


def test_the_report_says_what_was_loaded(host, files):
    *_, settings, report = load_all(host, t5_dtype="fp8_e4m3fn")
    dtype = str(load(host)[0].model_dtype()).replace("torch.", "")
    assert report.splitlines()[0].startswith("SD3.5 Loader: tiny-sd35m.safetensors: 4 joint blocks")
    assert "variant: custom (" in report
    assert f"settings: steps {settings['steps']}, cfg {settings['cfg']:g}, sampler dpmpp_2m, scheduler sgm_uniform, " \
           "shift 3; SLG off" in report
    assert "text encoders: none (CLIP output is None)" in report and "vae: taesd3" in report
    assert f"weights: {dtype} (weight_dtype default)" in report
    assert "note: t5_dtype has no effect (no T5 selected)" in report
    out = host.nodes.NODE_CLASS_MAPPINGS[LOADER].execute(
        model_name="tiny-sd35m.safetensors", variant="medium", clip_l="none", clip_g="none", t5xxl="none",
        t5_dtype="default", vae="taesd3", shift=3.0, fetch_missing=False)  # an old prompt: no weight_dtype
    assert out.ui == {"text": [out.result[4]]} and "SLG layers 7, 8, 9, scale 2.5, window 0.01-0.2 of steps" in \
        out.result[4] and "note:" not in out.result[4]


@pytest.mark.parametrize("shift", [3.0, 5.5])
def test_shift_matches_core_model_sampling_sd3(host, files, shift):
    import comfy.samplers

    model, clip, vae, settings = load(host, shift=shift)
    ours = model.get_model_object("model_sampling")
    core = core_model(host, shift)
    theirs = core.get_model_object("model_sampling")
    assert ours.shift == theirs.shift == shift
    for sched in ("sgm_uniform", "simple", "beta"):
        assert torch.equal(comfy.samplers.calculate_sigmas(ours, sched, 10), comfy.samplers.calculate_sigmas(theirs, sched, 10))
    assert torch.equal(sample(host, model), sample(host, core))
    assert settings["shift"] == shift
    assert clip is None


def test_the_loaded_model_is_a_clone(host, files):
    (base,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")
    model, *_ = load(host, shift=7.0)
    assert model.get_model_object("model_sampling").shift == 7.0
    assert base.get_model_object("model_sampling").shift == 3.0  # host default for SD3, untouched


def test_tiny_model_is_custom_with_medium_defaults_and_no_slg(host, files, caplog):
    with caplog.at_level("INFO", logger="sd35-workbench"):
        model, _, _, settings = load(host)
    assert type(model.model.model_config).__name__ == "SD3"
    expected = presets.recommended_settings("medium")
    assert settings["variant"] == "custom"
    assert {k: settings[k] for k in ("steps", "cfg", "sampler_name", "scheduler", "shift")} == \
        {k: expected[k] for k in ("steps", "cfg", "sampler_name", "scheduler", "shift")}
    assert settings["slg"]["layers"] == [] and settings["slg"]["scale"] == 0.0
    assert set(settings) == set(expected)
    assert "4 joint blocks with attn2 match neither Medium (24 + attn2) nor Large (38)" in caplog.text
    assert "no SLG recommendation (Stability's SLG layers 7, 8, 9 are tuned for Medium's 24 blocks)" in caplog.text


@pytest.mark.parametrize("variant", ["medium", "large", "large_turbo"])
def test_user_variant_gives_that_variants_settings(host, files, variant):
    *_, settings = load(host, variant=variant, shift=3.0)
    assert settings == presets.recommended_settings(variant)


def test_diffusers_layout_symlinked_into_diffusion_models(host, files, caplog):
    name = os.path.join("sd35wb-simpletuner", "transformer", "diffusion_pytorch_model.safetensors")
    with caplog.at_level("INFO", logger="sd35-workbench"):
        model, _, _, settings = load(host, model_name=name)
    assert "diffusers layout" in caplog.text and settings["variant"] == "custom"
    dm = model.model.diffusion_model
    assert hasattr(dm.joint_blocks[0].x_block, "attn2") and dm.joint_blocks[0].x_block.attn.ln_q is not None
    # same weights as the single file (both written from seed 1): the same image, exactly
    single, *_ = load(host)
    assert torch.equal(sample(host, model), sample(host, single))


def test_clip_l_encodes_like_core_sd3_clip(host, files):
    _, clip, _, _ = load(host, clip_l=CLIP_L)
    (cond,) = call(host.nodes, "CLIPTextEncode", clip=clip, text="a red fox in the snow")
    (ref_clip,) = call(host.nodes, "CLIPLoader", clip_name=CLIP_L, type="sd3", device="default")
    (ref,) = call(host.nodes, "CLIPTextEncode", clip=ref_clip, text="a red fox in the snow")
    assert cond[0][0].shape == (1, 77, 4096) and cond[0][1]["pooled_output"].shape == (1, 2048)
    assert torch.equal(cond[0][0], ref[0][0]) and torch.equal(cond[0][1]["pooled_output"], ref[0][1]["pooled_output"])
    assert cond[0][0][..., :768].abs().sum() > 0 and cond[0][0][..., 768:].abs().sum() == 0  # CLIP-L only


def test_clip_l_and_clip_g_encode_like_core_dual_clip_loader(host, files):
    """Two real-size (random) encoders in their slots, T5 none: the same conditioning as core's
    DualCLIPLoader(sd3), with CLIP-L and CLIP-G both contributing and T5's part zero."""
    _, clip, _, _ = load(host, clip_l=CLIP_L, clip_g=CLIP_G)
    (cond,) = call(host.nodes, "CLIPTextEncode", clip=clip, text="a lighthouse at dusk")
    (ref_clip,) = call(host.nodes, "DualCLIPLoader", clip_name1=CLIP_L, clip_name2=CLIP_G, type="sd3", device="default")
    (ref,) = call(host.nodes, "CLIPTextEncode", clip=ref_clip, text="a lighthouse at dusk")
    assert torch.equal(cond[0][0], ref[0][0]) and torch.equal(cond[0][1]["pooled_output"], ref[0][1]["pooled_output"])
    c = cond[0][0]
    assert c.shape == (1, 77, 4096)
    assert c[..., :768].abs().sum() > 0 and c[..., 768:2048].abs().sum() > 0 and c[..., 2048:].abs().sum() == 0
    pooled = cond[0][1]["pooled_output"]
    assert pooled[:, :768].abs().sum() > 0 and pooled[:, 768:].abs().sum() > 0  # CLIP-L + CLIP-G pooled


def test_clip_g_in_the_clip_l_slot_is_refused(host, files):
    with pytest.raises(ValueError, match=r"clip_l: .*CLIP-G"):
        load(host, clip_l=CLIP_G)


def test_vae_from_checkpoint(host, files):
    """A single-file checkpoint carrying its VAE decodes with it, as VAELoader would with that VAE."""
    model, _, vae, settings = load(host, model_name="sd35wb-tiny-with-vae.safetensors", vae="from checkpoint")
    (ref_vae,) = call(host.nodes, "VAELoader", vae_name="taesd3")
    latent = {"samples": sample(host, model)}
    (ours,) = call(host.nodes, "VAEDecode", samples=latent, vae=vae)
    (ref,) = call(host.nodes, "VAEDecode", samples=latent, vae=ref_vae)
    assert ours.shape == (1, 64, 64, 3) and torch.equal(ours, ref)
    single, *_ = load(host)
    assert torch.equal(latent["samples"], sample(host, single))


def test_text_encoder_inside_the_checkpoint_is_used_when_all_slots_are_none(host, files, tmp_path, caplog):

    from tools import sd35_fixtures

    path = files / "checkpoints" / "sd35wb-tiny-with-clip.safetensors"
    _checkpoint(host.models / "diffusion_models" / "tiny-sd35m.safetensors", path, sd35_fixtures.clip_l_file())
    try:
        with caplog.at_level("INFO", logger="sd35-workbench"):
            _, clip, vae, _ = load(host, model_name=path.name, vae="from checkpoint")
        assert "text encoders inside: clip_l" in caplog.text and vae is not None
        (cond,) = call(host.nodes, "CLIPTextEncode", clip=clip, text="a red fox in the snow")
        (ref_clip,) = call(host.nodes, "CLIPLoader", clip_name=CLIP_L, type="sd3", device="default")
        (ref,) = call(host.nodes, "CLIPTextEncode", clip=ref_clip, text="a red fox in the snow")
        assert torch.equal(cond[0][0], ref[0][0]) and torch.equal(cond[0][1]["pooled_output"], ref[0][1]["pooled_output"])
    finally:
        path.unlink()


def test_medium_on_a_four_block_model_warns_about_slg_layers(host, files, caplog):
    with caplog.at_level("INFO", logger="sd35-workbench"):
        *_, settings = load(host, variant="medium")
    assert settings["slg"]["layers"] == [7, 8, 9]
    assert "variant medium recommends SLG layers [7, 8, 9] but tiny-sd35m.safetensors has only 4 joint blocks" in caplog.text
    assert "variant set to medium by the user" in caplog.text


def test_t5_fp8_cast_makes_the_host_build_t5_in_fp8(host):
    """t5_dtype fp8_e4m3fn: the host's own T5 detection then builds T5-XXL with fp8 weights."""
    import sys

    import comfy.text_encoders.sd3_clip

    mod = sys.modules[host.nodes.NODE_CLASS_MAPPINGS[LOADER].__module__]
    sd = {k: torch.ones(s, dtype=torch.float16) for k, s in t5_keys(24, 16).items()}
    assert comfy.text_encoders.sd3_clip.t5_xxl_detect(sd)["dtype_t5"] == torch.float16
    cast = mod.cast_t5_fp8(sd)
    assert comfy.text_encoders.sd3_clip.t5_xxl_detect(cast)["dtype_t5"] == torch.float8_e4m3fn
    assert all(v.dtype == torch.float8_e4m3fn for v in cast.values())
    assert all(torch.equal(cast[k].to(torch.float16), sd[k]) for k in sd)  # 1.0 is exact in e4m3
    scaled = {**sd, "scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    assert mod.cast_t5_fp8(scaled) is scaled  # a scaled-fp8 file keeps its scales untouched


# --- bad inputs -------------------------------------------------------------------------------

BAD = [
    (dict(model_name="tiny-sd15.safetensors"),
     "model_name: tiny-sd15.safetensors is not an SD3 / SD3.5 (MMDiT) model: it looks like a Stable Diffusion 1.x "
     "UNet model (not SD3). Expected an SD3.5 model"),
    (dict(model_name="sd35wb-truncated.safetensors"),
     "model_name: sd35wb-truncated.safetensors is truncated or still being written: its tensors need"),
    (dict(model_name="sd35wb-pickle.safetensors"),
     "model_name: sd35wb-pickle.safetensors is not a safetensors file (it is a zip archive: a PyTorch .ckpt/.pt pickle "
     "renamed?)"),
    (dict(clip_g=CLIP_L),
     "clip_g: sd35wb-test-clip_l.safetensors is a CLIP-L text encoder (12 layers, hidden 768), not CLIP-G. Expected "
     "CLIP-G (OpenCLIP ViT-bigG text model: hidden 1280, 32 layers), e.g. clip_g.safetensors. Put it in the clip_l "
     "input instead."),
    (dict(t5xxl=CLIP_L), "t5xxl: sd35wb-test-clip_l.safetensors is a CLIP-L text encoder (12 layers, hidden 768), not T5-XXL."),
    (dict(clip_l="sd35wb-fake-clip_g.safetensors"),
     "clip_l: sd35wb-fake-clip_g.safetensors is a CLIP-G text encoder (32 layers, hidden 1280), not CLIP-L."),
    (dict(clip_g="sd35wb-small-clip_g.safetensors"),
     "clip_g: sd35wb-small-clip_g.safetensors has CLIP-G's layout but width 8 (32 layers, hidden 8); the host builds "
     "CLIP-G with width 1280."),
    (dict(vae="sd35wb-sdxl-vae.safetensors"),
     "vae: sd35wb-sdxl-vae.safetensors is a 4-channel VAE (an SD1.x / SD2.x / SDXL VAE); SD3.5 needs the 16-channel "
     "SD3 VAE"),
    (dict(clip_l="sd35wb-fake-t5.safetensors"),
     "clip_l: sd35wb-fake-t5.safetensors is a T5-XXL text encoder (24 blocks, d_model 4096, F16), not CLIP-L."),
    (dict(t5xxl="sd35wb-fake-clip_g.safetensors"),
     "t5xxl: sd35wb-fake-clip_g.safetensors is a CLIP-G text encoder (32 layers, hidden 1280), not T5-XXL. Expected "
     "T5-XXL encoder (d_model 4096, 24 blocks), e.g. t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors. Put it "
     "in the clip_g input instead."),
    (dict(vae="from checkpoint"),
     "vae: 'from checkpoint' but tiny-sd35m.safetensors has no VAE inside (a diffusion-model-only file); pick a VAE "
     "file from models/vae"),
    (dict(model_name="sd3.5_large.safetensors"),
     "). Place it in one of them, or turn on fetch_missing to get "
     "it from https://huggingface.co/stabilityai/stable-diffusion-3.5-large (a gated repo: accept its license first)."),
    (dict(clip_g="clip_g.safetensors"),
     "). Place it there, or turn on fetch_missing"),
]


@pytest.mark.parametrize("inputs, kinds", [(dict(model_name="sd3.5_large.safetensors"), ("checkpoints", "diffusion_models")),
                                           (dict(model_name="my-finetune.safetensors"), ("checkpoints", "diffusion_models")),
                                           (dict(clip_g="clip_g.safetensors"), ("text_encoders",)),
                                           (dict(vae="my-vae.safetensors"), ("vae",))],
                         ids=["known-model", "own-model", "clip_g", "vae"])
def test_missing_file_message_names_every_folder_searched(host, files, inputs, kinds):
    """The loader looks in checkpoints *and* diffusion_models (and extra_model_paths.yaml folders):
    the message lists each of them with its paths, so a user who put the file elsewhere sees why."""
    slot, name = next(iter(inputs.items()))
    with pytest.raises(ValueError) as e:
        load(host, **inputs)
    where = " or ".join(f"models/{k} ({', '.join(host.folder_paths.get_folder_paths(k))})" for k in kinds)
    assert str(e.value).startswith(f"{slot}: {name} is not in {where}. "), str(e.value)


@pytest.mark.parametrize("inputs, message", BAD, ids=[f"{list(k)[0]}={list(k.values())[0]}" for k, _ in BAD])
def test_bad_input_is_refused_before_loading(host, files, inputs, message):
    with pytest.raises(ValueError) as e:
        load(host, **inputs)
    assert message in str(e.value)


# --- fetching ------------------------------------------------------------------------------


@pytest.fixture
def offline_hub_cache(tmp_path, monkeypatch):
    """An HF cache holding the random CLIP-L as stabilityai's text_encoders/clip_l.safetensors."""
    import socket

    from huggingface_hub import constants

    from tools import sd35_fixtures

    src = sd35_fixtures.clip_l_file()
    base = tmp_path / "hf" / "models--stabilityai--stable-diffusion-3.5-large"
    blob = base / "blobs" / hashlib.sha256(b"clip_l").hexdigest()
    blob.parent.mkdir(parents=True)
    os.link(src, blob) if os.stat(src).st_dev == os.stat(blob.parent).st_dev else shutil.copyfile(src, blob)
    snap = base / "snapshots" / ("b" * 40) / "text_encoders" / "clip_l.safetensors"
    snap.parent.mkdir(parents=True)
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("b" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda h, *a, **k: real(h, *a, **k) if h in ("127.0.0.1", "localhost")
                        else (_ for _ in ()).throw(OSError(f"test tried to reach {h}")))
    return tmp_path / "hf"


def test_fetch_missing_links_from_the_hf_cache(host, files, offline_hub_cache):
    dest = files / "text_encoders" / "clip_l.safetensors"
    assert not dest.exists()
    try:
        with pytest.raises(ValueError, match=r"clip_l: clip_l.safetensors is not in models/text_encoders"):
            load(host, clip_l="clip_l.safetensors")
        _, clip, _, _ = load(host, clip_l="clip_l.safetensors", variant="large", fetch_missing=True)
        assert dest.exists() and os.path.samefile(dest, offline_hub_cache.rglob("clip_l.safetensors").__next__())
        (cond,) = call(host.nodes, "CLIPTextEncode", clip=clip, text="hello")
        assert cond[0][0].shape == (1, 77, 4096)
        with pytest.raises(ValueError) as e:
            load(host, clip_g="clip_g.safetensors", fetch_missing=True)
        assert str(e.value).startswith(
            "clip_g: fetch_missing: clip_g.safetensors is not in the Hugging Face cache and the hub is offline "
            "(HF_HUB_OFFLINE is set); place the file manually at ")
    finally:
        if dest.is_symlink() or dest.exists():
            dest.unlink()  # made by this test only


def test_fetch_missing_downloads_with_comfys_progress_bar(host, files, tmp_path, monkeypatch):
    """A real huggingface_hub download from a fake hub on 127.0.0.1, shown in ComfyUI's progress bar."""
    import socket

    from huggingface_hub import constants
    from sd35_helpers import FakeHub

    from tools import sd35_fixtures

    fake = FakeHub("c" * 40)
    fake.add("stabilityai/stable-diffusion-3.5-medium", "text_encoders/clip_l.safetensors", sd35_fixtures.clip_l_file())
    monkeypatch.setenv("HF_ENDPOINT", fake.url)  # a mirror, as users set it
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda h, *a, **k: real(h, *a, **k) if h in ("127.0.0.1", "localhost")
                        else (_ for _ in ()).throw(OSError(f"test tried to reach {h}")))
    dest = files / "text_encoders" / "clip_l.safetensors"
    try:
        with progress_events() as seen:
            _, clip, _, _ = load(host, clip_l="clip_l.safetensors", variant="medium", fetch_missing=True)
        assert dest.exists() and dest.read_bytes()[:64] == sd35_fixtures.clip_l_file().read_bytes()[:64]
        assert seen and seen[-1] == (1000, 1000) and len({v for v, _ in seen}) > 1
        assert fake.auth[0] == "Bearer hf_test_token"
        assert clip is not None
    finally:
        fake.close()
        if dest.is_symlink() or dest.exists():
            dest.unlink()  # made by this test only
