"""SLG speed: our batched SLG guider vs core SkipLayerGuidanceSD3 vs plain CFG, side by side.

Models: SD3.5-Medium-structured MMDiTs built in-process (MMDiT-X attn2 on blocks 0-12, RMS qk-norm,
random weights; file detection would tie the block count to the width, so an in-process model can
have fewer blocks than a file of its width). SLG is active on every step (sigma window 0-100 %).
One row per configuration (``--rows``):

  256px    24 blocks, width 64, layers 7,8,9, 256 px: 5 repeats x 4 steps = 20 samples each;
  1024px   8 blocks, width 64, layer 3, 1024 px: 5 repeats x 3 steps = 15 samples each. Fewer blocks
           than Medium so the row is affordable on a 2-core CPU (24 blocks cost about 17 CPU s per CFG
           step here); one skipped block of 8 is the same skipped fraction as Medium's 3 of 24;
  w1536    8 blocks at Medium's real width 1536 (24 heads), layer 3, 64 px: 5 repeats x 3 steps, so
           the per-block costs are the real model's (few tokens: the linear layers dominate, so each
           side's time follows its joint-block rows: the row floor printed per row is ours 1 + (blocks
           after the first skipped one, not skipped) / (2 blocks) = 1.25 here, core 1 + (blocks -
           skipped) / (2 blocks) = 1.44);
  medium1024  (CUDA only) the real Medium structure (24 blocks, width 1536, fp16), 1024 px, layers 7,8,9.

Every configuration runs once untimed per row first (warm-up: allocator, caches, kernels), then the
three are interleaved with the order rotated each repeat, so machine noise hits all of them alike.
Per-step times are the time of each model evaluation (a PREDICT_NOISE wrapper; one per euler step),
so sampling setup and model loading are not counted; ratios are of medians and min/median/max is
printed for each. On CPU, targets are judged on process CPU time (one torch thread: on a machine
shared with other jobs wall time mostly measures the neighbours); with CUDA, on synchronised wall
time, with peak VRAM. Results must equal core's within 1e-5 (fp32) / 2 % of the output's RMS (fp16).

Run: $COMFYUI_PYTHON bench/slg_speed.py [--rows 256px 1024px w1536] [--repeats N] [--steps N] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402

from tools import host  # noqa: E402

TARGET_OURS_CORE = 0.90
TARGET_OURS_CFG = 1.30
TOL = 1e-5
# name: (image px, joint blocks, width / 64, SLG layers, steps per run, repeats, CUDA only)
ROWS = {
    "256px": (256, 24, 1, "7, 8, 9", 4, 5, False),
    "1024px": (1024, 8, 1, "3", 3, 5, False),
    "w1536": (64, 8, 24, "3", 3, 5, False),
    "medium1024": (1024, 24, 24, "7, 8, 9", 3, 5, True),
    "smoke": (64, 4, 1, "1", 1, 1, False),  # tests/host/test_benches.py: the bench runs to the end; no figure
}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=None,
                    help="default: 256px 1024px w1536 on CPU; medium1024 256px with CUDA")
    ap.add_argument("--repeats", type=int, default=0, help="interleaved repeats (default: the row's)")
    ap.add_argument("--steps", type=int, default=0, help="timed steps per run (default: the row's)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("SLG_BENCH_THREADS", "1")),
                    help="torch intra-op threads on CPU (1 is steadiest on a shared machine)")
    return ap.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
CUDA = bool(ARGS) and (ARGS.device == "cuda" or (ARGS.device == "auto" and torch.cuda.is_available()))
if ARGS and ARGS.device == "cuda" and not torch.cuda.is_available():
    sys.exit("slg_speed: --device cuda but torch sees no CUDA device")
host.bootstrap(cpu=not CUDA)  # the host first on sys.path, before anything imports comfy

MMAP_NOTE = (
    "note: at 512x512 on CPU the three-row batch's buffers cross glibc's dynamic mmap threshold (it rises to at "
    "most 32 MiB), so every call mmaps and page-faults fresh memory while the two-row CFG batch is served from the "
    "heap. Starting Python with MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 (glibc "
    "environment variables) keeps large blocks on the heap; the page-fault medians above show which case a run was.")


def spread(v: list[float]) -> str:
    return f"{min(v):.4f}/{statistics.median(v):.4f}/{max(v):.4f}"


def run(guider, noise, latent, sampler, sigmas, times: list) -> torch.Tensor:
    """Sample once, appending (wall s, CPU s, minor page faults) of every model evaluation (the guider's
    predict_noise, one per euler step) to ``times``: sampling setup and model loading are not counted.
    With CUDA the wall time is taken between synchronisations."""
    import comfy.model_patcher
    import comfy.patcher_extension

    def timed(executor, *args, **kwargs):
        if CUDA:
            torch.cuda.synchronize()
        t0, c0, f0 = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        out = executor(*args, **kwargs)
        if CUDA:
            torch.cuda.synchronize()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        times.append((time.perf_counter() - t0, time.process_time() - c0, faults))
        return out

    guider.model_options = comfy.model_patcher.create_model_options_clone(guider.model_options)
    comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, "sd35wb_bench",
                                                 timed, guider.model_options, is_model_options=True)
    return guider.sample(noise, latent, sampler, sigmas, disable_pbar=True, seed=7)


def bench_row(name: str, slg, make_conditioning) -> bool:
    import comfy.model_management
    import comfy.sample
    import comfy.samplers
    from comfy_extras.nodes_sd3 import SkipLayerGuidanceSD3

    from tools.tiny_models import sd3_model_patcher

    size, blocks, depth, layers, steps, repeats, _ = ROWS[name]
    steps, repeats = ARGS.steps or steps, ARGS.repeats or repeats
    dtype = torch.float16 if CUDA else torch.float32
    model = sd3_model_patcher(num_blocks=blocks, depth=depth, dtype=dtype)
    if depth < 24:
        # The host sizes batches with an activation-memory estimate calibrated on the real SD3.5 width
        # (1536); at a smaller width it is too big, and at 1024 px it made the host split the three-cond
        # batch whenever the shared machine's free RAM dipped. Scale it (an object patch, bench model only).
        real_estimate, width_ratio = model.model.memory_required, (64 * depth) / 1536

        def memory_required(input_shape, cond_shapes={}):  # noqa: B006 - the host's signature
            return real_estimate(input_shape, cond_shapes=cond_shapes) * width_ratio

        model.add_object_patch("memory_required", memory_required)
    pos, neg = make_conditioning("sd3", 1), make_conditioning("sd3", 2)
    core_model = SkipLayerGuidanceSD3.execute(model=model, layers=layers, scale=3.0, start_percent=0.0,
                                              end_percent=1.0).result[0]

    def guider(kind):
        if kind == "ours":
            return slg.build_guider(model, pos, neg, 4.0, "custom", layers, 3.0, 0.0, 1.0, "sigma", 0.0, "batched")[0]
        g = comfy.samplers.CFGGuider(model if kind == "cfg" else core_model)
        g.set_conds(pos, neg)
        g.set_cfg(4.0)
        return g

    kinds = ["cfg", "core", "ours"]
    latent = torch.zeros(1, 16, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, 7)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
    sampler = comfy.samplers.sampler_object("euler")
    params = sum(p.numel() for p in model.model.diffusion_model.parameters()) / 1e6
    print(f"\n[{name}] {size}x{size}, {blocks} joint blocks, width {64 * depth}, {params:.0f}M parameters, "
          f"{str(dtype).replace('torch.', '')}, layers {layers}: warm-up 1 run (1 step) per configuration, then "
          f"{repeats} interleaved repeats x {steps} timed steps = {repeats * steps} samples per configuration", flush=True)
    t_row = time.perf_counter()
    for kind in kinds:  # warm-up, not timed
        run(guider(kind), noise, latent, sampler, sigmas[-2:], [])
    times = {k: [] for k in kinds}
    finals = {}
    peak = {}
    for r in range(repeats):
        order = kinds[r % 3:] + kinds[:r % 3]  # rotate so no configuration always runs first
        for kind in order:
            if CUDA:
                torch.cuda.reset_peak_memory_stats()
            out = run(guider(kind), noise, latent, sampler, sigmas, times[kind])
            if CUDA:
                peak[kind] = max(peak.get(kind, 0), torch.cuda.max_memory_allocated())
            finals.setdefault(kind, out)
    ref = finals["core"].float()
    diff = (finals["ours"].float() - ref).abs().max().item()
    tol = 2e-2 * ref.pow(2).mean().sqrt().item() if CUDA else TOL
    print(f"  measured in {time.perf_counter() - t_row:.0f} s")
    good = True
    for label, col in ((("wall", 0),) if CUDA else (("CPU", 1), ("wall", 0))):
        med = {k: statistics.median(t[col] for t in v) for k, v in times.items()}
        r_ours_cfg, r_core_cfg, r_ours_core = med["ours"] / med["cfg"], med["core"] / med["cfg"], med["ours"] / med["core"]
        print(f"  {label:4} s/step min/median/max  cfg {spread([t[col] for t in times['cfg']])}  "
              f"core {spread([t[col] for t in times['core']])}  ours {spread([t[col] for t in times['ours']])}")
        print(f"  {label:4} ratios of medians  ours/CFG {r_ours_cfg:.3f} (target <= {TARGET_OURS_CFG})  core/CFG "
              f"{r_core_cfg:.3f}  ours/core {r_ours_core:.3f} (target <= {TARGET_OURS_CORE})")
        if col == (0 if CUDA else 1):
            good = r_ours_core <= TARGET_OURS_CORE and diff <= tol and r_ours_cfg <= TARGET_OURS_CFG
    skipped = [int(x) for x in layers.split(",")]
    # ours shares the skip row's blocks before its first skipped one with the positive; core recomputes them
    ours_rows = sum(1 for j in range(min(skipped), blocks) if j not in skipped)
    print(f"  row floor over CFG when the linear layers dominate (joint-block rows vs CFG's 2 x {blocks}): ours "
          f"{1 + ours_rows / (2 * blocks):.3f} (skip row runs {ours_rows} blocks), core "
          f"{1 + (blocks - len(skipped)) / (2 * blocks):.3f} (skip row runs {blocks - len(skipped)})")
    if CUDA:
        print("  peak VRAM (GiB): " + "  ".join(f"{k} {v / 1024 ** 3:.2f}" for k, v in peak.items()))
    else:
        faults = {k: int(statistics.median(t[2] for t in v)) for k, v in times.items()}
        print(f"  page faults per step (median): cfg {faults['cfg']}  core {faults['core']}  ours {faults['ours']}")
    print(f"  max |ours - core| on the final latent: {diff:.2e} (tolerance {tol:.1e})")
    print(f"  {'OK' if good else 'MISSED'} (judged on {'synchronised wall' if CUDA else 'CPU'} time)")
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    return good


def main() -> int:
    from testnodes import make_conditioning

    if not CUDA:
        torch.set_num_threads(ARGS.threads)
    rows = ARGS.rows or (["medium1024", "256px"] if CUDA else ["256px", "1024px", "w1536"])
    for name in rows:
        if ROWS[name][6] and not CUDA:
            sys.exit(f"slg_speed: row {name} needs a CUDA device (the real Medium at 1024 px)")
    slg = host.load_pack("nodes.slg")
    device = "CUDA " + torch.cuda.get_device_name() if CUDA else f"CPU, torch threads {ARGS.threads}"
    print(f"SLG speed bench: rows {', '.join(rows)}; attn2 on blocks 0-12, RMS qk-norm; SLG on every step; {device}; "
          f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")
    ok = True
    for name in rows:
        ok &= bench_row(name, slg, make_conditioning)
    if not CUDA:
        print("\n" + MMAP_NOTE)
        print("timings on a shared machine: other load adds noise (see each row's min/max).")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
