"""Host tier: what nodes/_compat.py detects on the running ComfyUI, and that each helper works there.

Run once per host in the matrix (0.3.75 and the newest tree): the expected detections for known
versions are pinned below, and every detection is also checked by its behaviour, so a host that
changes one of these internals fails here by name."""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch
from conftest import REPO
from helpers import call
from testnodes import make_conditioning

# What each known host offers (read from their sources; the behaviour tests below confirm it).
KNOWN = {
    "0.3.75": {"search_aliases": False, "advanced_inputs": False, "filename_cache_drop": 2,
               "scheduler_registry": True, "unload_model": "free_memory(keep_loaded=)",
               "image_encoder_config": "json file"},
    "0.33.0": {"search_aliases": True, "advanced_inputs": True, "filename_cache_drop": 2,
               "scheduler_registry": True, "unload_model": "unload_model_and_clones",
               "image_encoder_config": "dict"},
}


@pytest.fixture(scope="module")
def C(host):
    """The pack's compat module, as the loaded pack imported it."""
    pkg = next(m for name, m in sys.modules.items() if name.endswith(".nodes._compat")
               and os.path.realpath(getattr(m, "__file__", "")).startswith(os.path.realpath(REPO)))
    return importlib.import_module(pkg.__name__)


def host_version() -> str:
    import comfyui_version

    return comfyui_version.__version__


def test_detections_on_this_host(C):
    want = KNOWN.get(host_version())
    if want is None:
        pytest.skip(f"ComfyUI {host_version()} is not in KNOWN; the behaviour tests below still check each detection")
    assert C.FEATURES == want


def test_search_aliases_reach_object_info_where_supported(C):
    from comfy_api.v0_0_2 import io

    kw = C.search_aliases("skip layer guidance", "slg")
    if C.FEATURES["search_aliases"]:
        class Probe(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(node_id="SD35WB_CompatProbe", inputs=[], outputs=[], **kw)

            @classmethod
            def execute(cls) -> io.NodeOutput:
                return io.NodeOutput()

        assert Probe.GET_NODE_INFO_V1()["search_aliases"] == ["skip layer guidance", "slg"]
    else:
        assert kw == {}
        with pytest.raises(TypeError):  # why the keyword must stay out on this host
            io.Schema(node_id="SD35WB_CompatProbe", search_aliases=["slg"])


def test_advanced_inputs_where_supported(C):
    from comfy_api.v0_0_2 import io

    kw = C.advanced()
    if C.FEATURES["advanced_inputs"]:
        assert io.Float.Input("x", **kw).as_dict()["advanced"] is True
    else:
        assert kw == {}
        with pytest.raises(TypeError):
            io.Float.Input("x", advanced=True)


def test_pack_schemas_use_the_extras_exactly_where_supported(host, C):
    """The pack's node definitions as /object_info serves them (GET_NODE_INFO_V1): aliases and advanced flags appear iff supported."""
    infos = {k: cls.GET_NODE_INFO_V1() for k, cls in host.nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("SD35WB_")}
    aliased = [k for k, i in infos.items() if i.get("search_aliases")]
    advanced = [(k, n) for k, i in infos.items() for part in ("required", "optional")
                for n, spec in i["input"].get(part, {}).items() if len(spec) > 1 and spec[1].get("advanced")]
    if C.FEATURES["search_aliases"]:
        assert "SD35WB_SLGGuider" in aliased and "SD35WB_SD35Loader" in aliased, aliased
    else:
        assert aliased == []
    if C.FEATURES["advanced_inputs"]:
        assert ("SD35WB_SD35Loader", "t5_dtype") in advanced, advanced
    else:
        assert advanced == []


def test_refresh_filename_lists_shows_a_file_the_mtime_check_missed(host, C, user_models):
    """A coarse-timestamp filesystem: the folder's mtime does not move when a file lands."""
    fp = host.folder_paths
    folder = user_models / "loras"
    before = fp.get_filename_list("loras")
    st = os.stat(folder)
    new = folder / "compat-probe.safetensors"
    new.write_bytes(b"")
    try:
        os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))
        if C.FEATURES["filename_cache_drop"]:
            assert "compat-probe.safetensors" not in fp.get_filename_list("loras"), "the host's cache saw it anyway"
        C.refresh_filename_lists(["loras"])
        assert "compat-probe.safetensors" in fp.get_filename_list("loras")
    finally:
        new.unlink()
        C.refresh_filename_lists(["loras"])
    assert fp.get_filename_list("loras") == before


def test_unload_model_takes_out_that_model_only(host, C):
    import comfy.model_management as mm

    a = call(host.nodes, "UNETLoader", unet_name="tiny-sd15.safetensors", weight_dtype="default")[0]
    b = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")[0]
    mm.load_models_gpu([a, b])
    assert {id(a), id(b)} <= {id(m) for m in mm.loaded_models()}
    C.unload_model(a)
    loaded = {id(m) for m in mm.loaded_models()}
    assert id(a) not in loaded and id(b) in loaded
    C.unload_model(b)
    assert id(b) not in {id(m) for m in mm.loaded_models()}


