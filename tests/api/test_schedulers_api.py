"""API tier: the scheduler workflows and nodes through a real ComfyUI server on the tiny models."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tools.comfy_server import PromptFailed
from tools.tiny_remap import tinyify

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows" / "api"


def remap_to_tiny_vega(prompt: dict, steps: int = 2, prefix: str = "t") -> dict:
    """Real SDXL names -> the tiny Vega UNet, taesdxl and test conditioning (tools.tiny_remap), 128 px, few steps."""
    p = tinyify(prompt, family="sdxl", size=128, max_steps=steps)
    for node in p.values():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = prefix
    return p


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def node_of(prompt: dict, class_type: str) -> str:
    (k,) = [k for k, n in prompt.items() if n["class_type"] == class_type]
    return k


def check_render(server, entry, prompt, size):
    (img,) = server.images(entry, node_of(prompt, "SaveImage"))
    im = Image.open(io.BytesIO(img))
    assert im.size == (size, size) and len(set(im.getdata())) > 50
    (plot,) = server.images(entry, node_of(prompt, "SD35WB_SigmaPreview"))
    assert Image.open(io.BytesIO(plot)).size == (768, 480)
    return entry


def test_ztsnr_vpred_sdxl_workflow_runs_on_tiny_vega(server):
    prompt = remap_to_tiny_vega(load("ztsnr_vpred_sdxl"), prefix="wf_ztsnr")
    entry = check_render(server, server.run(prompt), prompt, 128)
    # the scheduler node shows its own picture too
    assert server.images(entry, node_of(prompt, "SD35WB_ZTSNRScheduler"))


def test_highsigma_sdxl_hires_workflow_runs_on_tiny_vega(server):
    prompt = remap_to_tiny_vega(load("highsigma_sdxl_hires"), prefix="wf_highsigma")
    # a 128 px test canvas against a 64 px "base" exercises the same 2x scaling as 2048 vs 1024
    prompt[node_of(prompt, "SD35WB_HighSigmaScheduler")]["inputs"]["base_resolution"] = 64
    entry = check_render(server, server.run(prompt), prompt, 128)
    assert server.images(entry, node_of(prompt, "SD35WB_HighSigmaScheduler"))



def test_the_vpred_template_reads_whichever_file_its_loader_picked(server, workflow_fixtures):
    """detect_from 'the model's loader': swapping the checkpoint is one edit, the loader's; a model
    made by a node that is not a loader is an error naming that node."""
    prompt = tinyify(load("finetune_auto_vpred_sdxl"), extra_rules=workflow_fixtures)
    patch = node_of(prompt, "SD35WB_ZTSNRModelPatch")
    assert prompt[patch]["inputs"]["detect_from"] == "the model's loader", "the template as shipped"
    loader = prompt[patch]["inputs"]["model"][0]
    text = server.run(prompt)["outputs"][patch]["text"][0]
    assert "metadata ss_v_parameterization=True" in text and "applied: v_prediction" in text and "zsnr on" in text, \
        text  # the kohya v-pred zero-SNR file the fixtures put on the loader
    prompt[loader]["inputs"]["unet_name"] = "tiny-vega.safetensors"  # the one edit: a plain eps file
    text = server.run(prompt)["outputs"][patch]["text"][0]
    assert "applied: eps [auto: no marker key" in text and "zsnr off" in text, text
    merge = str(max(int(k) for k in prompt) + 1)
    prompt[merge] = {"class_type": "ModelMergeSimple", "inputs": {"model1": [loader, 0], "model2": [loader, 0],
                                                                   "ratio": 0.5}}
    prompt[patch]["inputs"]["model"] = [merge, 0]
    with pytest.raises(PromptFailed) as e:
        server.run(prompt)
    msg = e.value.error["exception_message"]
    assert msg.startswith(f"detect_from: \"the model's loader\": node {merge} (ModelMergeSimple) makes the model "
                          "but is not a loader") and "Pick the model's file itself in detect_from" in msg, msg


def sd3_prompt(**sched) -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-sd35m.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "SD35WBTest_Conditioning", "inputs": {"family": "sd3", "seed": 1, "width": 128, "height": 128}},
        "3": {"class_type": "SD35WBTest_Conditioning", "inputs": {"family": "sd3", "seed": 2, "width": 128, "height": 128}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "SD35WB_HighSigmaScheduler", "inputs": {
            "model": ["1", 0], "latent": ["4", 0], "steps": 3, "width": 1024, "height": 1024, "shape": "karras", "rho": 7.0,
            "base_resolution": 64, "rule": "novelai_linear", "flow_rule": "sqrt_area", "only_scale_up": True,
            "sigma_max_override": 0.0, "sigma_min_override": 0.0, "shift_override": 0.0, **sched}},
        "6": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 4.5}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "8": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
        "9": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["8", 0], "guider": ["6", 0], "sampler": ["7", 0],
                                                                 "sigmas": ["5", 0], "latent_image": ["4", 0]}},
        "10": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["10", 0]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "sd3_highsigma"}},
    }


def test_tiny_sd35_samples_with_the_resolution_shift(server):
    entry = server.run(sd3_prompt())
    (img,) = server.images(entry, "12")
    assert Image.open(io.BytesIO(img)).size == (128, 128)
    assert server.images(entry, "5"), "the scheduler shows its schedule"


def test_ksampler_offers_the_ztsnr_schedule_by_name(server):
    info = server.get_json("/object_info")
    core = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic", "kl_optimal"]
    for node in ("KSampler", "KSamplerAdvanced", "BasicScheduler"):
        spec = info[node]["input"]["required"]["scheduler"]
        names = spec[1]["options"] if spec[0] == "COMBO" else spec[0]  # V3 nodes list options in the dict
        assert names[: len(core)] == core and names.count("sd35wb_ztsnr_trailing") == 1, node
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-sd15.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "SD35WB_ZTSNRModelPatch", "inputs": {"model": ["1", 0], "prediction": "v_prediction", "zsnr": "on"}},
        "3": {"class_type": "SD35WBTest_Conditioning", "inputs": {"family": "sd15", "seed": 1, "width": 128, "height": 128}},
        "4": {"class_type": "SD35WBTest_Conditioning", "inputs": {"family": "sd15", "seed": 2, "width": 128, "height": 128}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                    "latent_image": ["5", 0], "seed": 1, "steps": 3, "cfg": 5.0,
                                                    "sampler_name": "euler", "scheduler": "sd35wb_ztsnr_trailing", "denoise": 1.0}},
        "7": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["7", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ksampler_ztsnr"}},
    }
    (img,) = server.images(server.run(prompt), "9")
    assert Image.open(io.BytesIO(img)).size == (128, 128)


@pytest.mark.parametrize("patch, message", [
    (dict(rho=float("nan")), "rho: must be a finite number"),
    (dict(width=1020, latent=None), "width: 1020 is not a multiple of 8"),
])
def test_bad_input_is_reported_by_name(server, patch, message):
    prompt = sd3_prompt()
    ins = prompt["5"]["inputs"]
    for k, v in patch.items():
        if v is None:
            ins.pop(k)
        else:
            ins[k] = v
    pid = None
    try:
        with pytest.raises(Exception) as e:  # validation (400) or execution error, both must name the input
            pid = server.queue(prompt)
            server.wait(pid)
        assert message in str(e.value) or message in json.dumps(getattr(e.value, "body", {}))
    finally:
        if pid:  # ComfyUI keeps the failed prompt in /history, and a NaN input there is JSON no browser parses:
            server.request("/history", {"delete": [pid]})  # the frontend tests later in this server's session would see it


def test_flow_model_given_to_the_ztsnr_scheduler_is_refused(server):
    prompt = sd3_prompt()
    prompt["5"] = {"class_type": "SD35WB_ZTSNRScheduler", "inputs": {"model": ["1", 0], "steps": 4,
                                                                      "terminal_sigma": "comfyui (4518.76)", "custom_terminal_sigma": 20000.0}}
    with pytest.raises(PromptFailed) as e:
        server.run(prompt)
    assert e.value.error["exception_type"] == "ValueError"
    assert e.value.error["exception_message"].startswith("model: this is a flow-matching model")
