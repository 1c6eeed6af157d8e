"""Sample a model as v-prediction / eps, with or without the zero-SNR sigma table, as its files say
(``sd35wb/finetune.py`` detects; this applies), and warn when a zero-SNR model meets a sampler
that collapses on it. Used by the ZTSNR / v-prediction Model Patch and, per checkpoint, by the sweep."""

from __future__ import annotations

import logging

import comfy.model_sampling
import comfy.patcher_extension
import comfy.samplers
import folder_paths

from ..sd35wb import finetune, prompt_graph
from ._schedule_helpers import _model_sampling, is_flow

LOG = logging.getLogger("sd35-workbench")

PREDICTION_CHOICES = ["auto", "v_prediction", "eps"]
ZSNR_CHOICES = ["auto", "on", "off"]
WARNING_KEY = "sd35wb_zsnr_sampler_warning"
ZSNR_LIKE_SIGMA = 1000.0  # a first sigma this high is a zero-SNR stand-in (SDXL's own sigma_max is 14.6)


FROM_LOADER = "the model's loader"  # no "/": never a folder/file name


def detect_from_choices() -> list[str]:
    """The files auto can read: ``checkpoints/<name>`` and ``diffusion_models/<name>`` (.safetensors),
    or whichever file the loader upstream of the model picked."""
    out = ["none", FROM_LOADER]
    for folder in ("checkpoints", "diffusion_models"):
        try:
            names = folder_paths.get_filename_list(folder)
        except Exception:  # noqa: BLE001 - a host without the folder lists nothing
            names = []
        out += [f"{folder}/{n}" for n in names if n.lower().endswith(".safetensors")]
    return out


def resolve_detect_from(choice: str, prompt: dict | None = None, node_id: str | None = None) -> str:
    """The path behind a ``detect_from`` choice; for FROM_LOADER, the file named by the loader that
    ``node_id``'s model input comes from in ``prompt`` (the queued workflow)."""
    if choice == FROM_LOADER:
        if not isinstance(prompt, dict) or node_id is None:
            raise ValueError(f"detect_from: {FROM_LOADER!r} reads the queued workflow, which this call did not get; "
                             "pick the file itself in detect_from")
        try:
            src = prompt_graph.loaded_file(prompt, str(node_id))
        except ValueError as e:
            raise ValueError(f"detect_from: {FROM_LOADER!r}: {e}. Pick the model's file itself in detect_from "
                             "(or none: 'auto' then follows what ComfyUI loaded).") from e
        for folder in src.folders:
            path = folder_paths.get_full_path(folder, src.name)
            if path:
                return path
        raise ValueError(f"detect_from: the model's loader (node {src.node_id}, {src.class_type}) names "
                         f"{src.name!r}, which is not in {' or '.join(src.folders)}/; pick the file in detect_from")
    folder, _, name = choice.partition("/")
    path = folder_paths.get_full_path(folder, name) if folder in ("checkpoints", "diffusion_models") and name else None
    if not path:
        raise ValueError(f"detect_from: {choice!r} is not a file in checkpoints/ or diffusion_models/; pick the file "
                         "the model was loaded from (refresh the node list if it was just added).")
    return path


def show_warning(text: str) -> None:
    """A warning the user sees: the log, and as text on the node that is running (the sampler)."""
    LOG.warning("[sd35-workbench] %s", text)
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer

        ctx = get_executing_context()
        inst = getattr(PromptServer, "instance", None)
        if ctx is not None and inst is not None and hasattr(inst, "send_progress_text"):
            inst.send_progress_text(f"warning: {text}", ctx.node_id)
    except Exception as e:  # noqa: BLE001 - the log line above already carries the warning
        LOG.debug("[sd35-workbench] no node text for the warning: %s", e)


def sampler_name_of(sampler) -> str:
    fn = getattr(sampler, "sampler_function", None)
    name = getattr(fn, "__name__", "") or ""
    return name[len("sample_"):] if name.startswith("sample_") else name


def _zsnr_sampler_check(executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
    """OUTER_SAMPLE wrapper: warn (never stop) when a zero-SNR model meets a sampler that collapses on it."""
    text = finetune.sampler_warning(sampler_name_of(sampler), comfy.samplers.KSAMPLER_NAMES)
    if text:
        show_warning(text)
    return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)


def _sampling_class(prediction: str):
    if prediction == "v_prediction":
        return comfy.model_sampling.V_PREDICTION
    if prediction == "eps":
        return comfy.model_sampling.EPS
    raise ValueError(f"prediction: unknown {prediction!r}; expected one of {PREDICTION_CHOICES}.")


