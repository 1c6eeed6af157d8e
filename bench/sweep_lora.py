"""LoRA sweep: what a LoRA run's sweep costs against a full-checkpoint sweep, measured side by side.

Every figure comes from the SD35WB_CheckpointSweep node itself in the real in-process host (CPU), each
part in a fresh process, LoRAs written by PEFT's and diffusers' own save code (SimpleTuner's format),
rank 16:

1. switch: per-checkpoint switch cost = (sweep wall time - N x the bare sampling time of one image) / N,
   for a full-checkpoint sweep over N files of SD3.5 Medium's real structure (24 blocks, width 1536,
   fp16, random weights: tools/real_models.py) and for a LoRA sweep over N LoRAs on the same model
   loaded once. One 1-step image per checkpoint. Target: LoRA / full <= 0.3.
2. memory: peak RSS of a 40-LoRA x 4-strength sweep against a 2 x 1 sweep (VmHWM reset just before the
   node runs), on a Medium-shaped base at width 1536 with fewer blocks (built in-process with ComfyUI's
   classes: a file cannot carry a block count), rounds alternating small / big. Target: <= 1.1, and the
   growth per extra LoRA patch is printed against the base model's size.
3. wall: the sweep's wall time over the bare sampling time of the same images (core LoraLoaderModelOnly +
   KSampler, each model sampled once to patch it, then timed), at a size where a step takes >= 50 ms, with
   ``--seeds`` (4) images per LoRA x strength as a sweep that tells a checkpoint from a lucky seed has
   (``--seeds 1`` is the worst case: one patch per image). Target: <= 1.05.

Times are taken on two clocks, wall and this process's CPU time; targets are judged on CPU time,
which another job on the same cores disturbs far less than wall time (both are printed).

Run: $COMFYUI_PYTHON bench/sweep_lora.py [--parts switch,memory,wall] [--rounds 3]
(part 1 needs about 16 GiB of free memory: Medium is kept as float32 on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))

from tools import bench_child  # noqa: E402

RANK = 16
TARGETS = {"switch": 0.3, "memory": 1.1, "wall": 1.05}


def _write_loras(folder: Path, n: int, blocks: int, seed0: int = 0) -> list[str]:
    """n rank-16 LoRAs for a width-1536 SD3 model of ``blocks`` blocks, in SimpleTuner's format."""
    from tools import lora_fixtures as lf

    names = []
    for i in range(n):
        path = folder / f"checkpoint-{100 * (i + 1)}.safetensors"
        if not path.exists():
            model = lf.add_random_lora(lf.sd3_transformer(depth=24, num_blocks=blocks, weights=False), lf.SD3_TARGETS,
                                       seed=seed0 + i, rank=RANK, alpha=RANK)
            lf.save(model, "sd3", "simpletuner", path)
        names.append(f"{folder.name}/{path.name}")
    return names


def _boot(work: Path):
    sys.path.append(str(REPO))
    from tools.sweep_host import boot

    nodes, sweep_node = boot(work, threads=int(os.environ.get("SD35WB_BENCH_THREADS", "2")))
    import folder_paths

    folder_paths.add_model_folder_path("loras", str(work / "loras"), is_default=True)
    return nodes, sweep_node


