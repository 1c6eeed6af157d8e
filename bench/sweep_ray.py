"""Sweep on Ray: images per second through ``--ray`` against the local two-server path, Ray's extra
time per image, and the time from a node removal until its images run elsewhere.

One run, the same two real ComfyUI servers on 127.0.0.1 (CPU, one torch thread each as two GPUs would not
share, the tiny SD3.5-Medium-shaped model copied to N checkpoint files, test conditioning, taesd3, 64 px,
1 step: the less compute per image, the less its noise hides the dispatch's cost) and a local Ray cluster
(``ray.cluster_utils.Cluster``: a head and two worker nodes, each with one ``comfy`` resource, so two
actors and a spare node). Each round runs the same plan (N checkpoints x 1 prompt x S seeds, fresh
seeds every time so no server answers from its cache) locally and through Ray, in alternating order,
at two sizes: S seeds and ``--big-seeds`` (3 S). A sweep's wall time is a fixed part (the dispatch's
start and stop, the last image's tail) plus a part per image; the slope between the two sizes is the
time per image, free of the fixed part. Ray's extra time per image is the Ray path's slope minus the
local path's in the same round. Target: <= 50 ms, or <= 5 % of the per-image time, whichever is
larger. The fixed part's difference is printed as Ray's extra time per sweep.

The removal rounds start a Ray sweep, remove the worker node of one actor once two images are done,
and time until that actor, restarted by Ray on another node, has its first image there stored (Ray's
detection of the lost node, the restart, and one image render).

Run: $COMFYUI_PYTHON bench/sweep_ray.py [--rounds 5] [--removals 2] [--checkpoints 3] [--seeds 4] [--big-seeds 12] [--px 64] [--steps 1]
(the test tools' Ray on PYTHONPATH, e.g. PYTHONPATH=$SD35WB_TOOLS)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from sd35wb import sweep  # noqa: E402
from sd35wb.sweep import ray_dispatch  # noqa: E402
from tools.comfy_server import ComfyServer, prepare_base  # noqa: E402


class TimedLog:
    """The sweep's log, each line with the time it was written."""

    def __init__(self):
        self.lines: list[tuple[float, str]] = []
        self._part = ""

    def write(self, s: str) -> None:
        self._part += s
        while "\n" in self._part:
            line, self._part = self._part.split("\n", 1)
            self.lines.append((time.perf_counter(), line))

    def flush(self) -> None:
        pass

    def first(self, pattern: str, after: float = 0.0) -> tuple[float, re.Match] | None:
        for t, line in list(self.lines):
            if t >= after and (m := re.search(pattern, line)):
                return t, m
        return None


