"""API tier: ``python -m sd35wb.sweep --ray`` on a real local multi-node Ray cluster
(``ray.cluster_utils.Cluster``, each node with a ``comfy`` resource) over two real ComfyUI servers:
the same grid as the local path, and the errors for no Ray and for no cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import ray.cluster_utils as ray_cluster_utils  # the tools layer's Ray (requirements-dev.txt), never the host's
from PIL import Image
from sweep_helpers import REPO, RUN, cli, workflow


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


def test_ray_grid_equals_the_local_grid(server, second_server, linked, clip_link, cluster, tmp_path):
    wf = workflow(tmp_path, "ray_grid")
    common = ["--workflow", wf, "--run", RUN, "--prompt", "a red fox in snow", "--seeds", "1,2",
              "--server", server.url, "--server", second_server.url]
    local = tmp_path / "local" / "grid.png"
    r = cli(*common, "--out", local)
    assert r.returncode == 0, r.stdout + r.stderr
    on_ray = tmp_path / "ray" / "grid.png"
    r = cli(*common, "--out", on_ray, "--ray", cluster.address, "--ray-resource", "comfy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 rendered, 0 reused" in r.stdout
    a, b = _images(local), _images(on_ray)
    assert len(a) == 6 and a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert np.array_equal(np.asarray(Image.open(local)), np.asarray(Image.open(on_ray)))
    state = json.loads(on_ray.with_name("grid.sweep.json").read_text())
    assert len(state["cells"]) == 6
    for url in (server.url, second_server.url):  # per-actor throughput, both took part
        assert f"server {url}: " in r.stdout, r.stdout


def test_ray_missing_says_how_to_install(tmp_path):
    env = {"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "")}  # the host's python without the tools layer
    probe = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True)
    assert probe.returncode != 0, "this python has Ray without the tools layer: nothing to test the message with"
    r = subprocess.run([sys.executable, "-m", "sd35wb.sweep", "--workflow", tmp_path / "w.json", "--models", "a",
                        "--out", tmp_path / "g.png", "--ray", "auto"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert 'pip install "sd35-workbench[cluster]"' in r.stderr and "Traceback" not in r.stderr


def test_ray_bad_address_is_a_clear_error_fast(tmp_path):
    t0 = time.time()
    r = cli("--workflow", tmp_path / "w.json", "--models", "a", "--out", tmp_path / "g.png", "--ray", "127.0.0.1:1")
    assert time.time() - t0 < 30
    assert r.returncode == 2 and "no Ray head answers there" in r.stderr and "Traceback" not in r.stderr, r.stderr
