"""Install the ways users install, with the tools users install with (from .install-tools/, built by
scripts/install_tools.sh): ComfyUI-Manager's cm-cli from a git URL, comfy-cli's `node validate`
and the Registry archive `comfy node pack` builds. Each installed pack is then served by a real
host started afresh, and must serve every node the dev checkout serves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from tools.comfy_server import REPO, ComfyServer, host_env, prepare_base

TOOLS = REPO / ".install-tools"


@pytest.fixture(scope="module")
def tools() -> Path:
    if not (TOOLS / "bin" / "comfy").exists() or not (TOOLS / "bin" / "cm-cli").exists():
        msg = "no .install-tools/ (ComfyUI-Manager + comfy-cli): run `bash scripts/install_tools.sh` (make test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return TOOLS


def _tool_env(home: Path) -> dict[str, str]:
    # A private HOME: comfy-cli keeps its config (and its telemetry choice) there.
    # COLUMNS: rich (in both tools) would otherwise wrap long lines mid-word in captured output.
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "PYTHONUNBUFFERED": "1",
            "COLUMNS": "400"}


def _comfy(tools: Path, cwd: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(tools / "bin" / "comfy"), "--skip-prompt", "--no-enable-telemetry", *args], cwd=cwd,
                          env=_tool_env(home), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def _working_tree_repo(dest: Path) -> Path:
    """A git repo holding the checkout as it would be committed (tracked + new, not ignored files)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():  # a deleted, not yet committed file is listed but gone
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(src.read_bytes())
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "snapshot"], cwd=dest, check=True)
    return dest


def _served(srv: ComfyServer) -> set[str]:
    return {k for k in srv.get_json("/object_info") if k.startswith("SD35WB_")}


def _assert_loaded_cleanly(srv: ComfyServer, folder: str) -> None:
    log = srv.log()
    assert re.search(rf"seconds: \S*custom_nodes[/\\]{re.escape(folder)}\s*$", log, re.M), log[-3000:]
    assert not re.search(rf"(IMPORT FAILED|Cannot import).*custom_nodes[/\\]{re.escape(folder)}", log), log[-3000:]
    assert "nodes disabled" not in log, log[-3000:]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    return _working_tree_repo(tmp_path_factory.mktemp("snapshot") / "sd35-workbench")


# ----------------------------------------------------------------------------- comfy-cli

def test_comfy_node_validate_passes_on_the_repo(tools, snapshot, tmp_path):
    run = _comfy(tools, snapshot, tmp_path, "node", "validate")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    # validate exits 0 on security findings too (eval/exec, one-line compound statements), only
    # warning; this pack must have none, and ruff must have run.
    assert "Running security checks" in out and "All validation checks passed successfully" in out, out
    assert "Security warnings" not in out and "Ruff is not installed" not in out, out


@pytest.fixture(scope="module")
def archive(tools, snapshot, tmp_path_factory) -> Path:
    """node.zip exactly as `comfy node pack` (the code `comfy node publish` uploads with) builds it."""
    out = _comfy(tools, snapshot, tmp_path_factory.mktemp("home"), "node", "pack")
    assert out.returncode == 0, out.stdout + out.stderr
    return snapshot / "node.zip"


def test_registry_archive_holds_the_pack_and_not_the_dev_files(archive):
    names = set(zipfile.ZipFile(archive).namelist())
    tracked = set(subprocess.run(["git", "ls-files"], cwd=archive.parent, check=True, capture_output=True,
                                 text=True).stdout.split())
    needed = {"__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md", "node_list.json"}
    needed |= {p for p in tracked if p.split("/")[0] in ("nodes", "sd35wb", "js", "workflows", "docs")}
    assert needed <= names, f"missing from the archive: {sorted(needed - names)}"
    dev = {p for p in names if p.split("/")[0] in ("tests", "bench", "tools", "scripts", ".ci")
           or p in ("Makefile", "requirements-dev.txt", ".gitignore", ".comfyignore")}
    assert dev == set(), f"dev files in the archive: {sorted(dev)}"
    assert names == needed, f"unexpected files in the archive: {sorted(names - needed)}"
    assert not any(p.endswith((".pt", ".pkl", ".ckpt")) or "fixtures" in p for p in names)


def test_registry_archive_unpacked_into_a_fresh_host_serves_every_node(archive, tmp_path, server):
    """What the Registry / Manager's CNR install does: unzip node.zip into custom_nodes, start."""
    base = tmp_path / "registry-host"
    dest = base / "custom_nodes" / "sd35-workbench"
    dest.mkdir(parents=True)
    zipfile.ZipFile(archive).extractall(dest)
    srv = ComfyServer(base, prepare_base(base, {})).start()
    try:
        _assert_loaded_cleanly(srv, "sd35-workbench")
        assert _served(srv) == _served(server)
        templates = srv.get_json("/workflow_templates").get("sd35-workbench", [])
        assert set(templates) == {p.stem for p in (REPO / "workflows").glob("*.json")}
    finally:
        srv.stop()


