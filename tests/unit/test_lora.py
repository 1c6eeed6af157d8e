"""Unit tier: LoRA key formats, module grouping, matching against a key map, renames for the host."""

from __future__ import annotations

from sd35wb import lora as L

SD3_KEYS = {
    "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (4, 64),
    "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": (64, 4),
    "transformer.transformer_blocks.0.attn.add_k_proj.lora_A.weight": (4, 64),
    "transformer.transformer_blocks.0.attn.add_k_proj.lora_B.weight": (64, 4),
}


def test_formats_are_told_apart():
    assert L.detect_format(SD3_KEYS) == L.FORMAT_PEFT
    diffusers = {k.replace(".attn.to_q.lora_A.", ".attn.to_q.lora.down.").replace(".attn.to_q.lora_B.", ".attn.to_q.lora.up."): v
                 for k, v in SD3_KEYS.items()}
    assert L.detect_format(diffusers) == L.FORMAT_DIFFUSERS
    comfy_st = {**SD3_KEYS, "transformer.transformer_blocks.0.attn.to_q.alpha": ()}
    assert L.detect_format(comfy_st) == L.FORMAT_SIMPLETUNER_COMFYUI
    assert L.detect_format(["diffusion_model.down_blocks.1.attentions.0.proj_in.lora_A.weight"]) == L.FORMAT_SIMPLETUNER_COMFYUI
    assert L.detect_format(["diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_up.weight"]) == L.FORMAT_COMFYUI
    assert L.detect_format(["lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight"]) == L.FORMAT_KOHYA
    assert L.detect_format(["lycoris_transformer_blocks_0_attn_to_q.lokr_w1"]) == L.FORMAT_LYCORIS
    assert L.detect_format(["model.weight"]) == L.FORMAT_UNKNOWN


def test_down_up_and_alpha_group_into_one_module():
    mods, stray = L.group_modules({**SD3_KEYS, "transformer.transformer_blocks.0.attn.to_q.alpha": (), "junk": (3,)})
    assert sorted(mods) == ["transformer.transformer_blocks.0.attn.add_k_proj", "transformer.transformer_blocks.0.attn.to_q"]
    q = mods["transformer.transformer_blocks.0.attn.to_q"]
    assert q.down == (4, 64) and q.up == (64, 4) and q.roles == {"down", "up", "alpha"} and q.complete
    assert stray == ["junk"]


def _key_map():
    return {"transformer.transformer_blocks.0.attn.to_q": ("diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", (0, 0, 64)),
            "transformer.transformer_blocks.0.attn.add_k_proj": ("diffusion_model.joint_blocks.0.context_block.attn.qkv.weight",
                                                               (0, 64, 64))}


SHAPES = {"diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (192, 64),
          "diffusion_model.joint_blocks.0.context_block.attn.qkv.weight": (192, 64)}


def test_full_match_is_ok_and_described_in_one_line():
    m = L.match("a.safetensors", SD3_KEYS, _key_map(), SHAPES, with_text_encoder=False)
    assert m.ok() and (m.modules, m.matched) == (2, 2)
    assert m.describe() == "a.safetensors: 2/2 LoRA modules match (peft)"


def test_other_width_is_a_shape_mismatch_not_a_match():
    wide = {k: tuple(80 if d == 64 else d for d in s) for k, s in SD3_KEYS.items()}
    m = L.match("wide.safetensors", wide, _key_map(), SHAPES, with_text_encoder=False)
    assert not m.ok() and m.matched == 0 and len(m.mismatched_shapes) == 2
    assert m.mismatched_shapes[0][1:] == ((80, 80), (64, 64))
    msg = L.mismatch_message(m, "the SD3 model")
    assert "wide.safetensors: only 0 of its 2 modules match the SD3 model" in msg and "another width" in msg


def test_unet_names_on_mmdit_say_other_family():
    keys = {f"unet.down_blocks.1.attentions.0.transformer_blocks.{i}.attn1.to_q.lora_{p}.weight": (4, 4)
            for i in range(3) for p in "AB"}
    m = L.match("sdxl.safetensors", keys, _key_map(), SHAPES, with_text_encoder=False)
    assert (m.modules, m.matched, len(m.unmatched)) == (3, 0, 3) and "UNet" in m.family_hint
    msg = L.mismatch_message(m, "the SD3 model")
    assert "another model family" in msg and "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q" in msg


def test_text_encoder_modules_are_ignored_without_clip_and_counted_with():
    keys = {**SD3_KEYS, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 8),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": (8, 4)}
    m = L.match("te.safetensors", keys, _key_map(), SHAPES, with_text_encoder=False)
    assert m.ok() and m.ignored_text_encoder == 1 and "1 text-encoder modules not applied" in m.describe()
    m = L.match("te.safetensors", keys, _key_map(), SHAPES, with_text_encoder=True)
    assert not m.ok() and m.unmatched == ["text_encoder.text_model.encoder.layers.0.self_attn.q_proj"]


def test_partial_match_counts_and_examples():
    keys = {**SD3_KEYS, **{f"transformer.transformer_blocks.{i}.attn.to_q.lora_{p}.weight": (4, 64) if p == "A" else (64, 4)
                           for i in (5, 6, 7) for p in "AB"}}
    m = L.match("deep.safetensors", keys, _key_map(), SHAPES, with_text_encoder=False)
    assert (m.modules, m.matched) == (5, 2)
    msg = L.mismatch_message(m, "the SD3 model")
    assert "only 2 of its 5 modules" in msg and "transformer.transformer_blocks.5.attn.to_q" in msg and "deeper base" in msg


def test_a_module_without_its_up_matrix_does_not_match():
    keys = {k: v for k, v in SD3_KEYS.items() if not k.endswith("to_q.lora_B.weight")}
    m = L.match("cut.safetensors", keys, _key_map(), SHAPES, with_text_encoder=False)
    assert (m.modules, m.matched) == (2, 1) and m.unmatched == ["transformer.transformer_blocks.0.attn.to_q"]


def test_unet_renames_for_the_host_key_map():
    keys = [
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
        "unet.mid_block.attentions.0.transformer_blocks.3.attn2.to_out.0.lora.up.weight",
        "unet.down_blocks.1.attentions.0.proj_in.lora_A.weight",
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q.lora_A.weight",
        "diffusion_model.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.alpha",
        "diffusion_model.down_blocks.1.resnets.0.conv1.lora_B.weight",
        "diffusion_model.input_blocks.4.1.proj_in.lora_up.weight",
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
    ]
    assert L.comfy_key_renames(keys) == {
        keys[0]: "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q.lora_A.weight",
        keys[1]: "unet.mid_block.attentions.0.transformer_blocks.3.attn2.processor.to_out.lora.up.weight",
        keys[5]: "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_k.alpha",
        keys[6]: "unet.down_blocks.1.resnets.0.conv1.lora_B.weight",
    }
