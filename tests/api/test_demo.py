"""`make demo`'s driver: the SD3.5 Medium + SLG workflow runs through a real server and leaves a PNG in out/."""

import subprocess
import sys

from PIL import Image

from tools.comfy_server import REPO


def test_demo_writes_a_png_through_the_api():
    before = set((REPO / "out").glob("*.png")) if (REPO / "out").exists() else set()
    res = subprocess.run([sys.executable, "-m", "tools.demo"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "tiny random-weight models" in res.stdout  # says plainly that the picture is noise
    new = set((REPO / "out").glob("*.png")) - before
    assert len(new) == 1, res.stdout
    img = Image.open(new.pop())
    assert img.size == (128, 128)
