"""Unit tier: the SD3.5 file inspector reads safetensors headers only and tells layouts, variants,
text-encoder kinds and broken files apart, with messages that name the file and what was expected."""

from __future__ import annotations

import pytest
from sd35_helpers import clip_keys, diffusers_sd3_keys, mmdit_keys, t5_keys, unet_keys, write

from sd35wb import sd3_inspect as si

MEDIUM_ATTN2 = tuple(range(13))


@pytest.mark.parametrize(
    "shapes, layout, blocks, attn2, detected",
    [
        (mmdit_keys(24, MEDIUM_ATTN2), "comfy", 24, 13, "medium"),
        (mmdit_keys(38), "comfy", 38, 0, "large"),
        (mmdit_keys(24, MEDIUM_ATTN2, prefix=""), "bare", 24, 13, "medium"),
        (diffusers_sd3_keys(24, MEDIUM_ATTN2), "diffusers", 24, 13, "medium"),
        (diffusers_sd3_keys(38), "diffusers", 38, 0, "large"),
        (mmdit_keys(4, (0, 1)), "comfy", 4, 2, "custom"),
        (mmdit_keys(24), "comfy", 24, 0, "custom"),  # SD3 Medium (3.0): 24 blocks, no attn2
        (mmdit_keys(38, (0,)), "comfy", 38, 1, "custom"),
    ],
)
def test_layouts_and_variants(tmp_path, shapes, layout, blocks, attn2, detected):
    info = si.inspect_model(str(write(tmp_path / "m.safetensors", shapes)))
    assert (info.layout, info.num_blocks, len(info.attn2_blocks), info.detected) == (layout, blocks, attn2, detected)
    assert info.qk_norm and not info.is_checkpoint
    assert f"{blocks} joint blocks" in info.describe()


def test_checkpoint_with_vae_and_text_encoders(tmp_path):
    shapes = mmdit_keys(24, MEDIUM_ATTN2)
    shapes["first_stage_model.decoder.conv_in.weight"] = (8, 16, 3, 3)
    shapes.update({f"text_encoders.clip_l.transformer.{k}": s for k, s in clip_keys(2).items()})
    shapes.update({f"text_encoders.clip_g.transformer.{k}": s for k, s in clip_keys(2).items()})
    info = si.inspect_model(str(write(tmp_path / "full.safetensors", shapes)))
    assert info.has_vae and info.text_encoders == ["clip_l", "clip_g"] and info.is_checkpoint
    assert "VAE inside" in info.describe()


def test_qk_norm_absent_and_hidden(tmp_path):
    info = si.inspect_model(str(write(tmp_path / "m.safetensors", mmdit_keys(2, qk_norm=False, hidden=128))))
    assert not info.qk_norm and info.hidden == 128


@pytest.mark.parametrize(
    "shapes, name, choice, variant, why",
    [
        (mmdit_keys(38), "sd3.5_large_turbo.safetensors", "auto", "large_turbo", "turbo"),
        (mmdit_keys(38), "sd3.5_large.safetensors", "auto", "large", "38 joint blocks"),
        (mmdit_keys(24, MEDIUM_ATTN2), "my_turbo_medium.safetensors", "auto", "medium", "attn2"),
        (mmdit_keys(38), "sd3.5_large.safetensors", "large_turbo", "large_turbo", "by the user"),
        (mmdit_keys(24, MEDIUM_ATTN2), "x.safetensors", "large", "large", "look like medium"),
        (mmdit_keys(4, (0, 1)), "tiny.safetensors", "auto", "custom", "4 joint blocks with attn2 match neither"),
    ],
)
def test_resolve_variant(tmp_path, shapes, name, choice, variant, why):
    info = si.inspect_model(str(write(tmp_path / name, shapes)))
    got, reason = si.resolve_variant(info, choice)
    assert got == variant and why in reason


def test_unknown_variant_choice_names_the_input(tmp_path):
    info = si.inspect_model(str(write(tmp_path / "m.safetensors", mmdit_keys(2))))
    with pytest.raises(si.ModelFileError, match=r"variant: unknown choice 'xl'"):
        si.resolve_variant(info, "xl")


