"""GET /sd35wb/info: the pack's version and node ids, for the frontend extension and for scripts."""

from __future__ import annotations

import re
from pathlib import Path

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
