"""The test harness keeps its promises: the unit tier runs without a ComfyUI host (and imports none),
the host tiers say by name that they did not run, and under CI a skip or a missing host fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LEFT_OUT = (".git", ".host", ".host.env", "out", "test-artifacts", "__pycache__", ".pytest_cache", ".hypothesis")


def fresh_checkout(tmp_path: Path) -> Path:
    """The working tree as a fresh clone has it: no host set up, nothing built."""
    dest = tmp_path / "sd35-workbench"
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(*LEFT_OUT), symlinks=True)
    return dest


def no_host_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_DIR", "COMFYUI_PYTHON", "CI", "PYTEST_ADDOPTS")}
    return {**env, **extra}


RUN_AND_REPORT_IMPORTS = (
    "import sys, pytest\n"
    "rc = pytest.main(sys.argv[1:])\n"
    "print('HOST-MODULES', sorted(m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths', 'nodes', 'server')))\n"
    "sys.exit(rc)\n"
)


def test_unit_tier_runs_without_a_host_and_imports_no_comfyui(tmp_path):
    repo = fresh_checkout(tmp_path)
    res = subprocess.run([sys.executable, "-c", RUN_AND_REPORT_IMPORTS, "-q", "-p", "no:cacheprovider",
                          "--deselect", "tests/unit/test_harness.py"],
                         cwd=repo, env=no_host_env(), capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert " passed" in out and "HOST-MODULES []" in out, out[-3000:]
    # the other tiers are not silently dropped: the summary names them and what to do
    assert "NOT RUN: the api, browser, host tier(s). No ComfyUI host: run `make setup`" in out, out[-3000:]


def test_without_a_host_ci_fails_instead_of_leaving_tiers_out(tmp_path):
    repo = fresh_checkout(tmp_path)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/host"],
                         cwd=repo, env=no_host_env(CI="1"), capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    out = " ".join((res.stdout + res.stderr).split())  # pytest wraps long lines
    assert "CI is set but there is no ComfyUI host for the " in out and "run `make setup`" in out, out[-2000:]


SKIPPING = '''
import pytest

def test_needs_a_tool():
    pytest.skip("frobnicate not installed: `sudo apt-get install frobnicate`")
'''


def test_a_skip_is_a_failure_under_ci_and_says_what_to_install_outside(tmp_path):
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "ci_plugin", "test_skipping.py"]
    # Keep the caller's PYTHONPATH: scripts/test.sh layers the test tools (pytest itself) there.
    env = no_host_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), env.get("PYTHONPATH")]))
    for ci in ("true", "1", "yes"):  # any non-empty value means CI
        res = subprocess.run(cmd, cwd=tmp_path, env={**env, "CI": ci}, capture_output=True, text=True, timeout=120)
        assert res.returncode == 1, res.stdout
        assert "1 failed" in res.stdout and "skipped in CI" in res.stdout and "apt-get install frobnicate" in res.stdout
    res = subprocess.run(cmd, cwd=tmp_path, env={**env, "CI": ""}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "1 skipped" in res.stdout and "apt-get install frobnicate" in res.stdout, res.stdout
