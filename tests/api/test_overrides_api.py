"""API tier: GET /sd35wb/overrides, the one table of which input overrides which (the frontend greys
out widgets from it; the nodes' reports warn from it), matches the inputs the host really serves."""

from __future__ import annotations


def _inputs(spec: dict) -> dict:
    return {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}


def _options(entry) -> list | None:
    if isinstance(entry[0], list):
        return entry[0]
    if entry[0] == "COMBO":
        return entry[1].get("options")
    return None


def test_every_rule_names_real_inputs_and_valid_values(server):
    data = server.get_json("/sd35wb/overrides")
    same = server.get_json("/api/sd35wb/overrides")
    assert data == same and data["version"] == 1
    object_info = server.get_json("/object_info")
    assert {"SD35WB_SLGSampler", "SD35WB_SLGGuider", "SD35WB_CheckpointSweep", "SD35WB_LCMLoraSampler"} <= set(data["nodes"])
    for node_id, rules in data["nodes"].items():
        assert node_id in object_info, f"{node_id}: no such node on this host"
        inputs = _inputs(object_info[node_id])
        for rule in rules:
            assert rule["effect"] in ("overridden", "ignored") and rule["label"], rule
            when = rule["when"]
            assert set(when) <= {"connected", "disconnected", "values", "nonempty", "empty", "named_in"}, rule
            names = [*rule["inputs"], rule["by"], *when.get("connected", []), *when.get("disconnected", []),
                     *when.get("values", {}), *when.get("nonempty", []), *when.get("empty", [])]
            names += [when["named_in"]] if "named_in" in when else []
            missing = [n for n in names if n not in inputs]
            assert not missing, f"{node_id}: the table names inputs the node does not have: {missing}"
            for widget, allowed in when.get("values", {}).items():
                opts = _options(inputs[widget])
                if opts is not None:
                    assert set(allowed) <= set(opts), f"{node_id}.{widget}: {set(allowed) - set(opts)} not offered"
                else:
                    kind = inputs[widget][0]
                    assert all(isinstance(v, bool) if kind == "BOOLEAN" else isinstance(v, (int, float))
                               for v in allowed), (node_id, widget, allowed)
