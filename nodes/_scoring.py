"""The scoring models behind the sweep's scores: CLIP (prompt adherence) and DINOv2 (memorisation,
seed diversity, drift), built with ComfyUI's own classes and run under its model management.

CLIP follows SimpleTuner's evaluation exactly: its preprocessing is the model folder's own
``CLIPProcessor`` (transformers, a ComfyUI requirement) on each image as a 0-255 tensor, the
score torchmetrics' formula (sd35wb/scores.py). The weights load into core's
``comfy.clip_model`` classes (vision tower through ``comfy.clip_vision.ClipVisionModel``, text
tower through ``CLIPTextModel``), each under a ModelPatcher: loaded onto the GPU only while
scoring, offloaded before the next checkpoint renders. DINOv2 is a clip_vision file read by
core's CLIPVisionLoader (its ``image_embeds``: the layer-normed CLS token), or a Hugging Face
folder of the same model. Helper module (leading underscore: not a capability).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
import numpy as np
import torch

from ..sd35wb import scores, sweep, training_images
from ..sd35wb.linker import ROOTS_ENV
from . import _compat as C

LOG = logging.getLogger("sd35-workbench")


class ScoringModelError(ValueError):
    """A scoring model that cannot be used; the message names the input, the file and the fix."""


def _folder_config(path: str) -> dict | None:
    cfg = Path(path).parent / "config.json" if os.path.isfile(path) else Path(path) / "config.json"
    try:
        return json.loads(cfg.read_text()) if cfg.is_file() else None
    except (OSError, ValueError):
        return None


def _weights(folder: Path, what: str) -> dict:
    f = folder / "model.safetensors"
    if not f.is_file():
        raise ScoringModelError(f"{what}: {folder} has no model.safetensors (this pack loads no pickle files: "
                                "convert pytorch_model.bin once with the safetensors tools, or fetch the model again)")
    return comfy.utils.load_torch_file(str(f), safe_load=True)


def _pick(sd: dict, *prefixes: str) -> dict:
    return {k: v for k, v in sd.items() if k.startswith(prefixes)}


class ClipScorer:
    """A full CLIP model (text and vision towers) in Hugging Face layout, as SimpleTuner evaluates with."""

    def __init__(self, folder: str, fp32: bool = True):
        from transformers import CLIPConfig, CLIPProcessor

        self.folder = Path(folder)
        cfg = CLIPConfig.from_pretrained(self.folder)
        text, vision = cfg.text_config.to_dict(), cfg.vision_config.to_dict()
        if cfg.projection_dim != text["hidden_size"]:
            raise ScoringModelError(f"clip_model: {folder}: its text projection maps {text['hidden_size']} to "
                                    f"{cfg.projection_dim} features; ComfyUI's CLIP text encoder class projects to its "
                                    "own width (every OpenAI / OpenCLIP CLIP does): pick such a model")
        self.processor = CLIPProcessor.from_pretrained(self.folder)
        self.legacy_eos = text.get("eos_token_id") == 2  # transformers then pools at the highest token id
        self.max_tokens = text["max_position_embeddings"]
        text["eos_token_id"] = self.processor.tokenizer.eos_token_id
        sd = _weights(self.folder, "clip_model")
        self.vision, miss_v = C.image_encoder(
            {**vision, "model_type": "clip_vision_model", "projection_dim": cfg.projection_dim},
            _pick(sd, "vision_model.", "visual_projection."), fp32)
        self.text, miss_t = C.clip_text_encoder(text, _pick(sd, "text_model.", "text_projection."), fp32)
        missing = [k for k in miss_v + miss_t if "position_ids" not in k]
        if missing:
            raise ScoringModelError(f"clip_model: {folder}/model.safetensors lacks {len(missing)} weights of a CLIP "
                                    f"model (e.g. {missing[0]}): it is not a full CLIPModel (text and vision)")
        self.patchers = [self.vision.patcher, self.text]

    def _pool_index(self, ids: torch.Tensor) -> list[int]:
        """Where transformers' CLIP text model pools: the first end-of-text token, or (configs with the
        legacy eos id 2) the highest token id."""
        if self.legacy_eos:
            return ids.argmax(dim=-1).tolist()
        return (ids == self.processor.tokenizer.eos_token_id).int().argmax(dim=-1).tolist()

    @torch.no_grad()
    def embed(self, images: torch.Tensor, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(image embeddings, text embeddings), one per image with its prompt; ``images`` IMAGE [B,H,W,C]."""
        u8 = (images[..., :3].clamp(0, 1) * 255.0).to(torch.uint8)  # what SaveImage writes; SimpleTuner reads PIL
        chw = [t.permute(2, 0, 1).float() for t in u8.cpu()]  # = ToTensor() * 255, as SimpleTuner feeds torchmetrics
        pixels = self.processor(images=chw, return_tensors="pt", padding=True)["pixel_values"]  # as torchmetrics calls it
        ids = self.processor(text=list(prompts), return_tensors="pt", padding=True)["input_ids"]
        ids = ids[..., : self.max_tokens]  # torchmetrics truncates to the model's 77 positions
        C.load_for_use(self.vision.patcher)
        img = self.vision.model(pixel_values=pixels.to(self.vision.load_device, torch.float32))[2]
        C.load_for_use(self.text)
        pool = self._pool_index(ids)
        # core's CLIP adds all 77 position embeddings: pad after the end-of-text token, which the causal mask
        # keeps out of every position up to the pooled one
        pad = self.processor.tokenizer.pad_token_id
        ids = torch.nn.functional.pad(ids, (0, self.max_tokens - ids.shape[-1]), value=pad if pad is not None else 0)
        txt = self.text.model(input_tokens=ids.to(self.text.load_device), num_tokens=[i + 1 for i in pool],
                              dtype=torch.float32)[2]
        return img.float().cpu().numpy(), txt.float().cpu().numpy()


