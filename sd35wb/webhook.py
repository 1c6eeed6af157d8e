"""SimpleTuner's webhook, received: parse its ``"webhook_type": "raw"`` payloads, link the run on a
checkpoint event (the linker's own rules), and keep a short log of what happened for followers.

SimpleTuner (``simpletuner/helpers/webhooks/events.py`` + ``handler.py``'s ``send_raw``) posts, with
``requests.post(url, json=...)``, after each save::

    {"type": "training.checkpoint", "severity": "info", "job_id": "...",
     "checkpoint": {"path": "<output_dir>/checkpoint-500", "label": "Checkpoint saved to ...", "is_final": false},
     "title": "Checkpoint saved to ...", "timestamp": "2026-12-07T10:00:00+00:00"}

(the path is ``os.path.join(output_dir, "checkpoint-N")``, sent after the rename, so the folder is
complete), and lifecycle events such as ``{"type": "lifecycle.stage", "stage": {"key":
"checkpoint_save", "status": "completed", ...}, "message": "Saved checkpoint to <path>"}`` (sent
before the rename), ``"model_save"`` running ("Finalizing model and saving to <output_dir>") and
``"training_complete"`` completed (the final save is written). Older versions put the type in
``message_type``. Nothing here trusts the payload: the path goes through ``linker.sync``, which
refuses anything outside ``SD35WB_TRAINING_ROOTS`` (403), and only complete checkpoints are linked.

The route is thin (nodes/simpletuner.py); this module imports no ComfyUI.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from . import linker, simpletuner

MAX_BODY = 64 * 1024  # SimpleTuner's raw events are a few hundred bytes; a validation event carries no images here
MAX_EVENTS = 1000  # kept in memory for followers; older ones drop off (a follower then syncs from the disk)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)(-rolling)?$")
_SAVED = re.compile(r"^Saved checkpoint to (.+)$")
_FINALIZING = re.compile(r"^Finalizing model and saving to (.+)$")
HANDLED = "training.checkpoint, lifecycle.stage checkpoint_save / model_save / training_complete"


class WebhookError(ValueError):
    def __init__(self, message: str, status: int = 400, field: str | None = None):
        super().__init__(message)
        self.status, self.field = status, field


class EventLog:
    """What the webhook did, numbered from 1 since the server started (``boot`` changes on restart)."""

    def __init__(self, limit: int = MAX_EVENTS):
        self.boot = uuid.uuid4().hex[:12]
        self._events: deque = deque(maxlen=limit)
        self._next = 1
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[str, str | None]] = {}  # job_id -> (output_dir, run): for the final event

    def add(self, record: dict) -> dict:
        with self._lock:
            record = {"id": self._next, "received": time.time(), **record}
            self._next += 1
            self._events.append(record)
            return record

    def since(self, n: int, run: str | None = None) -> tuple[list[dict], int]:
        """Events with an id above ``n`` (of ``run`` only, if given), and the last id so far."""
        with self._lock:
            out = [e for e in self._events if e["id"] > n and (run is None or e.get("run") == run)]
            return out, self._next - 1

    def remember_job(self, job_id, output_dir: str, run: str | None) -> None:
        """By job id, and by the callback's run name: SimpleTuner sends job_id null unless
        SIMPLETUNER_JOB_ID is set."""
        with self._lock:
            for key in ([f"job:{job_id[:200]}"] if isinstance(job_id, str) and job_id else []) + [f"run:{run}"]:
                self._jobs.pop(key, None)
                self._jobs[key] = (output_dir, run)
            while len(self._jobs) > MAX_EVENTS:
                self._jobs.pop(next(iter(self._jobs)))

    def job(self, job_id, run: str | None = None) -> tuple[str, str | None] | None:
        with self._lock:
            found = self._jobs.get(f"job:{job_id}") if isinstance(job_id, str) and job_id else None
            return found or self._jobs.get(f"run:{run}")


EVENTS = EventLog()


def parse(body: bytes, content_type: str | None) -> dict:
    """The payload as a dict, or WebhookError (413 too big, 415 not JSON, 400 unreadable)."""
    if len(body) > MAX_BODY:
        raise WebhookError(f"body: {len(body)} bytes, above the limit of {MAX_BODY}; SimpleTuner's events are "
                           "small JSON objects", 413)
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise WebhookError(f"Content-Type {ctype or '(none)'!r}: send application/json (SimpleTuner's "
                           "\"webhook_type\": \"raw\" does)", 415)
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise WebhookError(f"body is not JSON ({e}); SimpleTuner's raw webhook posts a JSON object") from None
    if not isinstance(doc, dict):
        raise WebhookError("body must be a JSON object such as SimpleTuner's {\"type\": \"training.checkpoint\", ...}")
    return doc


def event_type(doc: dict) -> str:
    t = doc.get("type") or doc.get("message_type") or ""
    return t if isinstance(t, str) else ""


def _text(v, limit: int = 300) -> str | None:
    return v[:limit] if isinstance(v, str) else None


def checkpoint_target(path, final: bool = False) -> tuple[str, int | None]:
    """(output_dir, step) from a checkpoint path SimpleTuner sent; WebhookError when it is not one."""
    if not isinstance(path, str) or not path.strip() or "\x00" in path:
        raise WebhookError("checkpoint.path: a non-empty string is required (SimpleTuner sends "
                           "<output_dir>/checkpoint-N)", field="checkpoint.path")
    if len(path.encode("utf-8", "replace")) > 4096:
        raise WebhookError("checkpoint.path: longer than 4096 bytes", field="checkpoint.path")
    p = path.strip().rstrip("/\\")
    head, name = os.path.split(p.replace("\\", "/"))
    m = _CHECKPOINT.match(name)
    if m:
        return head, int(m.group(1))
    if final:  # a final event may name the output_dir itself
        return p, None
    raise WebhookError(f"checkpoint.path: {name!r} is not a checkpoint-N folder", field="checkpoint.path")


def interpret(doc: dict, log: EventLog, run: str | None = None) -> tuple[str, str | None, int | None, bool, str | None] | str:
    """(what, output_dir, step, final, checkpoint path) for an event that asks for a sync, or the reason
    it is ignored."""
    t = event_type(doc)
    job = doc.get("job_id")
    if t == "training.checkpoint":
        ck = doc.get("checkpoint")
        if not isinstance(ck, dict):
            raise WebhookError("checkpoint: an object {\"path\": ...} is required in a training.checkpoint event",
                               field="checkpoint")
        final = ck.get("is_final") is True
        out, step = checkpoint_target(ck.get("path"), final)
        return "checkpoint", out, step, final, ck["path"] if step is not None else None
    if t == "lifecycle.stage":
        stage = doc.get("stage") if isinstance(doc.get("stage"), dict) else {}
        key, status = stage.get("key"), stage.get("status")
        msg = doc.get("message") if isinstance(doc.get("message"), str) else ""
        if key == "checkpoint_save" and status == "completed" and _SAVED.match(msg):
            path = _SAVED.match(msg).group(1)
            out, step = checkpoint_target(path)
            return "checkpoint_save", out, step, False, path
        if key == "model_save" and _FINALIZING.match(msg):
            return "model_save", _FINALIZING.match(msg).group(1).strip(), None, False, None
        if key == "training_complete" and status == "completed":
            known = log.job(job, run)
            if known is None:
                return (f"training_complete of job {_text(job, 80)!r}: no checkpoint event of that job was seen "
                        "(the final save is linked by the next sync)")
            return "training_complete", known[0], None, True, None
        return f"lifecycle.stage {_text(key, 80)!r} ({_text(status, 40)!r}) is not handled (handled: {HANDLED})"
    return f"event type {_text(t, 80)!r} is not handled (handled: {HANDLED})"


def handle(body: bytes, content_type: str | None, run: str | None, sync, log: EventLog = EVENTS) -> tuple[int, dict]:
    """One webhook request: (HTTP status, JSON answer). ``sync(output_dir, run)`` is the linker's sync
    as the Sync now route runs it (training roots, names, lock); nothing is linked on any refusal."""
    try:
        doc = parse(body, content_type)
        what = interpret(doc, log, run)
    except WebhookError as e:
        return e.status, {"error": str(e), "field": e.field}
    if isinstance(what, str):
        return 202, {"ignored": what}
    kind, output_dir, step, final, ck_path = what
    job = _text(doc.get("job_id"), 200)
    roots = os.environ.get(linker.ROOTS_ENV, "")
    try:  # the linker's rule, before anything else: the output_dir inside a training root
        real = linker.authorize(output_dir, roots)
    except linker.LinkError as e:
        return e.status, {"error": str(e), "field": "message" if kind == "model_save" else "checkpoint.path"}
    if ck_path is not None:  # the checkpoint it names must not lead out of the roots either (a symlinked folder)
        ck = real / os.path.basename(ck_path.strip().rstrip("/\\").replace("\\", "/"))
        inside = Path(os.path.realpath(ck))
        if os.path.lexists(ck) and not any(inside == r or inside.is_relative_to(r) for r in simpletuner.training_roots(roots)):
            return 403, {"error": f"checkpoint.path: {ck_path!r} resolves to {inside}, outside the training roots "
                                  f"({linker.ROOTS_ENV}); nothing was linked", "field": "checkpoint.path"}
    if kind == "model_save":  # the final save starts: only remembered, so training_complete knows the run
        log.remember_job(job, output_dir, run)
        return 202, {"ignored": "model_save: the final save has begun; linked on training_complete"}
    if kind == "training_complete":
        output_dir, run = log.job(job, run) or (output_dir, run)
    try:
        report = sync(output_dir, run)
    except linker.LinkError as e:
        return e.status, {"error": str(e), "field": "checkpoint.path" if e.field == "output_dir" else e.field}
    except ValueError as e:
        return 400, {"error": str(e), "field": None}
    except OSError as e:  # the file system failed mid-sync: not the sender's fault; the manifest stays true
        return 503, {"error": f"the sync failed ({e}); links made so far are recorded: send the event again",
                     "field": None}
    log.remember_job(job, output_dir, run)
    record = log.add({"event": kind, "run": report.run, "output_dir": report.output_dir, "step": step,
                      "final": final, "job_id": job, "linked": [n for n, _ in report.linked],
                      "pruned": [n for n, _ in report.pruned], "exposed": report.exposed})
    return 200, {"event": record, "report": report.as_dict()}


def events_query(since: str | None, wait: str | None) -> tuple[int, float]:
    """``?since=N&wait=S`` checked: N a whole number >= 0, S seconds 0..30 (a long poll)."""
    try:
        n = int(since) if since not in (None, "") else 0
        if n < 0:
            raise ValueError
    except ValueError:
        raise WebhookError(f"since: {since!r} is not a whole number >= 0 (the last event id you saw)",
                           field="since") from None
    try:
        w = float(wait) if wait not in (None, "") else 0.0
        if not 0.0 <= w <= 30.0:
            raise ValueError
    except ValueError:
        raise WebhookError(f"wait: {wait!r} is not a number of seconds in 0..30", field="wait") from None
    return n, w
