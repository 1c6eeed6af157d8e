"""Host tier: fine-tunes that say what they are only in their files' metadata (or their SimpleTuner
run folder) are sampled right by the ZTSNR patch on 'auto', bit for bit like the explicit patch and
core ModelSamplingDiscrete, and differently from the eps sampling ComfyUI gives them on its own."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from helpers import call
from testnodes import make_conditioning

from tools import finetune_fixtures as ff

pytestmark = pytest.mark.usefixtures("training_roots_env")

PX = 64
FAMILY = {ff.SD15: ("sd15", "taesd"), ff.VEGA: ("sdxl", "taesdxl")}


@pytest.fixture(scope="module")
def convention_files(host, user_models):
    """Every convention's file, listed in the host's diffusion_models (through the session's user folder)."""
    out = {}
    for name in ff.CONVENTIONS:
        src = ff.convention_file(name, host.models)
        link = user_models / "diffusion_models" / src.name
        if not os.path.lexists(link):
            os.symlink(src, link)
        out[name] = src.name
    return out


def render(host, model, base: str, sampler="euler", seed=5, steps=3):
    fam, vae_name = FAMILY[base]
    (latent,) = call(host.nodes, "EmptyLatentImage", width=PX, height=PX, batch_size=1)
    (samples,) = call(host.nodes, "KSampler", model=model, seed=seed, steps=steps, cfg=4.0, sampler_name=sampler,
                      scheduler="normal", positive=make_conditioning(fam, 1, PX, PX),
                      negative=make_conditioning(fam, 2, PX, PX), latent_image=latent, denoise=1.0)
    return samples["samples"]


def patch(host, model, prediction, zsnr, detect_from="none"):
    cls = host.nodes.NODE_CLASS_MAPPINGS["SD35WB_ZTSNRModelPatch"]
    out = cls.execute(model=model, prediction=prediction, zsnr=zsnr, detect_from=detect_from)
    return out.result[0], out.result[1], out.ui


@pytest.mark.parametrize("name", list(ff.CONVENTIONS))
def test_auto_equals_the_explicit_patch_bit_for_bit(host, convention_files, name):
    import comfy.model_sampling as ms

    fname = convention_files[name]
    base = ff.CONVENTIONS[name][0]
    pred, zsnr, psrc, zsrc = ff.EXPECTED[name]
    (model,) = call(host.nodes, "UNETLoader", unet_name=fname, weight_dtype="default")
    loaded = model.get_model_object("model_sampling")
    # UNETLoader drops marker keys with the prefix, and metadata never counts: the host samples all as eps.
    assert isinstance(loaded, ms.EPS) and not isinstance(loaded, ms.V_PREDICTION) and not loaded.zsnr
    auto, text, ui = patch(host, model, "auto", "auto", f"diffusion_models/{fname}")
    assert psrc in text and zsrc in text, text
    assert ui.as_dict() == {"text": (text,)}, "the summary is shown on the node"
    explicit, _, _ = patch(host, model, "v_prediction" if pred == "v" else "eps", "on" if zsnr == "yes" else "off")
    (core,) = call(host.nodes, "ModelSamplingDiscrete", model=model, sampling="v_prediction" if pred == "v" else "eps",
                   zsnr=zsnr == "yes")
    got = render(host, auto, base)
    assert torch.equal(got, render(host, explicit, base)), "auto == explicit patch, bit for bit"
    assert torch.equal(got, render(host, core, base)), "== core ModelSamplingDiscrete"
    if pred == "v":
        assert not torch.equal(got, render(host, model, base)), "v-pred sampling differs from the host's eps"
    else:
        assert torch.equal(got, render(host, model, base))
    if name == "conflict":
        assert "marker key 'v_pred' says v" in text and "ss_v_parameterization=False says eps" in text


def test_explicit_choices_win_over_the_detection(host, convention_files):
    (model,) = call(host.nodes, "UNETLoader", unet_name=convention_files["kohya_vpred_no_zsnr"], weight_dtype="default")
    forced, text, _ = patch(host, model, "auto", "on", f"diffusion_models/{convention_files['kohya_vpred_no_zsnr']}")
    s = forced.get_model_object("model_sampling")
    assert s.zsnr and "zsnr on [set on the node]" in text and "ss_v_parameterization=True" in text
    eps, text, _ = patch(host, model, "eps", "auto", f"diffusion_models/{convention_files['kohya_vpred_no_zsnr']}")
    assert "applied: eps [set on the node]" in text and not eps.get_model_object("model_sampling").zsnr


def test_the_nodes_own_defaults_follow_what_comfyui_loaded(host, convention_files):
    """auto / auto / no detect_from (the node as dropped on the canvas) keeps what ComfyUI made of the
    model and says so: eps for a plain file, v-pred + zero-SNR for one with ComfyUI's marker keys."""
    import comfy.model_sampling as ms

    (eps_model,) = call(host.nodes, "UNETLoader", unet_name=convention_files["eps"], weight_dtype="default")
    out, text, _ = patch(host, eps_model, "auto", "auto")
    assert "applied: eps [auto: as ComfyUI loaded it, eps], zsnr off [auto: as ComfyUI loaded it, eps, zsnr off]" \
        in text, text
    assert "no detect_from file" in text
    assert torch.equal(render(host, out, ff.SD15), render(host, eps_model, ff.SD15))
    # v-pred + zero-SNR as ComfyUI samples it (its SDXL loader sets this from the marker keys; here
    # core ModelSamplingDiscrete upstream, as a user chains it): auto keeps it and says so.
    (marked,) = call(host.nodes, "ModelSamplingDiscrete", model=eps_model, sampling="v_prediction", zsnr=True)
    loaded = marked.get_model_object("model_sampling")
    assert isinstance(loaded, ms.V_PREDICTION) and loaded.zsnr
    out, text, _ = patch(host, marked, "auto", "auto")
    assert "applied: v_prediction [auto: as ComfyUI loaded it, v-prediction], zsnr on [auto:" in text, text
    assert "avoid heun / heunpp2" in text
    assert torch.equal(render(host, out, ff.SD15), render(host, marked, ff.SD15))
    assert not torch.equal(render(host, out, ff.SD15), render(host, eps_model, ff.SD15))
    # One explicit, one auto: the auto half still comes from the model.
    forced, text, _ = patch(host, eps_model, "v_prediction", "auto")
    s = forced.get_model_object("model_sampling")
    assert isinstance(s, ms.V_PREDICTION) and not s.zsnr and "zsnr off [auto: as ComfyUI loaded it" in text


def test_bad_files_are_named_errors(host, convention_files):
    (model,) = call(host.nodes, "UNETLoader", unet_name=convention_files["eps"], weight_dtype="default")
    with pytest.raises(ValueError, match="detect_from: 'diffusion_models/nope.safetensors' is not a file"):
        patch(host, model, "v_prediction", "auto", "diffusion_models/nope.safetensors")
    (sd3,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")
    with pytest.raises(ValueError, match="model: this is a flow-matching model"):
        patch(host, sd3, "auto", "auto", "diffusion_models/tiny-sd35m.safetensors")


def test_zero_snr_with_heun_warns_and_names_the_alternative(host, convention_files, caplog):
    (model,) = call(host.nodes, "UNETLoader", unet_name=convention_files["markers"], weight_dtype="default")
    zs, text, _ = patch(host, model, "auto", "auto", f"diffusion_models/{convention_files['markers']}")
    assert "avoid heun / heunpp2" in text
    with caplog.at_level(logging.WARNING, logger="sd35-workbench"):
        render(host, zs, ff.SD15, sampler="heun", steps=2)
    (msg,) = [r.getMessage() for r in caplog.records if "collapse" in r.getMessage()]
    import comfy.samplers

    alt = "exp_heun_2_x0" if "exp_heun_2_x0" in comfy.samplers.KSAMPLER_NAMES else "euler"  # 0.3.75 lacks it
    assert "sampler 'heun'" in msg and f"use '{alt}'" in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sd35-workbench"):
        render(host, zs, ff.SD15, sampler="euler", steps=2)
        render(host, model, ff.SD15, sampler="heun", steps=2)  # not zero-SNR: no warning
    assert not [r for r in caplog.records if "collapse" in r.getMessage()]


def test_ztsnr_scheduler_with_heun_warns_through_the_guider(host, convention_files, caplog):
    (model,) = call(host.nodes, "UNETLoader", unet_name=convention_files["eps"], weight_dtype="default")
    (sigmas, _) = call(host.nodes, "SD35WB_ZTSNRScheduler", model=model, steps=2, terminal_sigma="comfyui (4518.76)",
                       custom_terminal_sigma=20000.0)
    (guider,) = call(host.nodes, "SD35WB_ZTSNRGuider", model=model, positive=make_conditioning("sd15", 1, PX, PX),
                     negative=make_conditioning("sd15", 2, PX, PX), cfg=4.0, cond_only_steps=1)
    (latent,) = call(host.nodes, "EmptyLatentImage", width=PX, height=PX, batch_size=1)
    (noise,) = call(host.nodes, "RandomNoise", noise_seed=1)
    for sampler_name, warned in (("heun", True), ("euler", False)):
        caplog.clear()
        (sampler,) = call(host.nodes, "KSamplerSelect", sampler_name=sampler_name)
        with caplog.at_level(logging.WARNING, logger="sd35-workbench"):
            call(host.nodes, "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                 latent_image=latent)
        assert bool([r for r in caplog.records if "collapse" in r.getMessage()]) == warned


# --------------------------------------------------------------------------- SimpleTuner run: linker + sweep

@pytest.fixture(scope="module")
def vpred_run(host, user_models, tmp_path_factory):
    """A SimpleTuner SDXL v-pred zero-SNR run (no marker keys) linked by the node into the session's folder."""
    fp = host.folder_paths
    saved = {f: fp.get_folder_paths(f) for f in ("diffusion_models", "loras")}
    for f in saved:
        fp.add_model_folder_path(f, str(user_models / f), is_default=True)
    out = ff.simpletuner_vpred_run(tmp_path_factory.mktemp("st-vpred") / "vpred-run", host.models, steps=(500,))
    try:
        yield out, call(host.nodes, "SD35WB_SimpleTunerLink", output_dir=str(out), run="vpred-run", full=True,
                        ema=True, lora=True, final=True)
    finally:
        for f, paths in saved.items():
            fp.folder_names_and_paths[f][0][:] = paths


def test_linker_reports_the_detection_per_checkpoint(host, vpred_run):
    _, (models, _, report, detected) = vpred_run
    assert models.splitlines() == ["vpred-run/checkpoint-500.safetensors"]
    d = json.loads(detected)["vpred-run/checkpoint-500.safetensors"]
    assert (d["family"]["value"], d["prediction"]["value"], d["zsnr"]["value"]) == ("sdxl", "v", "yes")
    assert d["prediction"]["source"] == "training config config.json prediction_type=v_prediction"
    assert d["family"]["source"] == "metadata modelspec.architecture=stable-diffusion-xl-v1-base"
    assert "detected  vpred-run/checkpoint-500.safetensors  SDXL (Segmind Vega); prediction v-prediction" in report


def test_sweep_renders_a_vpred_run_as_v_pred_with_no_patch_node(host, vpred_run):
    _, (models, _, _, _) = vpred_run
    name = models.splitlines()[0]
    (latent,) = call(host.nodes, "EmptyLatentImage", width=PX, height=PX, batch_size=1)
    (vae,) = call(host.nodes, "VAELoader", vae_name="taesdxl")
    pos, neg = make_conditioning("sdxl", 1, PX, PX), make_conditioning("sdxl", 2, PX, PX)
    images, _, labels, _, *_ = call(host.nodes, "SD35WB_CheckpointSweep", models=name, positive=pos, negative=neg,
                             latent_image=latent, vae=vae, seed=5, steps=3, cfg=4.0, sampler_name="euler",
                             scheduler="normal", denoise=1.0, weight_dtype="default", order="numeric")
    assert labels == "checkpoint-500"
    (model,) = call(host.nodes, "UNETLoader", unet_name=name, weight_dtype="default")
    (core,) = call(host.nodes, "ModelSamplingDiscrete", model=model, sampling="v_prediction", zsnr=True)

    def decode(m):
        (img,) = call(host.nodes, "VAEDecode", samples={"samples": render(host, m, ff.VEGA)}, vae=vae)
        return img

    assert torch.equal(images, decode(core)), "the sweep = loader + explicit v-pred zsnr patch, bit for bit"
    assert not torch.equal(images, decode(model)), "and not the eps rendering the host gives it alone"