class DinoEmbedder:
    """DINOv2 through core's clip_vision loader: a clip_vision file core recognises, or a Hugging Face folder."""

    def __init__(self, path: str, fp32: bool = True):
        cfg = _folder_config(path)
        if cfg is not None and cfg.get("model_type") == "dinov2":
            folder = Path(path) if os.path.isdir(path) else Path(path).parent
            sd = _weights(folder, "dino_model")
            if cfg.get("image_size") != 518 or cfg.get("patch_size") != 14:
                raise ScoringModelError(f"dino_model: {folder}: ComfyUI's DINOv2 runs at 518 px with 14 px patches; this "
                                        f"model is {cfg.get('image_size')} px / {cfg.get('patch_size')}")
            pre = _folder_config(str(folder / "preprocessor_config.json")) or {}
            config = {**cfg, "use_swiglu_ffn": cfg.get("use_swiglu_ffn", False),
                      "image_mean": pre.get("image_mean", [0.485, 0.456, 0.406]),
                      "image_std": pre.get("image_std", [0.229, 0.224, 0.225])}
            self.encoder, missing = C.image_encoder(config, sd, fp32)
            if missing:
                raise ScoringModelError(f"dino_model: {folder} lacks {len(missing)} DINOv2 weights (e.g. {missing[0]})")
        else:
            self.encoder = C.image_encoder_file(path, fp32)
            if self.encoder is None or getattr(self.encoder, "model", None).__class__.__name__ != "Dinov2Model":
                raise ScoringModelError(f"dino_model: {path} is not a DINOv2 model ComfyUI's clip_vision loader reads "
                                        "(DINOv2 large or giant, e.g. facebook/dinov2-large's model.safetensors)")
        self.patchers = [self.encoder.patcher]

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> np.ndarray:
        out = self.encoder.encode_image(images[..., :3].float(), crop=True)["image_embeds"]
        return out.float().cpu().numpy()


