"""Load time: the pack's SD3.5 Loader against core's UNETLoader on the real-structure SD3.5 Medium.

The file is ``tools/real_models.py``'s Medium (random weights, Stability's key names and shapes,
5.1 GB fp16 single file, built once and cached). Each load runs in a fresh child process (the real
in-process host, CPU), so nothing is cached inside the host between loads; the file is read once
before the first round so every load finds it in the page cache (no load pays the cold read alone);
the two loaders alternate (ours, core / core, ours) over the rounds. Printed per loader: load
seconds (wall, the node's call only) and peak RSS growth during it (Linux VmHWM, reset just before),
min/median/max, and the ratio of medians. The host keeps an fp16 file's weights in float32 on CPU,
so each load peaks at about 10-14 GiB: run it alone (``flock -x /tmp/sd35wb-mem.lock``).

Run: $COMFYUI_PYTHON bench/load_time.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))

from tools import bench_child  # noqa: E402


def child(which: str) -> dict:
    sys.path.append(str(REPO))
    from tools import host

    host.bootstrap()
    import folder_paths
    import nodes

    from tools import real_models, tiny_models

    root = real_models.cache_root()
    folder_paths.add_model_folder_path("checkpoints", str(root / "checkpoints"))
    folder_paths.add_model_folder_path("diffusion_models", str(root / "checkpoints"))
    for folder, paths in tiny_models.model_dirs(tiny_models.build_all()).items():
        for p in paths:
            folder_paths.add_model_folder_path(folder, str(p))
    loader = host.load_pack("nodes.sd35_loader").SD35Loader
    rss0 = bench_child.reset_peak()
    t0 = time.perf_counter()
    if which == "ours":
        model = loader.execute(model_name=real_models.MEDIUM_FILE, variant="auto", clip_l="none", clip_g="none",
                               t5xxl="none", t5_dtype="default", vae="taesd3", shift=3.0, fetch_missing=False).result[0]
    else:
        (model,) = nodes.UNETLoader().load_unet(real_models.MEDIUM_FILE, "default")
    seconds = time.perf_counter() - t0
    dm = model.model.diffusion_model
    assert len(dm.joint_blocks) == 24 and dm.hidden_size == 1536
    return {"seconds": seconds, "growth_gib": (bench_child.status_kib("VmHWM") - rss0) / 2**20,
            "dtype": str(model.model.get_dtype())}


def spread(v: list[float], fmt: str = ".2f") -> str:
    return "/".join(format(x, fmt) for x in (min(v), statistics.median(v), max(v)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", choices=["ours", "core"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    sys.path.append(str(REPO))
    from tools import host

    host.bootstrap()
    from tools import real_models

    single = real_models.medium() / "checkpoints" / real_models.MEDIUM_FILE
    t0 = time.perf_counter()
    with open(single, "rb") as f:  # into the page cache, so no round pays the cold read alone
        while f.read(1 << 24):
            pass
    print(f"SD3.5 Medium real structure: {single.stat().st_size / 1e9:.2f} GB ({single.name}); read once into the "
          f"page cache in {time.perf_counter() - t0:.1f} s; {args.rounds} alternating rounds, one child process per load",
          flush=True)
    res: dict[str, list[dict]] = {"ours": [], "core": []}
    for r in range(args.rounds):
        for which in (("ours", "core") if r % 2 == 0 else ("core", "ours")):
            out = bench_child.run(__file__, [which])
            res[which].append(out)
            print(f"round {r + 1}: {which:4} {out['seconds']:.2f} s, peak RSS +{out['growth_gib']:.2f} GiB "
                  f"(weights {out['dtype']})", flush=True)
    label = {"ours": "pack's SD3.5 Loader (variant auto, taesd3)", "core": "core UNETLoader"}
    for which in ("ours", "core"):
        print(f"{label[which]:44s} load s min/median/max {spread([x['seconds'] for x in res[which]])}   "
              f"peak RSS growth GiB {spread([x['growth_gib'] for x in res[which]])}")
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in res.items()}
    mem = {k: statistics.median(x["growth_gib"] for x in v) for k, v in res.items()}
    print(f"ours / core: load time {med['ours'] / med['core']:.2f}, peak RSS growth {mem['ours'] / mem['core']:.2f} "
          "(medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
