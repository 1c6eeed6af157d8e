"""Shared fixtures for the four tiers: unit, host (in-process ComfyUI), api (real server), browser.

Tier markers come from the folder a test lives in (tests/unit, tests/host, tests/api, tests/browser).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
ARTIFACTS = REPO / "test-artifacts"

sys.path.insert(0, str(TESTS))
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # for `tools` and `sd35wb`; tools.host.bootstrap() puts it last

from ci_plugin import IN_CI  # noqa: E402 - any non-empty CI; there every skip is a failure

from tools import host as _host  # noqa: E402
from tools.comfy_server import ComfyServer, prepare_base  # noqa: E402

TIERS = ("unit", "host", "api", "browser")
HOST_TIERS = {TESTS / t for t in TIERS[1:]}
_skipped_tiers: list[str] = []


def pytest_ignore_collect(collection_path, config):
    """The unit tier imports no ComfyUI, so it runs without a built host. The other tiers bootstrap
    the host the first time one of their folders is collected (before any test module imports comfy);
    without a host they are left out, by name, outside CI, and fail the run in CI."""
    tier = next((t for t in HOST_TIERS if Path(collection_path) == t), None)
    if tier is None:
        return None
    if (config.option.markexpr or "").strip() == "unit":
        return True  # `pytest -m unit`: don't even import the other tiers
    if not _host.host_env(required=False):
        if IN_CI:
            raise pytest.UsageError(f"CI is set but there is no ComfyUI host for the {tier.name} tier. {_host.NO_HOST}")
        _skipped_tiers.append(tier.name)
        return True
    _host.bootstrap()
    return None


def pytest_terminal_summary(terminalreporter):
    if _skipped_tiers:
        terminalreporter.write_line(f"NOT RUN: the {', '.join(sorted(_skipped_tiers))} tier(s). {_host.NO_HOST}", yellow=True)


def _tier(item) -> str:
    parts = Path(str(item.fspath)).relative_to(TESTS).parts
    return parts[0] if parts and parts[0] in TIERS else "unit"


def pytest_collection_modifyitems(config, items):
    # the real-size tier (about 10 GB per load) runs only when asked for: `-m realsize` / make test-realsize
    if "realsize" not in (config.option.markexpr or ""):
        left = [it for it in items if it.get_closest_marker("realsize")]
        if left:
            config.hook.pytest_deselected(items=left)
            items[:] = [it for it in items if not it.get_closest_marker("realsize")]
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


USER_MODEL_FOLDERS = ("checkpoints", "diffusion_models", "loras", "text_encoders", "vae", "clip_vision")


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
def host(tiny_models, user_models, tmp_path_factory):
    """ComfyUI in this process, CPU only, with core nodes, our pack and the test nodes loaded."""
    import folder_paths

    # A temp folder of the session's own, as the server's base directory has: the host tree (maybe a
    # user's ComfyUI) stays untouched, and nothing cached there by an earlier run (the sweep's
    # render cache) warms this one.
    folder_paths.set_temp_directory(str(tmp_path_factory.mktemp("host-temp")))
    for folder, paths in model_roots(tiny_models, user_models).items():
        for p in paths:
            folder_paths.add_model_folder_path(folder, str(p), is_default=True)
    import nodes

    run_async(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    for pack in (REPO, TESTS / "testnodes"):
        assert run_async(nodes.load_custom_node(str(pack))), f"{pack} failed to load in-process"
    return SimpleNamespace(nodes=nodes, folder_paths=folder_paths, models=tiny_models)


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory) -> Path:
    """The server's Hugging Face cache: it holds (a tiny random stand-in of) SimpleTuner's default CLIP
    evaluation model, as a SimpleTuner user's cache does; nothing else (the server runs offline)."""
    from tools.score_fixtures import seed_hub_cache

    root = tmp_path_factory.mktemp("hf-hub-cache")
    seed_hub_cache(root)
    return root


@pytest.fixture(scope="session")
def server(tiny_models, user_models, training_root, hub_cache, tmp_path_factory):
    """A real ComfyUI server on 127.0.0.1 with the pack, the test nodes and the tiny models."""
    base = tmp_path_factory.mktemp("comfy-base")
    cfg = prepare_base(base, model_roots(tiny_models, user_models), {"sd35wb_testnodes": TESTS / "testnodes"})
    srv = ComfyServer(base, cfg, env={"SD35WB_TRAINING_ROOTS": str(training_root), "HF_HUB_CACHE": str(hub_cache)}).start()
    yield srv
    srv.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(srv.log_path, ARTIFACTS / "server.log")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        # in CI the skip becomes a failure (pytest_runtest_makereport)
        pytest.skip("chromium not installed: `sudo apt-get install chromium` (`bash scripts/setup.sh --browser`, which `make test` runs, does it where apt is available)")
    return path
