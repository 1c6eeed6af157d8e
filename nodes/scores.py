"""Sweep Scores node: which scoring models and training images the Checkpoint Sweep scores with, and the
thresholds of its recommendation.

Node: SD35WB_SweepScores -> SD35WB_SCORER (connect to the sweep's ``scorer``). The models load only
while the sweep scores (nodes/_scoring.py); the rules are plain functions in sd35wb/scores.py.
"""

from __future__ import annotations

import os

import folder_paths
from comfy_api.v0_0_2 import io

from ..sd35wb import hub, scores
from . import _compat as C
from . import _scoring

SCORER = io.Custom("SD35WB_SCORER")
PRECISIONS = ["fp32 (as torchmetrics)", "fp16 (half the memory)"]


def clip_vision_files() -> list[str]:
    try:
        return list(folder_paths.get_filename_list("clip_vision"))
    except KeyError:
        return []


def resolve_clip(choice: str) -> str | None:
    """The folder of the CLIP model picked: the hub's (fetched into the Hugging Face cache, public, no
    token) or a Hugging Face folder under models/clip_vision (its model.safetensors picked)."""
    if choice == "none":
        return None
    if choice == scores.CLIP_HUB_CHOICE:
        try:
            return hub.fetch_folder(scores.CLIP_REPO, what="clip_model")
        except hub.HubError as e:
            raise ValueError(str(e)) from None
    path = folder_paths.get_full_path("clip_vision", choice)
    if not path:
        raise ValueError(f"clip_model: {choice!r} is not in models/clip_vision; pick a file from the list")
    cfg = _scoring._folder_config(path)  # noqa: SLF001 - the scoring module's own config reader
    if not cfg or cfg.get("model_type") != "clip" or "text_config" not in cfg:
        raise ValueError(f"clip_model: {choice} is not a full CLIP model (text and vision towers, with its config.json, "
                         "tokenizer and preprocessor files beside it); a CLIP score needs the text tower, which "
                         f"clip_vision files lack: pick '{scores.CLIP_HUB_CHOICE}', or put the Hugging Face folder of "
                         f"{hub.repo_url(scores.CLIP_REPO)} under models/clip_vision/ and pick its model.safetensors")
    return os.path.dirname(path)


def resolve_dino(choice: str) -> str | None:
    if choice == "none":
        return None
    path = folder_paths.get_full_path("clip_vision", choice)
    if not path:
        raise ValueError(f"dino_model: {choice!r} is not in models/clip_vision; put a DINOv2 model there (e.g. the "
                         "model.safetensors of https://huggingface.co/facebook/dinov2-large) and pick it")
    return path


