"""Host tier: the pack's one LoRA loader (nodes/_lora.py) on LoRA files written by PEFT's and
diffusers' own save code, in the formats SimpleTuner writes (tools/lora_fixtures.py).

The user's story: a SimpleTuner LoRA run's checkpoints are applied to the tiny SD3.5 model; each
must patch exactly like diffusers + PEFT (the library that trained it) and like core
LoraLoaderModelOnly, and a LoRA for another model is an error naming the file and the counts,
never an unchanged image."""

from __future__ import annotations

import importlib
import os
import shutil
import sys

import pytest
import torch
from conftest import REPO
from helpers import call

from tools import lora_fixtures

SD3_GOOD = [n for n in lora_fixtures.GOOD if n.startswith("sd3-")]
SDXL_GOOD = [n for n in lora_fixtures.GOOD if n.startswith("sdxl-")]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lora_mod(host):
    """The pack's _lora module, as the loaded pack imported it."""
    pkg = next(m for name, m in sys.modules.items() if name.endswith(".nodes._lora")
               and os.path.realpath(getattr(m, "__file__", "")).startswith(os.path.realpath(REPO)))
    return importlib.import_module(pkg.__name__)


@pytest.fixture(scope="module")
def fixtures(host, user_models):
    """Every fixture file, also copied into models/loras (as the linker would link them) for core's loader."""
    files = lora_fixtures.build_all()
    for name, path in files.items():
        dst = user_models / "loras" / f"{name}.safetensors"
        if not dst.exists():
            shutil.copyfile(path, dst)
    return files


@pytest.fixture(scope="module")
def sd3(host):
    return call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")[0]


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 16, 16, 16, generator=g), torch.tensor([400.0]),
            torch.randn(1, 8, 4096, generator=g), torch.randn(1, 2048, generator=g))


def comfy_forward(model) -> torch.Tensor:
    """The patched diffusion model's raw forward (the host patches the weights when it loads the model)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model], force_full_load=True)
    x, t, ctx, y = _inputs()
    dm = model.model.diffusion_model
    dtype = next(dm.parameters()).dtype
    with torch.no_grad():
        return dm(x.to(dtype), t, context=ctx.to(dtype), y=y.to(dtype)).float()


def diffusers_forward(lora_path, strength: float) -> torch.Tensor:
    """diffusers' SD3Transformer2DModel with the LoRA loaded by diffusers itself at ``strength``."""
    model = lora_fixtures.sd3_transformer()
    if lora_path is not None:
        model.load_lora_adapter(str(lora_path), prefix="transformer", adapter_name="ref")
        model.set_adapters(["ref"], weights=[strength])
    x, t, ctx, y = _inputs()
    with torch.no_grad():
        return model(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=y, timestep=t).sample.float()


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def reference(fixtures):
    """diffusers + PEFT outputs: the base model, and the LoRA (the same adapter in all SD3 files) at 0.7."""
    return {"base": diffusers_forward(None, 0.0), 0.7: diffusers_forward(fixtures["sd3-peft"], 0.7)}


@pytest.mark.parametrize("name", SD3_GOOD)
def test_sd3_lora_matches_fully_and_patches_like_diffusers_and_core(host, lora_mod, fixtures, sd3, reference, name):
    sd = lora_mod.load(str(fixtures[name]))
    m = lora_mod.check(sd3, None, sd, f"{name}.safetensors")
    assert m.ok() and m.modules == 47 and not m.unmatched and not m.mismatched_shapes, m.describe()
    assert lora_mod.check_file(str(fixtures[name]), host.folder_paths.get_full_path("diffusion_models",
                                                                                    "tiny-sd35m.safetensors")) == m
    ours, _ = lora_mod.apply(sd3, None, sd, 0.7, 0.0, name)
    assert ours is not sd3
    out = comfy_forward(ours)
    base = comfy_forward(sd3)  # the base is untouched: patches live on the clone
    assert rel(base, reference["base"]) < 1e-4
    assert rel(out, base) > 1e-3, "the LoRA must change the output"
    assert rel(out, reference[0.7]) < 1e-4
    (core,) = call(host.nodes, "LoraLoaderModelOnly", model=sd3, lora_name=f"{name}.safetensors", strength_model=0.7)
    assert torch.equal(comfy_forward(core), out)


