"""The training images a run learned from, for the memorisation score.

Given a folder, every image under it; given a SimpleTuner run (its output_dir), the image
datasets of the data backend config its training config names (``--data_backend_config``: a
JSON list of backends, each local image dataset with an ``instance_data_dir``). Only folders
under the training roots (``SD35WB_TRAINING_ROOTS``, the linker's rule) are read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import simpletuner
from .finetune import RUN_CONFIGS

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MAX_IMAGES = 20000  # a dataset larger than this is sampled evenly (the nearest-image search stays cheap)


def find_images(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (hidden folders and SimpleTuner's caches skipped), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and "cache" not in d.lower())
        out += [Path(dirpath) / f for f in sorted(filenames) if Path(f).suffix.lower() in IMAGE_EXTS
                and not f.startswith(".")]
    if len(out) > MAX_IMAGES:
        step = len(out) / MAX_IMAGES
        out = [out[int(i * step)] for i in range(MAX_IMAGES)]
    return out


def _config_value(doc: dict, key: str):
    return doc.get(key, doc.get(f"--{key}"))


def backend_folders(run_dir: Path) -> list[Path]:
    """The instance_data_dir of every enabled local image dataset in the run's data backend config."""
    for rel in RUN_CONFIGS:
        cfg = run_dir / rel
        if not cfg.is_file():
            continue
        try:
            doc = json.loads(cfg.read_text())
        except (OSError, ValueError):
            continue
        raw = _config_value(doc, "data_backend_config") if isinstance(doc, dict) else None
        if not raw:
            continue
        for cand in (Path(raw), run_dir / raw, run_dir.parent / raw):
            if cand.is_file():
                try:
                    backends = json.loads(cand.read_text())
                except (OSError, ValueError) as e:
                    raise ValueError(f"training_images: {cand} (the run's data_backend_config) is not JSON: {e}") from None
                return [Path(b["instance_data_dir"]) if os.path.isabs(b["instance_data_dir"])
                        else cand.parent / b["instance_data_dir"]
                        for b in backends if isinstance(b, dict) and b.get("instance_data_dir")
                        and b.get("type", "local") == "local" and b.get("dataset_type", "image") == "image"
                        and not b.get("disabled")]
        raise ValueError(f"training_images: the run's training config {cfg} names data_backend_config {raw!r}, "
                         "which is not there; give the training images' folder instead")
    return []


def resolve(raw: str, roots_env: str, run_dir: Path | None = None) -> list[Path]:
    """The training images ``raw`` names (a folder, or empty for the run's own datasets). Raises
    PermissionError outside the training roots and ValueError when nothing is found; each message
    names the input and what to do."""
    if raw and raw.strip():
        try:
            folders = [simpletuner.resolve_training_dir(raw, roots_env)]
        except (PermissionError, ValueError) as e:
            raise type(e)(str(e).replace("output_dir:", "training_images:", 1)) from None
    elif run_dir is not None:
        folders = []
        for f in backend_folders(run_dir):
            try:
                folders.append(simpletuner.resolve_training_dir(str(f), roots_env))
            except (PermissionError, ValueError) as e:
                raise type(e)(f"training_images: the run's dataset {f}: " + str(e).split(": ", 1)[-1]) from None
        if not folders:
            raise ValueError(f"training_images: the run {run_dir} names no local image dataset (no config.json with "
                             "data_backend_config); give the training images' folder")
    else:
        raise ValueError("training_images: empty; give the folder of the run's training images (under "
                         "SD35WB_TRAINING_ROOTS), or leave memorisation off")
    images = [p for f in folders for p in find_images(f)]
    if not images:
        raise ValueError(f"training_images: no images (.png, .jpg, .webp) under {', '.join(map(str, folders))}")
    return images
