"""GET /sd35wb/info: the pack's version and node ids; GET /sd35wb/overrides: which inputs override
which (sd35wb/overrides.py), so the frontend greys out the widgets the reports call overridden."""

from __future__ import annotations

import re
from pathlib import Path

from ..sd35wb import overrides

NODES: list = []  # routes only

_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def pack_version() -> str:
    try:
        m = re.search(r'^version\s*=\s*"([^"]+)"', _PYPROJECT.read_text(), re.M)
    except OSError:
        return "unknown"
    return m.group(1) if m else "unknown"


def register_routes(server) -> None:
    from aiohttp import web

    @server.routes.get("/sd35wb/info")
    async def info(request):
        import nodes as host_nodes

        ours = sorted(k for k in host_nodes.NODE_CLASS_MAPPINGS if k.startswith("SD35WB_"))
        return web.json_response({"name": "sd35-workbench", "version": pack_version(), "nodes": ours})

    @server.routes.get("/sd35wb/overrides")
    async def overrides_table(request):
        return web.json_response(overrides.payload())
