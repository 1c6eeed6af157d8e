"""Apply a SimpleTuner scan to ComfyUI's model folders: link, merge, prune; safe to re-run, at once.

For each destination (``diffusion_models``, ``loras``) the run gets one folder ``<dest>/<run>/``
holding links named ``checkpoint-N.safetensors`` (``-ema``, ``-rolling``, ``<run>-final``) and a
manifest ``.sd35wb-links.json`` listing exactly what this tool made there. Rules:

- **one writer per run folder**: every sync (CLI, node, route, in any process) holds an exclusive
  OS lock on ``<dest>/<run>/.sd35wb-links.lock`` while it reads, changes and writes that folder.
  The kernel drops the lock when its process dies, so a killed sync never blocks the next one;
- **the manifest is always true**: a file is recorded (with its temporary name) before it is
  made, its identity is recorded before it is renamed into place, and the record is finished
  after; a crash or ``kill -9`` at any point leaves a manifest the next sync repairs from
  (:func:`_repair`) without calling anything of ours a user file. Temporary names are unique
  (pid + random), and manifest writes are atomic (write, fsync, ``os.replace``);
- a name that exists and is not in the manifest is the user's: reported as a collision, never
  touched (a symlink already pointing at the same source, as the old shell script made, is adopted);
- prune deletes only what it can prove it made: a symlink whose target is the recorded one, or a
  file whose (device, inode, size, mtime_ns) and, for copies and merges, content fingerprint
  match the record (a hard link may also be the source file itself). Anything else is left alone;
- symlink first; where symlinks are not allowed, a hard link; a copy only when asked (``copy=True``);
- sharded weights are merged into one file in the run folder (see ``shards.merge_shards``),
  re-merged only when a shard changes;
- who may link what (:func:`authorize`, the same for node, route and CLI): the output_dir and
  every file a sync would link or merge must resolve inside a training root
  (``SD35WB_TRAINING_ROOTS``); names and paths are checked first (:mod:`sd35wb.names`).

Destinations (:func:`destinations`): ``diffusion_models/<run>/`` and ``loras/<run>/`` wherever the
host keeps them; links an earlier version left in another diffusion_models path (``unet/<run>/``
on ComfyUI 0.3.75, whose first diffusion_models path is ``models/unet``) move there once.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import finetune, names, shards, simpletuner

MANIFEST = ".sd35wb-links.json"
LOCK = ".sd35wb-links.lock"
MANIFEST_VERSION = 2
TOOL = "sd35-workbench"
ROOTS_ENV = "SD35WB_TRAINING_ROOTS"
LOCK_TIMEOUT = 600.0  # a sync of a huge sharded EMA may hold the lock for minutes
# Every temporary name this tool makes in a run folder; only ever seen while a sync runs (or after a kill).
_TMP = re.compile(r"^\..+\.sd35wb-(tmp|merging)-\d+(-[0-9a-f]{8})?$|^\.\.sd35wb-links\.json\.\d+(\.[0-9a-f]{8})?\.tmp$"
                  r"|^\.sd35-workbench-write-test(-\d+-[0-9a-f]{8})?$")
FP_SAMPLES, FP_CHUNK = 16, 64 * 1024


class LinkError(ValueError):
    """A sync refused before doing anything; ``field`` names the input, ``status`` the HTTP answer."""

    def __init__(self, message: str, field: str = "output_dir", status: int = 400):
        super().__init__(message)
        self.field, self.status = field, status


# ---------------------------------------------------------------------------------------------
# Report


@dataclass
class Exposed:
    """One model a sync leaves visible to the host (i14 adds its detector's answer here)."""

    name: str  # host model name, e.g. "my-run/checkpoint-800.safetensors"
    folder: str
    category: str
    step: int | None
    source: str
    mode: str  # symlink / hardlink / copy / merged


@dataclass
class Report:
    run: str
    output_dir: str
    linked: list[tuple[str, str]] = field(default_factory=list)  # (model name, how: symlink/hardlink/copy/merged)
    unchanged: list[str] = field(default_factory=list)
    pruned: list[tuple[str, str]] = field(default_factory=list)  # (model name, why)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path or name, why)
    repaired: list[tuple[str, str]] = field(default_factory=list)  # (name, what an interrupted sync left and what was done)
    moved: list[tuple[str, str]] = field(default_factory=list)  # (old path, new model name): one-time move from unet/
    exposed: dict[str, list[str]] = field(default_factory=dict)  # folder -> model names, numeric order
    entries: dict[str, list[Exposed]] = field(default_factory=dict)  # folder -> one record per exposed model
    bytes_copied: int = 0  # copies (only with copy=True) and merges
    bytes_merged: int = 0
    seconds: float = 0.0
    detected: dict[str, dict] = field(default_factory=dict)  # exposed diffusion model -> finetune detection

    @property
    def changed(self) -> bool:
        return bool(self.linked or self.pruned or self.moved or self.repaired)

    def lines(self) -> list[str]:
        out = [f"moved     {old} -> {new}" for old, new in self.moved]
        out += [f"repaired  {n}  ({what})" for n, what in self.repaired]
        out += [f"linked    {n}  ({how})" for n, how in self.linked]
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
                "skipped": [list(x) for x in self.skipped], "repaired": [list(x) for x in self.repaired],
                "moved": [list(x) for x in self.moved], "exposed": self.exposed,
                "entries": {k: [asdict(e) for e in v] for k, v in self.entries.items()},
                "bytes_copied": self.bytes_copied, "bytes_merged": self.bytes_merged, "seconds": self.seconds,
                "detected": self.detected}


