"""Host tier: the tiny models are recognised by ComfyUI's own detection and sample in-process."""

import pytest
import torch
from helpers import call


@pytest.mark.parametrize(
    "name, config_cls, model_type",
    [
        ("tiny-sd35m.safetensors", "SD3", "FLOW"),
        ("tiny-sd15.safetensors", "SD15", "EPS"),
        ("tiny-vega.safetensors", "Segmind_Vega", "EPS"),
    ],
)
def test_unet_loader_detects_the_family(host, name, config_cls, model_type):
    (model,) = call(host.nodes, "UNETLoader", unet_name=name, weight_dtype="default")
    assert type(model.model.model_config).__name__ == config_cls
    assert model.model.model_type.name == model_type


def test_diffusers_layout_loads_as_sd3(host):
    import comfy.sd

    path = host.models / "diffusers" / "tiny-sd35m" / "transformer" / "diffusion_pytorch_model.safetensors"
    model = comfy.sd.load_diffusion_model(str(path))
    assert type(model.model.model_config).__name__ == "SD3"
    # MMDiT-X dual attention and RMS qk-norm survive the diffusers round trip
    dm = model.model.diffusion_model
    assert hasattr(dm.joint_blocks[0].x_block, "attn2") and not hasattr(dm.joint_blocks[-1].x_block, "attn2")
    assert dm.joint_blocks[0].x_block.attn.ln_q is not None


def test_sd3_sampling_is_reproducible(host):
    from testnodes import make_conditioning

    (model,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")
    (latent,) = call(host.nodes, "EmptySD3LatentImage", width=128, height=128, batch_size=1)
    pos, neg = make_conditioning("sd3", 1), make_conditioning("sd3", 2)
    kw = dict(model=model, seed=42, steps=4, cfg=4.0, sampler_name="euler", scheduler="simple",
              positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    (a,) = call(host.nodes, "KSampler", **kw)
    (b,) = call(host.nodes, "KSampler", **kw)
    (c,) = call(host.nodes, "KSampler", **{**kw, "seed": 43})
    assert a["samples"].shape == (1, 16, 16, 16)
    assert torch.isfinite(a["samples"]).all()
    assert torch.equal(a["samples"], b["samples"])
    assert not torch.equal(a["samples"], c["samples"])
