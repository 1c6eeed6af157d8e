"""Which file a node's model came from, read off an API-format prompt (node id -> class_type, inputs).

A node that reads the loaded file's header (the ZTSNR patch's ``detect_from``, the sweep's base
model) walks its ``model`` input upstream: through LoRA loaders, sampling patches and any other
node that passes a ``model`` on, to the loader that named the file."""

from __future__ import annotations

from dataclasses import dataclass

# Loader class -> (the input naming its file, the model folders that name is looked up in).
MODEL_LOADERS = {
    "CheckpointLoaderSimple": ("ckpt_name", ("checkpoints",)),
    "CheckpointLoader": ("ckpt_name", ("checkpoints",)),
    "UNETLoader": ("unet_name", ("diffusion_models",)),
    "SD35WB_SD35Loader": ("model_name", ("checkpoints", "diffusion_models")),  # ours takes either
}
# Any other node with one of these string inputs is read as a loader of that folder (peer packs' loaders).
FILE_INPUTS = {"ckpt_name": ("checkpoints",), "unet_name": ("diffusion_models",)}
MAX_HOPS = 64  # a longer chain is a cycle or a generated graph: stop and say so


@dataclass(frozen=True)
class LoadedFile:
    node_id: str
    class_type: str
    name: str
    folders: tuple[str, ...]


def _file_of(node: dict) -> tuple[str, tuple[str, ...]] | None:
    inputs = node.get("inputs", {})
    known = MODEL_LOADERS.get(node.get("class_type"))
    if known:
        return known
    return next(((k, f) for k, f in FILE_INPUTS.items() if k in inputs), None)


def loaded_file(prompt: dict, node_id: str, input_name: str = "model") -> LoadedFile:
    """The loader upstream of ``node_id``'s ``input_name``; ValueError saying where the walk stopped."""
    here = prompt.get(str(node_id))
    if not isinstance(here, dict):
        raise ValueError(f"node {node_id} is not in the prompt")
    link = here.get("inputs", {}).get(input_name)
    seen: list[str] = []
    for _ in range(MAX_HOPS):
        if not (isinstance(link, list) and len(link) == 2):
            raise ValueError(f"node {seen[-1] if seen else node_id}: its {input_name!r} input is not a link")
        src_id = str(link[0])
        node = prompt.get(src_id)
        if not isinstance(node, dict):
            raise ValueError(f"node {src_id} (linked into {input_name!r}) is not in the prompt")
        seen.append(src_id)
        cls = str(node.get("class_type"))
        found = _file_of(node)
        if found:
            key, folders = found
            name = node.get("inputs", {}).get(key)
            if not isinstance(name, str):
                raise ValueError(f"node {src_id} ({cls}): its {key!r} comes from another node, not a file picked on "
                                 "it, so the file cannot be read before the run")
            return LoadedFile(src_id, cls, name, folders)
        link = node.get("inputs", {}).get("model")
        if link is None:
            raise ValueError(f"node {src_id} ({cls}) makes the model but is not a loader this reads "
                             f"({', '.join(MODEL_LOADERS)}, or a node with a {' / '.join(FILE_INPUTS)} input)")
        input_name = "model"
    raise ValueError(f"more than {MAX_HOPS} nodes between the model and its loader ({' <- '.join(seen[:5])} ...)")