@pytest.mark.parametrize(
    "shapes, family",
    [
        (unet_keys(768), "Stable Diffusion 1.x UNet"),
        (unet_keys(2048), "SDXL-family UNet"),
        ({"double_blocks.0.img_attn.qkv.weight": (8, 8)}, "Flux"),
        (clip_keys(32, 1280), "CLIP-G text encoder"),
        (t5_keys(24, 4096 // 512), "T5"),
        ({"lora_unet_input.lora_down.weight": (4, 8)}, "LoRA"),
        ({"encoder.down.0.block.0.conv1.weight": (4, 4, 3, 3)}, "VAE"),
        ({"foo": (2,)}, "unrecognised"),
    ],
)
def test_non_sd3_file_says_what_it_looks_like(tmp_path, shapes, family):
    p = write(tmp_path / "other.safetensors", shapes)
    with pytest.raises(si.ModelFileError) as e:
        si.inspect_model(str(p))
    msg = str(e.value)
    assert msg.startswith("model_name: other.safetensors is not an SD3 / SD3.5 (MMDiT) model")
    assert family in msg and "Expected an SD3.5 model" in msg


def test_truncated_file(tmp_path):
    p = write(tmp_path / "cut.safetensors", mmdit_keys(2, hidden=64))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    with pytest.raises(si.ModelFileError, match=r"^model_name: cut.safetensors is truncated or still being written: its tensors need \d+ bytes"):
        si.inspect_model(str(p))
    p.write_bytes(data[:200])  # cut inside the header
    with pytest.raises(si.ModelFileError, match=r"cut.safetensors is truncated or still being written: its header says \d+ bytes .* Download it again"):
        si.inspect_model(str(p))


def test_not_safetensors(tmp_path):
    p = tmp_path / "fake.safetensors"
    p.write_bytes(b"PK\x03\x04" + b"\x00" * 200)  # a zip (torch.save) renamed
    with pytest.raises(si.ModelFileError, match=r"model_name: fake.safetensors is not a safetensors file \(it is a zip archive: a PyTorch .ckpt/.pt pickle renamed\?\)"):
        si.inspect_model(str(p))
    q = tmp_path / "json.safetensors"
    q.write_bytes((5).to_bytes(8, "little") + b"{nope")
    with pytest.raises(si.ModelFileError, match=r"is not a safetensors file \(header is not valid JSON"):
        si.inspect_model(str(q))
    r = tmp_path / "tiny.safetensors"
    r.write_bytes(b"abc")
    with pytest.raises(si.ModelFileError, match=r"too short for a header"):
        si.inspect_model(str(r))


def test_pickles_are_refused_by_extension(tmp_path):
    p = tmp_path / "model.ckpt"
    p.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(si.ModelFileError, match=r"model_name: model.ckpt is a .ckpt file \(a Python pickle.*only loads .safetensors"):
        si.inspect_model(str(p))


@pytest.mark.parametrize(
    "shapes, slot, kind",
    [
        (clip_keys(12, 768), "clip_l", "CLIP-L"),
        (clip_keys(32, 1280), "clip_g", "CLIP-G"),
        (t5_keys(24, 4096), "t5xxl", "T5-XXL"),
    ],
)
def test_text_encoder_in_the_right_slot(tmp_path, shapes, slot, kind):
    info = si.check_text_encoder(str(write(tmp_path / "te.safetensors", shapes)), slot)
    assert info.kind == kind and info.dtype == "F16"


@pytest.mark.parametrize(
    "shapes, slot, msg",
    [
        (clip_keys(12), "clip_l", "clip_l: te.safetensors has CLIP-L's layout but width 8 (12 layers, hidden 8); the host "
                                  "builds CLIP-L with width 768."),
        (clip_keys(32, 16), "clip_g", "clip_g: te.safetensors has CLIP-G's layout but width 16"),
        (t5_keys(24, 8), "t5xxl", "t5xxl: te.safetensors has T5-XXL's layout but width 8"),
    ],
)
def test_right_names_wrong_width_fails_early(tmp_path, shapes, slot, msg):
    """A file with the right key names but shapes the host cannot load fails here, not deep in the host."""
    with pytest.raises(si.ModelFileError) as e:
        si.check_text_encoder(str(write(tmp_path / "te.safetensors", shapes)), slot)
    assert msg in str(e.value)


@pytest.mark.parametrize(
    "shapes, slot, msg",
    [
        (clip_keys(32, 1280), "clip_l", "clip_l: te.safetensors is a CLIP-G text encoder (32 layers, hidden 1280), not CLIP-L. "
                                        "Expected CLIP-L (OpenAI CLIP ViT-L/14 text model: hidden 768, 12 layers), "
                                        "e.g. clip_l.safetensors. Put it in the clip_g input instead."),
        (clip_keys(12, 768), "clip_g", "clip_g: te.safetensors is a CLIP-L text encoder (12 layers, hidden 768), not CLIP-G."),
        (t5_keys(24, 4096), "clip_g", "clip_g: te.safetensors is a T5-XXL text encoder"),
        (clip_keys(24, 1024), "clip_l", "clip_l: te.safetensors is a CLIP-H text encoder"),
        (clip_keys(12, 768), "t5xxl", "t5xxl: te.safetensors is a CLIP-L text encoder (12 layers, hidden 768), not T5-XXL. "
                                      "Expected T5-XXL encoder (d_model 4096, 24 blocks)"),
        (t5_keys(24, 2048), "t5xxl", "t5xxl: te.safetensors is a T5-XL text encoder"),
        (mmdit_keys(2), "clip_l", "clip_l: te.safetensors is not a text encoder: it looks like an unrecognised model. "
                                  "Expected CLIP-L"),
        (unet_keys(768), "t5xxl", "t5xxl: te.safetensors is not a text encoder: it looks like a Stable Diffusion 1.x UNet"),
    ],
)
def test_wrong_text_encoder_kind(tmp_path, shapes, slot, msg):
    with pytest.raises(si.ModelFileError) as e:
        si.check_text_encoder(str(write(tmp_path / "te.safetensors", shapes)), slot)
    assert msg in str(e.value)


def test_fp8_t5_dtype_is_read_from_the_header(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file  # numpy has no fp8: write the header by hand

    p = tmp_path / "t5.safetensors"
    save_file({"x": np.zeros(1, np.float16)}, str(p))
    import json
    import struct

    shapes = t5_keys(24, 4096)
    header, off = {}, 0
    for k, s in shapes.items():
        n = int(np.prod(s))
        dt = "F8_E4M3" if len(s) == 2 else "F16"
        size = n * (1 if dt == "F8_E4M3" else 2)
        header[k] = {"dtype": dt, "shape": list(s), "data_offsets": [off, off + size]}
        off += size
    raw = json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x00" * off)
    info = si.check_text_encoder(str(p), "t5xxl")
    assert info.kind == "T5-XXL" and info.dtype == "F8_E4M3"


@pytest.mark.parametrize(
    "shapes, msg",
    [
        ({"decoder.conv_in.weight": (8, 16, 3, 3), "encoder.conv_in.weight": (8, 3, 3, 3)}, None),
        ({"first_stage_model.decoder.conv_in.weight": (8, 16, 3, 3)}, None),
        ({"decoder.conv_in.weight": (8, 4, 3, 3)},
         "vae: v.safetensors is a 4-channel VAE (an SD1.x / SD2.x / SDXL VAE); SD3.5 needs the 16-channel SD3 VAE"),
        (clip_keys(12, 768), "vae: v.safetensors is not a VAE: it looks like a CLIP-L text encoder."),
    ],
)
def test_vae_channels(tmp_path, shapes, msg):
    p = str(write(tmp_path / "v.safetensors", shapes))
    if msg is None:
        si.check_vae(p)
    else:
        with pytest.raises(si.ModelFileError) as e:
            si.check_vae(p)
        assert msg in str(e.value)


def test_a_new_loader_starts_on_an_sd35_file_not_the_alphabetically_first():
    from sd35wb.sd3_inspect import default_model

    names = ["aaa-sdxl.safetensors", "my/sd3.5_large.safetensors", "sd3.5_medium.safetensors"]
    assert default_model(names, "fallback") == "sd3.5_medium.safetensors", "published names, Medium first"
    assert default_model(names[:2], "fallback") == "my/sd3.5_large.safetensors", "in a subfolder too"
    renamed = ["aaa-sdxl.safetensors", "broken-SD35.safetensors", "mine-SD3.5-finetune.safetensors", "zz.safetensors"]
    sd3 = {"mine-SD3.5-finetune.safetensors", "zz.safetensors"}
    assert default_model(renamed, "f", sd3.__contains__) == "mine-SD3.5-finetune.safetensors"
    assert default_model(["aaa.safetensors", "zz.safetensors"], "f", sd3.__contains__) == "zz.safetensors"
    assert default_model(["aaa.safetensors", "x.ckpt"], "sd3.5_medium.safetensors", sd3.__contains__) == \
        "sd3.5_medium.safetensors", "nothing SD3 on disk: the fetchable Medium"
