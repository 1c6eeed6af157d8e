"""Sweep memory: what each extra checkpoint adds to a sweep's peak memory, 40 x 4 against 2 x 1.

Each sweep runs the SD35WB_CheckpointSweep node in a fresh process (the real in-process host, CPU,
the tiny SD3.5-Medium-shaped model copied to N checkpoint files, prompts encoded by a random-weight
CLIP-L, taesd3, 1 step, 32 px). Measured in the child: the growth of resident memory during the
sweep (Linux VmHWM, reset just before the node runs, minus the RSS then: loading the host and the
CLIP is not counted); after it, how many models are still alive (``comfy.model_base.BaseModel``
objects after a garbage collection) and how many diffusion models the host still counts as loaded (the CLIP and VAE
that are the sweep's inputs stay loaded); and one model's
size as loaded (its weights' bytes on this device). The sizes alternate (small, big / big, small)
over the rounds.

Judged: the growth per extra checkpoint, (median growth big - median growth small) / (checkpoints big
- checkpoints small), must be < 2 % of one model's loaded size (a model left resident per checkpoint
would be 100 %), and no model may be alive or loaded when the sweep has returned. Printed with the
spread (min/median/max) of every figure; the old peak-RSS ratio is printed for context only (a
1.4 GiB baseline hides whole models in it).

Run: $COMFYUI_PYTHON bench/sweep_memory.py [--rounds 3] [--big 40x4] [--small 2x1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))

from tools import bench_child  # noqa: E402

TARGET = 0.02  # growth per extra checkpoint / one model's loaded size
PROMPTS = ["a red fox sitting in fresh snow at dawn", "a portrait of a fox in a knitted scarf",
           "a fox running through a summer meadow", "a city street at night in the rain"]


def child(n_ckpt: int, n_prompts: int, work: Path) -> dict:
    import resource

    sys.path.append(str(REPO))
    from tools.sweep_host import boot

    nodes, sweep_node = boot(work, threads=1)
    import torch

    names = [f"bench-run/checkpoint-{100 * (i + 1)}.safetensors" for i in range(n_ckpt)]
    (clip,) = nodes.CLIPLoader().load_clip("bench_clip_l.safetensors", type="sd3")
    latent = {"samples": torch.zeros([1, 16, 4, 4])}  # what EmptySD3LatentImage gives for 32 x 32
    (vae,) = nodes.VAELoader().load_vae("taesd3")
    (neg,) = nodes.CLIPTextEncode().encode(clip, "blurry")
    # The sweep's own peak: reset the kernel's high-water mark (VmHWM) now, so setup (the CLIP load) is not it.
    rss0 = bench_child.reset_peak()
    t0 = time.time()
    with torch.inference_mode():
        out = sweep_node.execute(models="\n".join(names), negative=neg, latent_image=latent, vae=vae,
                                 prompts="\n".join(PROMPTS[:n_prompts]), clip=clip, seed=1, seed_count=1, steps=1,
                                 cfg=4.0, sampler_name="euler", scheduler="simple")
    images = out.result[0]
    hwm = bench_child.status_kib("VmHWM")
    del out
    import gc

    import comfy.model_base
    import comfy.model_management
    import comfy.sd

    gc.collect()
    alive = sum(isinstance(o, comfy.model_base.BaseModel) for o in gc.get_objects())
    # the host keeps the CLIP and the VAE loaded (the sweep's inputs); count diffusion models only
    loaded = sum(isinstance(getattr(lm.model, "model", None), comfy.model_base.BaseModel)
                 for lm in comfy.model_management.current_loaded_models)
    import folder_paths

    one = comfy.sd.load_diffusion_model(folder_paths.get_full_path("diffusion_models", names[0]))
    model_bytes = sum(v.numel() * v.element_size() for v in one.model.state_dict().values())
    return {"alive_models_after": alive, "loaded_models_after": loaded, "model_mib": model_bytes / 2**20,
            "checkpoints": n_ckpt, "prompts": n_prompts, "images": int(images.shape[0]),
            "peak_rss_mib": hwm / 1024, "rss_before_sweep_mib": rss0 / 1024,
            "sweep_s": time.time() - t0, "process_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def prepare(work: Path, n_ckpt: int) -> None:
    sys.path.append(str(REPO))
    from tools import tiny_models
    from tools.sweep_host import link_clip_l

    root = tiny_models.build_all()
    src = root / "diffusion_models" / "tiny-sd35m.safetensors"
    run = work / "diffusion_models" / "bench-run"
    run.mkdir(parents=True, exist_ok=True)
    for i in range(n_ckpt):
        shutil.copyfile(src, run / f"checkpoint-{100 * (i + 1)}.safetensors")  # a separate file per checkpoint
    link_clip_l(work, "bench_clip_l.safetensors")


def parse_size(text: str) -> tuple[int, int]:
    a, _, b = text.partition("x")
    return int(a), int(b)


def spread(v: list[float]) -> str:
    return f"{min(v):.1f}/{statistics.median(v):.1f}/{max(v):.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big", default="40x4", help="checkpoints x prompts")
    ap.add_argument("--small", default="2x1")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), int(args.child[1]), Path(args.child[2]))))
        return 0
    big, small = parse_size(args.big), parse_size(args.small)
    runs = {small: [], big: []}
    with tempfile.TemporaryDirectory(prefix="sd35wb-sweep-mem-") as tmp:
        for r in range(args.rounds):
            for size in ((small, big) if r % 2 == 0 else (big, small)):
                work = Path(tmp) / f"{size[0]}x{size[1]}-{r}"
                prepare(work, size[0])
                res = bench_child.run(__file__, [str(size[0]), str(size[1]), str(work)])
                runs[size].append(res)
                print(f"round {r + 1}: {size[0]:>3} checkpoints x {size[1]} prompts = {res['images']:>3} images: "
                      f"growth {res['peak_rss_mib'] - res['rss_before_sweep_mib']:.1f} MiB (peak RSS "
                      f"{res['peak_rss_mib']:.0f}, before the sweep {res['rss_before_sweep_mib']:.0f}), models alive "
                      f"after {res['alive_models_after']}, loaded after {res['loaded_models_after']}, "
                      f"{res['sweep_s']:.0f} s", flush=True)
                shutil.rmtree(work, ignore_errors=True)
    growth = {k: [r["peak_rss_mib"] - r["rss_before_sweep_mib"] for r in v] for k, v in runs.items()}
    model_mib = statistics.median(r["model_mib"] for v in runs.values() for r in v)
    per_ckpt = (statistics.median(growth[big]) - statistics.median(growth[small])) / (big[0] - small[0])
    frac = per_ckpt / model_mib
    resident = max(max(r["alive_models_after"], r["loaded_models_after"]) for v in runs.values() for r in v)
    for size in (small, big):
        print(f"{size[0]}x{size[1]}: growth during the sweep min/median/max {spread(growth[size])} MiB; "
              f"peak RSS {spread([r['peak_rss_mib'] for r in runs[size]])} MiB; sweep s "
              f"{spread([r['sweep_s'] for r in runs[size]])}")
    print(f"one model as loaded here: {model_mib:.1f} MiB")
    ok = frac < TARGET and resident == 0
    print(f"growth per extra checkpoint: {per_ckpt * 1024:.0f} KiB = {100 * frac:.2f} % of one model "
          f"(target < {100 * TARGET:.0f} %); models alive or loaded after the sweep: {resident} (target 0) "
          f"{'OK' if ok else 'MISSED'}")
    pr = statistics.median(r["peak_rss_mib"] for r in runs[big]) / statistics.median(r["peak_rss_mib"] for r in runs[small])
    print(f"(context, not judged: peak RSS {big[0]}x{big[1]} / {small[0]}x{small[1]} = {pr:.3f})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
