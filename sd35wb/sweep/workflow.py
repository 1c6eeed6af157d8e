"""The workflow a CLI sweep queues: which of its inputs the sweep changes (the loader's model, the
LoRA loader's file and strength, the positive prompt, the sampler's seed, any ``--axis``), checked
against the server's ``/object_info`` before anything is queued."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from ..prompt_graph import MODEL_LOADERS, loaded_file
from .plan import Axis, Cell, InputSpec, coerce, fingerprint, parse_axis_spec

# Loader class -> the input naming its diffusion model (our SD3.5 loader takes checkpoints too): the
# diffusion-model loaders of the one loader table.
LOADERS = {cls: key for cls, (key, folders) in MODEL_LOADERS.items() if "diffusion_models" in folders}
LORA_LOADERS = ("LoraLoaderModelOnly", "LoraLoader")
SEED_INPUTS = ("seed", "noise_seed")


def load_workflow(path: str | os.PathLike) -> dict:
    doc = json.loads(Path(path).read_text())
    if isinstance(doc, dict) and isinstance(doc.get("prompt"), dict):
        doc = doc["prompt"]
    if not isinstance(doc, dict) or "nodes" in doc and isinstance(doc.get("nodes"), list):
        raise ValueError(f"--workflow: {path} is a UI workflow; save it with 'Export (API)' instead")
    if not all(isinstance(v, dict) and "class_type" in v for v in doc.values()):
        raise ValueError(f"--workflow: {path} is not an API-format prompt (node id -> {{class_type, inputs}})")
    return doc


def find_loader(prompt: dict, node_id: str | None = None) -> tuple[str, str]:
    """(node id, input name) of the diffusion-model loader whose model the sweep swaps."""
    def key_of(node: dict) -> str | None:
        key = LOADERS.get(node.get("class_type"), "unet_name")
        value = node.get("inputs", {}).get(key)
        return key if isinstance(value, str) else None  # a [node, output] link is not a file name

    if node_id is not None:
        node = prompt.get(str(node_id))
        if node is None:
            raise ValueError(f"--loader-node: no node {node_id!r} in the workflow (ids: {', '.join(sorted(prompt))})")
        key = key_of(node)
        if key is None:
            raise ValueError(f"--loader-node: node {node_id} ({node['class_type']}) has no model-name input "
                             f"({', '.join(sorted(set(LOADERS.values())))})")
        return str(node_id), key
    found = [(nid, key_of(node)) for nid, node in prompt.items() if key_of(node)]
    if not found:
        raise ValueError("--workflow: no diffusion-model loader (UNETLoader, SD35WB_SD35Loader, or a unet_name "
                         "input) found; pass --loader-node ID")
    if len(found) > 1:
        raise ValueError(f"--workflow: several loaders ({', '.join(n for n, _ in found)}); pick one with --loader-node")
    return found[0]


def find_lora_loader(prompt: dict, node_id: str | None = None) -> str:
    """Id of the LoraLoaderModelOnly / LoraLoader whose ``lora_name`` a LoRA sweep swaps."""
    if node_id is not None:
        node = prompt.get(str(node_id))
        if node is None or not isinstance(node.get("inputs", {}).get("lora_name"), str):
            raise ValueError(f"--lora-node: node {node_id!r} is not a LoRA loader with a lora_name input")
        return str(node_id)
    found = [nid for nid, n in prompt.items() if n.get("class_type") in LORA_LOADERS
             and isinstance(n.get("inputs", {}).get("lora_name"), str)]
    if not found:
        raise ValueError("--loras: the workflow has no LoraLoaderModelOnly or LoraLoader; add one between the model "
                         "loader and the sampler (any LoRA file), export (API) again, or pass --lora-node ID")
    if len(found) > 1:
        raise ValueError(f"--loras: several LoRA loaders ({', '.join(found)}); pick the run's with --lora-node ID")
    return found[0]


def find_base_model(prompt: dict, lora_node: str) -> str | None:
    """The diffusion-model file a LoRA loader patches (its ``model`` input walked back to the loader)."""
    try:
        src = loaded_file(prompt, lora_node)
    except ValueError:
        return None
    return src.name if "diffusion_models" in src.folders else None


def find_seed(prompt: dict, node_id: str | None = None) -> tuple[str, str]:
    """(node id, input name) of the sampler's seed (``seed`` or ``noise_seed``)."""
    def key_of(node: dict) -> str | None:
        return next((k for k in SEED_INPUTS if isinstance(node.get("inputs", {}).get(k), int)), None)

    if node_id is not None:
        node = prompt.get(str(node_id))
        if node is None or key_of(node) is None:
            raise ValueError(f"--seed-node: node {node_id!r} has no seed / noise_seed number input")
        return str(node_id), key_of(node)
    found = [(nid, key_of(n)) for nid, n in prompt.items() if key_of(n)]
    if len(found) > 1:  # other nodes may take a seed too (noise generators, test nodes): prefer the sampler
        found = [(nid, k) for nid, k in found if any(isinstance(prompt[nid]["inputs"].get(i), list)
                                                     for i in ("model", "positive"))] or found
    if len(found) != 1:
        raise ValueError(f"--seeds: {'no' if not found else 'several'} sampler seed inputs in the workflow"
                         f"{' (' + ', '.join(n for n, _ in found) + ')' if found else ''}; pick one with --seed-node ID")
    return found[0]


