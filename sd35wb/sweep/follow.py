"""``python -m sd35wb.sweep --follow``: sweep a training run while it trains.

Every checkpoint SimpleTuner finishes is linked (the linker's rules: a ``temporary-N/`` or
``-tmp`` folder, a checkpoint without its ``checkpoint_manifest.json`` / ``.guard`` and a
half-written file are never offered), rendered through the same :class:`.dispatch.Sweep`
machinery as any sweep (one server, several, or Ray: one dispatch per batch of newly landed
checkpoints) and added to the state and the grid as it lands. It stops once the run's final save
is rendered, at ``--until-step N``, or on Ctrl-C; run the same command again and it resumes from
the state file (nothing is rendered twice).

Where it learns of a checkpoint: the first server's ``/sd35wb/simpletuner/events`` when SimpleTuner
pushes its webhook there (a long poll, no disk scan), else a sync every ``--poll`` seconds. How it
links: through each server's sync route (the paths are the server's), locally with
``--models-dir`` when this machine sees the same disk, or not at all (the webhook, cron or Sync now
links). Rotation (``checkpoints_total_limit``): a checkpoint deleted after it was rendered stays in
the grid from its images; one deleted before it was rendered is reported, not an error.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
from pathlib import Path

from .. import linker, simpletuner
from .dispatch import Sweep
from .plan import checkpoint_step, model_label

EVENTS = "/sd35wb/simpletuner/events"
SYNC = "/sd35wb/simpletuner/sync"
PUSHED_RESCAN = 30.0  # seconds between disk syncs once the trainer pushes events (rotation, missed events)


class FollowError(ValueError):
    pass


class Follower:
    """Follow one run (``run``: the folder under ``loras/`` or ``diffusion_models/``) into ``sweep``.

    ``link``: ``("server", output_dir)``, ``("local", output_dir, models_dir, roots)`` or None.
    ``make_dispatch``: a callable giving a fresh scheduler per batch (None: the local one).
    ``publish(result)``: writes the outputs after each batch."""

    def __init__(self, sweep: Sweep, run: str, lora: bool, link=None, until_step: int | None = None,
                 poll: float = 2.0, make_dispatch=None, publish=None, log=sys.stdout):
        self.sweep, self.run, self.lora, self.link_how = sweep, run, lora, link
        self.until, self.poll = until_step, poll
        self.make_dispatch, self.publish = make_dispatch, publish or (lambda result: None)
        self.log = log
        self.planned: list[str] = []
        self.reported: set[str] = set()  # rotated away before it was rendered: said once, never planned again
        self.kept: set[str] = set()  # rotated away after it was rendered: said once, stays in the grid
        self.events = False
        self.cursor, self.boot = 0, None
        self.pushed = False  # the trainer's webhook reaches the first server: sync on its events
        self.pushed_dir: str | None = None  # the output_dir its events named (to link the other servers)
        self.stop_reason = ""
        self.waiting_dir = False

    # -- what has landed ------------------------------------------------------------------------

    def say(self, line: str) -> None:
        self.sweep.say(line)

    def link(self, first: bool = False) -> None:
        """Link the run's finished checkpoints (the linker decides what is finished)."""
        how = self.link_how
        out = how[1] if how else self.pushed_dir
        if how and how[0] == "local":
            try:
                rep = linker.sync(out, self.run, linker.models_dir_destinations(how[2]), roots=how[3])
            except linker.LinkError as e:
                if _not_yet(str(e)):
                    return self._not_there(out)
                if first:
                    raise FollowError(f"--follow {out}: {e}") from None
                return self.say(f"note: linking {out} failed this time: {e}")
            self._said_linked([n for n, _ in rep.linked])
            return
        if out is None:
            return
        for i, server in enumerate(self.sweep.servers):
            if self.pushed and i == 0 and not how:
                continue  # the webhook's own sync linked it there
            try:
                with server._open(SYNC, {"output_dir": out, "run": self.run}) as r:
                    rep = json.loads(r.read())
            except urllib.error.HTTPError as e:
                why = _error_text(e)
                if e.code == 400 and _not_yet(why):
                    self._not_there(out, server.url)
                    continue
                if first and i == 0:
                    raise FollowError(f"--follow {out}: {server.url} refused the sync (HTTP {e.code}): {why}") from None
                self.say(f"note: {server.url} refused the sync of {out} (HTTP {e.code}): {why}")
                continue
            except (urllib.error.URLError, OSError, ValueError) as e:
                if first and i == 0:
                    raise FollowError(f"--follow: {server.url} does not answer ({getattr(e, 'reason', e)})") from None
                self.say(f"note: {server.url} did not answer the sync ({getattr(e, 'reason', e)}); trying again later")
                continue
            if i == 0:
                self._said_linked([n for n, _ in rep.get("linked", [])])

    def _not_there(self, out: str, where: str = "this machine") -> None:
        if not self.waiting_dir:
            self.waiting_dir = True
            self.say(f"follow: {out} is not there yet (on {where}); waiting for SimpleTuner to create it")

    def _said_linked(self, names: list[str]) -> None:
        for n in names:
            if n.replace("\\", "/").startswith(self.run + "/"):
                self.say(f"linked: {n}")

    def landed(self) -> list[str] | None:
        """The run's models the first server lists now (numeric order); None when it did not answer."""
        server = self.sweep.servers[0]
        try:
            listed = server.loras() if self.lora else server.diffusion_models()
        except (urllib.error.URLError, OSError, ValueError) as e:
            self.say(f"note: {server.url} did not list its models ({getattr(e, 'reason', e)}); trying again later")
            return None
        return simpletuner.natural_sorted(n for n in listed if n.replace("\\", "/").startswith(self.run + "/"))

    def is_final(self, name: str) -> bool:
        return model_label(name) == f"{self.run}-final"

    def step(self, name: str) -> int | None:
        return checkpoint_step(model_label(name))

    def eligible(self, name: str) -> bool:
        if self.until is None or self.is_final(name):
            return True
        s = self.step(name)
        return s is not None and s <= self.until

    # -- waiting for the next checkpoint ----------------------------------------------------------

    def probe_events(self) -> None:
        """Use the first server's event log when it has one (the pack's webhook route)."""
        try:
            doc = self.sweep.servers[0].get_json(f"{EVENTS}?since=0")
        except (urllib.error.URLError, OSError, ValueError):
            return
        if isinstance(doc, dict) and isinstance(doc.get("last"), int):
            self.events, self.cursor, self.boot = True, doc["last"], doc.get("boot")

    def wait(self) -> None:
        """Until an event of this run arrives, or the next disk sync is due."""
        deadline = time.monotonic() + (max(self.poll, PUSHED_RESCAN) if self.pushed else self.poll)
        while (left := deadline - time.monotonic()) > 0:
            if not self.events:
                time.sleep(left)
                return
            q = urllib.parse.urlencode({"since": self.cursor, "wait": f"{min(left, 25.0):.2f}", "run": self.run})
            try:
                doc = self.sweep.servers[0].get_json(f"{EVENTS}?{q}")
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(min(left, 1.0))
                continue
            if doc.get("boot") != self.boot:  # the server restarted: its numbering starts again
                self.boot, self.cursor = doc.get("boot"), 0
                continue
            self.cursor = max(self.cursor, int(doc.get("last") or 0))
            mine = [e for e in doc.get("events", []) if e.get("run") == self.run]
            if mine:
                self.pushed = True
                self.pushed_dir = self.pushed_dir or mine[-1].get("output_dir")
                return

    # -- rendering --------------------------------------------------------------------------------

    def _has_images(self, model: str) -> bool:
        sw = self.sweep
        return any(c.model == model and (c in sw.result.files or sw.state.done(sw.key(c))) for c in sw.cells)

    def _plan(self, models: list[str], landed: set[str]) -> None:
        """Plan every model so far; a model no longer listed keeps only the cells it has images of."""
        sw = self.sweep
        sw.set_models(simpletuner.natural_sorted(models))
        sw.prepare()
        gone = [m for m in sw.models if m not in landed and not self._has_images(m)]
        if gone:
            for m in gone:
                self._rotated(m, rendered=False)
            self.planned = [m for m in self.planned if m not in gone]
            sw.set_models([m for m in sw.models if m not in gone])
            sw.prepare()
        keep = [c for c in sw.cells if c.model in landed or c in sw.result.files or sw.state.done(sw.key(c))]
        sw.cells, sw.total = keep, len(keep)

    def _rotated(self, model: str, rendered: bool) -> None:
        label = self.sweep.labels.get(model, model_label(model))
        if rendered and model not in self.kept:
            self.kept.add(model)
            self.say(f"rotated: {label} was deleted by SimpleTuner's rotation (checkpoints_total_limit) after it was "
                     "rendered; it stays in the grid from its images")
        elif not rendered and model not in self.reported:
            self.reported.add(model)
            self.say(f"rotated: {label} was deleted by SimpleTuner's rotation (checkpoints_total_limit) before it "
                     "was rendered; it is not in the grid")

    def batch(self, new: list[str], landed: list[str]) -> None:
        """Render what is new (and resume what the state has): the same Sweep.run as any sweep."""
        sw = self.sweep
        here = set(landed)
        self.planned = simpletuner.natural_sorted(set(self.planned) | set(new))
        self._plan(self.planned, here)
        if not sw.cells:
            return
        sw.run(self.make_dispatch() if self.make_dispatch else None)
        failed = {c.model for c in sw.result.failures}
        if failed:  # rotated away between the listing and the render? Ask again.
            self.link()
            now = self.landed()
            if now is not None:
                gone = [m for m in failed if m not in now]
                for m in gone:
                    for c in [c for c in sw.result.failures if c.model == m]:
                        del sw.result.failures[c]
                    if not self._has_images(m):
                        self._rotated(m, rendered=False)
                        self.planned.remove(m)
                if gone:
                    self._plan(self.planned, set(now))

    def follow(self) -> None:
        """Watch, render, publish; returns at the final save or ``--until-step`` (Ctrl-C raises)."""
        sw = self.sweep
        sw.state.acquire()  # one follower per --out for the whole run, not per batch
        try:
            self.probe_events()
            self.link(first=True)
            # A restart: what the state has of this run is planned again (rendered, maybe rotated away since).
            resumed = [e.get("model") for e in sw.state.cells.values()]
            self.planned = [m for m in dict.fromkeys(resumed) if isinstance(m, str)
                            and m.replace("\\", "/").startswith(self.run + "/") and self.eligible(m)]
            how = ("events from the webhook, else a sync every " if self.events else "a sync every ") + f"{self.poll:g} s"
            self.say(f"follow: watching {self.run} ({how}); stops at the final save"
                     + (f" or at step {self.until}" if self.until is not None else "") + ", or on Ctrl-C")
            first = True
            while True:
                landed = self.landed()
                if landed is not None:
                    for m in self.planned:
                        if m not in landed and m not in self.kept and self._has_images(m):
                            self._rotated(m, rendered=True)
                    new = [n for n in landed if self.eligible(n) and n not in self.planned and n not in self.reported]
                    for n in new:
                        self.say(f"landed: {sw.labels.get(n) or model_label(n)}")
                    if new or (first and self.planned):
                        self.batch(new, landed)
                        if sw.result.files:
                            self.publish(sw.result)
                    first = False
                    if self._done(landed):
                        return
                self.wait()
                self.link()
        finally:
            sw.state.release()

    def _done(self, landed: list[str]) -> bool:
        finals = [n for n in self.planned if self.is_final(n)]
        r = self.sweep.result
        if finals and all(any(c.model == n for c in [*r.files, *r.failures]) or n in self.reported for n in finals):
            self.stop_reason = f"the run's final save ({model_label(finals[0])}) is rendered"
            return True
        if self.until is not None:
            past = [s for n in landed if (s := self.step(n)) is not None and s >= self.until]
            if past:
                self.stop_reason = f"reached --until-step {self.until} (step {min(past)} has landed)"
                return True
        return False