def test_detected_formats(lora_mod, fixtures):
    from sd35wb import lora

    got = {n: lora.detect_format(lora_mod.load(str(fixtures[n]))) for n in lora_fixtures.GOOD}
    assert got == {"sd3-peft": "peft", "sd3-simpletuner": "diffusers", "sd3-simpletuner-comfyui": "simpletuner-comfyui",
                   "sdxl-peft": "peft", "sdxl-simpletuner": "diffusers", "sdxl-simpletuner-comfyui": "simpletuner-comfyui"}


def test_check_file_reads_a_simpletuner_full_finetune_file_too(host, lora_mod, fixtures):
    """A LoRA checked against diffusers-layout weights (SimpleTuner's transformer/ folder), as the host detects them."""
    dm = host.models / "diffusers" / "tiny-sd35m" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert lora_mod.check_file(str(fixtures["sd3-simpletuner"]), str(dm)).matched == 47
    with pytest.raises(ValueError, match=r"sd3-peft.safetensors: this ComfyUI does not recognise it as a diffusion model"):
        lora_mod.check_file(str(fixtures["sd3-simpletuner"]), str(fixtures["sd3-peft"]))


@pytest.mark.parametrize("name", SDXL_GOOD)
def test_sdxl_lora_formats_match_the_vega_file(host, lora_mod, fixtures, name):
    m = lora_mod.check_file(str(fixtures[name]), host.folder_paths.get_full_path("diffusion_models", "tiny-vega.safetensors"))
    assert m.ok() and m.modules == 170 and m.matched == 170, m.describe()


def test_sdxl_lora_on_sd3_is_refused_as_another_family(lora_mod, fixtures, sd3):
    sd = lora_mod.load(str(fixtures["sdxl-peft"]))
    with pytest.raises(lora_mod.LoraMismatch) as e:
        lora_mod.apply(sd3, None, sd, 1.0, 0.0, "sdxl-peft.safetensors")
    msg = str(e.value)
    assert "LoRA sdxl-peft.safetensors: only 0 of its 170 modules match the SD3 model" in msg
    assert "UNet model" in msg and "another model family" in msg and "Fix:" in msg
    assert (e.value.match.modules, e.value.match.matched) == (170, 0)


@pytest.mark.parametrize("name, modules, matched, why", [
    ("sd3-wide", 57, 0, "another width"),
    ("sd3-deeper", 87, 47, "deeper base"),
    ("sd3-matches-nothing", 47, 0, "Flux-style model"),
])
def test_mismatched_loras_raise_with_counts(host, lora_mod, fixtures, sd3, name, modules, matched, why):
    sd = lora_mod.load(str(fixtures[name]))
    with pytest.raises(lora_mod.LoraMismatch) as e:
        lora_mod.apply(sd3, None, sd, 1.0, 0.0, f"{name}.safetensors")
    m = e.value.match
    assert (m.modules, m.matched) == (modules, matched)
    assert f"LoRA {name}.safetensors: only {matched} of its {modules} modules match" in str(e.value) and why in str(e.value)
    assert lora_mod.check_file(str(fixtures[name]), host.folder_paths.get_full_path(
        "diffusion_models", "tiny-sd35m.safetensors")) == m


def test_truncated_file_is_refused_naming_it(host, lora_mod, fixtures):
    path = str(fixtures["sd3-truncated"])
    with pytest.raises(ValueError, match=r"sd3-truncated.safetensors is truncated or still being written"):
        lora_mod.load(path)
    with pytest.raises(ValueError, match=r"sd3-truncated.safetensors is truncated"):
        lora_mod.check_file(path, host.folder_paths.get_full_path("diffusion_models", "tiny-sd35m.safetensors"))


def test_strength_zero_returns_the_inputs(lora_mod, fixtures, sd3):
    sd = lora_mod.load(str(fixtures["sd3-peft"]))
    assert lora_mod.apply(sd3, None, sd, 0.0, 0.0, "x") == (sd3, None)
    clip = object()  # never touched: clip strength 0
    assert lora_mod.apply(sd3, clip, sd, 0.0, 0.0, "x")[1] is clip
    # even a mismatched LoRA at strength 0 is no error: nothing is applied
    assert lora_mod.apply(sd3, None, lora_mod.load(str(fixtures["sd3-wide"])), 0.0, 1.0, "x") == (sd3, None)


