"""Collects the node list of every capability module into one V3 extension.

A capability whose module cannot be imported (an optional dependency missing, say) is left
out with one log line; the rest of the pack still loads and the host's start-up never fails.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

from comfy_api.v0_0_2 import ComfyExtension, io
from typing_extensions import override

LOG = logging.getLogger("sd35-workbench")

# One module per capability (every public module in this folder); each exposes NODES (a list of
# io.ComfyNode classes) and may expose register_routes(server) for HTTP routes.
CAPABILITIES: tuple[str, ...] = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def _load_capabilities() -> tuple[list[type[io.ComfyNode]], list]:
    nodes: list[type[io.ComfyNode]] = []
    modules = []
    for name in CAPABILITIES:
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except Exception as e:  # noqa: BLE001 - one broken capability must not take the pack down
            LOG.warning("[sd35-workbench] %s nodes disabled: %s: %s", name, type(e).__name__, e)
            continue
        nodes.extend(mod.NODES)
        modules.append(mod)
    return nodes, modules


def _register_routes(modules) -> None:
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None:  # in-process use without a server
        return
    for mod in modules:
        register = getattr(mod, "register_routes", None)
        if register is not None:
            register(server)


class WorkbenchExtension(ComfyExtension):
    def __init__(self) -> None:
        self._nodes, modules = _load_capabilities()
        _register_routes(modules)

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        LOG.info("[sd35-workbench] loaded %d nodes", len(self._nodes))
        return list(self._nodes)


async def comfy_entrypoint() -> WorkbenchExtension:
    return WorkbenchExtension()
