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
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import uuid
from pathlib import Path

from . import scoring
from .client import PromptError, Server, output_images
from .dispatch import call_with_retries

# Commands that work as printed: nothing named sd35-workbench is on the package index, and Ray never goes into
# ComfyUI's own python (docs/sweep_cluster.md, "Install").
INSTALL = (f'{sys.executable} -m pip install "ray[default]>=2.40"; or, when that is ComfyUI\'s own python, the tools '
           'in a venv of their own, from the folder holding the clone: python3 -m venv sd35wb-venv && '
           'sd35wb-venv/bin/pip install "./sd35-workbench[cluster]", then run sd35wb-venv/bin/sd35wb-sweep')
IN_FLIGHT = 3  # prompts per server at once: ComfyUI's own queue keeps the GPU busy between them
START_TIMEOUT = 600  # seconds for a started ComfyUI to answer (a cold node imports torch and the custom nodes)


def import_ray():
    """Ray, or a ValueError with the install line (the CLI turns it into exit 2)."""
    try:
        import ray
    except ImportError:
        raise ValueError(f"--ray needs Ray, which is not installed in {sys.executable}; install it with: {INSTALL}") from None
    return ray


def check_address(address: str, timeout: float = 5.0) -> None:
    """A clear error, fast, for an address nothing listens on (``ray.init`` would retry for minutes)."""
    if address == "auto":  # what Ray's `auto` joins: RAY_ADDRESS, else the address `ray start` left on this machine
        found = _auto_address()
        if found and _hostport(found[0]):
            _probe(found[0], f"--ray auto: the cluster named by {found[1]} ({found[0]})", timeout)
        return  # none: ray.init looks for a running head itself, and says when there is none
    if not _hostport(address):
        raise ValueError(f"--ray {address}: give auto or HOST:PORT of the head node (e.g. 10.0.0.5:6379, "
                         "or ray://10.0.0.5:10001)")
    _probe(address, f"--ray {address}", timeout)


def _hostport(address: str) -> tuple[str, int] | None:
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def _probe(address: str, what: str, timeout: float) -> None:
    try:
        socket.create_connection(_hostport(address), timeout=timeout).close()
    except OSError as e:
        raise ValueError(f"{what}: no Ray head answers there ({e.strerror or e}); start one with `ray start --head` "
                         "or give its address") from None


