"""Unit tier: LCM-LoRA family detection from safetensors headers, step checks and the
Hugging Face cache lookup (offline, against a cache laid out like huggingface_hub's)."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from safetensors.numpy import save_file

from sd35wb import lcm

# (down_blocks.1 depth, down_blocks.2 depth) per SDXL-family member, from comfy/supported_models.py
SDXL_SHAPES = {"SDXL": (2, 10), "SSD-1B": (2, 4), "Segmind Vega": (1, 2), "KOALA-700M": (2, 5)}


def _keys(fmt: str, block: int, attn: int, t: int, ctx_key: bool = True) -> tuple[str, str]:
    """(down/A key, up/B key) of attn2.to_k for one transformer block, in one naming scheme."""
    if fmt == "kohya":
        base = f"lora_unet_down_blocks_{block}_attentions_{attn}_transformer_blocks_{t}_attn2_to_k"
        return f"{base}.lora_down.weight", f"{base}.lora_up.weight"
    if fmt == "kohya_ldm":
        n = 1 + 3 * block + attn  # two res blocks per level: input_blocks 4,5 and 7,8
        base = f"lora_unet_input_blocks_{n}_1_transformer_blocks_{t}_attn2_to_k"
        return f"{base}.lora_down.weight", f"{base}.lora_up.weight"
    if fmt == "peft":
        base = f"unet.down_blocks.{block}.attentions.{attn}.transformer_blocks.{t}.attn2.to_k"
        return f"{base}.lora_A.weight", f"{base}.lora_B.weight"
    base = f"unet.down_blocks.{block}.attentions.{attn}.transformer_blocks.{t}.attn2.processor.to_k"  # old diffusers
    return f"{base}_lora.down.weight", f"{base}_lora.up.weight"


def _write_lora(path, depths: dict[int, int], ctx: int, fmt: str, extra: dict | None = None):
    sd = {}
    for block, depth in depths.items():
        for attn in range(2):
            for t in range(depth):
                down, up = _keys(fmt, block, attn, t)
                sd[down] = np.zeros((4, ctx), np.float16)
                sd[up] = np.zeros((8, 4), np.float16)
    sd.update(extra or {})
    save_file(sd, str(path))
    return path


@pytest.mark.parametrize("fmt", ["kohya", "kohya_ldm", "peft", "diffusers_processor"])
@pytest.mark.parametrize("family", list(SDXL_SHAPES))
def test_sdxl_family_members_are_told_apart(tmp_path, fmt, family):
    d1, d2 = SDXL_SHAPES[family]
    p = _write_lora(tmp_path / "l.safetensors", {1: d1, 2: d2}, 2048, fmt)
    info = lcm.detect_lora_family(lcm.read_safetensors_header(p))
    assert (info.family, info.group, info.context_dim, info.down_depth) == (family, "SDXL family", 2048, d2)


@pytest.mark.parametrize("ctx, family", [(768, "SD1.5"), (1024, "SD2.x")])
def test_sd1_and_sd2_by_context_width(tmp_path, ctx, family):
    te = {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": np.zeros((4, 768), np.float16)}
    p = _write_lora(tmp_path / "l.safetensors", {0: 1, 1: 1, 2: 1}, ctx, "kohya", te)
    info = lcm.detect_lora_family(lcm.read_safetensors_header(p))
    assert (info.family, info.context_dim, info.other_keys) == (family, ctx, 1)


def test_partial_sdxl_lora_is_checked_at_group_level(tmp_path):
    up_only = {"lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": np.zeros((4, 2048), np.float16)}
    p = tmp_path / "style.safetensors"
    save_file(up_only, str(p))
    info = lcm.detect_lora_family(lcm.read_safetensors_header(p))
    assert (info.family, info.group) == (None, "SDXL family")
    lcm.check_lora_matches(info, "Segmind Vega", "style.safetensors", "style_lora")  # same group: accepted
    with pytest.raises(ValueError, match=r"style_lora: style.safetensors was trained for SDXL family \(exact model not "
                                         r"recognisable\) but the model is SD1.5"):
        lcm.check_lora_matches(info, "SD1.5", "style.safetensors", "style_lora")


def test_mismatch_message_names_both_families_and_the_right_lora(tmp_path):
    p = _write_lora(tmp_path / "l.safetensors", {1: 2, 2: 10}, 2048, "kohya")
    info = lcm.detect_lora_family(lcm.read_safetensors_header(p))
    with pytest.raises(ValueError) as e:
        lcm.check_lora_matches(info, "SSD-1B", "lcm-lora-sdxl.safetensors")
    msg = str(e.value)
    assert msg.startswith("lcm_lora: lcm-lora-sdxl.safetensors was trained for SDXL but the model is SSD-1B")
    assert "latent-consistency/lcm-lora-ssd-1b" in msg and "lora key not loaded" in msg
    lcm.check_lora_matches(info, "SDXL", "x")  # same family: fine
    lcm.check_lora_matches(info, None, "x")  # unknown model family: nothing to compare


def test_unreadable_header_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="bad.safetensors is not a safetensors file"):
        lcm.read_safetensors_header(p)
    (tmp_path / "short.safetensors").write_bytes(b"abc")
    with pytest.raises(ValueError, match="shorter than its 8-byte header"):
        lcm.read_safetensors_header(tmp_path / "short.safetensors")


def test_model_family_walks_the_model_config_mro():
    assert lcm.model_family(["SSD1B", "SDXL", "BASE", "object"]) == "SSD-1B"
    assert lcm.model_family(["Segmind_Vega", "SDXL", "BASE", "object"]) == "Segmind Vega"
    assert lcm.model_family(["SDXL_instructpix2pix", "SDXL", "BASE", "object"]) == "SDXL"
    assert lcm.model_family(["SD15_instructpix2pix", "SD15", "BASE", "object"]) == "SD1.5"
    assert lcm.model_family(["SD3", "BASE", "object"]) is None


def test_known_loras_and_auto():
    assert lcm.known_for_family("SDXL").repo_id == "latent-consistency/lcm-lora-sdxl"
    assert lcm.known_for_family("Segmind Vega").repo_id == "segmind/Segmind-VegaRT"
    assert lcm.known_by_option("hf: latent-consistency/lcm-lora-ssd-1b").family == "SSD-1B"
    assert lcm.known_by_option("my.safetensors") is None
    with pytest.raises(ValueError, match=r"lcm_lora: no public LCM-LoRA is known for KOALA-700M models"):
        lcm.known_for_family("KOALA-700M")
    opts = lcm.lora_options(["a.safetensors"])
    assert opts[0] == lcm.AUTO and opts[-1] == "a.safetensors" and len(opts) == 6


@pytest.mark.parametrize("steps", [1, 4, 8])
def test_steps_in_range(steps):
    assert lcm.check_steps(steps) == steps


@pytest.mark.parametrize("steps", [0, 9, -1, 4.0])
def test_steps_out_of_range(steps):
    with pytest.raises(ValueError, match=r"steps: .* is out of range; LCM-LoRA samples in 1-8 steps"):
        lcm.check_steps(steps)


# ---------------------------------------------------------------------------------------------
# Hugging Face cache, offline


def _populate(cache, known, payload=b"x"):
    repo = cache / ("models--" + known.repo_id.replace("/", "--"))
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    f = repo / "snapshots" / "abc123" / known.filename
    f.write_bytes(payload)
    return f


def test_fetch_finds_the_file_in_a_prepopulated_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    k = lcm.known_for_family("SDXL")
    f = _populate(tmp_path, k)
    assert lcm.hf_cache_dir() == tmp_path
    assert lcm.fetch_known(k) == f
    # the same answer huggingface_hub itself gives for that cache
    assert huggingface_hub.try_to_load_from_cache(k.repo_id, k.filename, cache_dir=str(tmp_path)) == str(f)


def test_offline_and_missing_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    k = lcm.known_for_family("SD1.5")
    with pytest.raises(ValueError) as e:
        lcm.fetch_known(k, cache=tmp_path)
    msg = str(e.value)
    assert "latent-consistency/lcm-lora-sdv1-5/pytorch_lora_weights.safetensors is not in the Hugging Face cache" in msg
    assert "HF_HUB_OFFLINE is set" in msg and "hf download latent-consistency/lcm-lora-sdv1-5" in msg and "models/loras" in msg
    assert list(tmp_path.iterdir()) == []


def _http_error(cls, status):
    hint = "huggingface_hub raises httpx errors: `pip install httpx` (comes with huggingface_hub>=1.0)"
    httpx = pytest.importorskip("httpx2", reason=hint) if _has("httpx2") else pytest.importorskip("httpx", reason=hint)
    r = httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/x/y/resolve/main/f"))
    return cls(f"{status} error", response=r)


def _has(mod):
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def test_hub_errors_become_instructions(tmp_path):
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    k = lcm.known_for_family("SSD-1B")
    gated = lcm.explain_hub_error(k, _http_error(GatedRepoError, 403), tmp_path)
    assert "is gated: accept its terms at https://huggingface.co/latent-consistency/lcm-lora-ssd-1b" in gated
    assert "hf auth login" in gated and "HF_TOKEN" in gated
    no_token = lcm.explain_hub_error(k, _http_error(RepositoryNotFoundError, 401), tmp_path)
    assert "not found or not authorised" in no_token and "HF_TOKEN" in no_token
    full = lcm.explain_hub_error(k, OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert f"not enough disk space to download latent-consistency/lcm-lora-ssd-1b/pytorch_lora_weights.safetensors into {tmp_path}" in full
    assert "HF_HOME" in full
    other = lcm.explain_hub_error(k, RuntimeError("boom"), tmp_path)
    assert "downloading latent-consistency/lcm-lora-ssd-1b/pytorch_lora_weights.safetensors failed (RuntimeError: boom)" in other
