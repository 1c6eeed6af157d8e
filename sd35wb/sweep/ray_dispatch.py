"""The sweep's scheduler on a Ray cluster: ``dispatch(sweep, groups)`` like :func:`.dispatch.run_local`,
with Ray doing placement, restarts and retries.

One actor per ComfyUI server (``num_gpus=1`` or a custom resource). An actor attaches to a given
server URL, or starts ComfyUI on its own node from ``comfyui_path`` and stops it when it exits. The
driver hands each idle actor one checkpoint group at a time, preferring a group whose checkpoint
that actor has loaded; a cell's images come back as bytes and go through ``sweep.store``, the
collector the local path uses, so each cell is written once into the same state and images folder.

Faults: an actor lost with its node is restarted by Ray (``max_restarts``) and its queued calls
replayed (``max_task_retries``); a server that stops answering marks its actor dead and the cells
it had go to the other actors.

Imported only under ``--ray``: the node pack and the local path never import Ray."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error

from .client import PromptError, Server, output_images
from .dispatch import call_with_retries

INSTALL = 'pip install "sd35-workbench[cluster]"   (or: pip install "ray[default]>=2.40")'
IN_FLIGHT = 3  # prompts per server at once: ComfyUI's own queue keeps the GPU busy between them


def import_ray():
    """Ray, or a ValueError with the install line (the CLI turns it into exit 2)."""
    try:
        import ray
    except ImportError:
        raise ValueError(f"--ray needs Ray, which is not installed in {sys.executable}; install it with: {INSTALL}") from None
    return ray


def check_address(address: str, timeout: float = 5.0) -> None:
    """A clear error, fast, for an address nothing listens on (``ray.init`` would retry for minutes)."""
    if address == "auto":  # ray.init finds the local head (RAY_ADDRESS or /tmp/ray) and says clearly when none
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray {address}: give auto or HOST:PORT of the head node (e.g. 10.0.0.5:6379, "
                         "or ray://10.0.0.5:10001)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ValueError(f"--ray {address}: no Ray head answers there ({e.strerror or e}); start one with `ray start "
                         "--head` or give its address") from None


def connect(address: str):
    ray = import_ray()
    check_address(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    except (ConnectionError, RuntimeError) as e:
        raise ValueError(f"--ray {address}: could not join the cluster: {e}") from None
    return ray


class ComfyWorker:
    """One ComfyUI server on one node (the body of the Ray actor; plain class so it can be read and
    tested without Ray)."""

    def __init__(self, url: str | None = None, comfyui_path: str | None = None, port: int = 8188,
                 timeout: float = 3600, output_node: str | None = None):
        self.proc = None
        if url is None:
            url = self._start(comfyui_path, port)
        self.server = Server(url)
        self.timeout, self.output_node = timeout, output_node
        self.loaded: str | None = None
        self.pending: set[str] = set()

    def _start(self, comfyui_path: str, port: int) -> str:
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        self.proc = subprocess.Popen([python, "main.py", "--listen", "127.0.0.1", "--port", str(port)],
                                     cwd=comfyui_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI in {comfyui_path} exited with {self.proc.returncode} on {socket.gethostname()}")
            try:
                Server(url, timeout=2).get_json("/system_stats")
                return url
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(1)
        raise RuntimeError(f"ComfyUI in {comfyui_path} did not answer on {url} within 600 s")

    def where(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()} {self.server.url}"

    def render(self, model: str, prompt: dict) -> tuple[str, list[bytes] | str, float]:
        """Queue one prompt and wait for it: ("ok", images, seconds) or ("error", why, seconds).
        A server that stops answering raises ServerGone (the driver moves the cell elsewhere)."""
        t0 = time.time()
        self.loaded = model
        try:
            pid = call_with_retries(self.server.queue, prompt)
        except PromptError as e:
            return "error", str(e), 0.0
        self.pending.add(pid)
        try:
            deadline = t0 + self.timeout
            while time.time() < deadline:
                res = call_with_retries(self.server.result, pid)
                if res is not None:
                    break
                time.sleep(0.05)
            else:
                return "error", f"no result within {self.timeout:.0f} s", time.time() - t0
        finally:
            self.pending.discard(pid)
        if res.status != "success":
            return "error", res.error or res.status, time.time() - t0
        ims = output_images(res.outputs, self.output_node)
        if not ims:
            return "error", "the prompt finished without an image output (end the workflow in SaveImage)", 0.0
        return "ok", [call_with_retries(self.server.view, im) for im in ims], time.time() - t0

    def cancel(self) -> int:
        """Ctrl-C: this sweep's prompts off the server (queued dequeued, running interrupted)."""
        pids = list(self.pending)
        try:
            self.server.cancel(pids)
        except (urllib.error.URLError, OSError):
            pass
        return len(pids)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __del__(self):
        self.stop()


