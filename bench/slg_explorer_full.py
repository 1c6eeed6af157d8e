"""SLG explorer, whole run: the SD3.5 SLG Layer Explorer node against what it replaces, side by side.

For K = 3 candidates ("7,8,9 | 6 | 10,11") and K = 24 ("each", every joint block):
  explorer:    one ``SD35WB_SLGLayerExplorer`` run (baseline + K candidates, decoded, with its grid),
               which steps all renders in lock-step (one batched model call per step for all);
  one-by-one:  the same node with lock-step turned off (``E.LOCKSTEP_SAMPLERS`` emptied in this
               process), the path a sampler that draws noise takes: one sampling run per render;
  separate:    one plain CFG run + K separate SLG sampler runs (the pack's own SLG guider, batched,
               the fastest single-run SLG here), each decoded,
at the same settings, Stability's Medium recipe: 50 steps, dpmpp_2m, sgm_uniform, cfg 4, SLG scale
2.5, window 1-20 % of steps. Printed per K: the time of both sides (min/median/max over the repeats,
which rotate the order), their ratios, the final latents' largest difference, the joint-block rows
each side computed (forward hooks on the blocks: the work, independent of machine noise), the MMDiT
forward calls (what lock-step cuts: on a GPU each call at a small batch leaves the device idle), and the
host's model-load calls for the MMDiT (``LoadedModel.model_load``: the host makes one per sampling
run on both sides and finds the weights in place; neither side reads the model from disk again). Then the SD3.5 SLG Sensitivity Map's
whole run ('each', 1 probe) in plain-CFG-step equivalents (its time / the CFG run's time per step).

What the explorer shares, by the method: every candidate follows the baseline exactly until the SLG
window opens (here only step 0: the window is steps 1-9 of 50), so those steps run once; at the
window's first step all K skip passes come from one batched variant call. After that each
candidate's trajectory differs, so the rest is one SLG run per candidate (in lock-step: one lane of
a batch per candidate, each step one call for all lanes, the same block rows); the node takes the
conditioning as input (no text encoding inside) and the model stays loaded across the runs.

Model: SD3.5-Medium-structured MMDiT (24 joint blocks, attn2 on 0-12, RMS qk-norm), random weights,
built in-process: on CPU at width 64 (fp32, 128 px, process CPU time, one torch thread), with CUDA at
the real width 1536 (fp16, 512 px, synchronised wall time, peak VRAM).

Run: $COMFYUI_PYTHON bench/slg_explorer_full.py [--k 3 24] [--repeats 2] [--size 128] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402

from tools import host  # noqa: E402

STEPS, CFG, SAMPLER, SCHEDULER = 50, 4.0, "dpmpp_2m", "sgm_uniform"
SCALE, START, END, GATING = 2.5, 0.01, 0.20, "steps"
CANDIDATES = {3: "7,8,9 | 6 | 10,11", 24: "each"}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", choices=sorted(CANDIDATES), default=[3, 24])
    ap.add_argument("--repeats", type=int, default=0, help="alternating repeats per K (default 2 on CPU, 1 on CUDA)")
    ap.add_argument("--size", type=int, default=0, help="image side in px (default 128 on CPU, 512 on CUDA)")
    ap.add_argument("--steps", type=int, default=STEPS, help="sampling steps (default Stability's 50; fewer only to "
                    "check the bench runs)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("SLG_BENCH_THREADS", "1")))
    return ap.parse_args()


ARGS = parse_args()
STEPS = ARGS.steps
CUDA = ARGS.device == "cuda" or (ARGS.device == "auto" and torch.cuda.is_available())
if ARGS.device == "cuda" and not torch.cuda.is_available():
    sys.exit("slg_explorer_full: --device cuda but torch sees no CUDA device")
host.bootstrap(cpu=not CUDA)


def clock() -> float:
    if CUDA:
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def spread(v: list[float]) -> str:
    return f"{min(v):.2f}/{statistics.median(v):.2f}/{max(v):.2f}"


class Counts:
    """Joint-block rows (hooks on every block) and model loads, while active."""

    def __init__(self, model):
        import comfy.model_management

        self.rows = self.loads = self.calls = 0
        self.on = False
        for b in model.model.diffusion_model.joint_blocks:
            b.register_forward_pre_hook(self._rows)
        model.model.diffusion_model.register_forward_pre_hook(self._call)
        lm = comfy.model_management.LoadedModel
        orig = lm.model_load
        counts = self

        def model_load(self_, *a, **kw):
            if counts.on and getattr(self_.model, "model", None) is model.model:  # the MMDiT, not the VAE
                counts.loads += 1
            return orig(self_, *a, **kw)

        lm.model_load = model_load  # bench instrumentation only (this process)

    def _rows(self, module, args):
        if self.on:
            self.rows += args[1].shape[0]

    def _call(self, module, args):
        self.calls += self.on

    def measure(self, fn):
        self.rows = self.loads = self.calls = 0
        self.on = True
        t0 = clock()
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
        out = fn()
        dt = clock() - t0
        self.on = False
        peak = torch.cuda.max_memory_allocated() if CUDA else 0
        return out, dt, self.rows, self.loads, peak


def main() -> int:
    import comfy.model_management
    import comfy.sample
    import comfy.samplers
    import comfy.utils
    import folder_paths
    import nodes
    from testnodes import make_conditioning

    from sd35wb import slg_explorer as E
    from tools import tiny_models
    from tools.tiny_models import sd3_model_patcher

    comfy.utils.PROGRESS_BAR_ENABLED = False  # no tqdm bars from the nodes in a bench
    if not CUDA:
        torch.set_num_threads(ARGS.threads)
    size = ARGS.size or (512 if CUDA else 128)
    repeats = ARGS.repeats or (1 if CUDA else 2)
    depth, dtype = (24, torch.float16) if CUDA else (1, torch.float32)
    for folder, paths in tiny_models.model_dirs(tiny_models.build_all()).items():
        for p in paths:
            folder_paths.add_model_folder_path(folder, str(p))
    (vae,) = nodes.VAELoader().load_vae("taesd3")
    X = host.load_pack("nodes.slg_explorer")
    slg = host.load_pack("nodes.slg")
    model = sd3_model_patcher(num_blocks=24, depth=depth, dtype=dtype)
    if depth < 24:  # the host's activation estimate is for width 1536: scale it (see bench/slg_speed.py)
        real_estimate, ratio = model.model.memory_required, 64 * depth / 1536
        model.add_object_patch("memory_required", lambda shape, cond_shapes={}: real_estimate(
            shape, cond_shapes=cond_shapes) * ratio)
    counts = Counts(model)
    pos, neg = make_conditioning("sd3", 1), make_conditioning("sd3", 2)
    latent = {"samples": torch.zeros(1, 16, size // 8, size // 8)}
    sigmas, samples, noise = X._prepare(model, latent, 7, STEPS, SAMPLER, SCHEDULER)
    sampler = comfy.samplers.sampler_object(SAMPLER)
    device = "CUDA " + torch.cuda.get_device_name() if CUDA else f"CPU, {ARGS.threads} torch thread(s), CPU time"
    print(f"SLG explorer whole run: 24 joint blocks, width {64 * depth}, {str(dtype).replace('torch.', '')}, "
          f"{size}x{size}; {STEPS} steps {SAMPLER} {SCHEDULER} cfg {CFG}, SLG scale {SCALE} window "
          f"{START:g}-{END:g} of steps; {device}; {repeats} alternating repeat(s) per K", flush=True)

    def sample(guider):
        return guider.sample(noise, samples, sampler, sigmas, disable_pbar=True, seed=7)

    def cfg_run():
        g = comfy.samplers.CFGGuider(model)
        g.set_conds(pos, neg)
        g.set_cfg(CFG)
        return sample(g)

    def explorer(spec):
        out = X.SLGLayerExplorerNode.execute(model=model, vae=vae, positive=pos, negative=neg, latent_image=latent,
                                             seed=7, steps=STEPS, cfg=CFG, sampler_name=SAMPLER, scheduler=SCHEDULER,
                                             scale=SCALE, start=START, end=END, gating=GATING, candidates=spec,
                                             columns=0)
        return out.result[2]["samples"]

    def one_by_one(spec):
        saved = X.E.LOCKSTEP_SAMPLERS
        X.E.LOCKSTEP_SAMPLERS = frozenset()  # this process only: the node's path for samplers that draw noise
        try:
            return explorer(spec)
        finally:
            X.E.LOCKSTEP_SAMPLERS = saved

    def separate(spec):
        lats = [cfg_run()]
        for c in E.parse_candidates(spec, 24):
            g, _ = slg.build_guider(model, pos, neg, CFG, "custom", ", ".join(map(str, c)), SCALE, START, END,
                                    GATING, 0.0, "batched")
            lats.append(sample(g))
        for lat in lats:  # decoded, as the explorer decodes its renders
            vae.decode(lat)
        return torch.cat(lats)

    with torch.inference_mode():
        cfg_run()  # warm-up (allocator, model load), not timed
        _, t_cfg, cfg_rows, _, _ = counts.measure(cfg_run)
        step_t = [t_cfg / STEPS]
        ok = True
        for k in ARGS.k:
            spec = CANDIDATES[k]
            sides = {"explorer": explorer, "one-by-one": one_by_one, "separate": separate}
            res = {s: [] for s in sides}
            outs = {}
            for r in range(repeats):
                names = list(sides)
                shift = (r + ARGS.k.index(k)) % 3  # rotate so no side always runs first
                for side in names[shift:] + names[:shift]:
                    out, dt, rows, loads, peak = counts.measure(lambda fn=sides[side], spec=spec: fn(spec))
                    res[side].append((dt, rows, loads, peak, counts.calls))
                    outs[side] = out
                _, t, *_ = counts.measure(cfg_run)  # the CFG step time, between the sides
                step_t.append(t / STEPS)
            diff = max((outs[s].float() - outs["separate"].float()).abs().max().item() for s in ("explorer", "one-by-one"))
            med = {s: statistics.median(x[0] for x in v) for s, v in res.items()}
            rows = {s: v[0][1] for s, v in res.items()}
            loads = {s: v[0][2] for s, v in res.items()}
            calls = {s: v[0][4] for s, v in res.items()}
            tol = 2e-2 if CUDA else 1e-5
            ok &= diff <= tol
            print(f"\nK = {k} ({spec!r}): time (s) min/median/max " + "  ".join(
                f"{s} {spread([x[0] for x in v])}" for s, v in res.items()))
            for s in ("explorer", "one-by-one"):
                print(f"  {s} / (CFG run + {k} SLG runs): {med[s] / med['separate']:.3f} measured; joint-block rows "
                      f"{rows[s]} vs {rows['separate']} = {rows[s] / rows['separate']:.3f}; MMDiT forward calls "
                      f"{calls[s]} vs {calls['separate']}")
            print("  host model-load calls for the MMDiT (LoadedModel.model_load: one per sampling run, finding the "
                  "weights in place) " + ", ".join(f"{s} {n}" for s, n in loads.items())
                  + f"; max |explorer - separate| on the final latents, both explorer paths {diff:.2e} "
                  f"(tolerance {tol:g})")
            if CUDA:
                print("  peak VRAM (GiB): " + "  ".join(
                    f"{s} {max(x[3] for x in v) / 1024 ** 3:.2f}" for s, v in res.items()))
        step = statistics.median(step_t)
        print(f"\nplain CFG step: min/median/max {spread(step_t)} s ({len(step_t)} CFG runs of {STEPS} steps); "
              f"{cfg_rows / STEPS:.0f} joint-block rows per step")
        maps = []
        for _ in range(repeats + 1):
            _, t, rows, _, _ = counts.measure(lambda: X.SLGSensitivityMapNode.execute(
                model=model, positive=pos, negative=neg, latent_image=latent, seed=7, steps=STEPS, cfg=CFG,
                sampler_name=SAMPLER, scheduler=SCHEDULER, start=START, end=END, gating=GATING, probes=1,
                candidates="each"))
            maps.append(t)
        print(f"sensitivity map ('each', 1 probe), whole run: {spread(maps)} s = "
              f"{statistics.median(maps) / step:.1f} plain CFG steps measured ({rows / (cfg_rows / STEPS):.1f} by "
              f"joint-block rows; a {STEPS}-step render is {STEPS})")
    comfy.model_management.unload_all_models()
    print("\n" + ("OK" if ok else "MISSED: the explorer's latents differ from the separate runs'"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