def _model_name(run: str, name: str) -> str:
    return os.path.join(run, name)  # what the host's get_filename_list shows on this OS


def _step(name: str) -> None:
    """Called between the steps of a sync; does nothing. The fault-injection tests replace it in
    a child process (tests/fault_sync.py) to raise or kill -9 at step k."""


# ---------------------------------------------------------------------------------------------
# Destinations: one rule for node, route and CLI


@dataclass(frozen=True)
class Destinations:
    dirs: dict  # "diffusion_models" / "loras" -> folder a sync writes into
    legacy: tuple = ()  # other diffusion_models folders an earlier version may have written <run>/ into


def destinations(diffusion_paths: list, lora_paths: list) -> Destinations:
    """Where a sync writes, from the host's folder lists (``folder_paths.get_folder_paths``).

    diffusion_models: the first listed folder named ``diffusion_models`` (ComfyUI lists
    ``models/unet`` first, the legacy name; a user's ``is_default`` extra path named
    diffusion_models comes before both), else the first listed; loras likewise. Every other
    diffusion_models folder is a legacy place an earlier version of this pack wrote to."""
    def pick(paths, name):
        paths = [str(p) for p in paths]
        named = [p for p in paths if os.path.basename(os.path.normpath(p)) == name]
        return (named or paths)[0]
    dm = pick(diffusion_paths, simpletuner.DIFFUSION_MODELS)
    legacy = tuple(p for p in map(str, diffusion_paths)
                   if os.path.normpath(p) != os.path.normpath(dm))
    return Destinations({simpletuner.DIFFUSION_MODELS: dm, simpletuner.LORAS: pick(lora_paths, simpletuner.LORAS)},
                        legacy)


def models_dir_destinations(models_dir: str | os.PathLike) -> Destinations:
    """The same rule for a bare ``models/`` folder (the CLI): the host's default folder lists."""
    m = Path(models_dir)
    return destinations([m / "unet", m / "diffusion_models"], [m / "loras"])


# ---------------------------------------------------------------------------------------------
# Who may link what


def authorize(output_dir: str, roots_env: str) -> Path:
    """The run's real folder, if ``output_dir`` and the roots allow a sync at all (else LinkError)."""
    try:
        names.check_path(output_dir, "output_dir")
        return simpletuner.resolve_training_dir(output_dir, roots_env)
    except PermissionError as e:
        raise LinkError(str(e), "output_dir", 403) from e
    except ValueError as e:
        raise LinkError(str(e), "output_dir", 400) from e


def _files_of(art: simpletuner.Artifact) -> list[Path]:
    return [art.source, *shards.shard_files(art.source)] if art.sharded else [art.source]


_GONE = "gone while this sync ran (checkpoint rotated away?); the next sync sees the run as it is now"


def _refusal(art: simpletuner.Artifact, roots: list[Path]) -> str | None:
    """Why ``art`` may not be linked (a file that resolves outside every root, or one gone since
    the scan), or None."""
    try:
        files = _files_of(art)
    except (OSError, shards.SafetensorsError) as e:  # SimpleTuner rotated it away while we scanned
        return _GONE if not art.source.exists() else f"not linked: {e}"
    if not all(f.exists() for f in files):
        return _GONE
    for f in files:
        real = Path(os.path.realpath(f))
        if not any(real == r or real.is_relative_to(r) for r in roots):
            return (f"refused: {f} resolves to {real}, outside the training roots ({ROOTS_ENV}); "
                    "only files inside them are linked (a symlink out of the run?)")
    return None


