"""Load time: the pack's SD3.5 Loader against core's UNETLoader on the real-structure SD3.5 Medium or Large.

The file is ``tools/real_models.py``'s Medium (random weights, Stability's key names and shapes,
5.1 GB fp16 single file, built once and cached), or with ``--variant large`` its 8B Large (8.1 GB,
written as fp8_e4m3fn, both loaders given ``weight_dtype`` fp8_e4m3fn so the weights stay fp8). Each load runs in a fresh child process (the real
in-process host, CPU), so nothing is cached inside the host between loads; the file is read once
before the first round so every load finds it in the page cache (no load pays the cold read alone);
the two loaders alternate (ours, core / core, ours) over the rounds. Printed per loader: load
seconds (wall, the node's call only), peak RSS growth during it (Linux VmHWM, reset just before)
and the growth still resident once it returned (VmRSS after a gc: what the loaded model keeps),
min/median/max, and the ratio of medians. The host keeps an fp16 file's weights in float32 on CPU,
so each Medium load peaks at about 10-14 GiB: run it alone (``flock -x /tmp/sd35wb-mem.lock``).

Run: $COMFYUI_PYTHON bench/load_time.py [--rounds 3] [--variant medium|large]
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

# variant: (file, core UNETLoader's weight_dtype, joint blocks, width)
VARIANTS = {"medium": ("MEDIUM_FILE", "default", 24, 1536), "large": ("LARGE_FILE", "fp8_e4m3fn", 38, 2432)}


def child(which: str, variant: str) -> dict:
    sys.path.append(str(REPO))
    from tools import host

    host.bootstrap()
    import folder_paths
    import nodes

    from tools import real_models, tiny_models

    root = real_models.cache_root()
    attr, weight_dtype, blocks, width = VARIANTS[variant]
    name = getattr(real_models, attr)
    folder_paths.add_model_folder_path("checkpoints", str(root / "checkpoints"))
    folder_paths.add_model_folder_path("diffusion_models", str(root / "checkpoints"))
    for folder, paths in tiny_models.model_dirs(tiny_models.build_all()).items():
        for p in paths:
            folder_paths.add_model_folder_path(folder, str(p))
    loader = host.load_pack("nodes.sd35_loader").SD35Loader
    rss0 = bench_child.reset_peak()
    t0 = time.perf_counter()
    if which == "ours":
        model = loader.execute(model_name=name, variant="auto", clip_l="none", clip_g="none", t5xxl="none",
                               t5_dtype="default", vae="taesd3", shift=3.0, fetch_missing=False,
                               weight_dtype=weight_dtype).result[0]
    else:
        (model,) = nodes.UNETLoader().load_unet(name, weight_dtype)
    seconds = time.perf_counter() - t0
    dm = model.model.diffusion_model
    assert len(dm.joint_blocks) == blocks and dm.hidden_size == width
    import gc

    gc.collect()
    return {"seconds": seconds, "growth_gib": (bench_child.status_kib("VmHWM") - rss0) / 2**20,
            "kept_gib": (bench_child.status_kib("VmRSS") - rss0) / 2**20, "dtype": str(model.model.get_dtype())}


def spread(v: list[float], fmt: str = ".2f") -> str:
    return "/".join(format(x, fmt) for x in (min(v), statistics.median(v), max(v)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="medium")
    ap.add_argument("--child", choices=["ours", "core"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.variant)))
        return 0
    sys.path.append(str(REPO))
    from tools import host

    host.bootstrap()
    from tools import real_models

    attr, weight_dtype, _, _ = VARIANTS[args.variant]
    build = real_models.medium if args.variant == "medium" else real_models.large
    single = build() / "checkpoints" / getattr(real_models, attr)
    t0 = time.perf_counter()
    with open(single, "rb") as f:  # into the page cache, so no round pays the cold read alone
        while f.read(1 << 24):
            pass
    print(f"SD3.5 {args.variant} real structure: {single.stat().st_size / 1e9:.2f} GB ({single.name}, weight_dtype "
          f"{weight_dtype}); read once into the "
          f"page cache in {time.perf_counter() - t0:.1f} s; {args.rounds} alternating rounds, one child process per load",
          flush=True)
    res: dict[str, list[dict]] = {"ours": [], "core": []}
    for r in range(args.rounds):
        for which in (("ours", "core") if r % 2 == 0 else ("core", "ours")):
            out = bench_child.run(__file__, [which, "--variant", args.variant])
            res[which].append(out)
            print(f"round {r + 1}: {which:4} {out['seconds']:.2f} s, peak RSS +{out['growth_gib']:.2f} GiB, resident "
                  f"after the load +{out['kept_gib']:.2f} GiB (weights {out['dtype']})", flush=True)
    label = {"ours": "pack's SD3.5 Loader (variant auto, taesd3)", "core": "core UNETLoader"}
    for which in ("ours", "core"):
        print(f"{label[which]:44s} load s min/median/max {spread([x['seconds'] for x in res[which]])}   "
              f"peak RSS growth GiB {spread([x['growth_gib'] for x in res[which]])}   "
              f"resident after GiB {spread([x['kept_gib'] for x in res[which]])}")
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in res.items()}
    mem = {k: statistics.median(x["growth_gib"] for x in v) for k, v in res.items()}
    print(f"ours / core: load time {med['ours'] / med['core']:.2f}, peak RSS growth {mem['ours'] / mem['core']:.2f} "
          "(medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
