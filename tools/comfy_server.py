"""Start a real ComfyUI server on 127.0.0.1 and talk to it over its HTTP API.

Used by the api/browser test tiers and by ``make demo``. The server gets its own base
directory (custom_nodes, user, input, output), so a run never touches a user's install.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from tools.host import REPO, host_env  # noqa: F401 - re-exported for callers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base(base: Path, model_roots: dict[str, list[Path]], extra_custom_nodes: dict[str, Path] | None = None) -> Path:
    """A base directory with our pack linked into custom_nodes and model folders mapped in."""
    cn = base / "custom_nodes"
    cn.mkdir(parents=True, exist_ok=True)
    links = {"sd35-workbench": REPO, **(extra_custom_nodes or {})}
    for name, target in links.items():
        link = cn / name
        if link.is_symlink() or link.exists():
            continue
        link.symlink_to(target, target_is_directory=True)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    if not settings.exists():
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}))
    lines = ["sd35wb:", f"  base_path: {base}"]
    for folder, paths in model_roots.items():
        lines.append(f"  {folder}: |")
        lines += [f"    {p}" for p in paths]
    cfg = base / "extra_model_paths.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


class ComfyServer:
    def __init__(self, base: Path, extra_model_paths: Path, port: int | None = None, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, front_end_root: str | Path | None = None):
        self.base = Path(base)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "server.log"
        self.extra_model_paths = extra_model_paths
        self.extra_args = extra_args or []
        self.env = env or {}
        # Another frontend build (a comfyui-frontend-package wheel's static/ folder); scripts/test.sh
        # sets SD35WB_FRONT_END_ROOT for `make test FRONTEND=newest`.
        self.front_end_root = front_end_root or os.environ.get("SD35WB_FRONT_END_ROOT") or None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> ComfyServer:
        env = host_env()
        cmd = [env["COMFYUI_PYTHON"], "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--extra-model-paths-config", str(self.extra_model_paths),
               "--disable-auto-launch", "--database-url", f"sqlite:///{self.base / 'comfyui.db'}", *self.extra_args]
        if self.front_end_root:
            cmd += ["--front-end-root", str(self.front_end_root)]
        self._log = open(self.log_path, "ab")
        penv = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **self.env}
        self.proc = subprocess.Popen(cmd, cwd=env["COMFYUI_DIR"], stdout=self._log, stderr=subprocess.STDOUT, env=penv)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}; log:\n{self.log()[-4000:]}")
            try:
                self.get_json("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f}s; log:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- HTTP ---------------------------------------------------------------------------
    def request(self, path: str, data: dict | None = None, method: str | None = None, timeout: float = 30):
        body = json.dumps(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body, method=method or ("POST" if body else "GET"),
                                     headers={"Content-Type": "application/json"} if body else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        status, body = self.request("/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})
        data = json.loads(body or b"{}")
        # The host accepts a prompt whose *other* outputs validate and silently drops the rest:
        # any node error is a rejection here.
        if status != 200 or data.get("node_errors"):
            raise PromptRejected(status, data)
        return data["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """Block until the prompt finishes; return its /history entry (raise on execution error)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get_json(f"/history/{prompt_id}")
            if prompt_id in hist:
                entry = hist[prompt_id]
                st = entry.get("status", {})
                if st.get("completed") or st.get("status_str") in ("success", "error"):
                    if st.get("status_str") == "error":
                        raise PromptFailed(entry)
                    return entry
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died; log:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def images(self, entry: dict, node_id: str | None = None) -> list[bytes]:
        out = []
        for nid, o in entry.get("outputs", {}).items():
            if node_id is not None and nid != str(node_id):
                continue
            for im in o.get("images", []):
                q = urllib.parse.urlencode({"filename": im["filename"], "subfolder": im.get("subfolder", ""), "type": im.get("type", "output")})
                with urllib.request.urlopen(f"{self.url}/view?{q}", timeout=30) as r:
                    out.append(r.read())
        return out


class PromptRejected(Exception):
    def __init__(self, status: int, body: dict):
        self.status, self.body = status, body
        super().__init__(f"POST /prompt answered {status}: {json.dumps(body)[:2000]}")


class PromptFailed(Exception):
    def __init__(self, entry: dict):
        self.entry = entry
        msgs = [m for m in entry.get("status", {}).get("messages", []) if m[0] == "execution_error"]
        self.error = msgs[0][1] if msgs else {}
        super().__init__(f"prompt failed: {self.error.get('exception_type')}: {self.error.get('exception_message')}")
