"""Host tier: the sweep's scoring models through the pack's loading path (core's own classes under its
model management) against the reference implementations, on tiny random models in Hugging Face format:
CLIP score = torchmetrics' clip_score (what SimpleTuner's evaluation calls); DINOv2 = transformers'
Dinov2Model. Both references live in the tools layer only."""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from tools.score_fixtures import write_tiny_clip, write_tiny_dino, write_training_images

PROMPTS = ["a red fox sitting in the snow, photograph", "an isometric pixel-art castle at dusk",
           "portrait of an old sailor, oil painting, dramatic light"]


@pytest.fixture(scope="module")
def scoring(host):
    """The pack's scoring module as the loaded pack imported it."""
    mod = next(m for name, m in sys.modules.items() if name.endswith(".nodes._compat")
               and os.path.realpath(getattr(m, "__file__", "")).startswith(os.path.realpath(REPO)))
    return importlib.import_module(mod.__name__.rsplit(".", 1)[0] + "._scoring")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    # torchmetrics loads a path through its OpenAI branch (CLIPModel / CLIPProcessor.from_pretrained) when the
    # name says openai, exactly as for SimpleTuner's default model
    return write_tiny_clip(tmp_path_factory.mktemp("models") / "openai-clip-vit-tiny-patch14-336")


def _images(seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 80, 112, 3, generator=g)  # not square: the processor's resize and crop are exercised


def _u8_chw(images):
    return [(im.clamp(0, 1) * 255).to(torch.uint8).permute(2, 0, 1).float() for im in images]


class _Transformers4Features(torch.nn.Module):
    """torchmetrics 1.9 expects get_*_features to return the projected tensor, as transformers 4 did;
    transformers 5 (the hosts' own) wraps that same tensor as ``pooler_output``."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *a, **kw):
        return self.model.get_image_features(*a, **kw).pooler_output

    def get_text_features(self, *a, **kw):
        return self.model.get_text_features(*a, **kw).pooler_output


def _torchmetrics_clip(folder):
    """torchmetrics' own OpenAI branch (CLIPModel / CLIPProcessor.from_pretrained), features unwrapped."""
    from torchmetrics.functional.multimodal import clip_score as tm_clip_score
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder).eval()
    probe = model.get_image_features(torch.zeros(1, 3, 336, 336))
    if not isinstance(probe, torch.Tensor):
        model = _Transformers4Features(model)
    processor = CLIPProcessor.from_pretrained(folder)
    return lambda *a: tm_clip_score(*a, model_name_or_path=lambda: (model, processor))


def test_clip_score_equals_torchmetrics_clip_score_as_simpletuner_calls_it(scoring, clip_dir):
    clip_score = _torchmetrics_clip(clip_dir)
    images = _images()
    scorer = scoring.Scorer(clip_path=str(clip_dir))
    ours = [o["clip"] for o in scorer.score(images, PROMPTS)]
    # SimpleTuner: clip_score(stack([ToTensor()(img) * 255]), [prompt], model_name_or_path=...) per image
    with torch.no_grad():
        ref = [float(clip_score(chw[None], [p])) for chw, p in zip(_u8_chw(images), PROMPTS)]
    assert max(abs(a - b) for a, b in zip(ours, ref)) <= 1e-4, (ours, ref)
    assert any(r > 0 for r in ref) and any(r == 0 for r in ref), ("the scores should fall on both sides of "
                                                                    f"torchmetrics' clamp at 0: {ref}")
    # the embeddings themselves, not only the clamped score, match transformers' CLIPModel
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        ref_img = model.get_image_features(proc(images=_u8_chw(images), return_tensors="pt")["pixel_values"])
        tok = proc(text=PROMPTS, return_tensors="pt", padding=True)
        ref_txt = model.get_text_features(tok["input_ids"], tok["attention_mask"])
    img, txt = scorer.clip().embed(images, PROMPTS)
    for a, b in ((img, ref_img), (txt, ref_txt)):
        b = getattr(b, "pooler_output", b).numpy()
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max())
    scorer.close()


def test_clip_scoring_models_leave_the_gpu_after_scoring(scoring, clip_dir):
    import comfy.model_management as mm

    scorer = scoring.Scorer(clip_path=str(clip_dir))
    scorer.score(_images(1)[:1], PROMPTS[:1])
    loaded = {id(lm.model) for lm in mm.current_loaded_models}
    assert not any(id(p) in loaded for p in scorer.clip().patchers), "a scoring model stayed in the memory manager"
    scorer.close()


def test_dinov2_embeddings_equal_transformers_dinov2_model_through_comfyuis_loader(scoring, tmp_path):
    from transformers import Dinov2Model

    try:
        from comfy.clip_model import clip_preprocess  # newer hosts
    except ImportError:
        from comfy.clip_vision import clip_preprocess

    folder = write_tiny_dino(tmp_path / "dinov2-tiny")
    emb = scoring.DinoEmbedder(str(folder))
    images = _images(2)
    ours = emb.embed(images)
    pixels = clip_preprocess(images, size=518, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], crop=True)
    with torch.no_grad():
        ref = Dinov2Model.from_pretrained(folder).eval()(pixel_values=pixels.float()).pooler_output.numpy()
    assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), np.abs(ours - ref).max()


def test_a_render_equal_to_a_training_image_scores_about_one_and_names_it(scoring, tmp_path):
    from PIL import Image

    files = write_training_images(tmp_path / "train", n=4)
    scorer = scoring.Scorer(dino_path=str(write_tiny_dino(tmp_path / "dinov2-tiny")), training=[str(f) for f in files])
    copy = torch.from_numpy(np.asarray(Image.open(files[2]).convert("RGB"), dtype=np.float32) / 255.0)[None]
    other = _images(3)[:1, :64, :64]
    out = scorer.score(torch.cat([copy, other]), ["", ""])
    assert out[0]["memorisation"] == pytest.approx(1.0, abs=1e-5) and out[0]["nearest"] == "train_002.png"
    assert out[1]["memorisation"] < out[0]["memorisation"]
    scorer.close()
