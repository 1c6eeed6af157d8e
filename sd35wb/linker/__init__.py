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

One job per module: :mod:`.paths` (destinations, training roots, who may link what),
:mod:`.manifest` (the record), :mod:`.lock` (one writer), :mod:`.identity` (is a file still ours),
:mod:`.make` (one link), :mod:`.repair` (interrupted syncs, the move out of unet/), :mod:`.apply` (the
sync itself), :mod:`.report` (LinkError, Report). Import from ``sd35wb.linker``: the names below are
its interface for node, route, CLI and tests.
"""

from __future__ import annotations

from .apply import sync
from .identity import FP_CHUNK, FP_SAMPLES, _matches, fingerprint
from .lock import LOCK, LOCK_TIMEOUT, run_lock
from .manifest import MANIFEST, MANIFEST_VERSION, TOOL, read_manifest
from .paths import ROOTS_ENV, Destinations, authorize, destinations, models_dir_destinations
from .report import Exposed, LinkError, Report


def _step(name: str) -> None:
    """Called between the steps of a sync; does nothing. The fault-injection tests replace it in
    a child process (tests/fault_sync.py) to raise or kill -9 at step k; the sync looks it up here
    at each call, so replacing ``sd35wb.linker._step`` is enough."""


__all__ = [
    "FP_CHUNK", "FP_SAMPLES", "LOCK", "LOCK_TIMEOUT", "MANIFEST", "MANIFEST_VERSION", "ROOTS_ENV", "TOOL",
    "Destinations", "Exposed", "LinkError", "Report", "authorize", "destinations", "fingerprint",
    "models_dir_destinations", "read_manifest", "run_lock", "sync",
    "_matches", "_step",  # used by tests/linker_helpers.py and tests/fault_sync.py
]
