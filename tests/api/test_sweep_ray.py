"""API tier: ``python -m sd35wb.sweep --ray`` on a real local multi-node Ray cluster
(``ray.cluster_utils.Cluster``, each node with a ``comfy`` resource) over real ComfyUI servers: the
same grid as the local path, a node removed and a server killed mid-sweep, Ctrl-C and resume on
either path, actors that start ComfyUI themselves, and the errors for no Ray and for no cluster."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import ray.cluster_utils as ray_cluster_utils  # the tools layer's Ray (requirements-dev.txt), never the host's
import sweep_helpers as swh
from conftest import TESTS, model_roots
from PIL import Image
from sweep_helpers import REPO, RUN, cli, workflow

from tools.comfy_server import prepare_base
from tools.host import host_env

CHECKPOINTS = 3  # the linked run's checkpoint-100, -250, -1000


def test_ray_auto_without_a_cluster_fails_fast(tmp_path, monkeypatch):
    # First in the module: its cluster is not up yet. `auto` joins a running cluster and never starts one.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # where `ray start` leaves its address: nothing there
    t0 = time.time()
    r = cli("--workflow", tmp_path / "w.json", "--models", "a", "--out", tmp_path / "g.png", "--ray", "auto")
    assert time.time() - t0 < 30
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--ray auto: no running Ray cluster found" in r.stderr and "ray start --head" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_ray_auto_with_a_dead_heads_address_fails_fast(tmp_path, monkeypatch):
    # A head that crashed leaves its address file behind: `auto` would retry it for minutes.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
    t0 = time.time()
    r = cli("--workflow", tmp_path / "w.json", "--models", "a", "--out", tmp_path / "g.png", "--ray", "auto")
    assert time.time() - t0 < 30
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"--ray auto: the cluster named by {tmp_path / 'ray' / 'ray_current_cluster'} (127.0.0.1:1): no Ray head " \
           "answers there" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_ray_missing_says_how_to_install(tmp_path):
    env = {"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "")}  # the host's python without the tools layer
    probe = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True)
    assert probe.returncode != 0, "this python has Ray without the tools layer: nothing to test the message with"
    r = subprocess.run([sys.executable, "-m", "sd35wb.sweep", "--workflow", tmp_path / "w.json", "--models", "a",
                        "--out", tmp_path / "g.png", "--ray", "auto"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert f'{sys.executable} -m pip install "ray[default]>=2.40"' in r.stderr, r.stderr
    assert 'pip install "./sd35-workbench[cluster]"' in r.stderr and "Traceback" not in r.stderr


def test_ray_bad_address_is_a_clear_error_fast(tmp_path):
    t0 = time.time()
    r = cli("--workflow", tmp_path / "w.json", "--models", "a", "--out", tmp_path / "g.png", "--ray", "127.0.0.1:1")
    assert time.time() - t0 < 30
    assert r.returncode == 2 and "no Ray head answers there" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def cluster():
    c = ray_cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"comfy": 1}})
    for _ in range(2):
        c.add_node(num_cpus=1, resources={"comfy": 1})
    c.wait_for_nodes()
    yield c
    c.shutdown()


def _images(out):
    return {f.name: np.asarray(Image.open(f).convert("RGB")) for f in sorted(out.parent.glob(out.stem + "-images/*.png"))}


def _state(out) -> dict:
    return json.loads(out.with_name(out.stem + ".sweep.json").read_text())["cells"]


def _actors(text: str) -> dict[int, tuple[str, str]]:
    """The driver's 'ray: actor N for URL on node ID' lines."""
    return {int(n): (url, node) for n, url, node in re.findall(r"^ray: actor (\d+) for (\S+) on node (\S+)$", text, re.M)}


def _progress_lines(text: str, total: int) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("[") and f"/{total}] " in ln]


def _assert_each_cell_once(out, text: str, total: int) -> None:
    """Every cell once in the state, once in the images folder and once in the progress lines."""
    assert len(_state(out)) == total
    assert len(list(out.with_name(out.stem + "-images").glob("*.png"))) == total
    names = [re.sub(r"^\[\d+/\d+\] (.*?)  \(.*$", r"\1", ln) for ln in _progress_lines(text, total)]
    assert len(names) == len(set(names)), "a cell was stored twice:\n" + text


