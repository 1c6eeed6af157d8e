"""The pack's one safetensors header reader: strict, torch-free, used by every file check.

Format (https://github.com/huggingface/safetensors#format): an 8-byte little-endian header length
N, N bytes of UTF-8 JSON (``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}``), then the data section; offsets are relative to its start.

Checked the way the reference implementation (safetensors' ``Metadata::validate``) checks them,
so a file passes here exactly when the host's loader would accept it:

- the length field is 8 bytes and at most :data:`MAX_HEADER` (the reference's 100,000,000 limit);
- the header is a JSON object; each entry has a known dtype (:data:`DTYPE_BITS`, the reference's
  full table, sub-byte float formats included), a shape of non-negative integers and offsets;
- the tensors tile the data section: sorted by offset each begins where the previous ended, each
  spans exactly ``numel * bits / 8`` bytes (a whole number of bytes), and the last one ends at
  the end of the file: a truncated file (an interrupted download, a save still running) fails,
  and so does one with bytes nobody describes.

Users: sd3_inspect (the SD3.5 loader's checks), shards (completeness and merging), lcm (the LoRA
check) and the linker (which files of a training run are complete).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

MAX_HEADER = 100_000_000  # safetensors' MAX_HEADER_SIZE

# Bits per element of every dtype the safetensors format names (safetensors ``Dtype::bitsize``).
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64,
    "F64": 64, "I64": 64, "U64": 64,
}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


class SafetensorsError(ValueError):
    """Not a complete, well-formed safetensors file. ``kind`` says which check failed:
    "missing", "unreadable", "short", "too_large", "truncated", "not_json", "entry", "dtype",
    "size", "offsets", "trailing"."""

    def __init__(self, message: str, kind: str = "entry"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: dict  # name -> {"dtype", "shape", "data_offsets"}
    metadata: dict
    data_start: int  # absolute file offset of the data section
    data_size: int  # bytes the header says the data section holds
    file_size: int
    raw: bytes = b""  # the JSON bytes as stored (for fingerprints)

    @property
    def complete(self) -> bool:
        return self.file_size == self.data_start + self.data_size


def tensor_bytes(dtype: str, shape) -> int | None:
    """Bytes a tensor of ``dtype`` and ``shape`` takes, or None if it is not a whole number."""
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    return bits // 8 if bits % 8 == 0 else None


def _kind_of(head: bytes) -> str:
    if head.startswith(b"PK"):
        return " (it is a zip archive: a PyTorch .ckpt/.pt pickle renamed?)"
    if head[:1] == b"\x80":
        return " (it is a Python pickle renamed?)"
    return ""


def read_header(path: str | os.PathLike) -> Header:
    """Parse and check ``path``; raise :class:`SafetensorsError` naming the file and what is wrong."""
    path = Path(path)
    name = path.name or str(path)
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{name} is not a safetensors file ({file_size} bytes, too short for a header: "
                                       "shorter than its 8-byte header length)", "short")
            (n,) = struct.unpack("<Q", head)
            first = f.read(1)
            if first != b"{":  # before the length checks: a renamed pickle or zip reads as a huge length
                raise SafetensorsError(f"{name} is not a safetensors file{_kind_of(head)} (header is not valid JSON: "
                                       "it does not start with '{')", "not_json")
            if n > MAX_HEADER:
                raise SafetensorsError(f"{name} is not a safetensors file{_kind_of(head)} (header length {n} is over "
                                       f"the format's {MAX_HEADER}-byte limit)", "too_large")
            if n > file_size - 8:
                raise SafetensorsError(f"{name} is truncated or still being written: its header says {n} bytes but the file has only "
                                       f"{file_size - 8} after the length field (an interrupted download, or a save "
                                       "still being written?)", "truncated")
            raw = first + f.read(n - 1)
    except FileNotFoundError as e:
        raise SafetensorsError(f"{path} does not exist", "missing") from e
    except OSError as e:
        raise SafetensorsError(f"cannot read {path}: {e}", "unreadable") from e
    try:
        doc = json.loads(raw.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("header is not an object")
    except (UnicodeDecodeError, ValueError) as e:
        raise SafetensorsError(f"{name} is not a safetensors file{_kind_of(head)} (header is not valid JSON: {e})",
                               "not_json") from e
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise SafetensorsError(f"{name} is not a valid safetensors file (__metadata__ is not an object)", "entry")
    spans = []
    for key, info in doc.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
                raise ValueError("shape")
            if not all(isinstance(o, int) and o >= 0 for o in (begin, end)):
                raise ValueError("offsets")
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsError(f"{name} is not a valid safetensors file (bad entry for {key!r}: {info!r})",
                                   "entry") from e
        if dtype not in DTYPE_BITS:
            raise SafetensorsError(f"{name} is not a valid safetensors file (tensor {key!r} has unknown dtype "
                                   f"{dtype!r})", "dtype")
        want = tensor_bytes(dtype, shape)
        if want is None or end - begin != want:
            raise SafetensorsError(f"{name} is not a valid safetensors file (tensor {key!r}, {dtype} {shape}, spans "
                                   f"bytes {begin}..{end}: the wrong size, expected {want} bytes)", "size")
        spans.append((begin, end, key))
    spans.sort()
    pos = 0
    for begin, end, key in spans:
        if begin != pos:
            raise SafetensorsError(f"{name} is not a valid safetensors file (tensor {key!r} starts at {begin}, not "
                                   f"{pos}: overlapping or a gap)", "offsets")
        pos = end
    data_len = file_size - 8 - n
    if pos > data_len:
        raise SafetensorsError(f"{name} is truncated or still being written: its tensors need {pos} bytes of data but the file holds "
                               f"{data_len} (an interrupted download?)", "truncated")
    if pos < data_len:
        raise SafetensorsError(f"{name} is not a valid safetensors file ({data_len - pos} bytes after the last "
                               "tensor that the header does not describe)", "trailing")
    return Header(path, doc, metadata, 8 + n, pos, file_size, raw)


def is_complete(path: str | os.PathLike) -> tuple[bool, str]:
    """(True, "") for a complete file, else (False, why)."""
    try:
        read_header(path)
    except SafetensorsError as e:
        return False, str(e)
    return True, ""
