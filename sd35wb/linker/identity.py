"""Proof that a file in a run folder is still the one this tool made (and still up to date)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .. import shards, simpletuner

FP_SAMPLES, FP_CHUNK = 16, 64 * 1024


def fingerprint(path: Path) -> str:
    """sha256 over the size and 16 evenly spaced 64 KiB samples (the whole file when small):
    cheap for a multi-GB merge, and it changes when someone edits a copy in place."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(str(size).encode())
        if size <= FP_SAMPLES * FP_CHUNK:
            h.update(f.read())
        else:
            for i in range(FP_SAMPLES):
                f.seek((size - FP_CHUNK) * i // (FP_SAMPLES - 1))
                h.update(f.read(FP_CHUNK))
    return h.hexdigest()


def _identity(p: Path, mode: str) -> dict:
    """What the manifest records to prove later that ``p`` is still the file this tool made."""
    if mode == "symlink":
        return {"target": os.readlink(p)}
    st = p.lstat()
    out = {"id": [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]}
    if mode in ("copy", "merged"):
        out["fp"] = fingerprint(p)
    return out


def _matches(dest: Path, rec: dict, source: Path | None = None, deep: bool = True) -> bool:
    """Is ``dest`` exactly what ``rec`` says this tool made? ``deep=False`` skips the content
    fingerprint: enough to keep a link as it is, never enough to delete or replace a file."""
    mode = rec.get("mode")
    try:
        st = dest.lstat()
    except FileNotFoundError:
        return False
    if mode == "symlink":
        return os.path.islink(dest) and rec.get("target") is not None and os.readlink(dest) == rec["target"]
    if os.path.islink(dest) or mode not in ("hardlink", "copy", "merged"):
        return False
    if "id" not in rec:
        return _matches_v1(dest, st, rec)
    if [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns] != rec["id"]:
        if mode != "hardlink" or source is None:
            return False
        try:  # a hard link is the source file itself: rewritten in place it is still the same file
            s = source.stat()
        except OSError:
            return False
        return (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino)
    if mode in ("copy", "merged") and deep:
        try:
            return fingerprint(dest) == rec.get("fp")
        except OSError:
            return False
    return True


def _matches_v1(dest: Path, st, rec: dict) -> bool:
    """Manifests of version 1 recorded only the inode: trust it only with more proof."""
    if [st.st_dev, st.st_ino] != rec.get("inode"):
        return False
    if rec.get("mode") == "hardlink":
        return True
    if rec.get("mode") == "copy":
        return isinstance(rec.get("sig"), list) and st.st_size == rec["sig"][0]
    try:  # our merges carry this metadata key
        return "sd35wb_merged_from" in shards.read_header(dest).metadata
    except shards.SafetensorsError:
        return False


def _src_sig(path: Path) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _up_to_date(dest: Path, rec: dict, art: simpletuner.Artifact) -> bool:
    mode = rec.get("mode")
    if rec.get("source") != str(art.source) or rec.get("pending"):
        return False
    if mode == "symlink":
        return os.path.realpath(dest) == str(art.source.resolve())
    if mode == "hardlink":
        try:
            s, d = art.source.stat(), dest.stat()
        except FileNotFoundError:
            return False
        return (s.st_dev, s.st_ino) == (d.st_dev, d.st_ino)
    try:
        if mode == "merged":
            return rec.get("sig") == shards.shard_signature(art.source)
        if mode == "copy":
            return rec.get("sig") == _src_sig(art.source)
    except (OSError, shards.SafetensorsError):
        return False
    return False
