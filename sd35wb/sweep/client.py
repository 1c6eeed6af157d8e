"""A small ComfyUI HTTP client (standard library only): queue a prompt, read its result, fetch its
images, cancel it. Results and cancels go through the Jobs API (``/api/jobs``, ComfyUI 0.33.0 and
later) where the server has it, and through ``/history``, ``/queue`` and ``/interrupt`` elsewhere."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field


class PromptError(Exception):
    """The server refused the prompt (validation): trying it again there cannot help."""


class ServerGone(Exception):
    left: list = []  # the cells it had not finished


@dataclass
class Result:
    status: str  # "success", "error" or "interrupted"
    outputs: dict = field(default_factory=dict)
    error: str = ""


class Server:
    def __init__(self, url: str, timeout: float = 30):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex
        self._jobs_api: bool | None = None

    def _open(self, path: str, data: dict | None = None):
        body = json.dumps(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"} if body else {})
        return urllib.request.urlopen(req, timeout=self.timeout)

    def get_json(self, path: str):
        with self._open(path) as r:
            return json.loads(r.read())

    def post(self, path: str, data: dict) -> None:
        with self._open(path, data):
            pass

    @property
    def jobs_api(self) -> bool:
        """Whether the server has the Jobs API (probed once)."""
        if self._jobs_api is None:
            try:
                doc = self.get_json("/api/jobs?limit=1")
                self._jobs_api = isinstance(doc, dict) and "jobs" in doc
            except (urllib.error.URLError, OSError, ValueError):
                self._jobs_api = False
        return self._jobs_api

    def queue(self, prompt: dict) -> str:
        try:
            with self._open("/prompt", {"prompt": prompt, "client_id": self.client_id}) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise PromptError(rejection_text(e.code, e.read())) from e
        if doc.get("node_errors"):  # accepted with some outputs dropped: ours would never come
            raise PromptError(rejection_text(200, json.dumps(doc).encode()))
        return doc["prompt_id"]

    def result(self, pid: str) -> Result | None:
        """The prompt's result, or None while it is queued or running."""
        if self.jobs_api:
            try:
                job = self.get_json(f"/api/jobs/{pid}")
            except urllib.error.HTTPError as e:
                if e.code == 404:  # not yet visible, or dropped from the queue by someone else
                    return None
                raise
            st = job.get("status")
            if st in ("pending", "in_progress"):
                return None
            if st == "completed":
                return Result("success", job.get("outputs") or {})
            if st == "cancelled":
                return Result("interrupted", error="interrupted")
            return Result("error", error=_job_error(job))
        entry = self.get_json(f"/history/{pid}").get(pid)
        status = (entry or {}).get("status", {})
        if not entry or not (status.get("completed") or status.get("status_str") in ("success", "error")):
            return None
        if status.get("status_str") == "error":
            text = _history_error(entry)
            return Result("interrupted" if text == "interrupted" else "error", error=text)
        return Result("success", entry.get("outputs", {}))

    def view(self, image: dict) -> bytes:
        q = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                    "type": image.get("type", "output")})
        with self._open(f"/view?{q}") as r:
            return r.read()

    def cancel(self, pids: list[str]) -> None:
        """Take these prompts off the server: queued ones dequeued, a running one interrupted, by id
        (nobody else's prompt is touched)."""
        if not pids:
            return
        if self.jobs_api:
            self.post("/api/jobs/cancel", {"job_ids": list(pids)})
            return
        self.post("/queue", {"delete": list(pids)})
        for pid in pids:
            self.post("/interrupt", {"prompt_id": pid})

    def object_info(self, class_type: str) -> dict:
        try:
            return self.get_json(f"/object_info/{urllib.parse.quote(class_type)}")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return {}
            raise

    def file_list(self, class_type: str, inp: str) -> list[str]:
        spec = self.object_info(class_type).get(class_type, {}).get("input", {}).get("required", {}).get(inp)
        if not spec:
            raise ValueError(f"{self.url}: the server has no {class_type}.{inp} list")
        return list(spec[1]["options"] if isinstance(spec[0], str) else spec[0])

    def lora_check(self, lora: str, model: str) -> dict | None:
        """The pack's check of a LoRA against the base model (``/sd35wb/lora/check``); None on a
        server without the pack."""
        q = urllib.parse.urlencode({"lora": lora, "model": model})
        try:
            return self.get_json(f"/sd35wb/lora/check?{q}")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            try:
                return {"ok": False, "message": json.loads(e.read()).get("error", f"HTTP {e.code}")}
            except ValueError:
                return {"ok": False, "message": f"HTTP {e.code}"}

    def diffusion_models(self) -> list[str]:
        return self.file_list("UNETLoader", "unet_name")

    def loras(self) -> list[str]:
        return self.file_list("LoraLoaderModelOnly", "lora_name")


def rejection_text(status: int, body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return f"HTTP {status}: {body[:300]!r}"
    msg = [doc.get("error", {}).get("message", "")] if isinstance(doc.get("error"), dict) else [str(doc.get("error", ""))]
    for nid, ne in (doc.get("node_errors") or {}).items():
        for err in ne.get("errors", []):
            msg.append(f"node {nid}: {err.get('message')}: {err.get('details')}")
    return f"rejected (HTTP {status}): " + "; ".join(m for m in msg if m)


def output_images(outputs: dict, output_node: str | None) -> list[dict]:
    """One node's images (all of its batch): ``output_node``'s, else the first image output's."""
    found = []
    for nid, out in sorted(outputs.items(), key=lambda kv: (kv[0] != output_node, kv[0])):
        if output_node is not None and nid != output_node:
            continue
        found += [im for im in (out.get("images") or []) if isinstance(im, dict)
                  and im.get("type", "output") in ("output", "temp")]
        if found:
            break
    return found


def _job_error(job: dict) -> str:
    e = job.get("execution_error") or {}
    if not e:
        return "failed"
    return f"{e.get('exception_type')}: {str(e.get('exception_message', '')).strip()} (node {e.get('node_id')})"


def _history_error(entry: dict) -> str:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('exception_type')}: {data.get('exception_message', '').strip()} (node {data.get('node_id')})"
        if kind == "execution_interrupted":
            return "interrupted"
    return "failed"