def _inputs(nodes, px: int, steps: int, cfg: float):
    import torch
    from testnodes import make_conditioning

    (vae,) = nodes.VAELoader().load_vae("taesd3")
    latent = {"samples": torch.zeros([1, 16, px // 8, px // 8])}
    return dict(negative=make_conditioning("sd3", 2, px, px), positive=make_conditioning("sd3", 3, px, px),
                latent_image=latent, vae=vae, steps=steps, cfg=cfg, sampler_name="euler", scheduler="simple",
                seed=1, order="as listed")


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t0: tuple[float, float]) -> dict:
    """Wall and CPU seconds (this process, all threads) since ``t0``: on a machine shared with other
    jobs CPU time is the steadier of the two, and both are printed."""
    w, c = _clock()
    return {"wall": w - t0[0], "cpu": c - t0[1]}


def _bare(nodes, model, inp, repeats: int, seeds=None) -> list[dict]:
    """Wall / CPU seconds per KSampler call on an already patched, loaded model (each of ``seeds``,
    ``repeats`` times)."""
    ks = nodes.KSampler()

    def once(seed):
        ks.sample(model, seed, inp["steps"], inp["cfg"], "euler", "simple", inp["positive"], inp["negative"],
                  inp["latent_image"])

    once(inp["seed"])  # loads and patches: not sampling time
    out = []
    for seed in seeds or [inp["seed"]]:
        for _ in range(repeats):
            t = _clock()
            once(seed)
            out.append(_since(t))
    return out


def _sweep(sweep_node, inp, **kw) -> tuple[dict, object]:
    import torch

    t = _clock()
    with torch.inference_mode():
        res = sweep_node.execute(**inp, **kw)
    return _since(t), res


def child_switch(work: Path, n: int) -> dict:
    from tools import real_models

    nodes, sweep_node = _boot(work)
    import comfy.model_management as mm
    import folder_paths

    medium = real_models.medium() / "checkpoints" / real_models.MEDIUM_FILE
    run = work / "diffusion_models" / "full-run"
    run.mkdir(parents=True, exist_ok=True)
    full = []
    for i in range(n):
        link = run / f"checkpoint-{100 * (i + 1)}.safetensors"
        if not link.exists():
            os.link(medium, link)
        full.append(f"full-run/{link.name}")
    loras = _write_loras(work / "loras" / "lora-run", n, blocks=24)
    folder_paths.add_model_folder_path("diffusion_models", str(medium.parent))
    inp = _inputs(nodes, 32, steps=1, cfg=1.0)
    wall_full, _ = _sweep(sweep_node, inp, models="\n".join(full))
    mm.unload_all_models()
    (base,) = nodes.UNETLoader().load_unet(real_models.MEDIUM_FILE, "default")
    bare = _bare(nodes, base, inp, repeats=3)
    wall_lora, res = _sweep(sweep_node, inp, models="\n".join(loras), model=base, strengths="1.0")
    return {"n": n, "full": wall_full, "lora": wall_lora, "bare": bare, "images": int(res.result[0].shape[0])}


def _small_base(blocks: int):
    from tools import tiny_models

    return tiny_models.sd3_model_patcher(num_blocks=blocks, depth=24, attn2_layers=(0, 1), seed=3)


def child_memory(work: Path, n_lora: int, n_strength: int, blocks: int) -> dict:
    nodes, sweep_node = _boot(work)
    loras = _write_loras(work / "loras" / "mem-run", n_lora, blocks=blocks)
    base = _small_base(blocks)
    size_mib = sum(t.numel() * t.element_size() for t in base.model.state_dict().values()) / 2**20
    inp = _inputs(nodes, 32, steps=1, cfg=4.0)
    strengths = ", ".join(f"{(k + 1) / n_strength:g}" for k in range(n_strength))
    rss0 = bench_child.reset_peak()  # the sweep's own peak: setup (host, base, LoRA files) is not it
    wall, res = _sweep(sweep_node, inp, models="\n".join(loras), model=base, strengths=strengths)
    return {"loras": n_lora, "strengths": n_strength, "images": int(res.result[0].shape[0]), "wall": wall["wall"],
            "peak_mib": bench_child.status_kib("VmHWM") / 1024, "before_mib": rss0 / 1024, "model_mib": size_mib}


def child_wall(work: Path, n_lora: int, blocks: int, px: int, steps: int, n_seeds: int) -> dict:
    nodes, sweep_node = _boot(work)
    loras = _write_loras(work / "loras" / "wall-run", n_lora, blocks=blocks, seed0=50)
    base = _small_base(blocks)
    inp = _inputs(nodes, px, steps=steps, cfg=4.0)
    strengths = (0.5, 1.0)
    seeds = [inp["seed"] + k for k in range(n_seeds)]  # the sweep's seed_count: seed, seed+1, ...
    bare = []
    for name in loras:
        for s in strengths:
            (m,) = nodes.LoraLoaderModelOnly().load_lora_model_only(base, name, s)
            bare += _bare(nodes, m, inp, repeats=1, seeds=seeds)
    wall, res = _sweep(sweep_node, inp, models="\n".join(loras), model=base, seed_count=n_seeds,
                       strengths=", ".join(map(str, strengths)))
    return {"images": int(res.result[0].shape[0]), "wall": wall, "bare": bare, "steps": steps, "px": px,
            "seeds": n_seeds}


def _child(args: list) -> dict:
    return bench_child.run(__file__, [json.dumps(args)])


def _spread(xs) -> str:
    return f"min {min(xs):.3f} / median {statistics.median(xs):.3f} / max {max(xs):.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="switch,memory,wall")
    ap.add_argument("--checkpoints", type=int, default=3, help="switch: checkpoints per sweep")
    ap.add_argument("--rounds", type=int, default=3, help="memory: alternating small / big rounds")
    ap.add_argument("--big", default="40x4", help="memory: LoRAs x strengths")
    ap.add_argument("--small", default="2x1")
    ap.add_argument("--blocks", type=int, default=2, help="memory and wall: blocks of the width-1536 base")
    ap.add_argument("--seeds", type=int, default=4, help="wall: seeds per LoRA x strength (the node's seed_count)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.append(str(REPO))
    from tools import host

    host.use_host_python()  # the LoRA files are written by PEFT and diffusers, from the test-tools layer
    if args.child:
        kind, *rest = json.loads(args.child)
        fn = {"switch": child_switch, "memory": child_memory, "wall": child_wall}[kind]
        print(json.dumps(fn(Path(rest[0]), *rest[1:])))
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="sd35wb-bench-lora-") as tmp:
        if "switch" in parts:
            r = _child(["switch", str(Path(tmp) / "switch"), args.checkpoints])
            n = r["n"]
            print(f"switch (SD3.5 Medium structure, 24 blocks x 1536, {n} checkpoints, 1 step at 32 px):", flush=True)
            ratios = {}
            for clock in ("wall", "cpu"):
                bare = [b[clock] for b in r["bare"]]
                sw = {k: (r[k][clock] - n * statistics.median(bare)) / n for k in ("full", "lora")}
                ratios[clock] = sw["lora"] / sw["full"]
                print(f"  {clock:>4}: bare sampling per image {_spread(bare)} s; full-checkpoint sweep "
                      f"{r['full'][clock]:.1f} s -> {sw['full']:.2f} s per switch; LoRA sweep {r['lora'][clock]:.1f} s "
                      f"-> {sw['lora']:.2f} s per switch; LoRA / full {ratios[clock]:.3f} (target <= {TARGETS['switch']})",
                      flush=True)
            verdicts.append(ratios["cpu"] <= TARGETS["switch"])
        if "memory" in parts:
            big, small = (tuple(int(x) for x in s.split("x")) for s in (args.big, args.small))
            runs = {small: [], big: []}
            for k in range(args.rounds):
                for size in (small, big):
                    r = _child(["memory", str(Path(tmp) / f"mem-{k}-{size[0]}x{size[1]}"), *size, args.blocks])
                    runs[size].append(r)
                    print(f"  round {k + 1}: {size[0]} LoRAs x {size[1]} strengths = {r['images']} images: peak RSS "
                          f"{r['peak_mib']:.0f} MiB (before the sweep {r['before_mib']:.0f}), {r['wall']:.0f} s", flush=True)
            peak = {s: [r["peak_mib"] for r in rs] for s, rs in runs.items()}
            growth = {s: [r["peak_mib"] - r["before_mib"] for r in rs] for s, rs in runs.items()}
            ratio = statistics.median(peak[big]) / statistics.median(peak[small])
            model = runs[big][0]["model_mib"]
            extra = (statistics.median(growth[big]) - statistics.median(growth[small])) / (big[0] * big[1] - small[0] * small[1])
            print(f"memory (width 1536, {args.blocks} blocks, base {model:.0f} MiB): peak RSS {big[0]}x{big[1]} "
                  f"{_spread(peak[big])} MiB, {small[0]}x{small[1]} {_spread(peak[small])} MiB; ratio {ratio:.3f} "
                  f"(target <= {TARGETS['memory']}); growth per extra LoRA patch {extra:.2f} MiB "
                  f"({100 * extra / model:.2f} % of the base)", flush=True)
            verdicts.append(ratio <= TARGETS["memory"])
        if "wall" in parts:
            r = _child(["wall", str(Path(tmp) / "wall"), 4, args.blocks, 64, 4, args.seeds])
            print(f"wall (width 1536, {args.blocks} blocks, 4 LoRAs x 2 strengths x {r['seeds']} seeds = {r['images']} "
                  f"images at {r['px']} px, {r['steps']} steps):", flush=True)
            ratios = {}
            for clock in ("wall", "cpu"):
                bare = [b[clock] for b in r["bare"]]
                step = [b / r["steps"] for b in bare]
                ratios[clock] = r["wall"][clock] / sum(bare)
                print(f"  {clock:>4}: a step {_spread(step)} s; sweep {r['wall'][clock]:.2f} s vs bare sampling "
                      f"{sum(bare):.2f} s: {ratios[clock]:.3f} (target <= {TARGETS['wall']})", flush=True)
            verdicts.append(ratios["cpu"] <= TARGETS["wall"] and min(b["wall"] for b in r["bare"]) / r["steps"] >= 0.05)
    print("all targets met" if all(verdicts) else "SOME TARGET MISSED")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
