"""Sweep across servers: wall time per image of the sweep CLI with 1 vs 2 ComfyUI servers.

Starts two real ComfyUI servers on 127.0.0.1 (CPU, the tiny SD3.5-Medium-shaped model copied to N
checkpoint files, test conditioning, taesd3) and runs the same sweep (N checkpoints x 1 prompt x S
seeds, 64 px) through ``sd35wb.sweep`` with one server and with both, alternating within one run
(fresh seeds every time, so no server answers from its cache). On a machine whose cores are all
busy, two servers share the same CPUs: the ratio measures the hand-out overhead and overlap there,
not a second GPU box.

Run: $COMFYUI_PYTHON bench/sweep_servers.py [--rounds 2] [--checkpoints 4] [--seeds 4] [--server-threads N]

With torch's default threads each server spins one thread per core, so two servers on one machine
oversubscribe it; ``--server-threads 1`` gives each server one core.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from sd35wb import sweep  # noqa: E402
from tools.comfy_server import ComfyServer, prepare_base  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--server-threads", type=int, default=0,
                    help="OMP/torch threads per server (default: torch's own, one per core)")
    args = ap.parse_args()
    import simpletuner_helpers as sth

    from tools import tiny_models
    from tools.sweep_host import checkpoint_run

    root = tiny_models.build_all()
    with tempfile.TemporaryDirectory(prefix="sd35wb-sweep-servers-") as tmp:
        tmp = Path(tmp)
        models = checkpoint_run(tmp / "models", args.checkpoints)
        roots = {f: [tmp / "models" / f] for f in ("diffusion_models",)}
        for folder, paths in tiny_models.model_dirs(root).items():
            roots.setdefault(folder, []).extend(paths)
        servers = []
        try:
            for k in range(2):
                base = tmp / f"base{k}"
                cfg = prepare_base(base, roots, {"sd35wb_testnodes": REPO / "tests" / "testnodes"})
                env = {"OMP_NUM_THREADS": str(args.server_threads)} if args.server_threads else {}
                servers.append(ComfyServer(base, cfg, env=env).start())
            prompt = sth.tiny(sth.load("simpletuner_sweep_cli.json"), px=64, steps=2, prefix="bench_sweep")
            per_image = {1: [], 2: []}
            for r in range(args.rounds):
                for n in (1, 2):
                    seeds = [10_000 * (r + 1) + 100 * n + s for s in range(args.seeds)]
                    out = tmp / f"out-{r}-{n}" / "grid.png"
                    log = io.StringIO()
                    t0 = time.perf_counter()
                    res = sweep.Sweep(prompt, models, None, seeds, [s.url for s in servers[:n]], out, log=log).run()
                    wall = time.perf_counter() - t0
                    if res.failures or res.rendered != len(models) * len(seeds):
                        print(log.getvalue(), file=sys.stderr)
                        return 2
                    per_image[n].append(wall / res.rendered)
                    print(f"round {r + 1}: {n} server(s): {res.rendered} images in {wall:.1f} s = "
                          f"{wall / res.rendered:.2f} s/image", flush=True)
        finally:
            for s in servers:
                s.stop()
    one, two = statistics.median(per_image[1]), statistics.median(per_image[2])
    print(json.dumps({"s_per_image_1_server": round(one, 3), "s_per_image_2_servers": round(two, 3)}))
    print(f"wall time per image, 2 servers / 1 server: {two / one:.2f} (medians; both servers on this machine's CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
