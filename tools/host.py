"""The one host bootstrap for every entry point that runs ComfyUI code in this process: ``make demo``
(tools/demo.py), bench/*.py, tools/make_workflows.py, tools/make_gallery.py and tests/conftest.py.

    from tools import host
    host.bootstrap()        # before the first `import comfy...` / `import nodes`

Where the host lives comes from COMFYUI_DIR / COMFYUI_PYTHON in the environment, else from the
``.host.env`` that scripts/setup.sh writes. Only the standard library is used here, so a caller can
import it before anything else.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NO_HOST = "No ComfyUI host: run `make setup` (or set COMFYUI_DIR=/path/to/ComfyUI [COMFYUI_PYTHON=...])"


def host_env(required: bool = True) -> dict[str, str]:
    """COMFYUI_DIR / COMFYUI_PYTHON from the environment, else from .host.env (scripts/setup.sh).

    With ``required=False`` an empty dict means no host is set up."""
    env = {}
    f = REPO / ".host.env"
    if f.exists():
        for line in f.read_text().splitlines():
            k, _, v = line.partition("=")
            env[k] = shlex.split(v)[0] if v else ""
    for k in ("COMFYUI_DIR", "COMFYUI_PYTHON"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    if not env.get("COMFYUI_DIR") or not (Path(env["COMFYUI_DIR"]) / "main.py").is_file():
        if required:
            raise RuntimeError(NO_HOST)
        return {}
    env.setdefault("COMFYUI_PYTHON", sys.executable)
    return env


def use_host_python() -> None:
    """Re-run this command under the host's python (COMFYUI_PYTHON) when started with another one,
    e.g. `python3 -m tools.demo`: torch, playwright and the test tools live in the host's venv."""
    env = host_env()
    want = Path(env["COMFYUI_PYTHON"]).parent.parent.resolve()
    tools = env.get("SD35WB_TOOLS", "")  # the test-tools layer scripts/setup.sh puts over the host's python
    layered = not tools or any(Path(p or ".").resolve() == Path(tools).resolve() for p in sys.path)
    if (Path(sys.prefix).resolve() != want or not layered) and not os.environ.get("SD35WB_REEXEC"):
        os.environ["SD35WB_REEXEC"] = "1"  # once: never loop if the paths disagree for another reason
        if tools:
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [tools, os.environ.get("PYTHONPATH")]))
        os.execv(env["COMFYUI_PYTHON"], [env["COMFYUI_PYTHON"], *sys.orig_argv[1:]])


def bootstrap(cpu: bool = True) -> dict[str, str]:
    """Make the host importable in this process, CPU only unless ``cpu=False`` (a bench's CUDA branch);
    idempotent. Returns host_env().

    The host's top-level modules (nodes, folder_paths, server, ...) must win over the pack's own
    `nodes/` package, so COMFYUI_DIR goes first on sys.path and the repo (for `sd35wb`, `tools`) last.
    ComfyUI reads its CLI args when comfy.model_management is first imported: parsing is turned off
    (argv belongs to pytest / the script) and --cpu set before that happens."""
    env = host_env()
    comfy_dir = Path(env["COMFYUI_DIR"]).resolve()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in (comfy_dir, REPO)]
    sys.path.insert(0, str(comfy_dir))
    sys.path.append(str(REPO))
    if "comfy.model_management" in sys.modules:
        import comfy.cli_args

        if cpu and not comfy.cli_args.args.cpu:
            raise RuntimeError("comfy.model_management was imported before tools.host.bootstrap(): call it first")
        return env
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    return env


def load_pack(module: str):
    """Import the pack as a package (its node modules use relative imports) and return one of its
    modules, e.g. ``load_pack("nodes.slg")``; for bench scripts, after :func:`bootstrap`."""
    import importlib
    import importlib.util

    if "sd35wb_pack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("sd35wb_pack", REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["sd35wb_pack"] = mod
        spec.loader.exec_module(mod)
    return importlib.import_module(f"sd35wb_pack.{module}")
