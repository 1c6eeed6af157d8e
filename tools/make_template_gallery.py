"""Each example workflow's rendered output on the tiny random-weight test models, for README's gallery.

    python -m tools.make_template_gallery      # writes docs/img/template_<name>.png
    python -m tools.make_template_gallery simpletuner_lora_sweep_scores   # only these templates

Queues every workflows/api/*.json through a real ComfyUI server exactly as the api tier's
test_api_workflow_runs_on_tiny_models does (tools.tiny_remap plus tools.workflow_fixtures; a staged
template with its bypassed stage switched on) and keeps the last image the template saves (its grid
or final render), shrunk below 100 KB. The weights are random, so the pictures are noise: they show
the layout a template produces (a grid's rows and labels, a sweep's pages), never its quality.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

from tools import host
from tools.comfy_server import REPO, ComfyServer, prepare_base

OUT = REPO / "docs" / "img"
MAX_BYTES = 100_000
MAX_SIDE = 640
USER_FOLDERS = ("checkpoints", "diffusion_models", "loras", "text_encoders", "vae", "clip_vision")


def final_image(prompt: dict) -> str:
    """The node id of the last SaveImage (by id): a template's grid or its final render."""
    saves = sorted((nid for nid, n in prompt.items() if n["class_type"] == "SaveImage"), key=int)
    if not saves:
        raise SystemExit("a template saves no image")
    return saves[-1]


def small_png(data: bytes) -> bytes:
    """A PNG of ``data`` no wider or taller than MAX_SIDE and under MAX_BYTES (noise compresses badly:
    a 64-colour palette, then smaller until it fits)."""
    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("RGB")
    im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    while True:
        buf = io.BytesIO()
        im.quantize(64, dither=Image.Dither.NONE).save(buf, "PNG", optimize=True)
        if buf.tell() < MAX_BYTES or min(im.size) < 64:
            return buf.getvalue()
        im = im.resize((int(im.width * 0.85), int(im.height * 0.85)), Image.Resampling.LANCZOS)


def main() -> int:
    host.use_host_python()
    host.bootstrap()  # the tiny models and fixtures are built in this process with the host's own classes
    sys.path.insert(0, str(REPO / "tests"))  # lcm_helpers, for the LCM templates' tiny LoRAs
    from tools import tiny_models
    from tools.tiny_remap import tinyify
    from tools.workflow_fixtures import template_rules

    OUT.mkdir(parents=True, exist_ok=True)
    tiny = tiny_models.build_all()
    with tempfile.TemporaryDirectory(prefix="sd35wb-gallery-") as tmp:
        base, user, training = Path(tmp) / "base", Path(tmp) / "models", Path(tmp) / "training"
        for f in USER_FOLDERS:
            (user / f).mkdir(parents=True)
        training.mkdir()
        roots = {f: [user / f] for f in USER_FOLDERS}
        for folder, paths in tiny_models.model_dirs(tiny).items():
            roots.setdefault(folder, []).extend(paths)
        cfg = prepare_base(base, roots, {"sd35wb_testnodes": REPO / "tests" / "testnodes"})
        rules = template_rules(tiny, user, training)
        server = ComfyServer(base, cfg, env={"SD35WB_TRAINING_ROOTS": str(training)}).start()
        try:
            only = set(sys.argv[1:])
            for api in sorted((REPO / "workflows" / "api").glob("*.json")):
                if only and api.stem not in only:
                    continue
                prompt = tinyify(json.loads(api.read_text()), extra_rules=rules)
                entry = server.run(prompt, timeout=900)
                (data, *_) = server.images(entry, final_image(prompt))
                path = OUT / f"template_{api.stem}.png"
                path.write_bytes(small_png(data))
                print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size // 1000} KB)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
