"""The sync: check every input, scan the run, then per destination repair, prune, link and record."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from .. import finetune, names, shards, simpletuner
from .. import linker as _package  # its _step is the hook tests/fault_sync.py replaces
from .identity import _identity, _matches, _up_to_date
from .lock import run_lock
from .make import _CannotLink, _make, _tmp_name
from .manifest import MANIFEST, MANIFEST_VERSION, TOOL, _unlink_quiet, _write_manifest, read_manifest
from .paths import ROOTS_ENV, Destinations, _refusal, authorize
from .repair import _move_legacy, _repair
from .report import Exposed, LinkError, Report, _model_name


def sync(output_dir: str | os.PathLike, run: str | None, dest: Destinations | dict, include=simpletuner.CATEGORIES,
         copy: bool = False, roots: str | None = None) -> Report:
    """Link a SimpleTuner run into ComfyUI model folders; see ``sd35wb.linker``'s docstring for the rules.

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
            _package._step("locked")
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
        _package._step("repaired")
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
        _package._step("pruned")
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
    _package._step("intent")
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
        _package._step("made")
    _write_manifest(run_dir, manifest)
    _package._step("recorded")
    # 5. Rename into place, then finish the records.
    for art, mode, nbytes in made:
        os.replace(tmps[art.name], run_dir / art.name)
        _package._step("placed")
        for k in ("pending", "tmp", "prev"):
            links[art.name].pop(k, None)
        if mode == "merged":
            report.bytes_merged += nbytes
        if mode in ("copy", "merged"):
            report.bytes_copied += nbytes
        report.linked.append((_model_name(run, art.name), mode if mode != "merged" else f"merged {nbytes} bytes from shards"))
        exposed.append((art, mode))
    _write_manifest(run_dir, manifest)
    _package._step("written")
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
