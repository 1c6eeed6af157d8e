"""Checkpoint sweep through the ComfyUI API: one prompt per checkpoint, one labelled strip.

    python -m sd35wb.sweep --workflow api.json (--run NAME | --models a,b,c) [--loader-node ID]
                           [--server http://127.0.0.1:8188 ...] --out strip.png

Takes an API-format workflow (the frontend's "Export (API)"), finds its diffusion-model loader
(``UNETLoader``, or any node with a ``unet_name`` input; ``--loader-node`` picks one), and queues a
copy of the workflow per checkpoint with only the loader's model changed. Prompts are spread over
every ``--server`` (round robin). Progress is followed over each server's websocket; results are
read from ``/history`` and images fetched through ``/view``. Every rendered image is saved next to
the strip (``<out>-<label>.png``) as soon as it arrives, so a failure later never loses it; failed
prompts are reported by checkpoint. Exit status: 0 all rendered, 1 some failed (strip of the rest
written), 2 nothing rendered or bad arguments.

Runs outside ComfyUI: standard library, Pillow and (optionally) websocket-client.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import grid, simpletuner

# Loader class -> the input naming its diffusion model (our SD3.5 loader takes checkpoints too).
LOADERS = {"UNETLoader": "unet_name", "SD35WB_SD35Loader": "model_name"}


def parse_model_list(text: str) -> list[str]:
    """Model names from a newline- (or comma-) separated list; blank lines and '#' comments dropped."""
    out = []
    for line in (text or "").replace(",", "\n").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line not in out:
            out.append(line)
    return out


def model_label(name: str) -> str:
    """'run/checkpoint-800.safetensors' -> 'checkpoint-800'."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base[: -len(".safetensors")] if base.lower().endswith(".safetensors") else base


def labels_for(names: list[str]) -> list[str]:
    """Tile labels: the checkpoint names, with their run folder kept when two runs share one."""
    short = [model_label(n) for n in names]
    if len(set(short)) == len(short):
        return short
    return [n.replace("\\", "/")[: -len(".safetensors")] if n.lower().endswith(".safetensors") else n for n in names]


def load_workflow(path: str | os.PathLike) -> dict:
    doc = json.loads(Path(path).read_text())
    if isinstance(doc, dict) and isinstance(doc.get("prompt"), dict):
        doc = doc["prompt"]
    if not isinstance(doc, dict) or "nodes" in doc and isinstance(doc.get("nodes"), list):
        raise ValueError(f"--workflow: {path} is a UI workflow; save it with 'Export (API)' instead")
    if not all(isinstance(v, dict) and "class_type" in v for v in doc.values()):
        raise ValueError(f"--workflow: {path} is not an API-format prompt (node id -> {{class_type, inputs}})")
    return doc


def find_loader(prompt: dict, node_id: str | None = None) -> tuple[str, str]:
    """(node id, input name) of the diffusion-model loader whose model the sweep swaps."""
    def key_of(node: dict) -> str | None:
        key = LOADERS.get(node.get("class_type"), "unet_name")
        value = node.get("inputs", {}).get(key)
        return key if isinstance(value, str) else None  # a [node, output] link is not a file name

    if node_id is not None:
        node = prompt.get(str(node_id))
        if node is None:
            raise ValueError(f"--loader-node: no node {node_id!r} in the workflow (ids: {', '.join(sorted(prompt))})")
        key = key_of(node)
        if key is None:
            raise ValueError(f"--loader-node: node {node_id} ({node['class_type']}) has no model-name input "
                             f"({', '.join(sorted(set(LOADERS.values())))})")
        return str(node_id), key
    found = [(nid, key_of(node)) for nid, node in prompt.items() if key_of(node)]
    if not found:
        raise ValueError("--workflow: no diffusion-model loader (UNETLoader, SD35WB_SD35Loader, or a unet_name "
                         "input) found; pass --loader-node ID")
    if len(found) > 1:
        raise ValueError(f"--workflow: several loaders ({', '.join(n for n, _ in found)}); pick one with --loader-node")
    return found[0]


# ---------------------------------------------------------------------------------------------
# A small ComfyUI API client (standard library only)


class Server:
    def __init__(self, url: str, timeout: float = 30):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _open(self, path: str, data: dict | None = None):
        body = json.dumps(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"} if body else {})
        return urllib.request.urlopen(req, timeout=self.timeout)

    def get_json(self, path: str):
        with self._open(path) as r:
            return json.loads(r.read())

    def queue(self, prompt: dict) -> str:
        try:
            with self._open("/prompt", {"prompt": prompt, "client_id": self.client_id}) as r:
                return json.loads(r.read())["prompt_id"]
        except urllib.error.HTTPError as e:
            raise PromptError(_rejection_text(e.code, e.read())) from e

    def view(self, image: dict) -> bytes:
        q = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                    "type": image.get("type", "output")})
        with self._open(f"/view?{q}") as r:
            return r.read()

    def diffusion_models(self) -> list[str]:
        info = self.get_json("/object_info/UNETLoader")
        spec = info["UNETLoader"]["input"]["required"]["unet_name"]
        return list(spec[1]["options"] if isinstance(spec[0], str) else spec[0])