def test_load_cache_is_bounded_and_follows_the_file(lora_mod, fixtures, tmp_path):
    names = ["sd3-peft", "sd3-simpletuner", "sd3-simpletuner-comfyui"]
    dicts = [lora_mod.load(str(fixtures[n])) for n in names]
    assert len(lora_mod._CACHE) <= lora_mod.CACHE_SIZE
    assert lora_mod.load(str(fixtures[names[-1]])) is dicts[-1]
    p = tmp_path / "changing.safetensors"
    shutil.copyfile(fixtures["sd3-peft"], p)
    a = lora_mod.load(str(p))
    shutil.copyfile(fixtures["sd3-simpletuner-comfyui"], p)  # another size: a new stamp
    assert lora_mod.load(str(p)) is not a


def test_simpletuner_lora_run_links_as_loras(tmp_path):
    from sd35wb import simpletuner

    run = lora_fixtures.lora_run(tmp_path / "my-lora", steps=(500, 1000), ema=True)
    scan = simpletuner.scan(run)
    got = sorted((a.folder, a.name, a.category) for a in scan.artifacts)
    assert got == [("loras", "checkpoint-1000-ema.safetensors", "ema"), ("loras", "checkpoint-1000.safetensors", "lora"),
                   ("loras", "checkpoint-500-ema.safetensors", "ema"), ("loras", "checkpoint-500.safetensors", "lora"),
                   ("loras", "my-lora-final.safetensors", "final")], (got, scan.skipped)


def test_sdxl_formats_on_the_loaded_vega_agree_with_check_file_and_patch(host, lora_mod, fixtures):
    """On the loaded model too, including 0.3.75, whose key map misses diffusers attention names
    (``attn1.to_q``): the loader's renames make every module land."""
    vega = call(host.nodes, "UNETLoader", unet_name="tiny-vega.safetensors", weight_dtype="default")[0]
    path = host.folder_paths.get_full_path("diffusion_models", "tiny-vega.safetensors")
    for name in SDXL_GOOD:
        sd = lora_mod.load(str(fixtures[name]))
        m = lora_mod.check(vega, None, sd, f"{name}.safetensors")
        assert m.ok() and m == lora_mod.check_file(str(fixtures[name]), path)
        patched, _ = lora_mod.apply(vega, None, sd, 1.0, 0.0, name)
        assert len(patched.patches) == 170 and not vega.patches


@pytest.fixture(scope="module")
def clip_l(host, user_models):
    from tools import sd35_fixtures

    dst = user_models / "text_encoders" / "sd35wb-lora-test-clip_l.safetensors"
    if not dst.exists():
        os.symlink(sd35_fixtures.clip_l_file(), dst)
    return call(host.nodes, "CLIPLoader", clip_name=dst.name, type="sd3", device="default")[0]


def test_text_encoder_modules_apply_with_a_clip_and_are_counted_without(host, lora_mod, fixtures, sd3, clip_l):
    """A SimpleTuner --train_text_encoder LoRA: without a CLIP its text-encoder part is left out
    (and said so); with one, every module lands and the conditioning changes, like core LoraLoader."""
    sd = lora_mod.load(str(fixtures["sd3-with-te"]))
    alone = lora_mod.check(sd3, None, sd, "sd3-with-te.safetensors")
    assert alone.ok() and (alone.matched, alone.ignored_text_encoder) == (47, 48)
    assert "48 text-encoder modules not applied" in alone.describe()
    both = lora_mod.check(sd3, clip_l, sd, "sd3-with-te.safetensors")
    assert both.ok() and (both.modules, both.matched, both.ignored_text_encoder) == (95, 95, 0)
    m, c = lora_mod.apply(sd3, clip_l, sd, 1.0, 0.8, "sd3-with-te")
    assert c is not clip_l and m is not sd3
    (core_m, core_c) = call(host.nodes, "LoraLoader", model=sd3, clip=clip_l, lora_name="sd3-with-te.safetensors",
                            strength_model=1.0, strength_clip=0.8)
    enc = lambda clip: call(host.nodes, "CLIPTextEncode", clip=clip, text="a red fox")[0][0][0]  # noqa: E731
    ours, core, base = enc(c), enc(core_c), enc(clip_l)
    assert torch.equal(ours, core) and not torch.equal(ours, base)
    assert lora_mod.apply(sd3, clip_l, sd, 0.0, 0.0, "x") == (sd3, clip_l)


def _weights(model) -> dict:
    return {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}


