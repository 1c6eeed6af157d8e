"""A stand-in for a SimpleTuner LoRA run that saves while a follower watches (tests and benches).

Saves in SimpleTuner's order (4.10, /work/shared/README.md and ``checkpoint_state_save``): rotation
first (every ``*-tmp`` folder and the oldest ``checkpoint-*`` beyond ``checkpoints_total_limit``,
by integer step, so at most limit - 1 remain before the save), the weights written into
``temporary-N/`` (here in two halves with a pause, so a half-written file really sits there), the
folder renamed to ``checkpoint-N/``, and ``checkpoint_manifest.json`` + ``.guard`` written last.
The final save is ``output_dir/pytorch_lora_weights.safetensors``, written in place (in two halves
too). A full fine-tune (``full=True``) writes ``transformer/diffusion_pytorch_model.safetensors``
into ``temporary-N/``, copies it into ``checkpoint-N/`` (half a file there for a while too) and
deletes ``temporary-N/``, as SimpleTuner 4.10.1 does; its final save is
``output_dir/pipeline/transformer/``. Optionally each save is followed by SimpleTuner's raw webhook events, with the JSON
shape of ``simpletuner/helpers/webhooks/events.py`` as ``handler.send_raw`` posts it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

LORA = "pytorch_lora_weights.safetensors"
FULL = "transformer/diffusion_pytorch_model.safetensors"


def _stamp() -> str:
    return datetime.now(tz=timezone.utc).isoformat()


def checkpoint_payload(path: str, job_id: str) -> dict:
    """``training.checkpoint`` as SimpleTuner's raw webhook sends it."""
    return {"type": "training.checkpoint", "severity": "info", "job_id": job_id,
            "checkpoint": {"path": path, "label": f"Checkpoint saved to {path}", "is_final": False},
            "title": f"Checkpoint saved to {path}", "timestamp": _stamp()}


def stage_payload(key: str, label: str, status: str, message: str, job_id: str) -> dict:
    """``lifecycle.stage`` as SimpleTuner sends it (``checkpoint_save``, ``model_save``, ``training_complete``)."""
    return {"type": "lifecycle.stage", "severity": "info", "job_id": job_id,
            "stage": {"key": key, "label": label, "status": status}, "message": message,
            "title": message.splitlines()[0], "timestamp": _stamp()}


def post(url: str, payload: dict, timeout: float = 30) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class Trainer:
    """One run's saves. ``times[step]`` records when each phase happened (``time.time()``)."""

    def __init__(self, output_dir: Path, weights: bytes, limit: int = 2, webhook: str | None = None,
                 half_pause: float = 0.3, marker_pause: float = 0.6, full: bool = False):
        self.out, self.full = Path(output_dir), full
        self.weights, self.limit, self.webhook = weights, limit, webhook
        self.half_pause, self.marker_pause = half_pause, marker_pause
        self.job_id = None  # what SimpleTuner sends unless SIMPLETUNER_JOB_ID is set
        self.times: dict = {}
        self.rotated: list[int] = []
        self.answers: list[tuple[int, dict]] = []

    def _send(self, payload: dict) -> None:
        if self.webhook:
            self.answers.append(post(self.webhook, payload))

    def _rotate(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for d in self.out.glob("checkpoint-*-tmp"):
            shutil.rmtree(d, ignore_errors=True)
        ckpts = sorted((int(m.group(1)), d) for d in self.out.iterdir()
                       if (m := re.match(r"^checkpoint-(\d+)$", d.name)) and d.is_dir())
        if len(ckpts) < self.limit:
            return
        for step, d in ckpts[: len(ckpts) - self.limit + 1]:
            shutil.rmtree(d)
            self.rotated.append(step)

    def _write(self, dst: Path, data: bytes | None = None) -> None:
        """The weights (or ``data``, at once) into ``dst``; the weights in two halves with a pause between."""
        dst.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            dst.write_bytes(data)
            return
        half = len(self.weights) // 2
        with open(dst, "wb") as f:
            f.write(self.weights[:half])
            f.flush()
            time.sleep(self.half_pause)
            f.write(self.weights[half:])

    def save(self, step: int) -> Path:
        self._rotate()
        path = self.out / f"checkpoint-{step}"
        self._send(stage_payload("checkpoint_save", "Saving Checkpoint", "running", f"Saving checkpoint to {path}",
                                 self.job_id))
        tmp = self.out / f"temporary-{step}"
        weights = FULL if self.full else LORA
        self._write(tmp / weights)  # a half-written file sits in temporary-N/ for a while
        (tmp / "optimizer.bin").write_bytes(b"accelerate state: never loaded\n")
        (tmp / "training_state.json").write_text(json.dumps({"global_step": step}))
        if self.full:  # copied, then temporary-N/ deleted: checkpoint-N/ holds half a file for a while
            for f in sorted(tmp.rglob("*")):
                rel = f.relative_to(tmp).as_posix()
                if f.is_file():
                    self._write(path / rel, None if rel == FULL else f.read_bytes())
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, path)
        self.times[step] = {"renamed": time.time()}
        time.sleep(self.marker_pause)  # the markers come last: till then the checkpoint is in progress
        (path / "checkpoint_manifest.json").write_text(json.dumps({"step": step, "files": sorted(os.listdir(path))}))
        (path / ".guard").write_text("")
        self.times[step]["complete"] = time.time()
        self._send(checkpoint_payload(str(path), self.job_id))
        return path

    def final(self) -> Path:
        self._send(stage_payload("model_save", "Saving Final Model", "running",
                                 f"Finalizing model and saving to {self.out}", self.job_id))
        dst = self.out / "pipeline" / FULL if self.full else self.out / LORA
        self._write(dst)  # in place (save_pretrained into pipeline/, or save_lora_weights): half a file for a while
        if self.full:
            (self.out / "pipeline" / "model_index.json").write_text(json.dumps({"_class_name": "SimpleTunerPipeline"}))
        self.times["final"] = {"renamed": time.time(), "complete": time.time()}
        self._send(stage_payload("training_complete", "Training Complete", "completed", "Training run complete.",
                                 self.job_id))
        return dst
