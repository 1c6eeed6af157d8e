"""Unit tier: the pack's metadata and wiring, read as plain files (no ComfyUI imported)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]


def test_pyproject_has_registry_fields():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    assert project["name"] == "sd35-workbench" and "comfyui" not in project["name"].lower()
    major, minor, patch = project["version"].split(".")
    assert all(p.isdigit() for p in (major, minor, patch))
    assert project["license"] == {"file": "LICENSE"} and (REPO / "LICENSE").exists()
    assert comfy["PublisherId"] and comfy["DisplayName"] == "SD3.5 Workbench" and comfy["Icon"]
    assert comfy["requires-comfyui"].startswith(">=")
    deps = " ".join(project["dependencies"])
    for name in ("huggingface_hub", "safetensors", "numpy", "pillow"):
        assert name in deps
    reqs = (REPO / "requirements.txt").read_text()
    for name in ("huggingface_hub", "safetensors", "numpy", "pillow"):
        assert name in reqs, f"requirements.txt (what ComfyUI-Manager installs) lacks {name}"


def test_init_only_wires_the_extension():
    tree = ast.parse((REPO / "__init__.py").read_text())
    assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert "WEB_DIRECTORY" in assigned
    assert "NODE_CLASS_MAPPINGS" not in assigned, "export V3 or V1, never both"
    kinds = {type(n).__name__ for n in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}, f"__init__.py does more than wiring: {kinds}"


def test_plain_logic_package_imports_no_comfyui():
    """Everything under sd35wb/ must import without the host (unit tests, CLIs, bench use it).

    Checked in a fresh interpreter that has only the repo on its path, so the host cannot leak in."""
    code = (
        "import importlib, pkgutil, sys; import sd35wb\n"
        "for m in pkgutil.walk_packages(sd35wb.__path__, 'sd35wb.'): importlib.import_module(m.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths', 'torch')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"sd35wb imported host modules: {out.stdout}"


def test_the_registry_icon_is_a_square_png_in_the_repository():
    """[tool.comfy] Icon: the Registry takes a square SVG / PNG / JPG / GIF of at most 400 x 400 px;
    the URL points at this repository's main branch, so the file must be committed at that path."""
    from PIL import Image

    icon = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]["Icon"]
    prefix = "https://raw.githubusercontent.com/sd35-workbench/sd35-workbench/main/"
    assert icon.startswith(prefix), icon
    path = REPO / icon[len(prefix):]
    assert path.is_file(), f"{icon} names {path.relative_to(REPO)}, which does not exist (python -m tools.make_icon)"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width == im.height <= 400, (im.format, im.size)
        assert len(set(im.convert("RGB").getdata())) > 8, "a drawn icon, not a flat square"


def _comfyignore():
    text = (REPO / ".comfyignore").read_text()
    patterns = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    comments = "\n".join(ln for ln in text.splitlines() if ln.lstrip().startswith("#"))
    return patterns, comments


def test_comfyignore_names_only_paths_that_exist():
    patterns, comments = _comfyignore()
    assert patterns, ".comfyignore lists nothing"
    missing = [p for p in patterns if not list(REPO.glob(p.rstrip("/")))]
    assert not missing, f".comfyignore names paths that do not exist: {missing}"
    # Paths its comments point a reader to exist too (the archive test it names, say).
    named = [w.strip("`'\"(),.") for w in comments.split() if "/" in w and w.strip("`'\"(),.").endswith(".py")]
    assert named and all((REPO / n).is_file() for n in named), named
