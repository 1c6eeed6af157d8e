"""Write node_list.json (ComfyUI-Manager's list for packs whose NODE_CLASS_MAPPINGS is not a literal).

The Manager's missing-node scanner reads only literal ``NODE_CLASS_MAPPINGS`` dicts, or this file:
``{"<node id>": "<description>", ...}``. This V3 pack registers its nodes at run time, so the list
is taken from what a real server serves:

    .tools/bin/python -m tools.node_list        # rewrites node_list.json; tests/api/test_node_list.py checks it
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tools.comfy_server import REPO, ComfyServer, prepare_base

PATH = REPO / "node_list.json"
PREFIX = "SD35WB_"


def from_object_info(object_info: dict) -> dict[str, str]:
    return {k: v.get("display_name") or k for k, v in sorted(object_info.items()) if k.startswith(PREFIX)}


def render(entries: dict[str, str]) -> str:
    return json.dumps(entries, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sd35wb-nodelist-") as d:
        base = Path(d)
        srv = ComfyServer(base, prepare_base(base, {})).start()
        try:
            entries = from_object_info(srv.get_json("/object_info"))
        finally:
            srv.stop()
    PATH.write_text(render(entries))
    print(f"{PATH.name}: {len(entries)} nodes")


if __name__ == "__main__":
    main()
