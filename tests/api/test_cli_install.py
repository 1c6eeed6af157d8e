"""The command-line tools as a user installs them (README, "Command-line tools"): a fresh venv of its own,
`pip install "./sd35-workbench[cluster]"` from the folder above a clone, then the commands from any folder.
Ray comes from the package index as a real dependency; ComfyUI's own python is never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tools.comfy_server import REPO, host_env

# What a run through `make test` exports (the tools layer above all): the user's shell has none of it.
RUN_VARS = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CI", "HOST", "FRONTEND", "SD35WB_TOOLS", "SD35WB_TOOLS_PYTHON",
            "SD35WB_HOST_VERSION", "COMFYUI_DIR", "COMFYUI_PYTHON")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in RUN_VARS} | {"PIP_ROOT_USER_ACTION": "ignore"}


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _clone(dest: Path) -> Path:
    """The checkout as a `git clone` has it: tracked and new, not ignored, files."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


def _freeze(py: str) -> list[str]:
    return _run([py, "-m", "pip", "freeze", "--all"], REPO).stdout.splitlines()


def test_a_fresh_venv_installs_the_checkout_with_cluster_and_the_tools_run_from_any_folder(tmp_path):
    host_py = host_env()["COMFYUI_PYTHON"]
    host_before = _freeze(host_py)
    assert host_before, "pip freeze of ComfyUI's python printed nothing"
    where = tmp_path / "src"
    clone = _clone(where / "sd35-workbench")
    before = {p.name for p in clone.iterdir()}
    venv = tmp_path / "venv"
    python3 = shutil.which("python3", path=_env().get("PATH")) or sys.executable
    made = _run([python3, "-m", "venv", str(venv)], tmp_path)
    assert made.returncode == 0, made.stderr
    vpy, vbin = str(venv / "bin" / "python"), venv / "bin"

    t0 = time.monotonic()
    # The line README prints, run where README says: the folder holding the clone.
    install = _run([vpy, "-m", "pip", "install", "-q", "./sd35-workbench[cluster]"], where, timeout=600)
    took = time.monotonic() - t0
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert took < 150, f"the install took {took:.0f} s"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args, words in (([str(vbin / "sd35wb-sweep"), "--help"], ("usage:", "--workflow", "--ray")),
                        ([vpy, "-m", "sd35wb.sweep", "--help"], ("usage:", "--workflow", "--ray")),
                        ([str(vbin / "sd35wb-link"), "--help"], ("usage:", "output_dir", "--training-roots"))):
        out = _run(args, elsewhere)
        assert out.returncode == 0, (args, out.stderr[-3000:])
        assert all(w in out.stdout for w in words), (args, out.stdout[:2000])

    # Ray works; every module of the plain-logic package is there (a subpackage missed by the package list
    # would fail here); the node classes, dev tools and tests are not installed as top-level packages.
    code = ("import importlib, importlib.util as u, pkgutil, ray, sd35wb, sd35wb.sweep.ray_dispatch\n"
            "for m in pkgutil.walk_packages(sd35wb.__path__, 'sd35wb.'): importlib.import_module(m.name)\n"
            "print(ray.__version__, sd35wb.__file__, [n for n in ('nodes', 'tools', 'tests') if u.find_spec(n)])")
    out = _run([vpy, "-c", code], elsewhere)
    assert out.returncode == 0, out.stderr[-3000:]
    ray_version, sd35wb_file, top = out.stdout.split(maxsplit=2)
    assert ray_version.split(".")[0] == "2" and sd35wb_file.startswith(str(venv)), out.stdout
    assert top.strip() == "[]", f"installed as top-level packages: {top}"
    files = _run([vpy, "-c", "import importlib.metadata as md; print('\\n'.join(str(f) for f in md.files('sd35-workbench')))"],
                 elsewhere)
    tops = {Path(f).parts[0] for f in files.stdout.split()}
    assert {t for t in tops if not t.endswith(".dist-info") and t != ".."} == {"sd35wb"}, sorted(tops)

    # What the build wrote into the clone (setuptools builds in place) is ignored by git: `git status` stays clean
    # and the Registry archive and the Manager's updates never see it.
    new = sorted(p.name + "/" * p.is_dir() for p in clone.iterdir() if p.name not in before)  # "/": dir-only patterns
    unignored = [n for n in new if subprocess.run(["git", "check-ignore", "-q", n], cwd=REPO).returncode != 0]
    assert not unignored, f"pip left files in the clone that git would show: {unignored}"
    assert _freeze(host_py) == host_before, "installing the tools changed ComfyUI's python"
