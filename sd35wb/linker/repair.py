"""Finish or undo what an interrupted sync left, and move links an earlier version made under unet/."""

from __future__ import annotations

import os
from pathlib import Path

from .. import linker as _package  # its _step is the hook tests/fault_sync.py replaces
from .identity import _matches
from .lock import LOCK, run_lock
from .make import _tmp_name
from .manifest import _TMP, MANIFEST, _unlink_quiet, _write_manifest, read_manifest
from .report import LinkError, Report, _model_name


def _repair(run_dir: Path, manifest: dict, report: Report, run: str) -> bool:
    """Finish or undo what an interrupted sync left (we hold the lock: nobody else is writing)."""
    links: dict = manifest["links"]
    dirty = False
    for name, rec in sorted(links.items()):
        if not rec.get("pending"):
            continue
        tmp = rec.get("tmp")
        if tmp and os.path.lexists(run_dir / tmp):
            _unlink_quiet(run_dir / tmp)
        dest = run_dir / name
        prev = rec.get("prev")
        if "mode" in rec and _matches(dest, rec, Path(rec.get("source", ""))):
            links[name] = {k: v for k, v in rec.items() if k not in ("pending", "tmp", "prev")}
            what = "finished: the link was in place"
        elif prev and _matches(dest, prev, Path(prev.get("source", ""))):
            links[name] = prev
            what = "kept the previous link (the update was interrupted)"
        elif not os.path.lexists(dest):
            del links[name]
            what = "dropped: it was never made"
        else:
            del links[name]
            what = "the file there is not what this tool made; left untouched"
        report.repaired.append((_model_name(run, name), f"an interrupted sync: {what}"))
        dirty = True
    for entry in os.scandir(run_dir):
        if _TMP.match(entry.name):  # ours by name (pid + random token); only a killed sync leaves one
            _unlink_quiet(Path(entry.path))
            report.repaired.append((_model_name(run, entry.name), "an interrupted sync's temporary file: removed"))
    return dirty


def _move_legacy(legacy: list[Path], run_dir: Path, manifest: dict, run: str, report: Report) -> bool:
    """One-time move of this tool's links from an earlier destination (unet/<run>/) to run_dir."""
    dirty = False
    for old_dir in legacy:
        if old_dir.resolve() == run_dir.resolve():
            continue
        try:
            dirty |= _move_one_legacy(old_dir, run_dir, manifest, run, report)
        except (OSError, LinkError) as e:  # e.g. a read-only old folder: its links keep working
            why = e.strerror if isinstance(e, OSError) else str(e)
            report.skipped.append((str(old_dir), f"could not move this tool's links from here ({why}); "
                                   "they still work where they are"))
    if dirty:
        _write_manifest(run_dir, manifest)
    return dirty


def _move_one_legacy(old_dir: Path, run_dir: Path, manifest: dict, run: str, report: Report) -> bool:
    dirty = False
    with run_lock(old_dir):
        old = read_manifest(old_dir)
        _repair(old_dir, old, report, run)
        for name, rec in sorted(old["links"].items()):
            src_path = Path(rec.get("source", ""))
            here = old_dir / name
            if not _matches(here, rec, src_path):
                del old["links"][name]  # not ours any more: forget it, never touch it
                continue
            new = run_dir / name
            if name in manifest["links"]:
                here.unlink()  # ours, and the new place already has ours: the old one goes
            elif os.path.lexists(new):
                report.skipped.append((str(here), f"not moved: {new} is a file of yours; this one stays"))
                continue
            elif rec.get("mode") == "symlink":
                tmp = _tmp_name(new)
                manifest["links"][name] = {**rec, "pending": True, "tmp": tmp.name}
                _write_manifest(run_dir, manifest)
                os.symlink(rec["target"], tmp)
                os.replace(tmp, new)
                manifest["links"][name] = dict(rec)
                dirty = True
                here.unlink()
            else:  # a file: rename keeps its identity (same folder tree, so usually one device)
                try:
                    st = here.lstat()
                    manifest["links"][name] = {**rec, "pending": True}
                    if "id" in rec:
                        manifest["links"][name]["id"] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
                    _write_manifest(run_dir, manifest)
                    os.rename(here, new)
                    manifest["links"][name].pop("pending")
                    dirty = True
                except OSError as e:
                    manifest["links"].pop(name, None)
                    report.skipped.append((str(here), f"could not move it to {run_dir} ({e.strerror}); "
                                           "it is re-made there and this one is left"))
                    continue
            report.moved.append((str(here), _model_name(run, name)))
            del old["links"][name]
            _write_manifest(old_dir, old)
            _package._step("moved")
        _write_manifest(old_dir, old)
        try:  # empty now (only our manifest and lock): remove the old run folder
            if not [e for e in os.listdir(old_dir) if e not in (MANIFEST, LOCK)] and not old["links"]:
                os.unlink(old_dir / MANIFEST)
                os.unlink(old_dir / LOCK)
                os.rmdir(old_dir)
        except OSError:
            pass
    return dirty
