"""node_list.json: what ComfyUI-Manager's missing-node scanner reads for a pack whose NODE_CLASS_MAPPINGS
is not a literal dict (this V3 pack registers its nodes at run time). Without it "Install Missing
Custom Nodes" cannot find the pack from a workflow using its nodes, so it must list exactly the ids
the host serves. Regenerate with `python -m tools.node_list`."""

from __future__ import annotations

import ast
import json

from tools import node_list
from tools.comfy_server import REPO


def test_node_list_json_equals_the_node_ids_the_host_serves(server):
    listed = json.loads(node_list.PATH.read_text())
    served = node_list.from_object_info(server.get_json("/object_info"))
    assert set(listed) == set(served), ("node_list.json is out of date: run `.tools/bin/python -m tools.node_list`; "
                                        f"missing {sorted(set(served) - set(listed))}, stale {sorted(set(listed) - set(served))}")
    # The Manager's format: {"<node id>": "<description>"}, every description a non-empty string.
    assert all(isinstance(v, str) and v.strip() for v in listed.values())


def test_the_manager_scanner_finds_no_literal_mappings_here():
    """Why the file is needed: no .py of the pack assigns a literal NODE_CLASS_MAPPINGS dict."""
    for py in [REPO / "__init__.py", *(REPO / "nodes").glob("*.py")]:
        tree = ast.parse(py.read_text())
        names = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert "NODE_CLASS_MAPPINGS" not in names, py
