"""The README a ComfyUI user opens: install first, then a quick start; the harness lives in docs/development.md."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
DEV = (REPO / "docs" / "development.md").read_text()


def _headings(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", text, re.M)


def test_the_first_screen_is_install_then_a_quick_start():
    assert _headings(README)[:2] == ["Install", "Quick start: a first image with each capability"], _headings(README)
    first = README[:README.index("## Quick start")]
    assert "make demo" not in first and "setup.sh" not in first and "sudo" not in first


def test_install_names_every_way_with_the_real_clone_url_and_comfyuis_own_python():
    url = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    install = README[README.index("## Install"):README.index("## Quick start")]
    assert "ComfyUI-Manager" in install and "comfy node install sd35-workbench" in install
    assert f"git clone {url}" in install
    assert r"python_embeded\python.exe -m pip install -r" in install


def test_the_simpletuner_quick_start_says_how_to_set_the_training_roots():
    quick = README[README.index("## Quick start"):README.index("## Gallery")]
    st = quick[quick.index("### SimpleTuner"):]
    for way in ("SD35WB_TRAINING_ROOTS=/data/training python main.py", "run_nvidia_gpu.bat",
                "Environment=SD35WB_TRAINING_ROOTS=", "ComfyUI Desktop"):
        assert way in st, way


def test_the_token_recipe_gives_a_login_command_for_every_allowed_huggingface_hub():
    floor = re.search(r"^huggingface_hub>=([\d.]+)", (REPO / "requirements.txt").read_text(), re.M).group(1)
    quick = README[README.index("### Getting the SD3.5 weights"):]
    assert "hf auth login" in quick  # huggingface_hub 0.34+
    if tuple(int(x) for x in floor.split(".")) < (0, 34):
        assert "huggingface-cli login" in quick, f"huggingface_hub>={floor} allows versions without the hf command"


def test_the_harness_matrix_and_benchmarks_moved_to_docs_development():
    assert {"Two commands for a fresh checkout", "Tested hosts", "Benchmarks"} <= set(_headings(DEV))
    assert "## Benchmarks" not in README and "## Two commands" not in README
    assert "docs/development.md" in README and "docs/benchmarks.md" in README


def test_every_relative_link_resolves():
    for path, text in ((REPO / "README.md", README), (REPO / "docs" / "development.md", DEV)):
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" in target:
                continue
            assert (path.parent / target).exists(), f"{path.name}: link {target} does not exist"
