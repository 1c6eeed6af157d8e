"""Install by hand as the README says: git clone into custom_nodes, pip install -r requirements.txt, start."""

import re
import subprocess

import pytest

from tools.comfy_server import REPO, ComfyServer, host_env, prepare_base


@pytest.fixture(scope="module")
def manager_style_server(tmp_path_factory, server):
    base = tmp_path_factory.mktemp("manager-install")
    cn = base / "custom_nodes"
    cn.mkdir()
    # What a manual install does: a clone of the repository (committed state), then its requirements.
    # --dry-run: the requirements must resolve against the host's python, but a user's ComfyUI run with
    # COMFYUI_DIR=... is never changed (the real Manager install, pip included, is tests/api/test_install_tools.py).
    subprocess.run(["git", "clone", "-q", str(REPO), str(cn / "sd35-workbench")], check=True)
    py = host_env()["COMFYUI_PYTHON"]
    pip = subprocess.run([py, "-m", "pip", "install", "-q", "--dry-run", "--disable-pip-version-check", "-r",
                          str(cn / "sd35-workbench" / "requirements.txt")], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    cfg = prepare_base(base, {})
    srv = ComfyServer(base, cfg).start()
    yield srv
    srv.stop()


def test_cloned_pack_loads_every_node(manager_style_server, server):
    log = manager_style_server.log()
    assert re.search(r"seconds: \S*custom_nodes[/\\]sd35-workbench\s*$", log, re.M), log[-3000:]
    assert not re.search(r"(IMPORT FAILED|Cannot import).*custom_nodes[/\\]sd35-workbench", log), log[-3000:]
    assert "nodes disabled" not in log, "a capability failed to import on a fresh install"
    fresh = {k for k in manager_style_server.get_json("/object_info") if k.startswith("SD35WB_")}
    dev = {k for k in server.get_json("/object_info") if k.startswith("SD35WB_")}
    assert fresh == dev
    m = re.search(r"\[sd35-workbench\] loaded (\d+) nodes", log)
    assert m and int(m.group(1)) == len(fresh)


def test_example_workflows_are_listed_as_templates(manager_style_server):
    templates = manager_style_server.get_json("/workflow_templates")
    listed = set(templates.get("sd35-workbench", []))
    shipped = {p.stem for p in (REPO / "workflows").glob("*.json")}
    assert listed == shipped