# ----------------------------------------------------------------------------- ComfyUI-Manager

# cm-cli as the host's python runs it: tools venv appended (host packages win), and the host's user
# directory set first, as ComfyUI's --user-directory would, so nothing lands in the host's own tree.
CM_CLI = ("import runpy, sys; site, comfy, user = sys.argv[1:4]; del sys.argv[1:4]; sys.path += [site, comfy]; "
          "import folder_paths; folder_paths.set_user_directory(user); "
          "sys.argv[0] = 'cm-cli'; runpy.run_module('cm_cli', run_name='__main__', alter_sys=True)")


def _site_packages(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def test_manager_cli_installs_from_git_url_and_the_restarted_host_serves_every_node(tools, snapshot, tmp_path, server):
    """cm-cli (ComfyUI-Manager 4.3's own CLI) clones the pack from its git URL into a fresh host's
    custom_nodes and installs its requirements; after a restart the host serves every node.

    Offline stand-ins, both read from the Manager's code: ``--mode cache`` reads the node DB bundled
    in the package instead of fetching it; and the URL is ``file://localhost/...`` because the
    Manager's ``is_valid_url`` wants a host part (``file:///...`` is taken for a node name)."""
    remote = tmp_path / "remote" / "sd35-workbench.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(snapshot), str(remote)], check=True)
    url = f"file://localhost{remote}"
    base = tmp_path / "fresh-host"
    user = base / "user"
    user.mkdir(parents=True)
    (base / "custom_nodes").mkdir()
    # cm-cli reads extra_model_paths.yaml from --user-directory: point its custom_nodes at this host's.
    (user / "extra_model_paths.yaml").write_text(
        f"sd35wb_manager_test:\n  base_path: {base}\n  is_default: true\n  custom_nodes: custom_nodes\n")
    env = host_env()
    host_manager_dir_before = (Path(env["COMFYUI_DIR"]) / "user" / "__manager").exists()
    # The host's own python, as the Manager runs inside ComfyUI: it pip-installs the pack's
    # requirements with sys.executable and imports the host's folder_paths. Its own packages come
    # from the tools venv, appended so the host's packages win.
    run = subprocess.run(
        [env["COMFYUI_PYTHON"], "-c", CM_CLI, _site_packages(tools), env["COMFYUI_DIR"], str(user), "install", url, "--mode", "cache",
         "--user-directory", str(user), "--exit-on-fail"],
        cwd=base, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        env={**_tool_env(tmp_path / "home"), "COMFYUI_PATH": env["COMFYUI_DIR"], "COMFYUI_FOLDERS_BASE_PATH": str(base)})
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert not (Path(env["COMFYUI_DIR"]) / "user" / "__manager").exists() or host_manager_dir_before, \
        "cm-cli wrote into the host's own user folder"
    assert (user / "__manager" / "cache").is_dir()  # its state went where it was told
    assert "Installation was successful." in out and "[INSTALLED]" in out, out[-4000:]
    installed = base / "custom_nodes" / "sd35-workbench"
    origin = subprocess.run(["git", "remote", "get-url", "origin"], cwd=installed, capture_output=True, text=True)
    assert origin.stdout.strip() == url
    head = lambda d: subprocess.run(["git", "rev-parse", "HEAD"], cwd=d, capture_output=True, text=True).stdout  # noqa: E731
    assert head(installed) == head(snapshot)
    # It installed the pack's requirements (already there, so pip changed nothing).
    for req in ("huggingface_hub", "safetensors", "numpy", "pillow"):
        assert re.search(rf"pip', 'install', '{req}", out, re.I), f"the Manager did not install {req}"

    srv = ComfyServer(base, prepare_base(base, {})).start()  # prepare_base keeps the Manager's clone
    try:
        assert not (base / "custom_nodes" / "sd35-workbench").is_symlink()
        _assert_loaded_cleanly(srv, "sd35-workbench")
        served = _served(srv)
        assert served == _served(server)
        assert served == set(json.loads((installed / "node_list.json").read_text()))
    finally:
        srv.stop()


def test_cm_cli_cannot_take_a_plain_file_url(tools, tmp_path):
    """Why the test above uses file://localhost: pins the Manager behaviour it works around."""
    env = host_env()
    code = ("import sys, importlib; sys.path += sys.argv[1:3]; import folder_paths; "
            "folder_paths.set_user_directory(sys.argv[3]); "
            "core = importlib.import_module('comfyui_manager.legacy.manager_core'); "
            "print(core.is_valid_url('file:///tmp/x.git'), core.is_valid_url('file://localhost/tmp/x.git'))")
    out = subprocess.run([env["COMFYUI_PYTHON"], "-c", code, _site_packages(tools), env["COMFYUI_DIR"], str(tmp_path)],
                         capture_output=True, text=True,
                         cwd=tmp_path, env={**_tool_env(tmp_path), "COMFYUI_PATH": env["COMFYUI_DIR"]}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["False", "True"]