def test_model_sampling_discrete_lcm_patches_a_clone(host, C):
    model = call(host.nodes, "UNETLoader", unet_name="tiny-sd15.safetensors", weight_dtype="default")[0]
    before = type(model.get_model_object("model_sampling"))
    m = C.model_sampling_discrete(model, "lcm")
    ms = m.get_model_object("model_sampling")
    # By name: the host loads comfy_extras under its own module names, so a fresh import is another class.
    assert m is not model and {"LCM", "ModelSamplingDiscreteDistilled"} <= {c.__name__ for c in type(ms).__mro__}
    assert len(ms.sigmas) == 50  # LCM's 50 distilled timesteps
    assert type(model.get_model_object("model_sampling")) is before


def test_vae_names_and_load_vae_match_core_vaeloader(host, C):
    assert C.vae_names() == host.nodes.NODE_CLASS_MAPPINGS["VAELoader"].INPUT_TYPES()["required"]["vae_name"][0]
    assert "taesd3" in C.vae_names()  # the tiny taesd3 encoder/decoder pair in vae_approx
    vae = C.load_vae("taesd3")
    ref = call(host.nodes, "VAELoader", vae_name="taesd3")[0]
    latent = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    img = vae.decode(latent)
    assert img.shape[-1] == 3 and img.shape[-3:-1] == (64, 64)
    assert torch.equal(img, ref.decode(latent))


def test_ksampler_equals_core_ksampler_node(host, C):
    model = call(host.nodes, "UNETLoader", unet_name="tiny-sd15.safetensors", weight_dtype="default")[0]
    latent = call(host.nodes, "EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    pos, neg = make_conditioning("sd15", 1, 64, 64), make_conditioning("sd15", 2, 64, 64)
    ours = C.ksampler(model, 5, 2, 1.5, "euler", "normal", pos, neg, latent, denoise=1.0)["samples"]
    (core,) = call(host.nodes, "KSampler", model=model, seed=5, steps=2, cfg=1.5, sampler_name="euler",
                   scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    assert ours.shape == core["samples"].shape and torch.equal(ours, core["samples"])


def test_registered_scheduler_is_offered_and_computes(host, C):
    import comfy.model_sampling
    import comfy.samplers

    name = "sd35wb_ztsnr_trailing"  # registered when the pack loaded
    assert C.FEATURES["scheduler_registry"]
    assert name in comfy.samplers.KSampler.SCHEDULERS
    assert name in C.combo_options("KSampler", "scheduler")
    assert name in C.combo_options("BasicScheduler", "scheduler")
    assert C.register_scheduler(name, None) is True  # a second call changes nothing
    assert comfy.samplers.SCHEDULER_NAMES.count(name) == 1

    class EpsDiscrete(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    sig = comfy.samplers.calculate_sigmas(EpsDiscrete(None), name, 4)
    assert sig.shape == (5,) and float(sig[-1]) == 0.0 and float(sig[0]) > 1000  # zero terminal SNR: huge first sigma


def test_lora_key_map_is_what_core_load_lora_for_models_builds(host, C):
    """The key map and conversion the pack checks LoRAs with are the host's own: every entry patches
    through core's loader, and a second call starts from an empty map (the host's functions default
    to one shared dict)."""
    import comfy.lora

    model = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")[0]
    key_map = C.lora_key_map(model, None)
    assert "transformer.transformer_blocks.0.attn.to_q" in key_map
    assert C.lora_key_map(None, None) == {}
    shapes = C.weight_shapes(model, None)
    target = key_map["transformer.transformer_blocks.0.attn.to_q"]
    key, (dim, start, length) = target
    assert shapes[key][dim] == 3 * length  # the fused qkv, of which to_q is one third
    lora = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(2, shapes[key][1]),
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(length, 2)}
    assert C.lora_convert(lora).keys() == lora.keys()
    assert list(comfy.lora.load_lora(lora, key_map, log_missing=False)) == [target]


def test_meta_diffusion_model_is_the_hosts_detection_without_weights(host, C):
    from safetensors import safe_open

    for name, cls in (("tiny-sd35m.safetensors", "SD3"), ("tiny-vega.safetensors", "SDXL")):
        path = host.folder_paths.get_full_path("diffusion_models", name)
        with safe_open(path, "pt") as f:
            tensors = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        model = C.meta_diffusion_model(tensors)
        assert type(model).__name__ == cls and {p.device.type for p in model.parameters()} == {"meta"}
        keys = C.base_lora_key_map(model)
        assert len(keys) > 100 and all(isinstance(v, (str, tuple)) for v in keys.values())
    assert C.meta_diffusion_model({"w": torch.empty(2, 2, device="meta")}) is None


def test_the_pack_uses_the_numbered_v3_api_on_this_host(host):
    """comfy_api.v0_0_2 is listed as supported by this host and is what the pack's modules import
    (nodes/_compat.py says why); on the matrix's hosts it is latest's surface, re-exported."""
    import ast

    import comfy_api.latest
    import comfy_api.v0_0_2
    from comfy_api.version_list import supported_versions
    from conftest import REPO

    assert comfy_api.v0_0_2.ComfyAPIAdapter_v0_0_2 in supported_versions
    assert comfy_api.v0_0_2.io.ComfyNode is comfy_api.latest.io.ComfyNode  # the same schema classes today
    for py in sorted((REPO / "nodes").glob("*.py")):
        mods = {n.module for n in ast.walk(ast.parse(py.read_text())) if isinstance(n, ast.ImportFrom) and n.module}
        assert "comfy_api.latest" not in mods, f"{py.name} imports comfy_api.latest; use comfy_api.v0_0_2"
