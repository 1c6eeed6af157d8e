"""Shared by the linker's unit and API tests: the manifest must equal the disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sd35wb import linker


def assert_manifest_equals_disk(*run_dirs: Path) -> int:
    """Every entry of each run folder is the manifest's (with a matching identity) or a user file
    the test put there (named mine*); nothing pending, no temporary file. Returns links seen."""
    n = 0
    for d in run_dirs:
        if not d.exists():
            continue
        doc = json.loads((d / linker.MANIFEST).read_text())
        links = doc["links"]
        for name, rec in links.items():
            assert not rec.get("pending") and "tmp" not in rec, (d, name, rec)
            assert linker._matches(d / name, rec, Path(rec["source"])), f"{d / name} does not match its record {rec}"
        on_disk = {e for e in os.listdir(d) if e not in (linker.MANIFEST, linker.LOCK) and not e.startswith("mine")}
        assert on_disk == set(links), f"{d}: unrecorded {on_disk - set(links)}, missing {set(links) - on_disk}"
        n += len(links)
    return n
