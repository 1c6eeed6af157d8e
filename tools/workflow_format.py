"""Convert between ComfyUI's API format (what POST /prompt takes) and its UI format (what the
editor saves and loads), using the host's /object_info to know which inputs are widgets.

The example workflows are authored once, as API prompts in workflows/api/, with a note in
workflows/notes/; `python -m tools.make_workflows` writes the UI twins from them, and the
tests convert each UI workflow back and compare it with its twin.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sd35wb import hub

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NOTE_TYPE = "MarkdownNote"

# Public files a template may name: where each is published (repos carrying the same file, preferred
# first, and its path there) and the models/ folder it goes to. The SD3.5 files come from the hub
# client's table (sd35wb/hub.py, what fetch_missing fetches); the rest are the public originals the
# notes name: the SD3.5 VAE alone (the diffusers layout's vae/ folder of each SD3.5 repo; no
# published file is named sd3.5_vae.safetensors), SDXL base, NoobAI-XL V-Pred.
@dataclass(frozen=True)
class Published:
    name: str  # the file name in the models/ folder (the published file's own name)
    folder: str  # ComfyUI folder
    repo_path: str  # path inside the repo
    repos: tuple[str, ...]  # repos carrying the same file, preferred first


SD35_VAE = "diffusion_pytorch_model.safetensors"
PUBLISHED: dict[str, Published] = {
    **{f.name: Published(f.name, f.folder, f.repo_path, f.repos) for f in hub.KNOWN_FILES.values()},
    SD35_VAE: Published(SD35_VAE, "vae", "vae/diffusion_pytorch_model.safetensors", tuple(hub.REPOS.values())),
    "sd_xl_base_1.0.safetensors": Published("sd_xl_base_1.0.safetensors", "checkpoints", "sd_xl_base_1.0.safetensors",
                                            ("stabilityai/stable-diffusion-xl-base-1.0",)),
    "NoobAI-XL-Vpred-v1.0.safetensors": Published("NoobAI-XL-Vpred-v1.0.safetensors", "checkpoints",
                                                  "NoobAI-XL-Vpred-v1.0.safetensors", ("Laxhar/noobai-XL-Vpred-1.0",)),
}


def download_url(repo: str, path: str) -> str:
    return f"https://huggingface.co/{repo}/resolve/main/{path}"


def model_repo(prompt: dict) -> str | None:
    """The repo of the model a template loads (its published diffusion-model file, e.g. sd3.5_large ->
    the Large repo), or None when it loads none: the repo every other file is linked from when that
    repo carries it too, so a user who accepted only that model's licence can download them all."""
    for node in prompt.values():
        for v in node["inputs"].values():
            f = PUBLISHED.get(v) if isinstance(v, str) else None
            if f is not None and f.folder == "checkpoints" and len(f.repos) == 1:
                return f.repos[0]
    return None


def download_links(prompt: dict) -> dict[str, dict]:
    """{name: {name, url, directory}} for every published file the prompt names, each linked from the
    template's model repo where that repo carries it (else the file's preferred repo): what the
    frontend reads from node.properties.models to offer a missing file."""
    repo = model_repo(prompt)
    out = {}
    for node in prompt.values():
        for v in node["inputs"].values():
            f = PUBLISHED.get(v) if isinstance(v, str) else None
            if f is not None:
                src = repo if repo in f.repos else f.repos[0]
                out[f.name] = {"name": f.name, "url": download_url(src, f.repo_path), "directory": f.folder}
    return out


# Node modes as the frontend saves them: 0 always, 2 never, 4 bypass. A template marks a node that the
# first Queue leaves out with "_meta": {"mode": 4} in its API file (POST /prompt ignores _meta).
ALWAYS, NEVER, BYPASS = 0, 2, 4


