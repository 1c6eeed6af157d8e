"""safetensors headers, completeness checks and shard merging, without torch.

The safetensors format (https://github.com/huggingface/safetensors#format): an 8-byte little-endian
header length N, N bytes of JSON (``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}``, padded with spaces), then the data section; offsets are relative to
the data section's start. Because the layout is that simple, a merge never needs to decode a
tensor: it writes a new header and copies each tensor's byte range from its shard in bounded
chunks, so peak memory is one copy buffer, not the model (nor even the largest tensor).

diffusers' sharded layout (``save_pretrained(max_shard_size=...)``; SimpleTuner's EMA):
``diffusion_pytorch_model-0000k-of-0000n.safetensors`` plus
``diffusion_pytorch_model.safetensors.index.json`` = ``{"metadata": {...}, "weight_map": {name: shard}}``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from . import safetensors_header as st

COPY_CHUNK = 8 * 1024 * 1024

# One header reader for the whole pack (sd35wb/safetensors_header.py); re-exported for callers here.
Header, SafetensorsError, read_header = st.Header, st.SafetensorsError, st.read_header
is_complete_safetensors = st.is_complete


# ---------------------------------------------------------------------------------------------
# Sharded checkpoints

def find_index(folder: str | os.PathLike) -> Path | None:
    """The ``*.safetensors.index.json`` of a diffusers folder, if the weights are sharded."""
    folder = Path(folder)
    preferred = folder / "diffusion_pytorch_model.safetensors.index.json"
    if preferred.is_file():
        return preferred
    found = sorted(folder.glob("*.safetensors.index.json"))
    return found[0] if found else None


def read_index(index_path: str | os.PathLike) -> dict[str, str]:
    """The weight map (tensor name -> shard file name) of an index, checked for shape."""
    index_path = Path(index_path)
    try:
        doc = json.loads(index_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{index_path}: cannot read the shard index ({e})") from e
    wm = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise SafetensorsError(f"{index_path}: no weight_map in the shard index")
    for name, shard in wm.items():
        if not isinstance(shard, str) or os.path.basename(shard) != shard or not shard.endswith(".safetensors"):
            raise SafetensorsError(f"{index_path}: tensor {name!r} points at {shard!r}, "
                                   "which is not a .safetensors file beside the index")
    return wm


def shard_files(index_path: str | os.PathLike) -> list[Path]:
    index_path = Path(index_path)
    return [index_path.parent / s for s in sorted(set(read_index(index_path).values()))]


def shard_signature(index_path: str | os.PathLike) -> list:
    """(name, size, mtime_ns) of the index and every shard: changes when any of them does."""
    index_path = Path(index_path)
    out = []
    for p in [index_path, *shard_files(index_path)]:
        st = p.stat()
        out.append([p.name, st.st_size, st.st_mtime_ns])
    return out


@dataclass
class MergeResult:
    path: Path
    tensors: int
    bytes_written: int
    largest_tensor: int
    copy_buffer: int


def _plan_merge(index_path: Path):
    """Check every shard against the index; return [(name, header entry, shard Header)]."""
    wm = read_index(index_path)
    headers: dict[str, Header] = {}
    for shard in sorted(set(wm.values())):
        p = index_path.parent / shard
        if not p.is_file():
            raise SafetensorsError(f"{index_path}: shard {shard} is missing (deleted, or the save is still running)")
        headers[shard] = read_header(p)  # raises on a truncated shard
    seen: dict[str, str] = {}
    for shard, h in headers.items():
        for name in h.tensors:
            if name in seen:
                raise SafetensorsError(f"{index_path}: tensor {name!r} is stored twice ({seen[name]} and {shard})")
            seen[name] = shard
            if name not in wm:
                raise SafetensorsError(f"{index_path}: shard {shard} holds {name!r}, which the index does not list")
            if wm[name] != shard:
                raise SafetensorsError(f"{index_path}: index puts {name!r} in {wm[name]} but it is in {shard}")
    missing = sorted(set(wm) - set(seen))
    if missing:
        raise SafetensorsError(f"{index_path}: {len(missing)} tensors listed in the index are in no shard "
                               f"(first: {missing[0]!r})")
    items = [(name, headers[wm[name]].tensors[name], headers[wm[name]]) for name in wm]
    # Widest dtypes first, then by name, like the safetensors writer: every tensor stays aligned.
    items.sort(key=lambda it: (-st.DTYPE_BITS[it[1]["dtype"]], it[0]))
    return items, headers


def merge_shards(index_path: str | os.PathLike, dest: str | os.PathLike, chunk: int = COPY_CHUNK,
                 work: str | os.PathLike | None = None) -> MergeResult:
    """Merge a sharded safetensors checkpoint into one file at ``dest``.

    Tensor bytes are copied range by range from the shards (no decoding, ``chunk`` bytes at a
    time), into ``dest`` + a temporary suffix; the result is re-read and checked against the
    index (every tensor exactly once, same dtype, shape and byte size), then renamed into place.
    On any error the temporary file is removed and ``dest`` is left as it was. ``work`` names the
    temporary file (the linker records it before the merge starts, so a kill leaves nothing
    unaccounted for); by default a name unique to this process and call."""
    index_path, dest = Path(index_path), Path(dest)
    items, headers = _plan_merge(index_path)
    header: dict = {}
    offset = 0
    for name, info, _h in items:
        size = info["data_offsets"][1] - info["data_offsets"][0]
        header[name] = {"dtype": info["dtype"], "shape": list(info["shape"]), "data_offsets": [offset, offset + size]}
        offset += size
    meta = {"format": "pt", "sd35wb_merged_from": index_path.name}
    first_meta = next(iter(headers.values())).metadata
    if isinstance(first_meta, dict):
        meta = {**{k: v for k, v in first_meta.items() if isinstance(v, str)}, **meta}
    blob = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % 8)  # data section starts 8-byte aligned
    tmp = Path(work) if work is not None else dest.with_name(f".{dest.name}.sd35wb-merging-{os.getpid()}-{os.urandom(4).hex()}")
    largest = 0
    try:
        with open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(blob)))
            out.write(blob)
            handles: dict[Path, object] = {}
            try:
                for name, info, h in items:
                    src = handles.get(h.path)
                    if src is None:
                        src = handles[h.path] = open(h.path, "rb")
                    begin, stop = info["data_offsets"]
                    largest = max(largest, stop - begin)
                    src.seek(h.data_start + begin)
                    left = stop - begin
                    while left:
                        buf = src.read(min(chunk, left))
                        if not buf:
                            raise SafetensorsError(f"{h.path}: ended while copying {name!r} (truncated while merging?)")
                        out.write(buf)
                        left -= len(buf)
            finally:
                for fh in handles.values():
                    fh.close()
            out.flush()
            os.fsync(out.fileno())
        merged = read_header(tmp)
        wm = read_index(index_path)
        if set(merged.tensors) != set(wm):
            raise SafetensorsError(f"{tmp}: merged tensor set differs from the index")
        for name, info, _h in items:
            got = merged.tensors[name]
            if got["dtype"] != info["dtype"] or list(got["shape"]) != list(info["shape"]):
                raise SafetensorsError(f"{tmp}: {name!r} came out as {got['dtype']} {got['shape']}")
        if tmp != dest:
            os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return MergeResult(dest, len(items), merged.file_size, largest, chunk)