def _not_yet(why: str) -> bool:
    """The linker's answer for an output_dir inside the roots that does not exist (yet)."""
    return "is not a folder under the training roots" in why


def _error_text(e: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(e.read())
        return str(doc.get("error") or doc)
    except (ValueError, OSError):
        return f"HTTP {e.code}"


def follow_link(follow_dir: str | None, models_dir: Path | None, roots: str | None):
    """The ``link`` argument for :class:`Follower` from the CLI's ``--follow`` / ``--models-dir``."""
    if models_dir is not None:
        if not follow_dir:
            raise FollowError("--models-dir: give the run's output_dir too (--follow OUTPUT_DIR) to link it locally")
        if not Path(models_dir).is_dir():
            raise FollowError(f"--models-dir {models_dir}: not a folder; give ComfyUI's models/ folder (the one the "
                              "servers read)")
        roots = roots if roots is not None else os.environ.get(linker.ROOTS_ENV, "")
        if not roots.strip():
            raise FollowError(f"--models-dir: no training roots: pass --training-roots DIR or set {linker.ROOTS_ENV} "
                              "(only files inside them are linked)")
        return ("local", os.path.abspath(follow_dir), Path(models_dir), roots)
    return ("server", follow_dir) if follow_dir else None


__all__ = ["Follower", "FollowError", "follow_link"]
