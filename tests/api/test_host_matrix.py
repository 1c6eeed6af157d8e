"""The host matrix: the test tools sit in a layer over the host's python, never in it, and testing
against a user's own ComfyUI leaves that install exactly as it was (python packages, tree, custom_nodes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tools.comfy_server import REPO, host_env

# What a run through `make test` exports; a nested run must start from none of it.
RUN_VARS = ("PYTHONPATH", "CI", "HOST", "FRONTEND", "SD35WB_TOOLS", "SD35WB_TOOLS_PYTHON", "SD35WB_HOST_VERSION",
            "SD35WB_FRONT_END_ROOT", "SD35WB_FRONTEND_VERSION", "COMFYUI_DIR", "COMFYUI_PYTHON")

DISTS = """
import importlib.metadata as md, json, sys
dists = md.distributions(path=sys.argv[1:]) if sys.argv[1:] else md.distributions()
print(json.dumps(sorted({(d.metadata["Name"] or "").lower().replace("_", "-") for d in dists} - {""})))
"""


def bare_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in RUN_VARS}, **extra}


def tools_layer() -> Path:
    tools = os.environ.get("SD35WB_TOOLS") or host_env().get("SD35WB_TOOLS")
    if not tools:
        pytest.fail("SD35WB_TOOLS is unset: run the suite through `make test` (scripts/setup.sh writes it to .host.env)")
    return Path(tools)


def host_python() -> str:
    return host_env()["COMFYUI_PYTHON"]


def test_tools_layer_holds_only_what_the_host_lacks():
    layer = tools_layer()
    py = host_python()
    host = set(json.loads(subprocess.run([py, "-c", DISTS], env=bare_env(), capture_output=True, text=True,
                                         check=True).stdout))
    layered = set(json.loads(subprocess.run([py, "-c", DISTS, str(layer)], env=bare_env(), capture_output=True,
                                            text=True, check=True).stdout))
    assert "torch" in host and "pytest" in host | layered
    assert not host & layered, f"the tools layer shadows the host's own {sorted(host & layered)}"
    # The host's packages are what the layered python imports; the tools come from the layer (or the host).
    where = subprocess.run([py, "-c", "import torch, numpy, safetensors, PIL, pytest, playwright; "
                            "print(torch.__file__, numpy.__file__, safetensors.__file__, PIL.__file__, pytest.__file__, "
                            "playwright.__file__)"],
                           env=bare_env(PYTHONPATH=str(layer)), capture_output=True, text=True, check=True).stdout.split()
    assert all(not p.startswith(str(layer)) for p in where[:4]), where
    assert all(p.startswith(str(layer)) == (name in layered) for p, name in zip(where[4:], ("pytest", "playwright"))), where


def snapshot(comfy: Path, py: str) -> dict:
    """A user's install as they would judge it: installed packages, custom_nodes entries, the tree's files."""
    freeze = subprocess.run([py, "-m", "pip", "freeze", "--all"], env=bare_env(), capture_output=True, text=True, check=True)
    cn = comfy / "custom_nodes"
    nodes = sorted((p.name, os.readlink(p) if p.is_symlink() else None) for p in cn.iterdir())
    files = {}
    for root, dirs, names in os.walk(comfy, followlinks=False):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not (Path(root) / d).is_symlink()]  # Python's own bytecode cache
        for n in names:
            p = Path(root, n)
            st = p.lstat()
            files[str(p.relative_to(comfy))] = (st.st_size, st.st_mtime_ns)
    return {"freeze": freeze.stdout.splitlines(), "custom_nodes": nodes, "files": files}


@pytest.fixture
def users_comfyui(tmp_path) -> tuple[Path, str]:
    """A user's ComfyUI: a copy of the host's tree with their own packs (and their own clone of this pack
    linked in), run by the host's python, which stands in for theirs."""
    src = Path(host_env()["COMFYUI_DIR"])
    comfy = tmp_path / "users" / "ComfyUI"
    top_level = {"custom_nodes", "user", "output", "input", "temp"}  # only at the top: comfy_api/input is code

    def skip(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n == "__pycache__" or (Path(folder) == src and n in top_level)}

    shutil.copytree(src, comfy, symlinks=True, ignore=skip)
    own_clone = tmp_path / "users" / "my-sd35-workbench"
    own_clone.mkdir()
    (own_clone / "__init__.py").write_text("# the user's own checkout\n")
    cn = comfy / "custom_nodes"
    (cn / "another-pack").mkdir(parents=True)
    (cn / "another-pack" / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    (cn / "sd35-workbench").symlink_to(own_clone, target_is_directory=True)
    return comfy, host_python()


def test_testing_against_a_users_comfyui_leaves_it_as_it_was(users_comfyui, tmp_path):
    comfy, py = users_comfyui
    before = snapshot(comfy, py)
    # A temporary clone, as a user who tries the suite once would make (deleted afterwards).
    clone = tmp_path / "clone"
    shutil.copytree(REPO, clone, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".host*", ".tools", ".frontend*", "test-artifacts", "out", "__pycache__", ".pytest_cache", ".ruff_cache"))
    env = bare_env(COMFYUI_DIR=str(comfy), COMFYUI_PYTHON=py)
    setup = subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-3000:]
    written = (clone / ".host.env").read_text()
    assert f"COMFYUI_DIR={comfy}" in written and f"COMFYUI_PYTHON={py}" in written, written
    run = subprocess.run(["bash", "scripts/test.sh", "-q", "-p", "no:cacheprovider", "tests/api/test_server.py",
                          "-k", "pack_loads"], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout, run.stdout[-2000:]
    shutil.rmtree(clone)
    after = snapshot(comfy, py)
    assert after["freeze"] == before["freeze"], "the user's python gained or lost packages"
    assert after["custom_nodes"] == before["custom_nodes"], "the user's custom_nodes changed (a pack link re-pointed?)"
    assert (comfy / "custom_nodes" / "sd35-workbench").resolve() == (tmp_path / "users" / "my-sd35-workbench")
    added = sorted(set(after["files"]) - set(before["files"]))
    changed = sorted(k for k in before["files"] if after["files"].get(k) != before["files"][k])
    assert not added and not changed, f"files written into the user's ComfyUI: added {added[:10]}, changed {changed[:10]}"
