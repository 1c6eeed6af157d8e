"""LCM-LoRA at 4 steps / cfg 1 against the usual 25-step euler / cfg 7, side by side in one run.

On the tiny Segmind-Vega-shaped model (SDXL family, 714M parameters) at 128 px on CPU:
- model evaluations per image (a model_function_wrapper counts the UNet calls and the rows each
  call carries: cfg > 1 batches the positive and the negative, cfg 1 skips the negative) and wall
  time per image, printed as ratios;
- the LoRA goes through the host's ModelPatcher like core's LoraLoader: the node's patch copies no
  weights (the clone shares the model), and at load time only the LoRA's target weights are
  recomputed while the originals are kept by reference, not copied.

Whole images: the same number of runs on each side (``LCM_BENCH_RUNS``, default 3), alternating;
medians and min/median/max printed.

Run: ``$COMFYUI_PYTHON bench/lcm_speed.py`` (a few minutes on a 2-core CPU).
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))
from tools import host  # noqa: E402

host.bootstrap()  # the host first on sys.path, CPU only, before anything imports comfy

import torch  # noqa: E402

SIZE = 128
LCM_STEPS, LCM_CFG = 4, 1.0
BASE_STEPS, BASE_CFG, BASE_SAMPLER, BASE_SCHEDULER = 25, 7.0, "euler", "normal"
RUNS = int(os.environ.get("LCM_BENCH_RUNS", "3"))  # whole-image runs per side


def spread(v: list[float]) -> str:
    return f"{min(v):.2f}/{statistics.median(v):.2f}/{max(v):.2f}"


def rss_mb() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


class Counter:
    """model_function_wrapper that counts UNet calls and the rows (images) each one evaluates."""

    def __init__(self):
        self.calls = self.rows = 0

    def __deepcopy__(self, memo):  # ModelPatcher.clone deep-copies model_options: keep counting here
        return self

    def __call__(self, apply_model, args):
        self.calls += 1
        self.rows += args["input"].shape[0]
        return apply_model(args["input"], args["timestep"], **args["c"])


def counted(model):
    m = model.clone()
    c = Counter()
    m.set_model_unet_function_wrapper(c)
    return m, c


def param_ptrs(module) -> dict[str, int]:
    """Storage address of every UNet weight (the model_sampling buffers, swapped by the LCM object patch, left out)."""
    return {k: v.data_ptr() for k, v in module.state_dict(keep_vars=True).items() if k.startswith("diffusion_model.")}


def main() -> None:
    import folder_paths
    import nodes

    from tools import lcm_fixtures, tiny_models

    root = tiny_models.build_all()
    work = Path(tempfile.mkdtemp(prefix="lcm-bench-"))
    lora_name = "tiny-vega-lcm.safetensors"
    lcm_fixtures.write_lora(work / lora_name, root / "diffusion_models" / "tiny-vega.safetensors",
                            lcm_fixtures.full_unet_config(tiny_models.VEGA_UNET), "kohya", seed=1)
    folder_paths.add_model_folder_path("loras", str(work), is_default=True)
    folder_paths.add_model_folder_path("diffusion_models", str(root / "diffusion_models"), is_default=True)
    logging.getLogger().setLevel(logging.ERROR)  # the host's optional-node import noise (no torchaudio here)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    logging.getLogger().setLevel(logging.WARNING)
    assert asyncio.run(nodes.load_custom_node(str(REPO))), "the pack failed to load"
    sys.path.insert(0, str(REPO / "tests"))
    from testnodes import make_conditioning

    N = nodes.NODE_CLASS_MAPPINGS
    t = time.perf_counter()
    (base,) = N["UNETLoader"]().load_unet("tiny-vega.safetensors", "default")
    print(f"tiny Vega loaded as {type(base.model.model_config).__name__} in {time.perf_counter() - t:.1f}s, "
          f"{sum(p.numel() for p in base.model.parameters()) / 1e6:.0f}M parameters, {SIZE} px, CPU")
    pos, neg = make_conditioning("sdxl", 1, SIZE, SIZE), make_conditioning("sdxl", 2, SIZE, SIZE)
    latent = {"samples": torch.zeros((1, 4, SIZE // 8, SIZE // 8))}

    # --- no copies when patching ---------------------------------------------------------
    ptrs0 = param_ptrs(base.model)
    rss0 = rss_mb()
    (patched, _clip) = N["SD35WB_LCMLoraPatch"].execute(model=base, lcm_lora=lora_name, strength=1.0).result
    ptrs1 = param_ptrs(patched.model)
    model_bytes = sum(v.numel() * v.element_size() for v in base.model.state_dict().values())
    print(f"\n[patch node] clone shares the model: {patched.model is base.model}; parameter storages unchanged: "
          f"{sum(ptrs0[k] == ptrs1[k] for k in ptrs0)}/{len(ptrs0)}; RSS {rss_mb() - rss0:+.0f} MB "
          f"(LoRA tensors only; model {model_bytes / 2**20:.0f} MB); {len(patched.patches)} weights queued as patches")
    rss1 = rss_mb()
    patched.patch_model()
    ptrs2 = param_ptrs(patched.model)
    changed = [k for k in ptrs0 if ptrs0[k] != ptrs2[k]]
    extra = sorted(set(changed) - set(patched.patches))
    changed_bytes = sum(patched.model.state_dict()[k].numel() * patched.model.state_dict()[k].element_size() for k in changed)
    backup_same = sum(patched.backup[k].weight.data_ptr() == ptrs0[k] for k in patched.backup)
    print(f"[load time]  patch_model recomputed {len(changed)} weights (the LoRA targets: "
          f"{set(patched.patches) <= set(changed)}, others: {len(extra)}) = {changed_bytes / 2**20:.0f} MB of {model_bytes / 2**20:.0f} MB; "
          f"the other {len(ptrs0) - len(changed)} keep their storage; originals kept by reference (not copied): "
          f"{backup_same}/{len(patched.backup)}; RSS {rss_mb() - rss1:+.0f} MB")
    patched.unpatch_model()
    print(f"[unpatch]    every parameter back on its original storage: {param_ptrs(base.model) == ptrs0}")

    # --- speed -------------------------------------------------------------------------
    # The LCM model comes from the patch node (LoRA + LCM sampling); KSampler with sampler "lcm" on it
    # is what the LCM-LoRA Sampler node runs (bit for bit: tests/host/test_lcm.py). Each model's first
    # run loads and patches its weights (timed apart); the executor reuses that on later runs.
    def run(model, steps, cfg, sampler, scheduler):
        t0 = time.perf_counter()
        nodes.common_ksampler(model, 1, steps, cfg, sampler, scheduler, pos, neg, latent)
        return time.perf_counter() - t0

    lcm_m, c_lcm = counted(patched)
    base_m, c_base = counted(base)
    # The same number of whole-image runs on both sides, alternating (LCM first, then the baseline
    # first, ...), so a busy machine's slow spell does not land on one side only. Before each timed
    # run an untimed 1-step run loads the model (the two share weights: each load re-patches or
    # unpatches them); the first of those per side is printed as the load + patch time.
    lcm_t, base_t, first_load = [], [], {}
    for r in range(RUNS):
        for side in (("lcm", "base") if r % 2 == 0 else ("base", "lcm")):
            m, c, args, out = ((lcm_m, c_lcm, (LCM_STEPS, LCM_CFG, "lcm", "sgm_uniform"), lcm_t) if side == "lcm"
                               else (base_m, c_base, (BASE_STEPS, BASE_CFG, BASE_SAMPLER, BASE_SCHEDULER), base_t))
            w = run(m, 1, *args[1:])
            first_load.setdefault(side, w)
            c.calls = c.rows = 0
            out.append(run(m, *args))
            if r == 0:
                counts = (c.calls, c.rows)
                if side == "lcm":
                    evals = counts
                else:
                    base_counts = counts
    c_lcm.calls, c_lcm.rows = evals
    c_base.calls, c_base.rows = base_counts
    t_lcm, t_base = statistics.median(lcm_t), statistics.median(base_t)
    print(f"\n{RUNS} whole-image runs per side, alternating; wall s min/median/max: LCM-LoRA {spread(lcm_t)}, "
          f"baseline {spread(base_t)}")
    print(f"first-run load + patch: LCM-LoRA {first_load['lcm']:.1f}s (LoRA applied here), plain "
          f"{first_load['base']:.1f}s (1 step each included)")

    print(f"\n{'':34s}{'UNet calls':>11s}{'evaluations':>13s}{'wall s/image':>14s}")
    print(f"{f'LCM-LoRA {LCM_STEPS} steps, lcm, cfg {LCM_CFG:g}':34s}{c_lcm.calls:>11d}{c_lcm.rows:>13d}{t_lcm:>14.2f}")
    print(f"{f'{BASE_STEPS} steps, {BASE_SAMPLER}, cfg {BASE_CFG:g}':34s}{c_base.calls:>11d}{c_base.rows:>13d}{t_base:>14.2f}")
    # A shared machine's load swings during one long run, so also time single steps of the same
    # loaded model alternately: one row per call (cfg 1, as LCM) against two rows (cfg 7), 7 each.
    one, two = [], []
    for _ in range(7):
        one.append(run(base_m, 1, 1.0, BASE_SAMPLER, BASE_SCHEDULER))
        two.append(run(base_m, 1, BASE_CFG, BASE_SAMPLER, BASE_SCHEDULER))
    s1, s2 = statistics.median(one), statistics.median(two)
    c_base.calls, c_base.rows = base_counts  # the table and ratios count the 25-step image only
    est_lcm, est_base = LCM_STEPS * s1, BASE_STEPS * s2
    print(f"\ninterleaved single steps, 7 each, s min/median/max: cfg 1 {spread(one)}, cfg {BASE_CFG:g} {spread(two)}")
    print(f"medians: cfg 1 {s1:.2f}s, cfg {BASE_CFG:g} {s2:.2f}s per step -> "
          f"{est_lcm:.1f}s vs {est_base:.1f}s per image")

    print(f"\nratio (baseline / LCM): model evaluations {c_base.rows / c_lcm.rows:.1f}x fewer "
          f"(UNet calls {c_base.calls / c_lcm.calls:.2f}x: cfg > 1 batches positive+negative into one call); "
          f"wall time {t_base / t_lcm:.1f}x faster end to end (medians of {RUNS} runs each), {est_base / est_lcm:.1f}x from interleaved steps")


if __name__ == "__main__":
    main()