class PromptError(Exception):
    pass


def _rejection_text(status: int, body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return f"HTTP {status}: {body[:300]!r}"
    msg = [doc.get("error", {}).get("message", "")] if isinstance(doc.get("error"), dict) else [str(doc.get("error", ""))]
    for nid, ne in (doc.get("node_errors") or {}).items():
        for err in ne.get("errors", []):
            msg.append(f"node {nid}: {err.get('message')}: {err.get('details')}")
    return f"rejected (HTTP {status}): " + "; ".join(m for m in msg if m)


class _Progress(threading.Thread):
    """Follows one server's websocket and prints step progress per checkpoint (best effort)."""

    def __init__(self, server: Server, labels: dict, out, wake: threading.Event):
        super().__init__(daemon=True)
        self.server, self.labels, self.out, self.wake = server, labels, out, wake
        self.ws = None
        self.connected = threading.Event()

    def connect(self) -> bool:
        try:
            import websocket  # websocket-client
        except ImportError:
            return False
        u = urllib.parse.urlparse(self.server.url)
        scheme = "wss" if u.scheme == "https" else "ws"
        try:
            self.ws = websocket.create_connection(f"{scheme}://{u.netloc}/ws?clientId={self.server.client_id}", timeout=5)
        except Exception:  # noqa: BLE001 - progress is optional; /history is the source of truth
            return False
        self.connected.set()
        return True

    def run(self) -> None:
        import websocket

        last = {}
        while self.ws is not None:
            try:
                raw = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception:  # noqa: BLE001 - closed or broken: stop following; /history still decides
                self.wake.set()
                return
            if not isinstance(raw, str):
                continue
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            data = msg.get("data") or {}
            label = self.labels.get(data.get("prompt_id"))
            if label is None:
                continue
            if msg.get("type") == "progress":
                key = (label, data.get("max"))
                if time.time() - last.get(key, 0) > 1.0 or data.get("value") == data.get("max"):
                    last[key] = time.time()
                    print(f"  {label}: {data.get('value')}/{data.get('max')} ({self.server.url})", file=self.out, flush=True)
            elif msg.get("type") in ("execution_success", "execution_error", "execution_interrupted") or \
                    (msg.get("type") == "executing" and data.get("node") is None):
                self.wake.set()

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # noqa: BLE001
                pass
        self.ws = None


@dataclass
class SweepResult:
    labels: list[str] = field(default_factory=list)  # rendered, in strip order
    images: list[bytes] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # label -> why
    strip: Path | None = None
    servers: dict[str, str] = field(default_factory=dict)  # label -> server url


def _history_images(entry: dict, output_node: str | None) -> list[dict]:
    found = []
    for nid, out in sorted(entry.get("outputs", {}).items(), key=lambda kv: (kv[0] != output_node, kv[0])):
        if output_node is not None and nid != output_node:
            continue
        found += [im for im in out.get("images", []) if im.get("type", "output") in ("output", "temp")]
    return found


def _error_text(entry: dict) -> str:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('exception_type')}: {data.get('exception_message', '').strip()} (node {data.get('node_id')})"
        if kind == "execution_interrupted":
            return "interrupted"
    return "failed"


