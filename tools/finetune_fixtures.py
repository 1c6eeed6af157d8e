"""Fine-tune files that say what they are in each convention, for the detector's tests.

Every file is a real safetensors file written by the ``safetensors`` library (as kohya-ss,
naifu and SimpleTuner write theirs) around the tiny models' weights (``tools.tiny_models``), so
the host loads and samples it:

- ``markers``: ComfyUI's own ``v_pred`` / ``ztsnr`` marker keys;
- ``kohya``: ``ss_v_parameterization`` / ``ss_zero_terminal_snr`` / ``ss_base_model_version``
  metadata (the tiny SDXL-family model: Segmind Vega's shape, v-pred zero-SNR);
- ``kohya_vpred_no_zsnr``: v-pred with ``ss_zero_terminal_snr=False`` (the EasyFluff case);
- ``modelspec``: ``modelspec.prediction_type`` = v and ``modelspec.architecture``;
- ``naifu``: ``prediction_type`` = v;
- ``eps``: nothing (ComfyUI's default);
- ``conflict``: a ``v_pred`` marker key but ``ss_v_parameterization=False``;
- a SimpleTuner v-pred run (``simpletuner_vpred_run``): SDXL ``checkpoint-N/unet/`` weights
  carrying only ``modelspec.architecture`` (SimpleTuner 4.10.1 never writes the marker keys), its
  training ``config.json`` and ``pipeline/scheduler/scheduler_config.json`` written by diffusers'
  own ``DDIMScheduler.save_config``.

Cached in a folder keyed by this file's content (next to the tiny models). Needs ``comfy`` (the
host) on ``sys.path`` and diffusers for the scheduler config.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from tools import simpletuner_fixtures, tiny_models

SD15 = "tiny-sd15.safetensors"
VEGA = "tiny-vega.safetensors"

# name -> (base tiny model, metadata, marker keys)
CONVENTIONS = {
    "markers": (SD15, {}, ("v_pred", "ztsnr")),
    "kohya": (VEGA, {"ss_v_parameterization": "True", "ss_zero_terminal_snr": "True",
                     "ss_base_model_version": "sdxl_base_v1-0"}, ()),
    "kohya_vpred_no_zsnr": (SD15, {"ss_v_parameterization": "True", "ss_zero_terminal_snr": "False",
                                   "ss_base_model_version": "sd_v1"}, ()),
    "modelspec": (SD15, {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1",
                         "modelspec.prediction_type": "v"}, ()),
    "naifu": (SD15, {"prediction_type": "v"}, ()),
    "eps": (SD15, {}, ()),
    "conflict": (SD15, {"ss_v_parameterization": "False"}, ("v_pred",)),
}
# (prediction, zsnr) the detector must answer for each, and the kind of source that says so
EXPECTED = {
    "markers": ("v", "yes", "marker key 'v_pred'", "marker key 'ztsnr'"),
    "kohya": ("v", "yes", "metadata ss_v_parameterization=True", "metadata ss_zero_terminal_snr=True"),
    "kohya_vpred_no_zsnr": ("v", "no", "metadata ss_v_parameterization=True", "metadata ss_zero_terminal_snr=False"),
    "modelspec": ("v", "unknown", "metadata modelspec.prediction_type=v", "no marker key"),
    "naifu": ("v", "unknown", "metadata prediction_type=v", "no marker key"),
    "eps": ("eps", "unknown", "no marker key", "no marker key"),
    "conflict": ("v", "unknown", "marker key 'v_pred'", "no marker key"),
}
SIMPLETUNER_STEPS = (500, 1000)


def cache_root() -> Path:
    base = os.environ.get("SD35WB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sd35-workbench")
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return Path(base) / f"finetune-fixtures-{digest}"


def rewrite(src: Path, dst: Path, metadata: dict, markers=()) -> Path:
    """``src``'s tensors saved again with ``metadata`` and empty marker tensors, like ComfyUI's own
    ``v_pred`` key (``torch.tensor([])``) at the top level of the state dict."""
    import torch
    from safetensors.torch import load_file

    sd = load_file(str(src))
    for key in markers:
        sd[key] = torch.tensor([])
    tiny_models._atomic_save(sd, dst, {"format": "pt", **metadata})
    return dst


def convention_file(name: str, models: Path | None = None, root: Path | None = None) -> Path:
    """The file of one convention (built once), e.g. ``finetune-fixtures-*/tiny-kohya.safetensors``."""
    base, meta, markers = CONVENTIONS[name]
    models = Path(models) if models else tiny_models.build_all()
    root = Path(root) if root else cache_root()
    dst = root / f"tiny-{name.replace('_', '-')}.safetensors"
    if not dst.exists():
        rewrite(models / "diffusion_models" / base, dst, meta, markers)
    return dst


def scheduler_config(folder: Path) -> Path:
    """``scheduler_config.json`` for a zero-SNR v-pred run, written by diffusers itself."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                          rescale_betas_zero_snr=True, timestep_spacing="trailing")
    sched.save_config(str(folder))
    return folder / "scheduler_config.json"


TRAINING_CONFIG = {"--model_family": "sdxl", "--model_type": "full", "--prediction_type": "v_prediction",
                   "--rescale_betas_zero_snr": True, "--training_scheduler_timestep_spacing": "trailing",
                   "--output_dir": "output/vpred-run"}


def simpletuner_vpred_run(out: Path, models: Path | None = None, steps=SIMPLETUNER_STEPS,
                          with_training_config: bool = True, with_scheduler: bool = True) -> Path:
    """A finished SimpleTuner SDXL v-pred zero-SNR full fine-tune in ``out``: checkpoint-N/unet/ with
    the tiny Vega weights (hard links of one cached file), modelspec metadata and no marker keys."""
    models = Path(models) if models else tiny_models.build_all()
    weights = cache_root() / "simpletuner-unet.safetensors"
    if not weights.exists():
        rewrite(models / "diffusion_models" / VEGA, weights,
                {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-xl-v1-base",
                 "modelspec.implementation": "https://github.com/huggingface/diffusers"})
    for step in steps:
        ck = out / f"checkpoint-{step}"
        dst = ck / "unet" / "diffusion_pytorch_model.safetensors"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(weights, dst)
            except OSError:
                shutil.copyfile(weights, dst)
            (ck / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
            simpletuner_fixtures._finish_checkpoint(ck, step, markers=True, accelerate=True)
    if with_training_config:
        (out / "config.json").write_text(json.dumps(TRAINING_CONFIG, indent=2))
    if with_scheduler:
        scheduler_config(out / "pipeline" / "scheduler")
    return out


if __name__ == "__main__":
    for n in CONVENTIONS:
        print(convention_file(n))
