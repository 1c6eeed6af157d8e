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
