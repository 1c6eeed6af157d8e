"""The README's first command, `make demo`, run exactly as a newcomer runs it: it sets up the host (a
no-op when it exists), runs the SD3.5 Medium + SLG workflow through a real server and leaves a PNG in out/.

Cold: with an empty tiny-model cache of its own (SD35WB_TINY_CACHE), so the demo builds the models
itself, in its own process, with nothing the test harness prepared. Warm: on the cache as it is."""

import os
import subprocess

import pytest
from PIL import Image

from tools.comfy_server import REPO


def run_make_demo(env: dict[str, str]) -> tuple[subprocess.CompletedProcess, Image.Image]:
    before = set((REPO / "out").glob("*.png")) if (REPO / "out").exists() else set()
    res = subprocess.run(["make", "-s", "demo"], cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**os.environ, **env})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "tiny random-weight models" in res.stdout  # says plainly that the picture is noise
    new = set((REPO / "out").glob("*.png")) - before
    assert len(new) == 1, res.stdout
    path = new.pop()
    img = Image.open(path)
    img.load()
    path.unlink()  # the test's picture, not the user's
    return res, img


@pytest.mark.slow
def test_make_demo_cold_builds_its_own_tiny_models(tmp_path):
    cache = tmp_path / "empty-tiny-cache"
    res, img = run_make_demo({"SD35WB_TINY_CACHE": str(cache)})
    assert img.size == (128, 128)
    built = list(cache.glob("tiny-models-*/diffusion_models/tiny-sd35m.safetensors"))
    assert built, f"the demo did not build the tiny models in {cache}: {res.stdout[-2000:]}"


def test_make_demo_warm(tiny_models):
    # tiny_models: the session's cache is built, so this is the second-run path
    res, img = run_make_demo({"SD35WB_TINY_CACHE": str(tiny_models.parent)})
    assert img.size == (128, 128)
    assert img.getextrema() != ((0, 0), (0, 0), (0, 0)), "the demo wrote a blank picture"