def input_specs(info: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) of every declared input, in the order the frontend builds them."""
    out = []
    for section in ("required", "optional"):
        for name, spec in info.get("input", {}).get(section, {}).items():
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(typ, list):
                typ = "COMBO"
            out.append((name, typ, opts))
    return out


def _is_widget(typ: str, opts: dict) -> bool:
    return typ in WIDGET_TYPES and not opts.get("forceInput")


def _has_control(name: str, typ: str, opts: dict) -> bool:
    # The frontend adds a "control after generate" widget (its value is saved too) to such inputs.
    if typ == "INT":
        return bool(opts.get("control_after_generate", name in ("seed", "noise_seed")))
    return typ == "COMBO" and bool(opts.get("control_after_generate"))


def _depths(prompt: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(nid: str, stack=()) -> int:
        if nid in depth:
            return depth[nid]
        if nid in stack:
            raise ValueError(f"workflow has a cycle through node {nid}")
        ups = [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2 and str(v[0]) in prompt]
        depth[nid] = 1 + max((visit(str(u), (*stack, nid)) for u in ups), default=-1)
        return depth[nid]

    for nid in prompt:
        visit(nid)
    return depth


def api_to_ui(prompt: dict, object_info: dict, note: str | None = None, title: str | None = None) -> dict:
    """The UI-format workflow for an API prompt, laid out left to right by graph depth."""
    depth = _depths(prompt)
    rows: dict[int, int] = {}
    nodes, links = [], []
    if all(n.isdigit() for n in prompt):  # keep the API ids, so a note's "node 6" is node 6 in both files
        id_map = {nid: int(nid) for nid in prompt}
    else:
        id_map = {nid: i + 1 for i, nid in enumerate(sorted(prompt, key=lambda n: (depth[n], int(n) if n.isdigit() else n)))}
    out_links: dict[tuple[int, int], list[int]] = {}
    pending_inputs = {}
    links_for = download_links(prompt)
    for nid, node in prompt.items():
        cls = node["class_type"]
        if cls not in object_info:
            raise ValueError(f"node {nid}: unknown node type {cls!r} (not in /object_info)")
        info = object_info[cls]
        uid = id_map[nid]
        inputs, widgets = [], []
        for name, typ, opts in input_specs(info):
            val = node["inputs"].get(name)
            linked = isinstance(val, list) and len(val) == 2 and str(val[0]) in prompt
            if _is_widget(typ, opts):
                if linked:
                    widget_val = opts.get("default", None)
                    inputs.append({"name": name, "type": typ, "widget": {"name": name}, "link": None})
                    pending_inputs[(uid, len(inputs) - 1)] = val
                else:
                    widget_val = val if name in node["inputs"] else opts.get("default")
                widgets.append(widget_val)
                if _has_control(name, typ, opts):
                    widgets.append("fixed")
            else:
                inputs.append({"name": name, "type": typ, "link": None})
                if linked:
                    pending_inputs[(uid, len(inputs) - 1)] = val
        outputs = [{"name": n, "type": t, "links": []} for n, t in zip(info.get("output_name", info["output"]), info["output"])]
        d = depth[nid]
        y = rows.get(d, 0)
        rows[d] = y + 80 + 30 * (len(inputs) + len(widgets))
        meta = node.get("_meta", {})
        entry = {
            "id": uid, "type": cls, "pos": [60 + 380 * d, 60 + y], "size": [340, 60 + 26 * (len(inputs) + len(widgets))],
            "flags": {}, "order": 0, "mode": meta.get("mode", ALWAYS), "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": cls}, "widgets_values": widgets,
        }
        if meta.get("title"):
            entry["title"] = meta["title"]
        models = [links_for[v] for v in node["inputs"].values() if isinstance(v, str) and v in links_for]
        if models:
            entry["properties"]["models"] = [dict(m) for m in models]
        nodes.append(entry)
    by_id = {n["id"]: n for n in nodes}
    for (uid, slot), (src, src_slot) in sorted(pending_inputs.items()):
        link_id = len(links) + 1
        src_uid = id_map[str(src)]
        typ = by_id[src_uid]["outputs"][src_slot]["type"]
        links.append([link_id, src_uid, src_slot, uid, slot, typ])
        by_id[uid]["inputs"][slot]["link"] = link_id
        by_id[src_uid]["outputs"][src_slot]["links"].append(link_id)
        out_links.setdefault((src_uid, src_slot), []).append(link_id)
    order = sorted(nodes, key=lambda n: (n["pos"][0], n["pos"][1]))
    for i, n in enumerate(order):
        n["order"] = i
    if note:
        nid = max(by_id) + 1
        nodes.insert(0, {"id": nid, "type": NOTE_TYPE, "pos": [60, -360], "size": [720, 320], "flags": {}, "order": len(nodes),
                         "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [note],
                         "title": title or "About this workflow"})
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "sd35-workbench/" + (title or ""))),  # stable across runs
        "revision": 0, "last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links),
        "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 420]}},
        "version": 0.4,
    }


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API prompt a UI workflow queues (notes and other virtual nodes dropped)."""
    links = {lk[0]: lk for lk in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        cls = node["type"]
        if cls not in object_info:
            if cls in (NOTE_TYPE, "Note"):
                continue
            raise ValueError(f"node {node['id']}: unknown node type {cls!r}")
        values = list(node.get("widgets_values") or [])
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        inputs = {}
        for name, typ, opts in input_specs(object_info[cls]):
            if _is_widget(typ, opts):
                val = values.pop(0) if values else opts.get("default")
                if _has_control(name, typ, opts) and values:
                    values.pop(0)
                if val is not None and name not in linked:
                    inputs[name] = val
            if name in linked:
                lk = linked[name]
                inputs[name] = [str(lk[1]), lk[2]]
        prompt[str(node["id"])] = {"class_type": cls, "inputs": inputs}
        if node.get("mode", ALWAYS) != ALWAYS:  # kept, so a twin's bypassed nodes compare too
            prompt[str(node["id"])]["_meta"] = {"mode": node["mode"]}
    return prompt


def first_queue(prompt: dict) -> dict:
    """What the frontend queues from a template as shipped: the nodes its file marks bypassed or
    never ("_meta" mode 4 / 2) left out. A template bypasses whole stages (a node and everything that
    reads it), so nothing left may read a node that was left out."""
    off = {nid for nid, n in prompt.items() if n.get("_meta", {}).get("mode", ALWAYS) in (NEVER, BYPASS)}
    out = {nid: n for nid, n in prompt.items() if nid not in off}
    for nid, n in out.items():
        for k, v in n["inputs"].items():
            if isinstance(v, list) and len(v) == 2 and str(v[0]) in off:
                raise ValueError(f"node {nid} {n['class_type']}.{k} reads node {v[0]}, which the first Queue leaves out: "
                                 "bypass it too")
    return out


def same_graph(a: dict, b: dict) -> list[str]:
    """Differences between two API prompts up to node renumbering (empty when they match)."""
    def canon(p: dict) -> dict:
        # Name each node by its class and its upstream structure, so ids don't matter.
        memo: dict[str, str] = {}

        def key(nid: str) -> str:
            if nid not in memo:
                memo[nid] = "?"
                n = p[nid]
                parts = []
                for k, v in sorted(n["inputs"].items()):
                    if isinstance(v, list) and len(v) == 2 and str(v[0]) in p:
                        parts.append(f"{k}=<{key(str(v[0]))}>[{v[1]}]")
                    else:  # the editor saves 3.0 as 3: compare numbers by value
                        num = isinstance(v, (int, float)) and not isinstance(v, bool)
                        parts.append(f"{k}={float(v) if num else v!r}")
                memo[nid] = f"{n['class_type']}({', '.join(parts)})"
            return memo[nid]

        return {key(n): n for n in p}

    ca, cb = canon(a), canon(b)
    return [f"only in first: {k}" for k in ca.keys() - cb.keys()] + [f"only in second: {k}" for k in cb.keys() - ca.keys()]


def fill_defaults(prompt: dict, object_info: dict) -> dict:
    """A copy of ``prompt`` with every widget input the node declares but the prompt omits set to its
    default, so prompts written with and without defaults compare equal."""
    out = {}
    for nid, node in prompt.items():
        inputs = dict(node["inputs"])
        for name, typ, opts in input_specs(object_info.get(node["class_type"], {})):
            if name not in inputs and _is_widget(typ, opts) and opts.get("default") is not None:
                inputs[name] = opts["default"]
        out[nid] = {"class_type": node["class_type"], "inputs": inputs}
    return out