def find_prompt(prompt: dict, node_id: str | None = None) -> tuple[str, str]:
    """(node id, "text") of the positive prompt: the text node feeding the sampler's ``positive``."""
    if node_id is not None:
        node = prompt.get(str(node_id))
        if node is None or not isinstance(node.get("inputs", {}).get("text"), str):
            raise ValueError(f"--prompt-node: node {node_id!r} has no text input")
        return str(node_id), "text"
    found = []
    for node in prompt.values():
        link = node.get("inputs", {}).get("positive")
        if isinstance(link, list) and len(link) == 2 and isinstance(prompt.get(str(link[0]), {}).get("inputs", {}).get("text"), str):
            if str(link[0]) not in found:
                found.append(str(link[0]))
    if len(found) != 1:
        raise ValueError(f"--prompts: {'no' if not found else 'several'} text nodes feed a sampler's positive input"
                         f"{' (' + ', '.join(found) + ')' if found else ''}; pick one with --prompt-node ID")
    return found[0], "text"


def axis_target(prompt: dict, ref: str, what: str) -> tuple[str, str]:
    """'3.cfg' or 'KSampler.cfg' -> (node id, input name); a class type must name one node."""
    node_ref, dot, inp = ref.rpartition(".")
    if not dot or not node_ref or not inp:
        raise ValueError(f"{what}: {ref!r} is not NODE.INPUT; e.g. --axis KSampler.cfg=3.5,4.5 or --axis 3.steps=28,40")
    if node_ref in prompt:
        nid = node_ref
    else:
        ids = [n for n, node in prompt.items() if node.get("class_type") == node_ref]
        if not ids:
            raise ValueError(f"{what}: no node {node_ref!r} in the workflow (neither an id nor a class type; ids: "
                             f"{', '.join(sorted(prompt, key=_id_order))})")
        if len(ids) > 1:
            raise ValueError(f"{what}: {len(ids)} {node_ref} nodes ({', '.join(sorted(ids, key=_id_order))}); name "
                             f"one by id, e.g. --axis {ids[0]}.{inp}=...")
        nid = ids[0]
    if isinstance(prompt[nid].get("inputs", {}).get(inp), list):
        raise ValueError(f"{what}: {nid}.{inp} ({prompt[nid]['class_type']}) is fed by a link, not a value; sweep the "
                         "node it comes from, or set the value in the workflow")
    return nid, inp


def _id_order(nid: str):
    return (0, int(nid)) if nid.isdigit() else (1, nid)