def make_dispatch(address: str, servers: list[str] | None = None, comfyui_path: str | None = None,
                  workers: int = 0, resource: str | None = None, max_restarts: int = -1):
    """The Ray scheduler for ``Sweep.run``: attach one actor to each of ``servers``, or start
    ``workers`` ComfyUIs from ``comfyui_path`` (one per GPU, or per unit of ``resource``)."""
    ray = connect(address)

    def dispatch(sweep, groups):
        opts = {"max_restarts": max_restarts, "max_task_retries": -1, "max_concurrency": IN_FLIGHT + 1}
        opts.update({"num_gpus": 0, "resources": {resource: 1}} if resource else {"num_gpus": 1})
        actor_cls = ray.remote(ComfyWorker).options(**opts)
        if comfyui_path:
            specs = [{"comfyui_path": comfyui_path} for _ in range(workers or 1)]
        else:
            specs = [{"url": u} for u in (servers or [s.url for s in sweep.servers])]
        actors = [actor_cls.remote(timeout=sweep.timeout, output_node=sweep.output_node, **s) for s in specs]
        names = [s.get("url") or f"worker{i + 1}" for i, s in enumerate(specs)]
        try:
            return _drive(ray, sweep, groups, actors, names)
        except KeyboardInterrupt:
            # Each server's queued and running prompts of this sweep come off; the state keeps what finished.
            try:
                ray.get([a.cancel.remote() for a in actors], timeout=15)
            except Exception:  # noqa: BLE001 - a dead actor has nothing queued
                pass
            raise
        finally:
            for a in actors:
                try:
                    ray.get(a.stop.remote(), timeout=40)
                except Exception:  # noqa: BLE001
                    pass
                ray.kill(a)

    return dispatch


def _drive(ray, sweep, groups, actors, names):
    """Hand groups to idle actors (a loaded checkpoint first), keep IN_FLIGHT prompts per actor,
    store results as they come. Returns the groups no live actor was left for."""
    loaded: dict[int, str] = {}
    queue = [(m, list(cs)) for m, cs in groups]
    mine: dict[int, tuple[str, list]] = {}  # actor index -> (model, cells not yet submitted)
    refs: dict = {}  # object ref -> (actor index, model, cell)
    alive = set(range(len(actors)))

    def refill(i: int) -> None:
        if i not in mine or not mine[i][1]:
            mine.pop(i, None)
            if not queue:
                return
            pick = next((g for g in queue if g[0] == loaded.get(i)), queue[0])
            queue.remove(pick)
            mine[i] = pick
            loaded[i] = pick[0]
        model, cells = mine[i]
        while cells and sum(1 for a, _, _ in refs.values() if a == i) < IN_FLIGHT:
            cell = cells.pop(0)
            refs[actors[i].render.remote(model, sweep.prompt_for(cell))] = (i, model, cell)

    for i in alive:
        refill(i)
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
        for ref in ready:
            i, model, cell = refs.pop(ref)
            try:
                status, payload, secs = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                cause = getattr(e, "cause", None)
                if i in alive:
                    alive.discard(i)
                    sweep.say(f"server {names[i]} stopped answering ({type(cause or e).__name__}): its images go to "
                              "the other server(s)")
                back = [c for a, m, c in refs.values() if a == i] + mine.pop(i, ("", []))[1]
                refs_i = [r for r, (a, _, _) in refs.items() if a == i]
                for r in refs_i:
                    del refs[r]
                queue.insert(0, (model, [cell] + [c for c in back if c != cell]))
            else:
                if status == "ok":
                    sweep.store(cell, payload, names[i], secs)
                else:
                    sweep.fail(cell, payload, names[i])
        for i in sorted(alive):
            refill(i)
    return queue


__all__ = ["INSTALL", "ComfyWorker", "check_address", "connect", "import_ray", "make_dispatch"]