def apply_detection(model, detection: finetune.Detection | None, prediction: str = "auto", zsnr: str = "auto",
                    only_if_needed: bool = False):
    """Sample ``model`` as ``detection`` says (explicit ``prediction`` / ``zsnr`` win); return (model, summary).

    The sweep calls this once per checkpoint with ``only_if_needed``: a model the host already samples
    as detected (eps files, flow models, files with marker keys) is returned as it is, unpatched."""
    if prediction not in PREDICTION_CHOICES:
        raise ValueError(f"prediction: unknown {prediction!r}; expected one of {PREDICTION_CHOICES}.")
    if zsnr not in ZSNR_CHOICES:
        raise ValueError(f"zsnr: unknown {zsnr!r}; expected one of {ZSNR_CHOICES}.")
    ms = _model_sampling(model)
    flow = is_flow(ms)
    if flow or (detection is not None and detection.prediction.value == "flow" and prediction == "auto"):
        if only_if_needed:
            return model, f"flow matching: left as loaded ({detection.summary() if detection else 'no detection'})"
        raise ValueError("model: this is a flow-matching model (SD3 / SD3.5 / Flux sampling); SD35WB_ZTSNRModelPatch "
                         "patches discrete eps / v-prediction models only.")
    is_v = isinstance(ms, comfy.model_sampling.V_PREDICTION)  # V_PREDICTION subclasses EPS
    # No file to read: 'auto' is what ComfyUI itself made of the model (its loader reads the v_pred /
    # ztsnr marker keys into model_sampling; an upstream ModelSamplingDiscrete shows there too).
    loaded = f"as ComfyUI loaded it, {'v-prediction' if is_v else 'eps'}"
    if prediction == "auto":
        if detection is None:
            pred, pred_src = ("v_prediction" if is_v else "eps"), f"auto: {loaded}"
        else:
            pred = "v_prediction" if detection.prediction.value == "v" else "eps"
            pred_src = f"auto: {detection.prediction.source}"
    else:
        pred, pred_src = prediction, "set on the node"
    if zsnr == "auto":
        if detection is None:
            on = bool(getattr(ms, "zsnr", False))
            zsnr_src = f"auto: {loaded}, zsnr {'on' if on else 'off'}"
        else:
            on = detection.zsnr.value == "yes"
            zsnr_src = f"auto: {detection.zsnr.source}" + (" (unknown: left off)" if detection.zsnr.value == "unknown" else "")
    else:
        on, zsnr_src = zsnr == "on", "set on the node"
    sampling_type = _sampling_class(pred)
    lines: list[str] = []
    if detection is not None:
        lines.append(f"detected: {detection.summary()}")
    elif "auto" in (prediction, zsnr):
        lines.append("detected: no detect_from file, so 'auto' follows what ComfyUI loaded (it reads the v_pred / "
                     "ztsnr marker keys); pick the file in detect_from to read its metadata and training configs too")
    lines.append(f"applied: {pred} [{pred_src}], zsnr {'on' if on else 'off'} [{zsnr_src}]")
    if on:
        lines.append(f"zero-SNR: avoid {' / '.join(finetune.ZSNR_UNSAFE_SAMPLERS)} (they collapse); "
                     f"{finetune.ZSNR_ALTERNATIVE if finetune.ZSNR_ALTERNATIVE in comfy.samplers.KSAMPLER_NAMES else finetune.ZSNR_FALLBACK} "
                     "is the safe choice")
    summary = "\n".join(lines)
    same = isinstance(ms, comfy.model_sampling.ModelSamplingDiscrete) and is_v == (pred == "v_prediction") \
        and bool(getattr(ms, "zsnr", False)) == on
    as_loaded = detection is None and prediction == zsnr == "auto"  # nothing to change: keep any custom sampling
    if as_loaded or (only_if_needed and (same or (pred == "eps" and not on))):  # eps + no zsnr: ComfyUI's own choice (EDM too)
        if not on:
            return model, summary + "\n(the host already samples it so: left as loaded)"
        m = model.clone()  # only for the sampler warning
        summary += "\n(the host already samples it so: sampling left as loaded)"
    else:
        class ModelSamplingZTSNR(comfy.model_sampling.ModelSamplingDiscrete, sampling_type):
            pass

        m = model.clone()
        m.add_object_patch("model_sampling", ModelSamplingZTSNR(model.model.model_config, zsnr=on))
    if on:
        m.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WARNING_KEY)
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WARNING_KEY, _zsnr_sampler_check)
    return m, summary


def auto_patch(model, path: str):
    """Sweep hook: sample one loaded checkpoint as its files say (one call per checkpoint).

    Returns (model, note); a file whose detection fails is left as loaded, with the reason in the note."""
    try:
        detection = finetune.detect_file(path)
    except (ValueError, OSError) as e:
        return model, f"not detected ({e}): left as loaded"
    return apply_detection(model, detection, only_if_needed=True)
