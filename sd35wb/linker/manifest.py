"""The run folder's manifest (``.sd35wb-links.json``): what this tool made there, written atomically."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .report import LinkError

MANIFEST = ".sd35wb-links.json"
MANIFEST_VERSION = 2
TOOL = "sd35-workbench"
# Every temporary name this tool makes in a run folder; only ever seen while a sync runs (or after a kill).
_TMP = re.compile(r"^\..+\.sd35wb-(tmp|merging)-\d+(-[0-9a-f]{8})?$|^\.\.sd35wb-links\.json\.\d+(\.[0-9a-f]{8})?\.tmp$"
                  r"|^\.sd35-workbench-write-test(-\d+-[0-9a-f]{8})?$")


def read_manifest(run_dir: Path) -> dict:
    p = run_dir / MANIFEST
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        return {"tool": TOOL, "version": MANIFEST_VERSION, "output_dir": None, "links": {}}
    except (OSError, ValueError) as e:
        raise LinkError(f"{p}: the link manifest is unreadable ({e}); move it aside and sync again "
                        "(links it listed are then left alone)", "run", 409) from e
    if not isinstance(doc, dict) or not isinstance(doc.get("links"), dict):
        raise LinkError(f"{p}: not a link manifest of {TOOL}", "run", 409)
    return doc


def _write_manifest(run_dir: Path, doc: dict) -> None:
    tmp = run_dir / f".{MANIFEST}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(doc, indent=1, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, run_dir / MANIFEST)
    except BaseException:
        _unlink_quiet(tmp)
        raise


def _unlink_quiet(p: Path) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