def spread(xs: list[float], unit: str, scale: float = 1.0) -> str:
    xs = [x * scale for x in xs]
    return f"median {statistics.median(xs):.1f} {unit} (min {min(xs):.1f}, max {max(xs):.1f}, n={len(xs)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--removals", type=int, default=2)
    ap.add_argument("--checkpoints", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--big-seeds", type=int, default=0, help="the larger sweep's seeds (default 3 x --seeds)")
    ap.add_argument("--px", type=int, default=64, help="image size (64 or more: the latent nodes' minimum)")
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args()
    args.big_seeds = args.big_seeds or 3 * args.seeds
    if args.big_seeds <= args.seeds:
        raise SystemExit("--big-seeds must be larger than --seeds")
    import ray
    import ray.cluster_utils
    import simpletuner_helpers as sth

    from tools import host, tiny_models
    from tools.sweep_host import checkpoint_run

    host.bootstrap()  # a cold model cache builds the tiny models with ComfyUI's classes, in this process
    root = tiny_models.build_all()
    with tempfile.TemporaryDirectory(prefix="sd35wb-sweep-ray-") as tmp:
        tmp = Path(tmp)
        models = checkpoint_run(tmp / "models", args.checkpoints)
        roots = {"diffusion_models": [tmp / "models" / "diffusion_models"]}
        for folder, paths in tiny_models.model_dirs(root).items():
            roots.setdefault(folder, []).extend(paths)
        servers, cluster = [], None
        try:
            for k in range(2):
                base = tmp / f"base{k}"
                cfg = prepare_base(base, roots, {"sd35wb_testnodes": REPO / "tests" / "testnodes"})
                # one torch thread each: the two servers stand for two GPUs, not for one shared pool of cores
                servers.append(ComfyServer(base, cfg, env={"OMP_NUM_THREADS": "1"}).start())
            urls = [s.url for s in servers]
            cluster = ray.cluster_utils.Cluster(initialize_head=True,
                                                head_node_args={"num_cpus": 1, "resources": {"comfy": 1}})
            for _ in range(2):
                cluster.add_node(num_cpus=1, resources={"comfy": 1})
            cluster.wait_for_nodes()
            prompt = sth.tiny(sth.load("simpletuner_sweep_cli.json"), px=args.px, steps=args.steps, prefix="bench_ray")
            n_images = args.checkpoints * args.seeds
            serial = iter(range(1, 10**6))

            def one(path: str, log=None, n_seeds: int = args.seeds) -> tuple[float, sweep.SweepResult, TimedLog]:
                n_images = args.checkpoints * n_seeds
                seeds = [10_000 * next(serial) + s for s in range(n_seeds)]
                out = tmp / f"out-{len(list(tmp.glob('out-*')))}" / "grid.png"
                log = log or TimedLog()
                sw = sweep.Sweep(prompt, models, None, seeds, urls, out, log=log)
                dispatch = ray_dispatch.make_dispatch(cluster.address, urls, resource="comfy") if path == "ray" else None
                t0 = time.perf_counter()  # actors are up: the wall time is the sweep's own
                res = sw.run(dispatch)
                wall = time.perf_counter() - t0
                if res.failures or res.rendered != n_images:
                    print("\n".join(line for _, line in log.lines), file=sys.stderr)
                    raise SystemExit(f"{path}: {res.rendered} of {n_images} rendered")
                return wall, res, log

            one("local")  # warm: each server loads the CLIP and the VAE once, outside the timing
            sizes = (args.seeds, args.big_seeds)
            slope = {"local": [], "ray": []}  # seconds per image, from the two sizes of one round
            fixed = {"local": [], "ray": []}  # seconds per sweep beyond its images
            for r in range(args.rounds):
                order = ("local", "ray") if r % 2 == 0 else ("ray", "local")
                for path in order:
                    walls = {}
                    for n_seeds in (sizes if r % 2 == 0 else sizes[::-1]):
                        n = args.checkpoints * n_seeds
                        walls[n], _, _ = one(path, n_seeds=n_seeds)
                        print(f"round {r + 1}: {path:5s} {n:3d} images in {walls[n]:6.2f} s = {n / walls[n]:.2f} "
                              "images/s", flush=True)
                    (n0, w0), (n1, w1) = sorted(walls.items())
                    slope[path].append((w1 - w0) / (n1 - n0))
                    fixed[path].append(w0 - n0 * slope[path][-1])
            extra = [ray_s - local_s for ray_s, local_s in zip(slope["ray"], slope["local"])]
            extra_fixed = [ray_f - local_f for ray_f, local_f in zip(fixed["ray"], fixed["local"])]

            moved = []
            for k in range(args.removals):
                log = TimedLog()
                box: dict = {}
                th = threading.Thread(target=lambda box=box, log=log: box.update(r=one("ray", log)), daemon=True)
                th.start()
                deadline = time.time() + 600
                while not log.first(rf"^\[2/{n_images}\]"):
                    if time.time() > deadline or not th.is_alive():
                        raise SystemExit("removal round: the sweep never reached 2 images")
                    time.sleep(0.02)
                actors = {m.group(1): (m.group(2), m.group(3)) for _, line in log.lines
                          if (m := re.match(r"^ray: actor (\d+) for (\S+) on node (\S+)$", line))}
                workers = {n.node_id: n for n in cluster.worker_nodes}
                n, (url, node) = next((n, a) for n, a in sorted(actors.items()) if a[1] in workers)
                t_rm = time.perf_counter()
                cluster.remove_node(workers[node])
                th.join(600)
                if "r" not in box:
                    raise SystemExit("removal round: the sweep did not finish")
                t_new = log.first(rf"^ray: actor {n} for .* now runs on node", t_rm)
                if t_new is None:
                    raise SystemExit("removal round: the actor was never restarted elsewhere")
                # The driver learns of the new node from the first image rendered there.
                moved.append(t_new[0] - t_rm)
                print(f"removal {k + 1}: actor {n}'s first image from another node stored {moved[-1]:.2f} s after "
                      "the removal", flush=True)
                cluster.add_node(num_cpus=1, resources={"comfy": 1})
                cluster.wait_for_nodes()
        finally:
            for s in servers:
                s.stop()
            if cluster is not None:
                ray.shutdown()  # this process is the driver: leave the cluster before it goes
                cluster.shutdown()

    local_s, ray_s = statistics.median(slope["local"]), statistics.median(slope["ray"])
    target_ms = max(50.0, 0.05 * local_s * 1000)
    print(json.dumps({"images_per_s_local": round(1 / local_s, 3), "images_per_s_ray": round(1 / ray_s, 3),
                      "s_per_image_local": [round(x, 4) for x in slope["local"]],
                      "s_per_image_ray": [round(x, 4) for x in slope["ray"]],
                      "s_per_sweep_fixed_local": [round(x, 3) for x in fixed["local"]],
                      "s_per_sweep_fixed_ray": [round(x, 3) for x in fixed["ray"]],
                      "ray_extra_ms_per_image": [round(x * 1000, 1) for x in extra],
                      "removal_to_first_image_elsewhere_s": [round(x, 2) for x in moved]}))
    print(f"per image (slope between {args.checkpoints * args.seeds} and {args.checkpoints * args.big_seeds} images): "
          f"local two-server path {local_s * 1000:.0f} ms, {1 / local_s:.2f} images/s; through Ray {ray_s * 1000:.0f} ms, "
          f"{1 / ray_s:.2f} images/s; Ray / local throughput {local_s / ray_s:.2f} (medians of {args.rounds} rounds)")
    print(f"Ray's extra time per image: {spread(extra, 'ms', 1000)}; target <= {target_ms:.0f} ms "
          f"(50 ms or 5 % of {local_s * 1000:.0f} ms): {'met' if statistics.median(extra) * 1000 <= target_ms else 'not met'}")
    print(f"Ray's extra time per sweep (fixed part: dispatch start / stop, the last image's tail): "
          f"{spread(extra_fixed, 's')}")
    if moved:
        print(f"node removal -> the lost actor's first image stored from another node: {spread(moved, 's')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