def run_sweep(prompt: dict, models: list[str], servers: list[str], out: Path, loader_node: str | None = None,
              output_node: str | None = None, columns: int | None = None, timeout: float = 3600,
              log=sys.stdout) -> SweepResult:
    nid, key = find_loader(prompt, loader_node)
    srv = [Server(u) for u in servers]
    labels = dict(zip(models, labels_for(models)))
    result = SweepResult()
    wake = threading.Event()
    pid_label: dict[str, str] = {}
    followers = []
    for s in srv:
        f = _Progress(s, pid_label, log, wake)
        if f.connect():
            f.start()
            followers.append(f)
    pending: dict[str, tuple[str, Server]] = {}  # prompt id -> (model, server)
    for i, model in enumerate(models):
        s = srv[i % len(srv)]
        p = copy.deepcopy(prompt)
        p[nid]["inputs"][key] = model
        try:
            pid = s.queue(p)
        except (PromptError, urllib.error.URLError, OSError) as e:
            result.failures[labels[model]] = str(e)
            print(f"FAILED  {labels[model]}: {e}", file=log, flush=True)
            continue
        pid_label[pid] = labels[model]
        pending[pid] = (model, s)
        result.servers[labels[model]] = s.url
        print(f"queued  {labels[model]} on {s.url} ({pid})", file=log, flush=True)
    rendered: dict[str, bytes] = {}
    t_start = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + timeout
    fast_until = time.time() + 2.0
    while pending and time.time() < deadline:
        for pid, (model, s) in list(pending.items()):
            label = labels[model]
            try:
                hist = s.get_json(f"/history/{pid}")
            except (urllib.error.URLError, OSError) as e:
                result.failures[label] = f"server {s.url} stopped answering: {e}"
                del pending[pid]
                continue
            entry = hist.get(pid)
            if not entry:
                continue
            status = entry.get("status", {})
            if not (status.get("completed") or status.get("status_str") in ("success", "error")):
                continue
            del pending[pid]
            if status.get("status_str") == "error":
                result.failures[label] = _error_text(entry)
                print(f"FAILED  {label}: {result.failures[label]}", file=log, flush=True)
                continue
            ims = _history_images(entry, output_node)
            if not ims:
                result.failures[label] = "the prompt finished without an image output (end the workflow in SaveImage)"
                print(f"FAILED  {label}: {result.failures[label]}", file=log, flush=True)
                continue
            try:
                data = s.view(ims[0])
            except (urllib.error.URLError, OSError) as e:
                result.failures[label] = f"could not fetch the image: {e}"
                continue
            rendered[model] = data
            (out.parent / f"{out.stem}-{_safe(label)}.png").write_bytes(data)
            print(f"done    {label}  ({time.time() - t_start:.1f} s)", file=log, flush=True)
        if pending:
            # With every server's websocket followed, poll /history quickly for a while after one
            # reports a finished prompt (the host stores the history entry just after it says so),
            # else every few seconds in case a message was missed; without websockets, 4 times a second.
            slow = len(followers) == len(srv) and time.time() > fast_until
            if wake.wait(3.0 if slow else 0.25):
                fast_until = time.time() + 2.0
            wake.clear()
    for model, s in pending.values():
        result.failures[labels[model]] = f"no result within {timeout:.0f} s on {s.url}"
    for f in followers:
        f.close()
    from PIL import Image

    for m in models:
        if m in rendered:
            result.labels.append(labels[m])
            result.images.append(rendered[m])
    if result.images:
        strip = grid.labelled_strip([Image.open(io.BytesIO(b)) for b in result.images], result.labels, columns)
        strip.save(out)
        result.strip = out
    return result


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sd35wb.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workflow", required=True, help="API-format workflow JSON (Export (API))")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="every diffusion model under <run>/ on the first server, numeric order")
    which.add_argument("--models", help="comma-separated diffusion_models names")
    ap.add_argument("--loader-node", help="id of the loader node whose model is swapped (default: found)")
    ap.add_argument("--output-node", help="id of the node whose image goes in the strip (default: the first image)")
    ap.add_argument("--server", action="append", help="ComfyUI URL; repeat to spread prompts (default http://127.0.0.1:8188)")
    ap.add_argument("--out", required=True, type=Path, help="strip PNG to write")
    ap.add_argument("--columns", type=int, default=0, help="tiles per row (default: one row)")
    ap.add_argument("--keep-order", action="store_true", help="--models in the order given, not numeric")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds to wait for all prompts")
    args = ap.parse_args(argv)
    servers = args.server or ["http://127.0.0.1:8188"]
    try:
        prompt = load_workflow(args.workflow)
        find_loader(prompt, args.loader_node)
        if args.run:
            run = simpletuner.check_run_name(args.run)
            names = [n for n in Server(servers[0]).diffusion_models() if n.replace("\\", "/").startswith(run + "/")]
            if not names:
                raise ValueError(f"--run: no diffusion models under {run}/ on {servers[0]}; link the run first "
                                 "(python -m sd35wb.link ... or the Sync now button)")
            models = simpletuner.natural_sorted(names)
        else:
            models = parse_model_list(args.models)
            if not models:
                raise ValueError("--models: empty list")
            if not args.keep_order:
                models = simpletuner.natural_sorted(models)
    except (ValueError, OSError, urllib.error.URLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sweep: {len(models)} checkpoints over {len(servers)} server(s): {', '.join(model_label(m) for m in models)}")
    res = run_sweep(prompt, models, servers, args.out, args.loader_node, args.output_node, args.columns or None,
                    args.timeout)
    print(f"strip: {res.strip} ({len(res.labels)} tiles: {', '.join(res.labels)})" if res.strip else "strip: none")
    for label, why in res.failures.items():
        print(f"failed: {label}: {why}")
    if not res.images:
        return 2
    return 1 if res.failures else 0


if __name__ == "__main__":
    sys.exit(main())
