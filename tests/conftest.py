"""Shared fixtures for the four tiers: unit, host (in-process ComfyUI), api (real server), browser.

Tier markers come from the folder a test lives in (tests/unit, tests/host, tests/api, tests/browser).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
ARTIFACTS = REPO / "test-artifacts"

sys.path.insert(0, str(TESTS))
# ComfyUI's own top-level modules (nodes, folder_paths, server, ...) must win over the pack's
# `nodes/` package, so the host goes first and the repo (for `sd35wb` and `tools`) last.
while str(REPO) in sys.path:
    sys.path.remove(str(REPO))
sys.path.append(str(REPO))

from tools.comfy_server import ComfyServer, host_env, prepare_base  # noqa: E402

_HOST = host_env()
sys.path.insert(0, _HOST["COMFYUI_DIR"])


def _configure_host_args() -> None:
    """CPU only, no argv parsing: must happen before anything imports comfy.model_management."""
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True


_configure_host_args()

TIERS = ("unit", "host", "api", "browser")


def _tier(item) -> str:
    parts = Path(str(item.fspath)).relative_to(TESTS).parts
    return parts[0] if parts and parts[0] in TIERS else "unit"


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(getattr(pytest.mark, _tier(item)))
    items.sort(key=lambda it: TIERS.index(_tier(it)))  # cheap tiers first; stable within a tier


def run_async(coro):
    """Run a coroutine to completion even when a loop is already running (playwright's sync API)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    from tools import tiny_models

    return tiny_models.build_all()


USER_MODEL_FOLDERS = ("checkpoints", "diffusion_models", "loras", "text_encoders", "vae")


@pytest.fixture(scope="session")
def user_models(tmp_path_factory) -> Path:
    """A session folder laid out like ComfyUI's models/ (checkpoints, diffusion_models, loras, ...).

    Registered in the in-process host and in the server, so files a test writes here (LoRAs,
    text encoders, ...) show up in the loaders' lists; the host rescans when a folder changes."""
    root = tmp_path_factory.mktemp("user-models")
    for f in USER_MODEL_FOLDERS:
        (root / f).mkdir()
    return root


@pytest.fixture(scope="session")
def training_root(tmp_path_factory) -> Path:
    """The folder the server is told holds training runs (SD35WB_TRAINING_ROOTS)."""
    return tmp_path_factory.mktemp("training-runs")


def model_roots(root: Path, user: Path) -> dict[str, list[Path]]:
    from tools.tiny_models import model_dirs

    roots = {f: [user / f] for f in USER_MODEL_FOLDERS}
    for folder, paths in model_dirs(root).items():
        roots.setdefault(folder, []).extend(paths)
    return roots


@pytest.fixture(scope="session")
def host(tiny_models, user_models):
    """ComfyUI in this process, CPU only, with core nodes, our pack and the test nodes loaded."""
    import folder_paths

    for folder, paths in model_roots(tiny_models, user_models).items():
        for p in paths:
            folder_paths.add_model_folder_path(folder, str(p), is_default=True)
    import nodes

    run_async(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    for pack in (REPO, TESTS / "testnodes"):
        assert run_async(nodes.load_custom_node(str(pack))), f"{pack} failed to load in-process"
    return SimpleNamespace(nodes=nodes, folder_paths=folder_paths, models=tiny_models)


@pytest.fixture(scope="session")
def server(tiny_models, user_models, training_root, tmp_path_factory):
    """A real ComfyUI server on 127.0.0.1 with the pack, the test nodes and the tiny models."""
    base = tmp_path_factory.mktemp("comfy-base")
    cfg = prepare_base(base, model_roots(tiny_models, user_models), {"sd35wb_testnodes": TESTS / "testnodes"})
    srv = ComfyServer(base, cfg, env={"SD35WB_TRAINING_ROOTS": str(training_root)}).start()
    yield srv
    srv.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(srv.log_path, ARTIFACTS / "server.log")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing in CI: scripts/setup.sh should have installed it")
        pytest.skip("chromium not installed (scripts/setup.sh installs Debian's chromium where apt is available)")
    return path
