"""Apply a SimpleTuner scan to ComfyUI's model folders: link, merge, prune; safe to re-run.

For each destination (``diffusion_models``, ``loras``) the run gets one folder ``<dest>/<run>/``
holding links named ``checkpoint-N.safetensors`` (``-ema``, ``-rolling``, ``<run>-final``) and a
manifest ``.sd35wb-links.json`` listing exactly what this tool made there. Rules:

- links are created atomically (made under a temporary name, then ``os.replace``d into place);
- a name that exists and is not in the manifest is the user's: reported as a collision, never touched
  (a symlink already pointing at the same source, as the old shell script made, is adopted);
- links whose source vanished (SimpleTuner rotated the checkpoint away) are pruned, but only the
  manifest's own entries, and only while they are still what this tool made;
- symlink first; where symlinks are not allowed, a hard link; a copy only when asked (``copy=True``);
- sharded weights are merged into one file in the run folder (see ``shards.merge_shards``), re-merged
  only when a shard changes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import finetune, shards, simpletuner

MANIFEST = ".sd35wb-links.json"
MANIFEST_VERSION = 1
TOOL = "sd35-workbench"


@dataclass
class Report:
    run: str
    output_dir: str
    linked: list[tuple[str, str]] = field(default_factory=list)  # (model name, how: symlink/hardlink/copy/merged)
    unchanged: list[str] = field(default_factory=list)
    pruned: list[tuple[str, str]] = field(default_factory=list)  # (model name, why)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path or name, why)
    exposed: dict[str, list[str]] = field(default_factory=dict)  # folder -> model names, numeric order
    bytes_copied: int = 0  # copies (only with copy=True) and merges
    bytes_merged: int = 0
    seconds: float = 0.0
    detected: dict[str, dict] = field(default_factory=dict)  # exposed diffusion model -> finetune detection

    @property
    def changed(self) -> bool:
        return bool(self.linked or self.pruned)

    def lines(self) -> list[str]:
        out = [f"linked    {n}  ({how})" for n, how in self.linked]
        out += [f"pruned    {n}  ({why})" for n, why in self.pruned]
        out += [f"skipped   {n}  ({why})" for n, why in self.skipped]
        out += [f"detected  {n}  {d.get('summary') or d.get('error')}" for n, d in self.detected.items()]
        total = sum(len(v) for v in self.exposed.values())
        out.append(f"run {self.run!r}: {len(self.linked)} linked, {len(self.unchanged)} unchanged, "
                   f"{len(self.pruned)} pruned, {len(self.skipped)} skipped; {total} models exposed; "
                   f"{self.bytes_copied} bytes copied, {self.bytes_merged} bytes merged; {self.seconds:.3f} s")
        return out

    def text(self) -> str:
        return "\n".join(self.lines())

    def as_dict(self) -> dict:
        return {"run": self.run, "output_dir": self.output_dir, "linked": [list(x) for x in self.linked],
                "unchanged": self.unchanged, "pruned": [list(x) for x in self.pruned],
                "skipped": [list(x) for x in self.skipped], "exposed": self.exposed,
                "bytes_copied": self.bytes_copied, "bytes_merged": self.bytes_merged, "seconds": self.seconds,
                "detected": self.detected}


def _model_name(run: str, name: str) -> str:
    return os.path.join(run, name)  # what the host's get_filename_list shows on this OS


def read_manifest(run_dir: Path) -> dict:
    p = run_dir / MANIFEST
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        return {"tool": TOOL, "version": MANIFEST_VERSION, "output_dir": None, "links": {}}
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: the link manifest is unreadable ({e}); move it aside and sync again "
                         "(links it listed are then left alone)") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("links"), dict):
        raise ValueError(f"{p}: not a link manifest of {TOOL}")
    return doc


def _write_manifest(run_dir: Path, doc: dict) -> None:
    tmp = run_dir / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, run_dir / MANIFEST)


def _src_sig(path: Path) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _is_ours(dest: Path, rec: dict) -> bool:
    """Is ``dest`` still exactly what the manifest says this tool made?"""
    try:
        st = dest.lstat()
    except FileNotFoundError:
        return False
    if rec.get("mode") == "symlink":
        return os.path.islink(dest) and os.readlink(dest) == rec.get("target")
    return not os.path.islink(dest) and [st.st_dev, st.st_ino] == rec.get("inode")


def _up_to_date(dest: Path, rec: dict, art: simpletuner.Artifact) -> bool:
    mode = rec.get("mode")
    if rec.get("source") != str(art.source):
        return False
    if mode == "symlink":
        return True  # follows whatever the source path holds now
    if mode == "hardlink":
        try:
            s, d = art.source.stat(), dest.stat()
        except FileNotFoundError:
            return False
        return (s.st_dev, s.st_ino) == (d.st_dev, d.st_ino)
    if mode == "merged":
        try:
            return rec.get("sig") == shards.shard_signature(art.source)
        except (OSError, shards.SafetensorsError):
            return False
    if mode == "copy":
        try:
            return rec.get("sig") == _src_sig(art.source)
        except OSError:
            return False
    return False


def _tmp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.sd35wb-tmp-{os.getpid()}")


_NO_SYMLINK = {errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_NO_HARDLINK = _NO_SYMLINK | {errno.EXDEV, errno.EMLINK}


def _place(art: simpletuner.Artifact, dest: Path, copy: bool) -> tuple[str, dict, int]:
    """Create ``dest`` for ``art``; return (mode, manifest record fields, bytes written)."""
    src = art.source
    if art.sharded:
        res = shards.merge_shards(src, dest)
        return "merged", {"sig": shards.shard_signature(src)}, res.bytes_written
    tmp = _tmp_name(dest)
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    if copy:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        return "copy", {"sig": _src_sig(src)}, dest.stat().st_size
    target = str(src.resolve())
    try:
        os.symlink(target, tmp)
        os.replace(tmp, dest)
        return "symlink", {"target": target}, 0
    except NotImplementedError:
        pass
    except OSError as e:
        # Windows without the symlink privilege: WinError 1314, which Python maps to no errno above.
        if e.errno not in _NO_SYMLINK and getattr(e, "winerror", None) is None:
            raise
    try:
        os.link(target, tmp)
    except OSError as e:
        if e.errno in _NO_HARDLINK:
            raise _CannotLink(f"symlinks are not allowed here and a hard link failed ({e.strerror}): "
                              "sync with copy enabled (--copy) to copy the file instead") from e
        raise
    os.replace(tmp, dest)
    return "hardlink", {}, 0


class _CannotLink(Exception):
    pass


def sync(output_dir: str | os.PathLike, run: str | None, dest_dirs: dict[str, str | os.PathLike],
         include=simpletuner.CATEGORIES, copy: bool = False) -> Report:
    """Link a SimpleTuner run into ComfyUI model folders; see the module docstring for the rules.

    ``dest_dirs`` maps "diffusion_models" and "loras" to the host's folders (the run folder is
    created inside them only when there is something to put there)."""
    t0 = time.perf_counter()
    output_dir = Path(output_dir).resolve()
    run = simpletuner.check_run_name(run or output_dir.name)
    include = simpletuner.parse_include(include)
    scan = simpletuner.scan(output_dir, run)
    report = Report(run, str(output_dir))
    report.skipped += [(str(s.path), s.reason) for s in scan.skipped]
    for folder in (simpletuner.DIFFUSION_MODELS, simpletuner.LORAS):
        base = dest_dirs.get(folder)
        offered = {a.name: a for a in scan.artifacts if a.folder == folder}
        selected = [a for a in scan.select(include) if a.folder == folder]
        if base is None:
            report.skipped += [(a.name, f"no {folder} folder given") for a in selected]
            continue
        run_dir = Path(base) / run
        real_base, real_run = os.path.realpath(base), os.path.realpath(run_dir)
        if os.path.commonpath([real_base, real_run]) != real_base or real_run == real_base:
            raise ValueError(f"run: {run_dir} leads outside {base} (a symlinked run folder); refusing to write "
                             "through it: remove the link or pick another run name")
        _sync_folder(run_dir, output_dir, run, folder, selected, offered, copy, report)
    # What each exposed checkpoint is (prediction, zero-SNR, family), from its header and the run's configs.
    run_cfg = finetune.run_claims(output_dir)
    for model in report.exposed.get(simpletuner.DIFFUSION_MODELS, []):
        path = Path(dest_dirs[simpletuner.DIFFUSION_MODELS]) / model
        report.detected[model] = finetune.detect_checkpoint(path, output_dir, run_cfg)
    report.seconds = time.perf_counter() - t0
    return report


def _sync_folder(run_dir: Path, output_dir: Path, run: str, folder: str, selected: list, offered: dict,
                 copy: bool, report: Report) -> None:
    if not run_dir.is_dir() and not selected:
        report.exposed[folder] = []
        return
    manifest = read_manifest(run_dir)
    if manifest.get("output_dir") not in (None, str(output_dir)) and manifest["links"]:
        raise ValueError(f"run: {run!r} already holds links to {manifest['output_dir']} in {run_dir}; "
                         "choose another run name for this output_dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".{TOOL}-write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{folder}: cannot write to {run_dir.parent} ({e.strerror}); the model folder is read-only. "
                         f"Make it writable, or list a writable {folder} folder first (extra_model_paths.yaml, "
                         "is_default: true): links go into the first one") from e
    links: dict = manifest["links"]
    dirty = False
    exposed = []
    # 1. Prune what this tool made whose source is gone or no longer offered by the run.
    for name, rec in sorted(links.items()):
        art = offered.get(name)
        if art is not None and Path(rec.get("source", "")).exists():
            continue
        dest = run_dir / name
        model = _model_name(run, name)
        why = "source gone (checkpoint rotated away or deleted)" if not Path(rec.get("source", "")).exists() \
            else "no longer offered by the run (in progress or incomplete)"
        if _is_ours(dest, rec):
            dest.unlink()
            report.pruned.append((model, why))
        elif os.path.lexists(dest):
            report.skipped.append((model, "not pruned: the file there is no longer the link this tool made"))
        del links[name]
        dirty = True
    # 2. Link what is wanted.
    for art in selected:
        dest = run_dir / art.name
        model = _model_name(run, art.name)
        rec = links.get(art.name)
        if rec is not None and not _is_ours(dest, rec):
            if os.path.lexists(dest):
                report.skipped.append((model, "collision: the file there is not the link this tool made; left untouched"))
                del links[art.name]
                dirty = True
                continue
            rec = None  # removed by hand: make it again
            del links[art.name]
            dirty = True
        if rec is not None and _up_to_date(dest, rec, art):
            report.unchanged.append(model)
            exposed.append(art)
            continue
        if rec is None and os.path.lexists(dest):
            if os.path.islink(dest) and not art.sharded and os.path.realpath(dest) == str(art.source.resolve()):
                links[art.name] = {"source": str(art.source), "mode": "symlink", "target": os.readlink(dest),
                                   "category": art.category}
                report.unchanged.append(model)
                exposed.append(art)
                dirty = True
                continue
            report.skipped.append((model, "collision: a file you put there has this name; left untouched "
                                          "(rename it, or sync under another run name)"))
            continue
        try:
            mode, extra, nbytes = _place(art, dest, copy)
        except _CannotLink as e:
            report.skipped.append((model, str(e)))
            continue
        except shards.SafetensorsError as e:
            report.skipped.append((model, f"merge failed: {e}"))
            continue
        st = dest.lstat()
        links[art.name] = {"source": str(art.source), "mode": mode, "category": art.category,
                           "inode": [st.st_dev, st.st_ino], **extra}
        if mode == "merged":
            report.bytes_merged += nbytes
        if mode in ("copy", "merged"):
            report.bytes_copied += nbytes
        report.linked.append((model, mode if mode != "merged" else f"merged {nbytes} bytes from shards"))
        exposed.append(art)
        dirty = True
    # Dangling links the user (or an old script) left: mention, never touch.
    for entry in os.scandir(run_dir):
        if entry.is_symlink() and entry.name not in links and not os.path.exists(entry.path):
            report.skipped.append((_model_name(run, entry.name), "dangling link not made by this tool; left alone"))
    if dirty or manifest.get("output_dir") != str(output_dir):
        manifest.update(tool=TOOL, version=MANIFEST_VERSION, output_dir=str(output_dir), run=run)
        _write_manifest(run_dir, manifest)
    report.exposed[folder] = [_model_name(run, a.name) for a in sorted(exposed, key=lambda a: a.sort_key)]