class SweepScores(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        reasons = {k: why for k, (_, why) in scores.THRESHOLDS.items()}
        return io.Schema(
            node_id="SD35WB_SweepScores",
            **C.search_aliases("clip score", "memorisation", "best checkpoint", "dinov2"),
            display_name="Sweep Scores (CLIP, DINOv2)",
            category="SD3.5 Workbench/training",
            description=(
                "Scores every render of a Checkpoint Sweep and recommends a checkpoint: prompt adherence (CLIP score "
                "exactly as SimpleTuner's --evaluation_type clip computes it, so it compares with the run's clip/mean), "
                "memorisation (DINOv2 similarity to the nearest training image, named), seed diversity and drift from "
                "the base on prompts marked '[held out]'. Connect to the sweep's 'scorer'. The models load only while "
                "scoring and leave the GPU before the next checkpoint renders."),
            inputs=[
                io.Combo.Input("clip_model", options=["none", scores.CLIP_HUB_CHOICE, *clip_vision_files()],
                               default=scores.CLIP_HUB_CHOICE, tooltip=(
                                   f"Prompt adherence. '{scores.CLIP_HUB_CHOICE}': SimpleTuner's default evaluation model, "
                                   "public (no token), about 1.7 GB, fetched once into the Hugging Face cache; or the "
                                   "model.safetensors of a Hugging Face CLIP folder under models/clip_vision. 'none': "
                                   "no CLIP score.")),
                io.Combo.Input("dino_model", options=["none", *clip_vision_files()], default="none", tooltip=(
                    "Memorisation, seed diversity and drift. A DINOv2 file in models/clip_vision as core's "
                    "CLIPVisionLoader reads it (e.g. facebook/dinov2-large's model.safetensors, 1.2 GB). 'none': "
                    "diversity and drift use CLIP's image embeddings, memorisation is off.")),
                io.String.Input("training_images", default="", tooltip=(
                    "Memorisation: the folder of the run's training images (under SD35WB_TRAINING_ROOTS). Empty: the "
                    "image datasets of the SimpleTuner run the checkpoints come from (its data_backend_config). "
                    "Needs dino_model.")),
                io.Float.Input("max_memorisation", default=scores.THRESHOLDS["max_memorisation"][0], min=0.0, max=1.0,
                               step=0.01, tooltip="Recommendation: checkpoints with a render above this DINOv2 "
                                                  f"similarity to a training image are left out. Default: "
                                                  f"{reasons['max_memorisation']}."),
                io.Float.Input("max_drift", default=scores.THRESHOLDS["max_drift"][0], min=0.0, max=2.0, step=0.01,
                               tooltip="Recommendation: checkpoints whose mean drift from the base on held-out prompts "
                                       f"passes this are left out. Default: {reasons['max_drift']}."),
                io.String.Input("base_model", default="", optional=True, tooltip=(
                    "A full fine-tune: the base model's diffusion_models name (e.g. sd3.5_medium.safetensors), "
                    "rendered as the first row, for drift. A LoRA sweep's base is strength 0: add 0 to its strengths.")),
                io.Combo.Input("precision", **C.advanced(), options=PRECISIONS, default=PRECISIONS[0], optional=True,
                               tooltip="fp32: the scores equal torchmetrics' (fp32) reference; fp16: half the memory."),
            ],
            outputs=[SCORER.Output("scorer", display_name="scorer", tooltip="Connect to the Checkpoint Sweep's scorer.")],
        )

    @classmethod
    def execute(cls, clip_model: str, dino_model: str, training_images: str, max_memorisation: float,
                max_drift: float, base_model: str = "", precision: str = PRECISIONS[0]) -> io.NodeOutput:
        if clip_model == "none" and dino_model == "none":
            raise ValueError("clip_model / dino_model: both are 'none', so nothing would be scored; pick at least one")
        if training_images.strip() and dino_model == "none":
            raise ValueError("training_images: memorisation compares DINOv2 embeddings; pick a dino_model too")
        if base_model.strip() and not folder_paths.get_full_path("diffusion_models", base_model.strip()):
            raise ValueError(f"base_model: {base_model!r} is not in models/diffusion_models; give the base's file name")
        scorer = _scoring.Scorer(clip_path=resolve_clip(clip_model), dino_path=resolve_dino(dino_model),
                                 training_raw=training_images.strip(), base=base_model.strip() or None,
                                 thresholds={"max_memorisation": max_memorisation, "max_drift": max_drift},
                                 fp32=precision == PRECISIONS[0])
        return io.NodeOutput(scorer)



class ScoreImages(io.ComfyNode):
    """The per-image half of the sweep's scoring, for the sweep CLI: it appends this node to each workflow it
    queues, so an image is scored on the server that rendered it and the scores come back with it."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SD35WB_ScoreImages",
            display_name="Score Images (sweep CLI)",
            category="SD3.5 Workbench/training",
            description=(
                "Scores images with a Sweep Scores scorer: CLIP score with the prompt, memorisation against the "
                "training images (nearest named), and the embedding seed diversity and drift compare. The sweep CLI "
                "(python -m sd35wb.sweep --scores) adds it to every workflow it queues; the scores come back in the "
                "prompt's history next to its images."),
            inputs=[io.Image.Input("images", tooltip="The rendered images (what the workflow saves)."),
                    SCORER.Input("scorer", tooltip="The Sweep Scores node."),
                    io.String.Input("prompt", default="", multiline=True,
                                    tooltip="The prompt the images were rendered from (empty: no CLIP score).")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, scorer, prompt: str = "") -> io.NodeOutput:
        scorer.find_training(None)
        got = scorer.score(images, [prompt] * images.shape[0], clip=bool(prompt.strip()))
        out = [{"clip": o.get("clip"), "memorisation": o.get("memorisation"), "nearest": o.get("nearest"),
                "look": [round(float(x), 6) for x in o["look"]] if o.get("look") is not None else None} for o in got]
        return io.NodeOutput(ui={"sd35wb_scores": out})


NODES = [SweepScores, ScoreImages]
