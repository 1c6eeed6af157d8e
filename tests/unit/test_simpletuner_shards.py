"""Unit tier: merging sharded safetensors (diffusers' layout) into one file, and the labelled strip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from sd35wb import grid, shards
from tools.simpletuner_fixtures import write_sharded_np


def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {"a.weight": rng.standard_normal((3, 5)).astype(np.float32),
            "b.bias": rng.standard_normal(7).astype(np.float16),
            "c.scalar": np.array(3.5, dtype=np.float32),
            "d.big": rng.standard_normal((64, 33)).astype(np.float32),
            "e.int": np.arange(6, dtype=np.int64).reshape(2, 3)}


def test_merge_reproduces_every_tensor(tmp_path):
    tensors = _tensors()
    index = write_sharded_np(tmp_path / "ema", tensors, per_shard=2)
    dest = tmp_path / "merged.safetensors"
    res = shards.merge_shards(index, dest, chunk=64)  # tiny chunks: many partial copies per tensor
    got = load_file(str(dest))
    assert sorted(got) == sorted(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v)
    assert res.tensors == 5 and res.largest_tensor == 64 * 33 * 4 and res.copy_buffer == 64
    h = shards.read_header(dest)
    assert h.data_start % 8 == 0 and h.metadata["format"] == "pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ema", "merged.safetensors"]


def test_truncated_shard_gives_clear_error_and_no_output(tmp_path):
    index = write_sharded_np(tmp_path / "ema", _tensors(), per_shard=2)
    shard = sorted((tmp_path / "ema").glob("*-00002-of-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    dest = tmp_path / "out" / "merged.safetensors"
    dest.parent.mkdir()
    with pytest.raises(shards.SafetensorsError, match=r"00002-of-00003.safetensors is truncated or still being written: its tensors need \d+ bytes of data but the file holds \d+"):
        shards.merge_shards(index, dest)
    assert list(dest.parent.iterdir()) == [], "no output and no temporary file left behind"


def test_index_mismatches_are_refused(tmp_path):
    index = write_sharded_np(tmp_path / "ema", _tensors(), per_shard=2)
    doc = json.loads(index.read_text())
    doc["weight_map"]["ghost.weight"] = doc["weight_map"]["a.weight"]
    index.write_text(json.dumps(doc))
    with pytest.raises(shards.SafetensorsError, match="1 tensors listed in the index are in no shard"):
        shards.merge_shards(index, tmp_path / "m.safetensors")
    del doc["weight_map"]["ghost.weight"]
    del doc["weight_map"]["a.weight"]
    index.write_text(json.dumps(doc))
    with pytest.raises(shards.SafetensorsError, match="holds 'a.weight', which the index does not list"):
        shards.merge_shards(index, tmp_path / "m.safetensors")
    doc["weight_map"]["a.weight"] = "../../etc/passwd"
    index.write_text(json.dumps(doc))
    with pytest.raises(shards.SafetensorsError, match="not a .safetensors file beside the index"):
        shards.merge_shards(index, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_header_checks(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"\x10\x00")
    assert not shards.is_complete_safetensors(p)[0]
    p.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    assert "over the format's 100000000-byte limit" in shards.is_complete_safetensors(p)[1]
    blob = json.dumps({"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    p.write_bytes(len(blob).to_bytes(8, "little") + blob + bytes(8))
    assert "expected 16 bytes" in shards.is_complete_safetensors(p)[1]


def test_labelled_strip_one_tile_per_image_in_order():
    ims = [np.full((32, 48, 3), v, dtype=np.float32) for v in (0.1, 0.5, 0.9)]
    strip = grid.labelled_strip(ims, ["checkpoint-800", "checkpoint-1600", "checkpoint-2400"])
    band = grid.label_height(32)
    assert strip.size == (3 * 48, 32 + band)
    arr = np.asarray(strip)
    tiles = [arr[band:, i * 48:(i + 1) * 48] for i in range(3)]
    assert [int(t.mean()) for t in tiles] == [round(v * 255) for v in (0.1, 0.5, 0.9)]
    assert arr[:band].max() > 200, "labels drawn in the band"
    g = grid.labelled_strip(ims, ["a", "b", "c"], columns=2)
    assert g.size == (2 * 48, 2 * (32 + band))
    with pytest.raises(ValueError, match="labels: 2 labels for 3 images"):
        grid.labelled_strip(ims, ["a", "b"])