def input_spec(object_info: dict, class_type: str, inp: str, what: str) -> InputSpec:
    info = object_info.get(class_type)
    if info is None:
        raise ValueError(f"{what}: the server has no node type {class_type!r}; is its pack installed?")
    inputs = info.get("input", {})
    spec = inputs.get("required", {}).get(inp) or inputs.get("optional", {}).get(inp)
    if spec is None:
        names = sorted({*inputs.get("required", {}), *inputs.get("optional", {})})
        raise ValueError(f"{what}: {class_type} has no input {inp!r} (its inputs: {', '.join(names)})")
    return InputSpec.from_object_info(spec)


def resolve_axes(prompt: dict, specs: list[str], object_info_of, taken: list[tuple[str, str]]) -> list[Axis]:
    """``--axis NODE.INPUT=v1,v2`` list -> typed :class:`Axis` list named 'id.input'.
    ``object_info_of(class_type)`` returns the server's ``/object_info`` entry; ``taken`` are the
    inputs the sweep already changes."""
    axes: list[Axis] = []
    for text in specs:
        what = f"--axis {text.strip()}"
        ref, raw = parse_axis_spec(text, what)
        nid, inp = axis_target(prompt, ref, what)
        if (nid, inp) in taken:
            raise ValueError(f"{what}: {nid}.{inp} is what the sweep already changes (model, LoRA, prompt or seed); "
                             "use --models / --loras / --strengths / --prompts / --seeds for it")
        if any(a.name == f"{nid}.{inp}" for a in axes):
            raise ValueError(f"{what}: {nid}.{inp} is given twice; put all its values in one --axis")
        ct = prompt[nid]["class_type"]
        spec = input_spec(object_info_of(ct), ct, inp, what)
        values = tuple(coerce(v, spec, f"{what} ({ct} {inp})") for v in raw)
        axes.append(Axis(f"{nid}.{inp}", tuple(dict.fromkeys(values))))
    return axes


def workflow_signature(prompt: dict, blank: list[tuple[str, str]], output_node: str | None) -> str:
    """What every image of the sweep shares: the workflow without the inputs the sweep changes."""
    p = copy.deepcopy(prompt)
    for nid, key in blank:
        p[nid]["inputs"].pop(key, None)
    for node in p.values():
        node.pop("_meta", None)
        if node.get("class_type") in ("SaveImage", "PreviewImage"):
            node["inputs"].pop("filename_prefix", None)
    return fingerprint(p, output_node)


class Edits:
    """Where a cell's values go in the workflow."""

    def __init__(self, loader, lora, text, seed):
        self.loader, self.lora, self.text, self.seed = loader, lora, text, seed

    def changed(self, prompt: dict, axes: list[Axis]) -> list[tuple[str, str]]:
        out = [x for x in (self.text, self.seed) if x]
        if self.lora:
            out += [(self.lora, "lora_name"), (self.lora, "strength_model")]
            if "strength_clip" in prompt[self.lora]["inputs"]:
                out.append((self.lora, "strength_clip"))
        else:
            out.append(self.loader)
        return out + [tuple(a.name.rsplit(".", 1)) for a in axes]

    def apply(self, prompt: dict, cell: Cell) -> dict:
        p = copy.deepcopy(prompt)
        if self.lora:
            node = p[self.lora]["inputs"]
            node["lora_name"] = cell.model
            if cell.strength is not None:
                node["strength_model"] = cell.strength
                if "strength_clip" in node:
                    node["strength_clip"] = cell.strength
        else:
            p[self.loader[0]]["inputs"][self.loader[1]] = cell.model
        if self.text:
            p[self.text[0]]["inputs"]["text"] = cell.prompt
        if self.seed:
            p[self.seed[0]]["inputs"][self.seed[1]] = cell.seed
        for name, value in cell.axes:
            nid, inp = name.rsplit(".", 1)
            p[nid]["inputs"][inp] = value
        return p
