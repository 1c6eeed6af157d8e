"""The real ComfyUI host in this process, with the pack's sweep node, for the sweep bench and picture.

The host itself comes from the one bootstrap, tools/host.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def boot(work: Path, threads: int = 1):
    """Host on CPU; tiny models + ``work/diffusion_models`` and ``work/text_encoders`` registered; temp
    (the sweep's render cache) under ``work/temp``. Returns (nodes module, CheckpointSweep class)."""
    sys.path.append(str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    from tools import host

    host.bootstrap()
    import torch

    torch.set_num_threads(threads)
    import folder_paths

    from tools import tiny_models

    for folder, paths in tiny_models.model_dirs(tiny_models.build_all()).items():
        for p in paths:
            folder_paths.add_model_folder_path(folder, str(p))
    folder_paths.add_model_folder_path("diffusion_models", str(work / "diffusion_models"), is_default=True)
    folder_paths.add_model_folder_path("text_encoders", str(work / "text_encoders"), is_default=True)
    folder_paths.set_temp_directory(str(work / "temp"))
    import nodes

    spec = importlib.util.spec_from_file_location("sd35wb_pack", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sd35wb_pack"] = mod
    spec.loader.exec_module(mod)
    return nodes, importlib.import_module("sd35wb_pack.nodes.sweep").CheckpointSweep


def link_clip_l(work: Path, name: str = "sweep_clip_l.safetensors") -> str:
    """A random-weight CLIP-L (SD3's text encoder, real size) in ``work/text_encoders``."""
    from tools import sd35_fixtures

    dest = work / "text_encoders" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        dest.symlink_to(sd35_fixtures.clip_l_file())
    return name


def checkpoint_run(models_dir: Path, n: int, run: str = "bench-run") -> list[str]:
    """A run of ``n`` checkpoints under ``models_dir/diffusion_models/<run>/``, each a separate copy of
    the tiny SD3.5-Medium-shaped model (so every one is loaded from its own file); their names."""
    import shutil

    from tools import tiny_models

    src = tiny_models.build_all() / "diffusion_models" / "tiny-sd35m.safetensors"
    folder = models_dir / "diffusion_models" / run
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        shutil.copyfile(src, folder / f"checkpoint-{100 * (i + 1)}.safetensors")
        names.append(f"{run}/checkpoint-{100 * (i + 1)}.safetensors")
    return names


def lora_workflow(px: int = 64, prefix: str = "lora_sweep", clip_name: str | None = None, steps: int = 2) -> dict:
    """An API-format LoRA-run workflow on the tiny models, as a user exports it for the sweep CLI: the tiny
    SD3.5 base, a LoraLoaderModelOnly (the file the sweep swaps), test conditioning (or, with ``clip_name``, a
    CLIPTextEncode through that text encoder, for real prompts), taesd3, SaveImage."""
    positive = ({"class_type": "CLIPTextEncode", "inputs": {"text": "placeholder", "clip": ["10", 0]}} if clip_name else
                {"class_type": "SD35WBTest_Conditioning", "inputs": {"family": "sd3", "seed": 1, "width": px, "height": px}})
    p = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-sd35m.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": "any.safetensors",
                                                               "strength_model": 1.0}},
        "3": positive,
        "4": {"class_type": "SD35WBTest_Conditioning", "inputs": {"family": "sd3", "seed": 2, "width": px, "height": px}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": px, "height": px, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], "seed": 5, "steps": steps, "cfg": 4.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "7": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["7", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }
    if clip_name:
        p["10"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": clip_name, "type": "sd3", "device": "default"}}
    return p