def _auto_address() -> tuple[str, str] | None:
    """(address, where it was read) as Ray's lookup finds it, without Ray's minutes of retries on a
    stale one (a head that crashed leaves its address file behind)."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    tmp = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    f = Path(tmp or "/tmp", "ray", "ray_current_cluster")
    try:
        text = f.read_text().strip()
    except OSError:
        return None
    return (text, str(f)) if text else None


def connect(address: str):
    ray = import_ray()
    if ray.is_initialized():  # a caller that joined already (a bench, a notebook)
        return ray
    check_address(address)
    # A dead server's calls still in flight are dropped on purpose (their cells went to other actors);
    # Ray would print each one's error as "unhandled" when it is collected.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    except ConnectionError as e:
        if address == "auto":  # `auto` joins a running cluster, it never starts one (ray.init docs)
            raise ValueError("--ray auto: no running Ray cluster found (RAY_ADDRESS is unset and no `ray start` runs on "
                             "this machine); start one with `ray start --head`, or give the head's HOST:PORT") from None
        raise ValueError(f"--ray {address}: could not join the cluster: {e}") from None
    except RuntimeError as e:
        raise ValueError(f"--ray {address}: could not join the cluster: {e}") from None
    return ray


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return socket.gethostname()


def _die_with_parent() -> None:
    """In the started ComfyUI: a SIGTERM when the actor's process goes (Ray kills actors with SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ComfyWorker:
    """One ComfyUI server on one node (the body of the Ray actor; plain class so it can be read and
    tested without Ray)."""

    def __init__(self, url: str | None = None, comfyui_path: str | None = None, comfyui_args: list[str] | None = None,
                 client_id: str | None = None):
        self.proc = self.private = None
        self.cancelled = False
        self.node = _node_id()
        if url is None:
            url = self._start(comfyui_path, list(comfyui_args or []))
        self.server = Server(url)
        self.pending: set[str] = set()
        if client_id:  # the same id across Ray's restarts of this actor
            self.server.client_id = client_id
            self._drop_orphans()

    def _drop_orphans(self) -> None:
        """After a restart: the prompts the lost incarnation queued on this server come off it (Ray
        replays its calls, which queue them again), so the server does not render them twice."""
        try:
            q = self.server.get_json("/queue")
            pids = [e[1] for e in q.get("queue_running", []) + q.get("queue_pending", [])
                    if len(e) > 3 and isinstance(e[3], dict) and e[3].get("client_id") == self.server.client_id]
            self.server.cancel(pids)
        except (urllib.error.URLError, OSError, ValueError):
            pass  # a server that does not answer now is found out by the first render

    def _start(self, comfyui_path: str, args: list[str]) -> str:
        """ComfyUI from ``comfyui_path`` on a free port of this node's address, with its models folder
        (or what ``args`` say); its outputs and database in a private folder, removed on stop."""
        main = Path(comfyui_path, "main.py")
        if not main.is_file():
            raise RuntimeError(f"--comfyui-path {comfyui_path}: no main.py there on node {socket.gethostname()}")
        try:
            import ray

            host = ray.util.get_node_ip_address()
        except ImportError:
            host = "127.0.0.1"
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        self.private = tempfile.mkdtemp(prefix="sd35wb-ray-comfyui-")
        log = Path(self.private, "comfyui.log")
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        # Two ComfyUIs of one sweep may share a node and its base folder: outputs, temp and database stay apart.
        cmd = [python, "main.py", "--listen", host, "--port", str(port), "--disable-auto-launch",
               "--output-directory", f"{self.private}/output", "--temp-directory", self.private,
               "--database-url", f"sqlite:///{self.private}/comfyui.db", *args]
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(cmd, cwd=comfyui_path, stdout=f, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        url = f"http://{host}:{port}"
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            if self.proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"ComfyUI in {comfyui_path} exited with {self.proc.returncode} on "
                                   f"{socket.gethostname()}:\n{tail}")
            try:
                Server(url, timeout=2).get_json("/system_stats")
                return url
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI in {comfyui_path} did not answer on {url} within {START_TIMEOUT} s")

    def info(self) -> tuple[str, str]:
        """(server URL, Ray node id)."""
        return self.server.url, self.node

    def render(self, prompt: dict, output_node: str | None, timeout: float) -> tuple[str, list[bytes] | str, float, str]:
        """Queue one prompt and wait for it: ("ok", images, seconds, node) or ("error", why, seconds, node).
        A server that stops answering raises ServerGone (the driver moves the cell elsewhere)."""
        t0 = time.time()
        if self.cancelled:
            return "error", "cancelled", 0.0, self.node
        try:
            pid = call_with_retries(self.server.queue, prompt)
        except PromptError as e:
            return "error", str(e), 0.0, self.node
        self.pending.add(pid)
        if self.cancelled:  # Ctrl-C came while this one was being queued
            self.cancel()
        try:
            while time.time() < t0 + timeout:
                res = call_with_retries(self.server.result, pid)
                if res is not None:
                    break
                time.sleep(0.05)
            else:
                return "error", f"no result within {timeout:.0f} s", time.time() - t0, self.node
        finally:
            self.pending.discard(pid)
        if res.status != "success":
            return "error", res.error or res.status, time.time() - t0, self.node
        ims = output_images(res.outputs, output_node)
        if not ims:
            return "error", "the prompt finished without an image output (end the workflow in SaveImage)", 0.0, self.node
        return ("ok", [call_with_retries(self.server.view, im) for im in ims], time.time() - t0, self.node,
                scoring.read(res.outputs))

    def cancel(self) -> int:
        """Ctrl-C: this sweep's prompts off the server (queued dequeued, running interrupted)."""
        self.cancelled = True
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
        if self.private:
            shutil.rmtree(self.private, ignore_errors=True)
            self.private = None


