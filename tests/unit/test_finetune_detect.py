"""Unit tier: the fine-tune detector reads prediction, zero-SNR and family from real safetensors
headers and SimpleTuner run configs (no ComfyUI). Small files with the key names and shapes of
each family; the host tier repeats every convention on loadable tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from sd35wb import finetune, linker
from sd35wb.sd3_inspect import ModelFileError
from tools.simpletuner_fixtures import fake_checkpoint


def unet_like(path, ctx=2048, depth=(0, 0, 1, 1, 2, 2), metadata=None, markers=()):
    """A UNet-shaped header: cross-attention width ``ctx`` and SDXL-style transformer depths."""
    t = {"model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 4), np.float16)}
    i = 0
    for n, d in enumerate(depth):
        if n and n % 2 == 0:  # a downsampler after every two res blocks, as in ComfyUI's UNetModel
            i += 1
            t[f"model.diffusion_model.input_blocks.{i}.0.op.weight"] = np.zeros(2, np.float16)
        i += 1
        t[f"model.diffusion_model.input_blocks.{i}.0.in_layers.0.weight"] = np.zeros(2, np.float16)
        for j in range(d):
            t[f"model.diffusion_model.input_blocks.{i}.1.transformer_blocks.{j}.attn2.to_k.weight"] = \
                np.zeros((4, ctx), np.float16)
    if not any(depth):
        t["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = np.zeros((4, ctx), np.float16)
    for m in markers:
        t[m] = np.zeros(0, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path), metadata={"format": "pt", **(metadata or {})})
    return path


CASES = {
    # name: (metadata, markers, prediction, zsnr, source fragments)
    "markers": ({}, ("v_pred", "ztsnr"), "v", "yes", ("marker key 'v_pred'", "marker key 'ztsnr'")),
    "kohya": ({"ss_v_parameterization": "True", "ss_zero_terminal_snr": "True"}, (), "v", "yes",
              ("ss_v_parameterization=True", "ss_zero_terminal_snr=True")),
    "kohya_no_zsnr": ({"ss_v_parameterization": "True", "ss_zero_terminal_snr": "False"}, (), "v", "no",
                      ("ss_v_parameterization=True", "ss_zero_terminal_snr=False")),
    "kohya_eps": ({"ss_v_parameterization": "False"}, (), "eps", "unknown", ("ss_v_parameterization=False", "no marker")),
    "modelspec": ({"modelspec.prediction_type": "v", "modelspec.architecture": "stable-diffusion-xl-v1-base"}, (), "v",
                  "unknown", ("modelspec.prediction_type=v", "no marker")),
    "modelspec_eps": ({"modelspec.prediction_type": "epsilon"}, (), "eps", "unknown", ("modelspec.prediction_type=epsilon",
                                                                                        "no marker")),
    "naifu": ({"prediction_type": "v"}, (), "v", "unknown", ("metadata prediction_type=v", "no marker")),
    "plain": ({}, (), "eps", "unknown", ("ComfyUI's default, eps", "ComfyUI leaves it off")),
}


@pytest.mark.parametrize("name", CASES)
def test_every_convention_is_detected_with_its_source(tmp_path, name):
    meta, markers, pred, zsnr, (psrc, zsrc) = CASES[name]
    det = finetune.detect(unet_like(tmp_path / f"{name}.safetensors", metadata=meta, markers=markers))
    assert (det.prediction.value, det.zsnr.value) == (pred, zsnr)
    assert psrc in det.prediction.source and zsrc in det.zsnr.source
    assert det.family.value == "sdxl" and det.flavour.value == "Segmind Vega"
    assert not det.conflicts
    d = det.as_dict()
    assert json.loads(json.dumps(d)) == d and d["prediction"] == {"value": pred, "source": det.prediction.source}


@pytest.mark.parametrize("ctx, depth, family, flavour", [
    (768, (1, 1), "sd1", "SD1.x"), (1024, (1,), "sd2", "SD2.x"), (2048, (0, 0, 2, 2, 10, 10), "sdxl", "SDXL"),
    (2048, (0, 0, 2, 2, 4, 4), "sdxl", "SSD-1B"), (2048, (0, 2, 5), "sdxl", "KOALA-700M")])
def test_family_and_flavour_come_from_the_weights(tmp_path, ctx, depth, family, flavour):
    det = finetune.detect(unet_like(tmp_path / "m.safetensors", ctx=ctx, depth=depth))
    assert (det.family.value, det.flavour.value) == (family, flavour)
    assert "cross-attention width" in det.family.source


def test_flow_families_are_flow_without_zero_snr(tmp_path):
    p = tmp_path / "sd3.safetensors"
    save_file({"model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight": np.zeros((6, 2), np.float16)},
              str(p), metadata={"modelspec.architecture": "stable-diffusion-3-medium"})
    det = finetune.detect(p)
    assert (det.family.value, det.prediction.value, det.zsnr.value) == ("sd3", "flow", "no")


def test_contradicting_sources_name_both_and_the_marker_wins(tmp_path):
    det = finetune.detect(unet_like(tmp_path / "c.safetensors", metadata={"ss_v_parameterization": "False"},
                                    markers=("v_pred",)))
    assert det.prediction.value == "v"
    (msg,) = det.conflicts
    assert "marker key 'v_pred' says v" in msg and "ss_v_parameterization=False says eps" in msg
    assert msg in det.summary()


def test_family_conflict_between_metadata_and_weights(tmp_path):
    det = finetune.detect(unet_like(tmp_path / "f.safetensors", ctx=768, depth=(1,),
                                    metadata={"modelspec.architecture": "stable-diffusion-xl-v1-base"}))
    assert det.family.value == "sdxl"  # metadata outranks the shapes, and the disagreement is reported
    assert any("modelspec.architecture" in c and "cross-attention width 768" in c for c in det.conflicts)


def write_run(out, training=None, scheduler=None):
    fake_checkpoint(out, 500, model_dir="unet", writer=lambda p, seed: unet_like(p))
    if training is not None:
        (out / "config.json").write_text(json.dumps(training))
    if scheduler is not None:
        (out / "pipeline" / "scheduler").mkdir(parents=True)
        (out / "pipeline" / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return out / "checkpoint-500" / "unet" / "diffusion_pytorch_model.safetensors"


def test_simpletuner_run_configs_say_v_and_zero_snr(tmp_path):
    weights = write_run(tmp_path / "run", training={"--model_family": "sdxl", "--prediction_type": "v_prediction",
                                                     "--rescale_betas_zero_snr": True})
    assert finetune.detect(weights).prediction.value == "eps"  # the file alone says nothing
    det = finetune.detect_file(weights)  # the run folder found from the file's place
    assert (det.prediction.value, det.zsnr.value) == ("v", "yes")
    assert det.prediction.source == "training config config.json prediction_type=v_prediction"


def test_scheduler_config_alone_is_enough(tmp_path):
    weights = write_run(tmp_path / "run", scheduler={"_class_name": "DDIMScheduler", "prediction_type": "v_prediction",
                                                     "rescale_betas_zero_snr": False})
    det = finetune.detect_file(weights)
    assert (det.prediction.value, det.zsnr.value) == ("v", "no")
    assert "pipeline/scheduler/scheduler_config.json" in det.zsnr.source


def test_run_configs_that_disagree_are_reported(tmp_path):
    weights = write_run(tmp_path / "run", training={"--model_family": "sdxl", "--prediction_type": "v_prediction"},
                        scheduler={"prediction_type": "epsilon"})
    det = finetune.detect_file(weights)
    assert det.prediction.value == "v" and "training config" in det.conflicts[0] and "epsilon" not in det.prediction.source


def test_a_diffusers_model_config_is_not_taken_for_a_training_config(tmp_path):
    weights = write_run(tmp_path / "run", training={"_class_name": "UNet2DConditionModel", "prediction_type": "x"})
    assert finetune.detect_file(weights).prediction.value == "eps"
    (tmp_path / "run" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    assert finetune.run_claims(tmp_path / "run") == []


def test_linker_records_the_detection_per_exposed_checkpoint(tmp_path):
    out = tmp_path / "train" / "vrun"
    write_run(out, training={"--model_family": "sdxl", "--prediction_type": "v_prediction",
                             "--rescale_betas_zero_snr": True})
    fake_checkpoint(out, 1000, model_dir="unet", writer=lambda p, seed: unet_like(p))
    dm = tmp_path / "models" / "diffusion_models"
    dm.mkdir(parents=True)
    report = linker.sync(out, None, {"diffusion_models": dm}, include=("full",), roots=str(tmp_path / "train"))
    names = report.exposed["diffusion_models"]
    assert names == ["vrun/checkpoint-500.safetensors", "vrun/checkpoint-1000.safetensors"]
    assert list(report.detected) == names
    for n in names:
        d = report.detected[n]
        assert (d["prediction"]["value"], d["zsnr"]["value"], d["family"]["value"]) == ("v", "yes", "sdxl")
        assert f"detected  {n}  SDXL (Segmind Vega); prediction v-prediction" in report.text()
    assert json.loads(json.dumps(report.as_dict()))["detected"] == report.detected
    # the link alone finds the run again (what the sweep and the patch node do)
    assert finetune.detect_file(dm / names[0]).as_dict()["prediction"] == report.detected[names[0]]["prediction"]


def test_unreadable_files_are_reported_not_raised(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(ModelFileError):
        finetune.detect(bad)
    assert "not a safetensors file" in finetune.detect_checkpoint(bad)["error"]


@pytest.mark.parametrize("raw, want", [("v", "v"), ("v_prediction", "v"), ("V-Prediction", "v"), ("epsilon", "eps"),
                                       ("flow_matching", "flow"), ("sample", None)])
def test_prediction_spellings(raw, want):
    assert finetune._prediction(raw) == want


def test_sampler_warning_names_the_alternative():
    assert finetune.sampler_warning("euler", ["euler", "heun"]) is None
    new = finetune.sampler_warning("heun", ["heun", "exp_heun_2_x0"])
    assert "'heun'" in new and "use 'exp_heun_2_x0'" in new
    old = finetune.sampler_warning("heunpp2", ["heun", "heunpp2"])
    assert "use 'euler'" in old and "exp_heun_2_x0 needs a newer ComfyUI" in old
