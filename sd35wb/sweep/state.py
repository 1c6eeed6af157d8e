"""Resume: the CLI's state file (``<out>.sweep.json``) and the node's render cache."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

STATE_VERSION = 1


class StateLocked(RuntimeError):
    pass


class SweepState:
    """``<out>.sweep.json``: which images of which cells are on disk. Written atomically after every
    image (a kill loses at most the image in flight); one CLI at a time per output (a lock file)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._lockfile = None
        self.cells: dict[str, dict] = {}
        if self.path.exists():
            try:
                doc = json.loads(self.path.read_text())
                if doc.get("version") == STATE_VERSION and isinstance(doc.get("cells"), dict):
                    self.cells = doc["cells"]
            except (ValueError, OSError):
                self.cells = {}  # unreadable: start again, the images on disk are rewritten, never deleted

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(self.path.with_name(self.path.name + ".lock"), "a+")
        try:
            import fcntl

            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no advisory lock; the atomic writes still keep the file whole
            pass
        except OSError as e:
            self._lockfile.close()
            raise StateLocked(f"--out: another sweep is writing {self.path.parent / self.path.stem}; wait for it "
                              "or choose another --out") from e

    def release(self) -> None:
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None

    def done(self, key: str) -> list[str] | None:
        entry = self.cells.get(key)
        if not entry:
            return None
        files = [str(self.path.parent / f) for f in entry.get("files", [])]
        return files if files and all(os.path.isfile(f) for f in files) else None

    def record(self, key: str, files: list[Path], **info) -> None:
        with self._lock:
            self.cells[key] = {"files": [os.path.relpath(f, self.path.parent) for f in files], **info}
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": STATE_VERSION, "cells": self.cells}, indent=1))
            os.replace(tmp, self.path)


class RenderCache:
    """The sweep node's finished cells (sampled latents, numpy) in one folder, one safetensors file
    per cell key; files are written to a temporary name and renamed, so concurrent writers and a
    kill mid-write never leave a half file."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def get(self, key: str):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        p = self._path(key)
        if not p.is_file():
            return None
        try:
            return load_file(str(p))["samples"]
        except (SafetensorError, OSError, KeyError):
            return None

    def put(self, key: str, samples) -> None:
        from safetensors.numpy import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        save_file({"samples": samples}, str(tmp))
        os.replace(tmp, self._path(key))