class _Progress:
    """One bar for the images done (tqdm where it is installed, else one stderr line per image)."""

    def __init__(self, total: int, done: int):
        self.total, self.done = total, done
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, initial=done, unit="image", desc="sweep", file=sys.stderr, dynamic_ncols=True)

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        else:
            print(f"sweep: {self.done}/{self.total} images", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def make_dispatch(address: str, servers: list[str] | None = None, comfyui_path: str | None = None,
                  comfyui_args: list[str] | None = None, workers: int = 0, resource: str | None = None,
                  max_restarts: int = -1):
    """The Ray scheduler for ``Sweep.run``: attach one actor to each of ``servers``, or start
    ``workers`` ComfyUIs from ``comfyui_path`` (default: one per GPU, or per unit of ``resource``).
    Its ``servers`` are the URLs the actors serve (the sweep asks the first for models and inputs)."""
    ray = connect(address)
    opts = {"max_restarts": max_restarts, "max_task_retries": -1, "max_concurrency": IN_FLIGHT + 2}
    opts.update({"num_gpus": 0, "resources": {resource: 1}} if resource else {"num_gpus": 1})
    actor_cls = ray.remote(ComfyWorker).options(**opts)
    if workers < 0:
        raise ValueError("--ray-workers: give 1 or more (or leave it out: one per GPU or resource unit)")
    if comfyui_path:
        have = int(ray.cluster_resources().get(resource or "GPU", 0))
        workers = workers or have
        if workers < 1:
            raise ValueError(f"--comfyui-path: the cluster has no {resource or 'GPU'} to start ComfyUI on; give "
                             "--ray-resource NAME (a custom resource of the nodes) or --ray-workers N")
        specs = [{"comfyui_path": comfyui_path, "comfyui_args": comfyui_args} for _ in range(workers)]
    else:
        specs = [{"url": u} for u in servers]
    need, have = len(specs), int(ray.cluster_resources().get(resource or "GPU", 0))
    if have < need:  # an autoscaler may still add nodes: wait, but say what for
        print(f"ray: waiting for {need} worker(s) of 1 {resource or 'GPU'} each; the cluster has {have} now (up to "
              f"{START_TIMEOUT + 60} s; a cluster without GPUs needs --ray-resource NAME, a custom resource of its "
              "nodes)", file=sys.stderr, flush=True)
    run = uuid.uuid4().hex[:12]
    actors = [actor_cls.remote(client_id=f"sd35wb-ray-{run}-{i}", **s) for i, s in enumerate(specs)]
    try:
        infos = ray.get([a.info.remote() for a in actors], timeout=START_TIMEOUT + 60)
    except ray.exceptions.RayActorError as e:
        cause = getattr(e, "cause", None) or e
        raise ValueError(f"--ray: a worker could not start: {str(cause).strip().splitlines()[-1]}") from None
    except ray.exceptions.GetTimeoutError:
        raise ValueError(f"--ray: the workers did not start within {START_TIMEOUT + 60} s; does the cluster have "
                         f"{len(actors)} x {resource or 'GPU'} free?") from None

    def dispatch(sweep, groups):
        try:
            return _drive(ray, sweep, groups, actors, infos)
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

    dispatch.servers = [url for url, _ in infos]
    return dispatch


def _drive(ray, sweep, groups, actors, infos):
    """Hand groups to idle actors (a loaded checkpoint first), keep IN_FLIGHT prompts per actor,
    store results as they come. Returns the groups no live actor was left for."""
    names = [url for url, _ in infos]
    nodes = [[node] for _, node in infos]  # each actor's nodes, in order (a restart moves it)
    for i, (url, node) in enumerate(infos):
        sweep.say(f"ray: actor {i + 1} for {url} on node {node}")
    loaded: dict[int, str] = {}
    queue = [(m, list(cs)) for m, cs in groups]
    mine: dict[int, tuple[str, list]] = {}  # actor index -> (model, cells not yet submitted)
    refs: dict = {}  # object ref -> (actor index, model, cell)
    sent: dict = {}  # object ref -> when it was handed to the actor
    last: dict[int, float] = {}  # actor index -> when its last image came back
    alive = set(range(len(actors)))
    done: dict[int, list[float]] = {i: [] for i in alive}
    progress = _Progress(sweep.total, sweep.result.reused)
    t0 = time.time()

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
            ref = actors[i].render.remote(sweep.prompt_for(cell), sweep.output_node, sweep.timeout)
            refs[ref] = (i, model, cell)
            sent[ref] = time.time()

    def give_back(i: int) -> None:
        """A dead server's cells, submitted or not, back to the front of the queue by checkpoint."""
        back: dict[str, list] = {}
        for r, (a, m, c) in list(refs.items()):
            if a == i:
                back.setdefault(m, []).append(c)
                del refs[r]
        m, rest = mine.pop(i, ("", []))
        if rest:
            back.setdefault(m, []).extend(rest)
        for m, cells in reversed(list(back.items())):
            queue.insert(0, (m, cells))

    try:
        for i in sorted(alive):
            refill(i)
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
            for ref in ready:
                if ref not in refs:  # given back with its actor's other cells
                    continue
                i, model, cell = refs.pop(ref)
                try:
                    status, payload, _, node, *scored = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                    cause = getattr(e, "cause", None)
                    alive.discard(i)
                    sweep.say(f"server {names[i]} stopped answering ({type(cause or e).__name__}): its images go to "
                              "the other server(s)")
                    refs[ref] = (i, model, cell)
                    give_back(i)
                    continue
                if node != nodes[i][-1]:
                    nodes[i].append(node)
                    sweep.say(f"ray: actor {i + 1} for {names[i]} now runs on node {node} (restarted by Ray)")
                now = time.time()  # seconds per image: from its hand-out, or from this actor's image before it
                secs, last[i] = now - max(last.get(i, 0.0), sent.pop(ref)), now
                if status == "ok":
                    if sweep.store(cell, payload, names[i], secs, scored[0] if scored else None):
                        done[i].append(secs)
                        progress.step()
                elif payload != "cancelled":
                    sweep.fail(cell, payload, names[i])
                    progress.step()
            for i in sorted(alive):
                refill(i)
    finally:
        progress.close()
    wall = time.time() - t0
    for i in sorted(done):  # per-actor throughput
        secs = done[i]
        per = f"{sum(secs) / len(secs):.2f} s/image, " if secs else ""
        sweep.say(f"ray actor {i + 1} ({names[i]}): {len(secs)} images, {per}{len(secs) / max(wall, 1e-9):.2f} "
                  f"images/s over {wall:.1f} s; node(s) {', '.join(nodes[i])}")
    return queue


__all__ = ["INSTALL", "ComfyWorker", "check_address", "connect", "import_ray", "make_dispatch"]
