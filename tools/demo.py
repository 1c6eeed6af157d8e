"""`make demo`: run the pack's headline workflow (SD3.5 Medium + Skip Layer Guidance) through a real
ComfyUI server's HTTP API and write the images to out/.

With real weights (COMFYUI_DIR pointing at an install whose models hold sd3.5_medium.safetensors
and the text encoders, or SD35WB_MODELS=/path/to/models), the workflow runs as written. Otherwise
it runs on tiny random-weight models: the pipeline is real, the pictures are noise.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tools import host
from tools.comfy_server import REPO, ComfyServer, prepare_base
from tools.tiny_remap import tinyify

WORKFLOW = REPO / "workflows" / "api" / "sd35_medium_slg.json"
REAL_FILES = ("sd3.5_medium.safetensors",)
MODEL_FOLDERS = ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras", "vae_approx")


def real_models_dir() -> Path | None:
    for cand in (os.environ.get("SD35WB_MODELS"), os.environ.get("COMFYUI_DIR") and Path(os.environ["COMFYUI_DIR"]) / "models"):
        if not cand:
            continue
        d = Path(cand)
        if any((d / f / n).exists() for f in ("diffusion_models", "checkpoints", "unet") for n in REAL_FILES):
            return d
    return None


def tiny_slg_rules(nid: str, node: dict, family: str) -> None:
    # The tiny model has 4 joint blocks, not 24: skip 1-2, and take the settings from the widgets.
    if node["class_type"] in ("SD35WB_SLGSampler", "SD35WB_SLGGuider"):
        node["inputs"].pop("settings", None)
        node["inputs"].update(preset="custom", layers="1, 2")


def main() -> int:
    host.use_host_python()
    out = REPO / "out"
    out.mkdir(exist_ok=True)
    prompt = json.loads(WORKFLOW.read_text())
    real = real_models_dir()
    with tempfile.TemporaryDirectory(prefix="sd35wb-demo-") as tmp:
        base = Path(tmp)
        extra = {}
        if real:
            print(f"[demo] real weights found under {real}: running {WORKFLOW.name} as written")
            roots = {f: [real / f] for f in MODEL_FOLDERS if (real / f).exists()}
        else:
            host.bootstrap()  # the tiny models are built in this process with the host's own classes
            from tools import tiny_models

            print("[demo] no real SD3.5 weights found: running on tiny random-weight models (the images are noise).")
            print("[demo] for real pictures: SD35WB_MODELS=/path/to/ComfyUI/models make demo")
            tiny = tiny_models.build_all()
            roots = tiny_models.model_dirs(tiny)
            extra = {"sd35wb_testnodes": REPO / "tests" / "testnodes"}
            prompt = tinyify(prompt, family="sd3", max_steps=20, extra_rules=tiny_slg_rules)  # 20: SLG window covers steps 1-3
        cfg = prepare_base(base, roots, extra)
        server = ComfyServer(base, cfg)
        t0 = time.time()
        server.start()
        print(f"[demo] ComfyUI started on {server.url} in {time.time() - t0:.1f}s")
        try:
            t0 = time.time()
            entry = server.run(prompt, timeout=3600)
            images = server.images(entry)
            print(f"[demo] workflow ran in {time.time() - t0:.1f}s")
        except Exception as e:  # noqa: BLE001 - report and keep the server log
            shutil.copy(server.log_path, out / "demo-server.log")
            print(f"[demo] FAILED: {e}\n[demo] server log: {out / 'demo-server.log'}", file=sys.stderr)
            return 1
        finally:
            server.stop()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i, data in enumerate(images):
        path = out / f"sd35_medium_slg-{stamp}-{i}.png"
        path.write_bytes(data)
        print(f"[demo] wrote {path.relative_to(REPO)}")
    return 0 if images else 1


if __name__ == "__main__":
    sys.exit(main())