@dataclass
class Scorer:
    """What the Sweep Scores node hands the sweep: which models, which training images, the thresholds.
    Models are loaded when scoring starts and dropped when it ends (:meth:`close`)."""

    clip_path: str | None = None
    dino_path: str | None = None
    training: list[str] = field(default_factory=list)  # training image files
    training_raw: str = ""  # the node's input: a folder, or empty for the run's own datasets
    base: str | None = None  # a full fine-tune's base model name (drift reference)
    thresholds: dict = field(default_factory=lambda: {k: v for k, (v, _) in scores.THRESHOLDS.items()})
    fp32: bool = True
    _clip: ClipScorer | None = None
    _dino: DinoEmbedder | None = None
    _bank: tuple | None = None
    _found: list[str] | None = None

    def training_files(self) -> list[str]:
        return self.training or self._found or []

    def find_training(self, run_dir) -> None:
        """Resolve the training images once the sweep knows its run (the linker's training-roots rule)."""
        if self.training or not self.dino_path or (not self.training_raw and run_dir is None):
            return
        try:
            self._found = [str(p) for p in training_images.resolve(self.training_raw, os.environ.get(ROOTS_ENV, ""),
                                                                    run_dir)]
        except (ValueError, PermissionError) as e:
            if self.training_raw:  # asked for by name: the user must hear why not
                raise
            LOG.info("[sd35-workbench] sweep scores: memorisation off: %s", e)  # the run names none it can read
            self._found = []

    def clip(self) -> ClipScorer | None:
        if self.clip_path and self._clip is None:
            self._clip = ClipScorer(self.clip_path, self.fp32)
        return self._clip

    def dino(self) -> DinoEmbedder | None:
        if self.dino_path and self._dino is None:
            self._dino = DinoEmbedder(self.dino_path, self.fp32)
        return self._dino

    def bank(self, pbar=None) -> tuple[list[str], np.ndarray] | None:
        """The training images' DINOv2 embeddings (cached on disk by model and file identity)."""
        if not self.training_files() and self.training_raw:
            self.find_training(None)  # a folder given by name needs no run
        files = self.training_files()
        if not files or self.dino() is None:
            return None
        if self._bank is None:
            from PIL import Image

            cache = sweep.RenderCache(os.path.join(folder_paths.get_temp_directory(), "sd35wb-scores"))
            ident = _identity(self.dino_path)
            names, embeds = [], []
            for i, f in enumerate(files):
                st = os.stat(f)
                key = sweep.fingerprint("dino-bank-1", ident, os.path.realpath(f), st.st_size, st.st_mtime_ns)
                e = cache.get(key)
                if e is None:
                    with Image.open(f) as im:
                        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
                    e = self.dino().embed(torch.from_numpy(arr)[None])[0]
                    cache.put(key, e)
                names.append(_short(f, files))
                embeds.append(e)
                if pbar is not None:
                    pbar(i + 1, len(files))
            self._bank = (names, np.stack(embeds))
        return self._bank

    def score(self, images: torch.Tensor, prompts: list[str], pbar=None, clip: bool = True,
              offload: bool = True) -> list[dict]:
        """Per image: clip (score), memorisation + nearest, and look (the diversity/drift embedding);
        ``offload``: off the GPU afterwards (a caller scoring many batches in a row offloads once at the end)."""
        out = [{} for _ in range(images.shape[0])]
        clip = self.clip() if clip else None
        if clip is not None:
            img, txt = clip.embed(images, prompts)
            for o, s, e in zip(out, scores.clip_score(img, txt), img):
                o.update(clip=float(s), look=e)
        dino = self.dino()
        if dino is not None:
            emb = dino.embed(images)
            bank = self.bank(pbar)
            mem = scores.memorise(emb, bank[1], bank[0]) if bank else [(None, None)] * len(out)
            for o, e, (m, n) in zip(out, emb, mem):
                o.update(look=e, memorisation=m, nearest=n)
        if offload:
            self.offload()
        return out

    def offload(self) -> None:
        """Off the GPU: the next checkpoint renders with the scoring models out of VRAM."""
        for m in (self._clip, self._dino):
            for p in (m.patchers if m else []):
                C.unload_model(p)

    def close(self) -> None:
        """Offload, then drop the weights from RAM too (they load again on the next sweep)."""
        self.offload()
        self._clip = self._dino = self._bank = None
        self._found = None  # found again next time: the dataset may have grown
        comfy.model_management.soft_empty_cache()
        _return_freed_ram()


def _return_freed_ram() -> None:
    """glibc keeps the freed weights' pages (2 GiB after real-size CLIP-L + DINOv2-L, bench/sweep_scores.py):
    hand them back so the scoring models are resident only while scoring, in RSS too."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): the allocator keeps its own policy
        pass


def _identity(path: str) -> list:
    p = Path(path)
    f = p / "model.safetensors" if p.is_dir() else p
    st = f.stat()
    return [str(f.resolve()), st.st_size, st.st_mtime_ns]


def _short(f: str, all_files: list[str]) -> str:
    """A training image's name relative to the folder the images share."""
    try:
        root = os.path.commonpath([os.path.dirname(x) for x in all_files])
        return os.path.relpath(f, root)
    except ValueError:
        return os.path.basename(f)