class Reader:
    """The CLI's output, read on a thread so the test can act on it while the sweep runs."""

    def __init__(self, proc):
        self.proc, self.lines = proc, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 600) -> re.Match:
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, self.text, re.M)
            if m:
                return m
            if self.proc.poll() is not None and not self.thread.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"never saw {pattern!r}; output:\n{self.text}")

    def finish(self, timeout: float = 600) -> str:
        self.proc.wait(timeout)
        self.thread.join(10)
        return self.text


@pytest.fixture(scope="module")
def local_grid(server, second_server, linked, clip_link, tmp_path_factory):
    """The local two-server path's grid of 3 checkpoints x 1 prompt x 2 seeds, to compare Ray's with."""
    tmp = tmp_path_factory.mktemp("ray-local-grid")
    wf = workflow(tmp, "ray_grid")
    common = ["--workflow", wf, "--run", RUN, "--prompt", "a red fox in snow", "--seeds", "1,2"]
    out = tmp / "local" / "grid.png"
    r = cli(*common, "--server", server.url, "--server", second_server.url, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    return common, out


def test_ray_grid_equals_the_local_grid(server, second_server, local_grid, cluster, tmp_path):
    common, local = local_grid
    on_ray = tmp_path / "ray" / "grid.png"
    r = cli(*common, "--server", server.url, "--server", second_server.url, "--out", on_ray,
            "--ray", cluster.address, "--ray-resource", "comfy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 rendered, 0 reused" in r.stdout
    a, b = _images(local), _images(on_ray)
    assert len(a) == 6 and a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert np.array_equal(np.asarray(Image.open(local)), np.asarray(Image.open(on_ray)))
    assert len(_state(on_ray)) == 6
    # One progress bar (tqdm, on stderr) up to 6/6, and each actor's throughput at the end.
    assert re.search(r"sweep: 100%\|.*\| 6/6 ", r.stderr), r.stderr
    actors = _actors(r.stdout)
    assert {url for url, _ in actors.values()} == {server.url, second_server.url}, r.stdout
    counts = {}
    for n, (url, _) in actors.items():
        m = re.search(rf"^ray actor {n} \({re.escape(url)}\): (\d+) images, [\d.]+ s/image, [\d.]+ images/s over ",
                      r.stdout, re.M)
        assert m, r.stdout
        counts[url] = int(m.group(1))
    assert sum(counts.values()) == 6 and all(counts.values()), counts


def test_ray_node_removed_mid_sweep_completes_each_cell_once(server, second_server, linked, clip_link, cluster,
                                                             tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")  # no bar in the merged output these read line by line
    total = CHECKPOINTS * 4
    out = tmp_path / "grid.png"
    proc = cli("--workflow", workflow(tmp_path, "ray_rm"), "--run", RUN, "--prompt", "a red fox in snow",
               "--seeds", "1,2,3,4", "--server", server.url, "--server", second_server.url, "--out", out,
               "--ray", cluster.address, "--ray-resource", "comfy", popen=True)
    reader = Reader(proc)
    reader.wait_for(rf"^\[2/{total}\]")
    workers = {n.node_id: n for n in cluster.worker_nodes}
    actors = _actors(reader.text)
    # An actor on a worker node (the head holds at most one of the two): its node goes away.
    n, (url, node) = next((n, a) for n, a in sorted(actors.items()) if a[1] in workers)
    cluster.remove_node(workers[node])
    try:
        text = reader.finish()
        assert proc.returncode == 0, text
        moved = re.search(rf"^ray: actor {n} for {re.escape(url)} now runs on node (\S+) \(restarted by Ray\)$", text, re.M)
        assert moved and moved.group(1) != node, text
        after = text[moved.end():]
        assert re.search(rf"^\[\d+/{total}\] .*\({re.escape(url)};", after, re.M), "the moved actor rendered nothing:\n" + text
        _assert_each_cell_once(out, text, total)
        assert f"{total} rendered, 0 reused" in text
    finally:  # the node back, for the tests after this one
        cluster.add_node(num_cpus=1, resources={"comfy": 1})
        cluster.wait_for_nodes()


def test_ray_server_killed_mid_image_renders_it_on_the_other(server, linked, clip_link, cluster, tiny_models,
                                                             user_models, training_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")  # no bar in the merged output these read line by line
    doomed = swh.start_server(tmp_path / "doomed-base", tiny_models, user_models, training_root)
    try:
        swh.link(doomed)
        wf = workflow(tmp_path, "ray_kill")
        prompt = json.loads(wf.read_text())
        prompt["6"]["inputs"]["steps"] = 8  # a longer image: the kill lands while one runs
        wf.write_text(json.dumps(prompt))
        total = CHECKPOINTS * 2
        out = tmp_path / "grid.png"
        proc = cli("--workflow", wf, "--run", RUN, "--prompt", "a red fox in snow", "--seeds", "1,2",
                   "--server", server.url, "--server", doomed.url, "--out", out,
                   "--ray", cluster.address, "--ray-resource", "comfy", popen=True)
        reader = Reader(proc)
        reader.wait_for(rf"^\[1/{total}\]")
        deadline = time.time() + 300
        while not (running := doomed.get_json("/queue")["queue_running"]):
            assert time.time() < deadline and proc.poll() is None, reader.text
            time.sleep(0.02)
        doomed.proc.kill()  # mid-image
        running = running[0][2]
        seed, label = running["6"]["inputs"]["seed"], running["1"]["inputs"]["unet_name"].rsplit("/", 1)[-1][:-12]
        text = reader.finish()
    finally:
        doomed.stop()
    assert proc.returncode == 0, text
    assert f"server {doomed.url} stopped answering" in text, text
    assert "Traceback" not in text and "Unhandled error" not in text, text
    mine = [ln for ln in _progress_lines(text, total) if f"] {label} p1 seed {seed}  (" in ln]
    assert len(mine) == 1 and f"({server.url};" in mine[0], (label, seed, text)
    _assert_each_cell_once(out, text, total)


def _queues_empty(*servers) -> None:
    for srv in servers:
        assert not srv.get_json("/queue")["queue_pending"], f"{srv.url} still has this sweep's prompts queued"


def test_ray_ctrl_c_then_resume_on_ray_then_locally(server, second_server, linked, clip_link, cluster, tmp_path,
                                                    monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")  # no bar in the merged output these read line by line
    total = CHECKPOINTS * 4
    out = tmp_path / "grid.png"
    args = ["--workflow", workflow(tmp_path, "ray_resume"), "--run", RUN, "--prompt", "a red fox in snow",
            "--seeds", "1,2,3,4", "--server", server.url, "--server", second_server.url, "--out", out]
    on_ray = [*args, "--ray", cluster.address, "--ray-resource", "comfy"]
    done = 0
    for round_ in (1, 2):  # Ctrl-C on Ray, twice: a fresh start, then a resume
        reader = Reader(cli(*on_ray, popen=True))
        reader.wait_for(rf"^\[{done + 2}/{total}\]")
        reader.proc.send_signal(signal.SIGINT)
        text = reader.finish(120)
        assert reader.proc.returncode == 130, text
        _queues_empty(server, second_server)  # Ctrl-C took this sweep's queued prompts off both servers
        if round_ == 2:
            assert f"resume: {done} of {total} images already rendered" in text, text
        for srv in (server, second_server):
            swh.wait_idle(srv)
        now = len(_state(out))
        assert done + 2 <= now < total, text
        done = now
    before = swh.executed(server) + swh.executed(second_server)
    r = cli(*args)  # and the rest locally
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resume: {done} of {total} images already rendered" in r.stdout
    assert swh.executed(server) + swh.executed(second_server) - before == total - done
    assert f"{total - done} rendered, {done} reused" in r.stdout
    assert len(_state(out)) == total
    assert len(list(out.with_name("grid-images").glob("*.png"))) == total


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/system_stats", timeout=2).close()
        return True
    except (urllib.error.URLError, OSError):
        return False


def test_ray_actors_start_comfyui_from_a_path(server, second_server, local_grid, tiny_models, user_models, cluster,
                                              tmp_path):
    # Each actor starts the pinned host's ComfyUI on its node, with the tests' models folder, and stops it at the end.
    base = tmp_path / "node-base"
    cfg = prepare_base(base, model_roots(tiny_models, user_models), {"sd35wb_testnodes": TESTS / "testnodes"})
    # This node's models folder has the run linked, as Sync now on a server of it would have done.
    (base / "models" / "diffusion_models").mkdir(parents=True)
    (base / "models" / "diffusion_models" / RUN).symlink_to(server.base / "models" / "diffusion_models" / RUN)
    common, local = local_grid
    out = tmp_path / "grid.png"
    comfy_args = f"--cpu --base-directory {base} --extra-model-paths-config {cfg}"
    r = cli(*common, "--out", out, "--ray", cluster.address, "--ray-resource", "comfy", "--ray-workers", "2",
            "--comfyui-path", host_env()["COMFYUI_DIR"], "--comfyui-args", comfy_args)
    assert r.returncode == 0, r.stdout + r.stderr
    actors = _actors(r.stdout)
    urls = {url for url, _ in actors.values()}
    assert len(actors) == 2 and len(urls) == 2 and not urls & {server.url, second_server.url}, r.stdout
    assert "6 rendered, 0 reused" in r.stdout
    a, b = _images(local), _images(out)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    for url in urls:
        assert not _answers(url), f"the ComfyUI at {url} still runs after the sweep"


def test_ray_comfyui_path_without_main_py_is_a_clear_error(cluster, tmp_path):
    r = cli("--workflow", tmp_path / "w.json", "--run", RUN, "--out", tmp_path / "g.png", "--ray", cluster.address,
            "--ray-resource", "comfy", "--ray-workers", "1", "--comfyui-path", tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"--comfyui-path {tmp_path}: no main.py there" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_ray_follows_a_full_fine_tune_while_it_trains(server, second_server, clip_link, cluster, training_root,
                                                      tiny_models, tmp_path, monkeypatch):
    """--follow with --run over Ray: SimpleTuner's full-model saves (temporary-N/ copied into checkpoint-N/,
    then the final pipeline/), each linked on both servers, rendered once, never half-read."""
    from tools.simpletuner_trainer import Trainer

    monkeypatch.setenv("TQDM_DISABLE", "1")
    run = "ray-follow-full"
    out_dir = training_root / run
    trainer = Trainer(out_dir, (tiny_models / "diffusion_models" / "tiny-sd35m.safetensors").read_bytes(), limit=5,
                      half_pause=0.2, marker_pause=0.2, full=True)
    out = tmp_path / "follow.png"
    reader = Reader(cli("--workflow", workflow(tmp_path, "ray_follow"), "--run", run, "--follow", out_dir, "--server",
                        server.url, "--server", second_server.url, "--ray", cluster.address, "--ray-resource", "comfy", "--out",
                        out, "--poll",
                        "0.3", popen=True))
    reader.wait_for(r"^follow: watching ray-follow-full \(", timeout=120)
    for step in (100, 200):
        trainer.save(step)
        reader.wait_for(rf"^\[\d+/\d+\] checkpoint-{step} ", timeout=120)
    trainer.final()
    text = reader.finish(180)
    assert reader.proc.returncode == 0, text
    assert "follow: stopped: the run's final save (ray-follow-full-final) is rendered" in text, text
    assert re.search(r"^ray: actor \d+ for ", text, re.M) and "failed:" not in text, text
    want = [f"{run}/checkpoint-100.safetensors", f"{run}/checkpoint-200.safetensors", f"{run}/{run}-final.safetensors"]
    assert sorted(e["model"] for e in _state(out).values()) == want, "each save once, none of temporary-N/"
    starts: dict[str, list[float]] = {}
    for srv in (server, second_server):
        for entry in srv.get_json("/history?max_items=100000").values():
            name = entry["prompt"][2]["1"]["inputs"].get("unet_name", "")
            if name.startswith(run + "/") and entry["status"].get("status_str") == "success":
                starts.setdefault(name, []).append(next(d["timestamp"] / 1000 for kind, d in entry["status"]["messages"]
                                                        if kind == "execution_start"))
    assert sorted(starts) == want and all(len(t) == 1 for t in starts.values()), starts
    # Never while checkpoint-N/ held half a copied file; checkpoint-200 not before its markers either (100 came
    # first: the linker had not yet seen this run write markers, so a complete file was enough).
    assert starts[f"{run}/checkpoint-100.safetensors"][0] >= trainer.times[100]["renamed"] - 0.05
    assert starts[f"{run}/checkpoint-200.safetensors"][0] >= trainer.times[200]["complete"] - 0.05
    assert starts[f"{run}/{run}-final.safetensors"][0] >= trainer.times["final"]["complete"] - 0.05
