"""Unit tier: the pack's one safetensors header reader agrees with the reference implementation
(safetensors' own ``safe_open``) on every dtype it names and on broken files, and every user
(the loader's checks, the shard merge, the LCM LoRA check) goes through it."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from sd35wb import lcm, sd3_inspect, shards
from sd35wb import safetensors_header as st


def _write(p, header: dict, data: bytes, raw: bytes | None = None):
    blob = raw if raw is not None else json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return p


def _reference_accepts(p) -> bool:
    try:
        with safe_open(str(p), "np") as f:
            list(f.keys())
        return True
    except Exception:  # noqa: BLE001 - any refusal counts
        return False


def _ours_accepts(p) -> bool:
    try:
        st.read_header(p)
        return True
    except st.SafetensorsError:
        return False


CASES = {
    # name: (header, data bytes, kind when refused)
    "f32": ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 8, None),
    "f4 packed": ({"t": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}}, 2, None),
    "f4 half byte": ({"t": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, 2, "size"),
    "f6_e2m3": ({"t": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}}, 3, None),
    "f6_e3m2": ({"t": {"dtype": "F6_E3M2", "shape": [8], "data_offsets": [0, 6]}}, 6, None),
    "f8_e8m0": ({"t": {"dtype": "F8_E8M0", "shape": [1], "data_offsets": [0, 1]}}, 1, None),
    "c64": ({"t": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, 8, None),
    "unknown dtype": ({"t": {"dtype": "F12", "shape": [1], "data_offsets": [0, 2]}}, 2, "dtype"),
    "gap": ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8, "offsets"),
    "overlap": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8, "offsets"),
    "truncated": ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 5, "truncated"),
    "trailing bytes": ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 12, "trailing"),
    "wrong size": ({"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}, 8, "size"),
    "negative shape": ({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, 0, "entry"),
    "empty": ({}, 0, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_accepts_exactly_what_the_reference_accepts(tmp_path, case):
    header, n, kind = CASES[case]
    p = _write(tmp_path / "x.safetensors", header, bytes(n))
    assert _ours_accepts(p) == _reference_accepts(p), case
    if kind is None:
        assert st.read_header(p).complete
    else:
        with pytest.raises(st.SafetensorsError) as e:
            st.read_header(p)
        assert e.value.kind == kind and "x.safetensors" in str(e.value)


def test_every_numpy_dtype_the_reference_writes_reads_back(tmp_path):
    tensors = {f"t_{d}": np.arange(6).astype(d).reshape(2, 3) for d in
               ("bool", "uint8", "int8", "int16", "uint16", "float16", "int32", "uint32", "float32", "int64",
                "uint64", "float64", "complex64")}
    p = tmp_path / "all.safetensors"
    save_file(tensors, str(p))
    h = st.read_header(p)
    assert set(h.tensors) == set(tensors) and h.complete
    assert {v["dtype"] for v in h.tensors.values()} <= set(st.DTYPE_BITS)


def test_header_length_limit_and_short_files(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"\x10\x00")
    with pytest.raises(st.SafetensorsError, match="too short for a header") as e:
        st.read_header(p)
    assert e.value.kind == "short"
    p.write_bytes(struct.pack("<Q", st.MAX_HEADER + 1) + b"{" + b" " * 16)
    with pytest.raises(st.SafetensorsError, match="over the format's 100000000-byte limit"):
        st.read_header(p)
    p.write_bytes(struct.pack("<Q", 500) + b"{}")
    with pytest.raises(st.SafetensorsError, match="truncated or still being written: its header says 500 bytes"):
        st.read_header(p)


def test_one_reader_serves_loader_checks_shard_merge_and_lcm_lora_check(tmp_path):
    assert shards.read_header is st.read_header and shards.SafetensorsError is st.SafetensorsError
    good = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
               np.zeros((4, 768), np.float16)}, str(good))
    assert lcm.read_safetensors_header(good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-7])  # an interrupted LCM-LoRA download
    with pytest.raises(ValueError, match="cut.safetensors is truncated or still being written"):
        lcm.read_safetensors_header(cut)
    with pytest.raises(sd3_inspect.ModelFileError, match="^model_name: cut.safetensors is truncated .* Download it again"):
        sd3_inspect.read_header(str(cut), "model_name")
    assert not shards.is_complete_safetensors(cut)[0]
    f4 = _write(tmp_path / "f4.safetensors", {"t": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}}, bytes(2))
    assert sd3_inspect.read_header(str(f4)).tensors["t"].dtype == "F4"  # all three agree on the table
    assert shards.is_complete_safetensors(f4) == (True, "")
    assert lcm.read_safetensors_header(f4)["t"]["dtype"] == "F4"