# ---------------------------------------------------------------------------------------------
# Manifest, lock, identity


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


@contextmanager
def run_lock(run_dir: Path, timeout: float = LOCK_TIMEOUT):
    """Hold the run folder's exclusive lock (across processes and threads: one open file each)."""
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while not _try_lock(fd):
            if time.monotonic() > deadline:
                raise LinkError(f"run: another sync of {run_dir} has held its lock for {timeout:.0f} s; "
                                "try again when it finishes", "run", 409)
            time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock; the lock file itself stays (deleting it would race)


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


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


def _tmp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.sd35wb-tmp-{os.getpid()}-{os.urandom(4).hex()}")


_NO_SYMLINK = {errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_NO_HARDLINK = _NO_SYMLINK | {errno.EXDEV, errno.EMLINK}


class _CannotLink(Exception):
    pass


def _make(art: simpletuner.Artifact, tmp: Path, copy: bool) -> tuple[str, dict, int]:
    """Create ``tmp`` for ``art``; return (mode, extra record fields, bytes written)."""
    src = art.source
    if art.sharded:
        sig = shards.shard_signature(src)
        res = shards.merge_shards(src, tmp, work=tmp)
        return "merged", {"sig": sig}, res.bytes_written
    if copy:
        sig = _src_sig(src)
        shutil.copyfile(src, tmp)
        return "copy", {"sig": sig}, tmp.stat().st_size
    if not src.exists():  # rotated away since the scan: a link to nothing would show in the lists
        raise _CannotLink(_GONE)
    target = str(src.resolve())
    try:
        os.symlink(target, tmp)
        return "symlink", {}, 0
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
    return "hardlink", {}, 0


# ---------------------------------------------------------------------------------------------
# Sync


def sync(output_dir: str | os.PathLike, run: str | None, dest: Destinations | dict, include=simpletuner.CATEGORIES,
         copy: bool = False, roots: str | None = None) -> Report:
    """Link a SimpleTuner run into ComfyUI model folders; see the module docstring for the rules.

    ``roots`` is ``SD35WB_TRAINING_ROOTS``'s value (None: read it from the environment); without
    a root nothing is linked. ``dest`` is :func:`destinations`' answer (or a bare folder dict).
    Every input is checked before anything is written; LinkError names the input."""
    t0 = time.perf_counter()
    if isinstance(dest, dict):
        dest = Destinations(dict(dest))
    roots = os.environ.get(ROOTS_ENV, "") if roots is None else roots
    try:
        if run:
            run = names.check_run_name(run)
        include = simpletuner.parse_include(include)
    except ValueError as e:
        raise LinkError(str(e), "include" if str(e).startswith("include") else "run") from e
    out = authorize(str(output_dir), roots)
    if not run:  # the output_dir's own name: a folder name, but maybe not one every OS accepts
        try:
            run = names.check_run_name(out.name)
        except ValueError as e:
            raise LinkError(f"{e} (the run name defaults to output_dir's folder name: give run)", "run") from e
    longest = max(len(n) for n in (f"{run}-final.safetensors", "checkpoint-999999999999-rolling-ema.safetensors"))
    for folder, base in dest.dirs.items():
        if base is not None:
            try:
                names.check_path(os.path.join(str(base), run, "." + "x" * longest + ".sd35wb-tmp-9999999-ffffffff"),
                                 "run", what=f"the {folder} path for this run")
            except ValueError as e:
                raise LinkError(str(e), "run") from e
    scan = simpletuner.scan(out, run)
    root_list = simpletuner.training_roots(roots)
    report = Report(run, str(out))
    report.skipped += [(str(s.path), s.reason) for s in scan.skipped]
    refused = {}
    for a in scan.artifacts:
        why = _refusal(a, root_list)
        if why:
            refused[(a.folder, a.name)] = why
    for folder in (simpletuner.DIFFUSION_MODELS, simpletuner.LORAS):
        base = dest.dirs.get(folder)
        offered = {a.name: a for a in scan.artifacts if a.folder == folder and (folder, a.name) not in refused}
        selected = [a for a in scan.select(include) if a.folder == folder]
        report.skipped += [(_model_name(run, a.name), refused[(folder, a.name)]) for a in selected
                           if (folder, a.name) in refused]
        selected = [a for a in selected if (folder, a.name) not in refused]
        if base is None:
            report.skipped += [(a.name, f"no {folder} folder given") for a in selected]
            continue
        run_dir = Path(base) / run
        real_base, real_run = os.path.realpath(base), os.path.realpath(run_dir)
        if os.path.commonpath([real_base, real_run]) != real_base or real_run == real_base:
            raise LinkError(f"run: {run_dir} leads outside {base} (a symlinked run folder); refusing to write "
                            "through it: remove the link or pick another run name", "run", 409)
        legacy = [Path(p) / run for p in dest.legacy] if folder == simpletuner.DIFFUSION_MODELS else []
        legacy = [d for d in legacy if (d / MANIFEST).is_file()]
        if not run_dir.is_dir() and not selected and not legacy:
            report.exposed[folder], report.entries[folder] = [], []
            continue
        with _writable_lock(run_dir, folder):
            _step("locked")
            _sync_folder(run_dir, out, run, folder, selected, offered, copy, report, legacy)
    # What each exposed checkpoint is (prediction, zero-SNR, family), from its header and the run's configs.
    run_cfg = finetune.run_claims(out)
    dm_dir = dest.dirs.get(simpletuner.DIFFUSION_MODELS)
    for model in report.exposed.get(simpletuner.DIFFUSION_MODELS, []) if dm_dir is not None else []:
        report.detected[model] = finetune.detect_checkpoint(Path(dm_dir) / model, out, run_cfg)
    report.seconds = time.perf_counter() - t0
    return report


@contextmanager
def _writable_lock(run_dir: Path, folder: str):
    """Create the run folder, take its lock and check it is writable (a probe under a unique name)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = run_lock(run_dir)
        lock.__enter__()
    except OSError as e:
        raise _read_only(run_dir, folder, e) from e
    try:
        probe = run_dir / f".{TOOL}-write-test-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise _read_only(run_dir, folder, e) from e
        yield
    finally:
        lock.__exit__(None, None, None)


def _read_only(run_dir: Path, folder: str, e: OSError) -> LinkError:
    return LinkError(f"{folder}: cannot write to {run_dir.parent} ({e.strerror}); the model folder is read-only. "
                     f"Make it writable, or list a writable {folder} folder first (extra_model_paths.yaml, "
                     "is_default: true): links go into the first one", folder, 409)


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
            _step("moved")
        _write_manifest(old_dir, old)
        try:  # empty now (only our manifest and lock): remove the old run folder
            if not [e for e in os.listdir(old_dir) if e not in (MANIFEST, LOCK)] and not old["links"]:
                os.unlink(old_dir / MANIFEST)
                os.unlink(old_dir / LOCK)
                os.rmdir(old_dir)
        except OSError:
            pass
    return dirty


def _sync_folder(run_dir: Path, output_dir: Path, run: str, folder: str, selected: list, offered: dict,
                 copy: bool, report: Report, legacy: list[Path]) -> None:
    manifest = read_manifest(run_dir)
    if manifest.get("output_dir") not in (None, str(output_dir)) and manifest["links"]:
        raise LinkError(f"run: {run!r} already holds links to {manifest['output_dir']} in {run_dir}; "
                        "choose another run name for this output_dir", "run", 409)
    manifest.update(tool=TOOL, version=MANIFEST_VERSION, output_dir=str(output_dir), run=run)
    links: dict = manifest["links"]
    dirty = _repair(run_dir, manifest, report, run)
    if dirty:
        _write_manifest(run_dir, manifest)
        _step("repaired")
    if legacy:
        dirty |= _move_legacy(legacy, run_dir, manifest, run, report)
    exposed: list[tuple[simpletuner.Artifact, str]] = []
    # 1. Prune what this tool made whose source is gone or no longer offered by the run.
    for name, rec in sorted(links.items()):
        art = offered.get(name)
        src = Path(rec.get("source", ""))
        if art is not None and src.exists():
            continue
        dest = run_dir / name
        model = _model_name(run, name)
        why = "source gone (checkpoint rotated away or deleted)" if not src.exists() \
            else "no longer offered by the run (in progress, incomplete or refused)"
        if _matches(dest, rec, src):
            dest.unlink()
            report.pruned.append((model, why))
        elif os.path.lexists(dest):
            report.skipped.append((model, "not pruned: the file there is no longer the one this tool made"))
        del links[name]
        dirty = True
    if dirty:
        _write_manifest(run_dir, manifest)
        _step("pruned")
    # 2. Decide what to make.
    todo: list[tuple[simpletuner.Artifact, dict | None]] = []
    for art in selected:
        dest = run_dir / art.name
        model = _model_name(run, art.name)
        rec = links.get(art.name)
        if rec is not None and _matches(dest, rec, art.source, deep=False) and _up_to_date(dest, rec, art) \
                and "id" in rec:
            report.unchanged.append(model)  # the common case of a re-sync: nothing to prove further
            exposed.append((art, rec["mode"]))
            continue
        if rec is not None and not _matches(dest, rec, art.source):
            del links[art.name]
            dirty = True
            if os.path.lexists(dest):
                report.skipped.append((model, "collision: the file there is not the link this tool made; left untouched"))
                continue
            rec = None  # removed by hand: make it again
        if rec is not None and "id" not in rec and rec.get("mode") != "symlink":
            rec.update(_identity(dest, rec["mode"]))  # a version-1 record proven above: record the full identity
            dirty = True
        if rec is not None and _up_to_date(dest, rec, art):
            report.unchanged.append(model)
            exposed.append((art, rec["mode"]))
            continue
        if rec is None and os.path.lexists(dest):
            if os.path.islink(dest) and not art.sharded and os.path.realpath(dest) == str(art.source.resolve()):
                links[art.name] = {"source": str(art.source), "mode": "symlink", "target": os.readlink(dest),
                                   "category": art.category}
                report.unchanged.append(model)
                exposed.append((art, "symlink"))
                dirty = True
                continue
            report.skipped.append((model, "collision: a file you put there has this name; left untouched "
                                          "(rename it, or sync under another run name)"))
            continue
        todo.append((art, rec))
    if not todo:
        if dirty:
            _write_manifest(run_dir, manifest)
        _scan_dangling(run_dir, links, run, report)
        _finish(report, folder, run, exposed)
        return
    # 3. Record the intent (temporary names) before anything is made.
    tmps = {}
    for art, rec in todo:
        tmps[art.name] = _tmp_name(run_dir / art.name)
        links[art.name] = {"source": str(art.source), "category": art.category, "pending": True,
                           "tmp": tmps[art.name].name, **({"prev": rec} if rec else {})}
    _write_manifest(run_dir, manifest)
    _step("intent")
    # 4. Make each under its temporary name and record its identity.
    made = []
    for art, _rec in todo:
        tmp, model = tmps[art.name], _model_name(run, art.name)
        try:
            mode, extra, nbytes = _make(art, tmp, copy)
        except (_CannotLink, shards.SafetensorsError, OSError) as e:
            _unlink_quiet(tmp)
            prev = links[art.name].get("prev")
            links[art.name] = prev if prev else None
            if links[art.name] is None:
                del links[art.name]
            why = str(e) if isinstance(e, _CannotLink) else f"merge failed: {e}" if art.sharded else f"failed: {e}"
            report.skipped.append((model, why))
            if prev:
                exposed.append((art, prev["mode"]))
            continue
        links[art.name].update(mode=mode, **extra, **_identity(tmp, mode))
        made.append((art, mode, nbytes))
        _step("made")
    _write_manifest(run_dir, manifest)
    _step("recorded")
    # 5. Rename into place, then finish the records.
    for art, mode, nbytes in made:
        os.replace(tmps[art.name], run_dir / art.name)
        _step("placed")
        for k in ("pending", "tmp", "prev"):
            links[art.name].pop(k, None)
        if mode == "merged":
            report.bytes_merged += nbytes
        if mode in ("copy", "merged"):
            report.bytes_copied += nbytes
        report.linked.append((_model_name(run, art.name), mode if mode != "merged" else f"merged {nbytes} bytes from shards"))
        exposed.append((art, mode))
    _write_manifest(run_dir, manifest)
    _step("written")
    _scan_dangling(run_dir, links, run, report)
    _finish(report, folder, run, exposed)


def _scan_dangling(run_dir: Path, links: dict, run: str, report: Report) -> None:
    # Dangling links the user (or an old script) left: mention, never touch.
    for entry in os.scandir(run_dir):
        if entry.is_symlink() and entry.name not in links and not os.path.exists(entry.path):
            report.skipped.append((_model_name(run, entry.name), "dangling link not made by this tool; left alone"))


def _finish(report: Report, folder: str, run: str, exposed: list) -> None:
    exposed = sorted(exposed, key=lambda am: am[0].sort_key)
    report.exposed[folder] = [_model_name(run, a.name) for a, _m in exposed]
    report.entries[folder] = [Exposed(_model_name(run, a.name), folder, a.category, a.step, str(a.source), m)
                              for a, m in exposed]
