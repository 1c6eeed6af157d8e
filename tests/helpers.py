"""Small helpers shared by host-tier tests: call a node (V1 or V3) the way the executor would."""

from __future__ import annotations


def call(nodes_module, node_id: str, **inputs):
    """Run one node's function with these inputs and return its outputs as a tuple."""
    cls = nodes_module.NODE_CLASS_MAPPINGS[node_id]
    if hasattr(cls, "define_schema"):  # V3
        out = cls.execute(**inputs)
        return tuple(out.result) if out.result is not None else ()
    return tuple(getattr(cls(), cls.FUNCTION)(**inputs))