@pytest.mark.parametrize("name", ["sd3-peft", "sd3-simpletuner-comfyui"])
def test_unmerged_lora_equals_diffusers_and_core_and_rewrites_no_weight(host, lora_mod, fixtures, sd3, reference, name):
    """The sweep's way: the host loads and maps the LoRA, then every plain-LoRA layer (SD3's fused qkv
    slices included) becomes a forward branch; nothing is merged, the base weights never change."""
    import comfy.lora

    sd = lora_mod.load(str(fixtures[name]))
    merged_ref, _ = lora_mod.apply(sd3, None, sd, 0.7, 0.0, name)
    comfy_forward(sd3)  # the base loaded: an earlier clone's merged weights restored
    before = _weights(sd3)
    calls = []
    real = comfy.lora.calculate_weight
    comfy.lora.calculate_weight = lambda *a, **k: calls.append(a[2]) or real(*a, **k)
    try:
        m, branched, merged = lora_mod.apply_unmerged(sd3, sd, 0.7, name)
        out = comfy_forward(m)
        during = _weights(m)
    finally:
        comfy.lora.calculate_weight = real
    assert (branched, merged) == (len(merged_ref.patches), 0), "every patched weight is a branch"
    assert calls == [] and m.patches == {} and m.patches_uuid == sd3.patches_uuid, "no weight is merged"
    parts = sum(len(p.parts) for p in m.object_patches.values() if type(p).__name__ == "Branch")
    assert parts == 47, "one part per LoRA module: q, k and v land on slices of the fused qkv"
    assert rel(out, reference[0.7]) < 1e-4, "equal to diffusers + PEFT, the library that trained it"
    assert rel(out, comfy_forward(merged_ref)) < 1e-5, "equal to the host's merged patch"
    assert all(torch.equal(v, before[k]) for k, v in during.items()), "sampling with it, the weights are the base's"
    assert rel(comfy_forward(sd3), reference["base"]) < 1e-4, "the base, loaded again, has no branch left"
    assert lora_mod.apply_unmerged(sd3, sd, 0.0, name) == (sd3, 0, 0)


def test_unmerged_lora_keeps_what_the_base_carried_and_chains_another_packs_forward(host, lora_mod, fixtures, sd3):
    """A style LoRA merged upstream (core LoraLoaderModelOnly) stays merged; a forward another pack
    patched on the same layer still runs, under the branch."""
    (styled,) = call(host.nodes, "LoraLoaderModelOnly", model=sd3, lora_name="sd3-peft.safetensors", strength_model=0.5)
    key = "diffusion_model.joint_blocks.0.x_block.attn.qkv.forward"
    layer = styled.get_model_object(key[: -len(".forward")])
    seen = []

    def other_pack(x, *a, **k):
        seen.append(x.shape)
        return type(layer).forward(layer, x, *a, **k)

    styled.add_object_patch(key, other_pack)
    sd = lora_mod.load(str(fixtures["sd3-simpletuner-comfyui"]))
    m, branched, merged = lora_mod.apply_unmerged(styled, sd, 0.7, "sd3-simpletuner-comfyui")
    assert m.patches == styled.patches and m.patches_uuid == styled.patches_uuid and branched > 0 and merged == 0
    assert m.object_patches[key].forward is other_pack
    (ref,) = call(host.nodes, "LoraLoaderModelOnly", model=styled, lora_name="sd3-simpletuner-comfyui.safetensors",
                  strength_model=0.7)
    out = comfy_forward(m)
    assert seen, "the other pack's forward ran"
    assert rel(out, comfy_forward(ref)) < 1e-5


def test_unmerged_sdxl_lora_on_the_vega(host, lora_mod, fixtures):
    vega = call(host.nodes, "UNETLoader", unet_name="tiny-vega.safetensors", weight_dtype="default")[0]
    sd = lora_mod.load(str(fixtures["sdxl-peft"]))
    m, branched, merged = lora_mod.apply_unmerged(vega, sd, 1.0, "sdxl-peft")
    ref, _ = lora_mod.apply(vega, None, sd, 1.0, 0.0, "sdxl-peft")
    assert branched + merged == len(ref.patches) == 170 and merged == 0
    import comfy.model_management

    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    ctx = torch.randn(1, 8, 2048, generator=torch.Generator().manual_seed(2))
    y = torch.randn(1, 2816, generator=torch.Generator().manual_seed(3))

    def fwd(p):
        comfy.model_management.load_models_gpu([p], force_full_load=True)
        with torch.no_grad():
            return p.model.diffusion_model(x, torch.tensor([400.0]), context=ctx, y=y).float()

    base, out, core = fwd(vega), fwd(m), fwd(ref)
    assert rel(out, base) > 1e-3 and rel(out, core) < 1e-5
