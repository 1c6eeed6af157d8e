"""Sweep scores: what scoring adds to a sweep, in wall time per image and in peak memory.

Everything runs in the real in-process host (CPU), each part in a fresh child process, on SD3.5 Medium's
real structure (tools/real_models.py: 24 joint blocks, width 1536, fp16 file, random weights; the host
keeps it as float32 on CPU) and random-weight scoring models at their real sizes in Hugging Face format
(tools/score_fixtures.py: CLIP ViT-L/14-336 as openai/clip-vit-large-patch14-336, DINOv2-large at 518 px),
picked through the Sweep Scores node from a clip_vision folder as a user picks them.

1. time: images rendered on the sweep's own path (the checkpoint loaded by its ``load_checkpoint``, sampled
   by ``comfy.sample.sample`` with the sweep's arguments, decoded by taesd3), then scored one image at a
   time with the node's scorers (``Scorer.score``, as ``score_sweep`` calls it): CLIP alone, DINOv2 alone
   (memorisation against the training images included). Each configuration is warmed up first (the
   scoring models' load and the training images' embeddings are printed apart: once per sweep, not per
   image). Printed: render s/image (and s/step from the sampler's callback), CLIP s/image, DINOv2 s/image,
   median and min-max, and scoring / render (medians); target <= 0.10.
2. memory: the Checkpoint Sweep node over the same checkpoint, prompts and seeds with and without a
   scorer (CLIP + DINOv2 + training images), fresh processes, alternating order over the rounds: peak RSS
   (VmHWM, reset before the node runs), the images compared (the same renders), the RSS while the scoring
   models are resident (just before the sweep closes its scorer) and after the close, and what the host
   still holds loaded once the sweep returned. Target: peak with / without <= 1.1, and no scoring model
   loaded or alive after the sweep.

Full run (about 16 GiB peak: takes /tmp/sd35wb-mem.lock like make test-realsize):
    .tools/bin/python bench/sweep_scores.py [--px 256] [--steps 4] [--samples 3] [--rounds 2]
Smoke run (tiny SD3, tiny CLIP / DINOv2, under a minute; what tests/host/test_benches.py runs):
    .tools/bin/python bench/sweep_scores.py --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
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

TARGETS = {"ratio": 0.10, "memory": 1.1}
LOCK = "/tmp/sd35wb-mem.lock"
PROMPTS = ["a red fox sitting in fresh snow at dawn", "a lighthouse on a cliff at night, oil painting"]
SAMPLER = dict(cfg=5.0, sampler_name="dpmpp_2m", scheduler="sgm_uniform")  # the sweep node's defaults
N_TRAIN = 2  # training images for memorisation (their embeddings are once per sweep, printed apart)


def _boot(work: Path, smoke: bool) -> dict:
    """The host with the checkpoint, a text encoder, the scoring models and training images in place."""
    from tools.sweep_host import boot, link_clip_l

    nodes, sweep_node = boot(work, threads=int(os.environ.get("SD35WB_BENCH_THREADS", "2")))
    import folder_paths

    from tools import score_fixtures

    if smoke:
        ckpt = "tiny-sd35m.safetensors"  # tools/tiny_models.py, registered by boot()
        vision = work / "clip_vision"
        clip_name = f"{score_fixtures.write_tiny_clip(vision / 'clip-tiny').name}/model.safetensors"
        dino_name = f"{score_fixtures.write_tiny_dino(vision / 'dino-tiny').name}/model.safetensors"
    else:
        from tools import real_models

        ckpt = real_models.MEDIUM_FILE
        folder_paths.add_model_folder_path("diffusion_models", str(real_models.cache_root() / "checkpoints"))
        vision = score_fixtures.real_scoring_models()
        clip_name = f"{score_fixtures.REAL_CLIP_DIR}/model.safetensors"
        dino_name = f"{score_fixtures.REAL_DINO_DIR}/model.safetensors"
    folder_paths.add_model_folder_path("clip_vision", str(vision))
    train = work / "training"
    score_fixtures.write_training_images(train, n=N_TRAIN, size=256)
    os.environ["SD35WB_TRAINING_ROOTS"] = str(work)  # as ComfyUI is started for the linker
    (clip,) = nodes.CLIPLoader().load_clip(link_clip_l(work, "bench_clip_l.safetensors"), type="sd3")
    (vae,) = nodes.VAELoader().load_vae("taesd3")
    scores_node = sys.modules["sd35wb_pack.nodes.scores"].SweepScores
    return dict(nodes=nodes, sweep_node=sweep_node, ckpt=ckpt, clip=clip, vae=vae,
                scorer=lambda clip_model, dino_model: scores_node.execute(
                    clip_model=clip_model, dino_model=dino_model,
                    training_images=str(train) if dino_model != "none" else "", max_memorisation=0.9,
                    max_drift=0.5).result[0],
                clip_name=clip_name, dino_name=dino_name)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t0) -> dict:
    w, c = _clock()
    return {"wall": w - t0[0], "cpu": c - t0[1]}


def child_time(work: str, smoke: bool, px: int, steps: int, samples: int) -> dict:
    h = _boot(Path(work), smoke)
    import comfy.sample
    import folder_paths
    import torch

    sweep_mod = sys.modules["sd35wb_pack.nodes.sweep"]
    t = _clock()
    model = sweep_mod.load_checkpoint(folder_paths.get_full_path("diffusion_models", h["ckpt"]), "default")
    load = _since(t)
    nodes = h["nodes"]
    (neg,) = nodes.CLIPTextEncode().encode(h["clip"], "blurry")
    (pos,) = nodes.CLIPTextEncode().encode(h["clip"], PROMPTS[0])
    lat = torch.zeros([1, 16, px // 8, px // 8])  # EmptySD3LatentImage

    def render(seed: int):
        """One image exactly as the sweep renders a cell (nodes/sweep.py), then decoded as it decodes."""
        marks = []
        x = comfy.sample.fix_empty_latent_channels(model, lat)
        noise = comfy.sample.prepare_noise(x, seed, None)
        t0 = _clock()
        out = comfy.sample.sample(model, noise, steps, SAMPLER["cfg"], SAMPLER["sampler_name"], SAMPLER["scheduler"],
                                  pos, neg, x, denoise=1.0, callback=lambda *a: marks.append(time.perf_counter()),
                                  disable_pbar=True, seed=seed)
        im = h["vae"].decode(out.detach().float().cpu())
        took = _since(t0)
        step_s = [b - a for a, b in zip([t0[0], *marks[:-1]], marks)]
        return im.reshape(-1, *im.shape[-3:]).float().cpu(), took, step_s

    with torch.inference_mode():
        renders, images, step_s = [], [], []
        for k in range(samples + 1):  # the first is the warm-up
            im, took, st = render(100 + k)
            if k:
                renders.append(took)
                step_s += st
                images.append(im)
        out = {"load_model": load, "render": renders, "step": step_s, "px": px, "steps": steps, "samples": samples}
        for which, kw in (("clip", dict(clip_model=h["clip_name"], dino_model="none")),
                          ("dino", dict(clip_model="none", dino_model=h["dino_name"]))):
            scorer = h["scorer"](**kw)
            t = _clock()
            (scorer.clip() if which == "clip" else scorer.dino())  # the weights: once per sweep
            out[f"load_{which}"] = _since(t)
            if which == "dino":
                scorer.find_training(None)  # as score_sweep does first: the node's training_images folder
                t = _clock()
                assert len(scorer.bank()[0]) == N_TRAIN  # the training images' embeddings: once per sweep
                out["bank"] = _since(t)
            got = scorer.score(images[0], [PROMPTS[0]], clip=True, offload=False)  # warm-up
            assert (got[0].get("clip") is not None) == (which == "clip") and got[0].get("look") is not None, got
            assert (got[0].get("nearest") is not None) == (which == "dino"), got  # memorisation is timed too
            times = []
            for im in images:
                t = _clock()
                scorer.score(im, [PROMPTS[0]], clip=True, offload=False)  # per image, as score_sweep calls it
                times.append(_since(t))
            out[which] = times
            scorer.close()
    return out


def child_memory(work: str, smoke: bool, px: int, steps: int, with_scores: bool) -> dict:
    h = _boot(Path(work), smoke)
    import gc

    import comfy.model_management as mm
    import torch

    scoring = sys.modules["sd35wb_pack.nodes._scoring"]
    scorer = h["scorer"](h["clip_name"], h["dino_name"]) if with_scores else None
    seen = {}
    if scorer is not None:
        close = scorer.close

        def measured_close():  # the sweep closes its scorer when scoring ends: RSS with the models, then without
            seen["scoring_rss_mib"] = bench_child.status_kib("VmRSS") / 1024
            seen["resident_while_scoring"] = [type(getattr(lm.model, "model", None)).__name__
                                              for lm in mm.current_loaded_models]
            close()
            gc.collect()
            seen["closed_rss_mib"] = bench_child.status_kib("VmRSS") / 1024

        scorer.close = measured_close
    latent = {"samples": torch.zeros([1, 16, px // 8, px // 8])}
    (neg,) = h["nodes"].CLIPTextEncode().encode(h["clip"], "blurry")
    gc.collect()
    rss0 = bench_child.reset_peak()
    t = _clock()
    with torch.inference_mode():
        res = h["sweep_node"].execute(models=h["ckpt"], negative=neg, latent_image=latent, vae=h["vae"],
                                      prompts="\n".join(PROMPTS), clip=h["clip"], seed=7, seed_count=1, steps=steps,
                                      scorer=scorer, **SAMPLER)
    took = _since(t)
    hwm = bench_child.status_kib("VmHWM")
    images, report, scores_json = res.result[0], res.result[3], res.result[4]
    digest = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
    n_images = int(images.shape[0])
    assert f"rendered {n_images}," in report, report  # rendered here, not reused from a render cache
    del res, images
    gc.collect()
    alive = sum(isinstance(o, (scoring.ClipScorer, scoring.DinoEmbedder)) for o in gc.get_objects())
    storages = {}  # every tensor Python still reaches, by storage: what the process really holds
    for o in gc.get_objects():
        if isinstance(o, torch.Tensor) and o.device.type == "cpu" and not o.is_meta:
            with contextlib.suppress(RuntimeError):
                st = o.untyped_storage()
                storages[st.data_ptr()] = st.nbytes()
    after = bench_child.status_kib("VmRSS") / 1024
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap pages back to the kernel: retained or still used?
    return {"with_scores": with_scores, "peak_mib": hwm / 1024, "before_mib": rss0 / 1024,
            "after_mib": after, "trimmed_mib": bench_child.status_kib("VmRSS") / 1024,
            "tensors_mib": sum(storages.values()) / 2**20, "sweep_s": took["wall"], "images": n_images,
            "digest": digest, "scored": bool(scores_json), "scoring_alive_after": alive,
            "loaded_after": [type(getattr(lm.model, "model", None)).__name__ for lm in mm.current_loaded_models], **seen}


def child_build(smoke: bool) -> dict:
    """The real-size files (once; cached): Medium's single file and the two scoring models."""
    from tools import host

    host.bootstrap()
    if smoke:
        return {}
    import torch

    from tools import real_models, score_fixtures

    t = time.perf_counter()
    single = real_models.cache_root() / "checkpoints" / real_models.MEDIUM_FILE
    if not single.exists():  # the first step of real_models.medium(); the diffusers copy is not needed here
        real_models.write_single_file(single, real_models.MEDIUM, torch.float16, seed=1)
    root = score_fixtures.real_scoring_models()
    size = {d: (root / d / "model.safetensors").stat().st_size / 1e9
            for d in (score_fixtures.REAL_CLIP_DIR, score_fixtures.REAL_DINO_DIR)}
    return {"seconds": time.perf_counter() - t, "medium_gb": single.stat().st_size / 1e9, "scoring_gb": size}


def _spread(xs, fmt: str = ".2f") -> str:
    return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report_time(r: dict, smoke: bool) -> bool:
    what = ("tiny SD3.5-Medium-shaped model, tiny CLIP / DINOv2" if smoke else
            "SD3.5 Medium real structure (24 joint blocks x 1536, random weights, fp16 file kept as float32 on CPU); "
            "CLIP ViT-L/14-336 and DINOv2-large at real size (random weights, fp32)")
    print(f"time: {what}; render {r['px']} px, {r['steps']} steps, {SAMPLER['sampler_name']} / {SAMPLER['scheduler']}, "
          f"cfg {SAMPLER['cfg']}, taesd3 decode, 1 image per call; {r['samples']} samples per configuration after 1 "
          f"warm-up; median (min-max)", flush=True)
    ratios = {}
    for clock in ("wall", "cpu"):
        ren = [x[clock] for x in r["render"]]
        cl = [x[clock] for x in r["clip"]]
        di = [x[clock] for x in r["dino"]]
        ratios[clock] = (statistics.median(cl) + statistics.median(di)) / statistics.median(ren)
        print(f"  {clock:>4}: render s/image {_spread(ren)}; CLIP s/image {_spread(cl, '.3f')}; DINOv2 s/image "
              f"{_spread(di, '.3f')}; scoring / render {ratios[clock]:.3f} (target <= {TARGETS['ratio']})")
    print(f"  wall s/step {_spread(r['step'])} (the sampler's callback, {len(r['step'])} steps)")
    print(f"  once per sweep, not per image (wall): load the checkpoint {r['load_model']['wall']:.1f} s, CLIP "
          f"{r['load_clip']['wall']:.1f} s, DINOv2 {r['load_dino']['wall']:.1f} s, {N_TRAIN} training images' "
          f"DINOv2 embeddings {r['bank']['wall']:.1f} s")
    return ratios["wall"] <= TARGETS["ratio"]


def report_memory(runs: list[dict]) -> bool:
    by = {w: [r for r in runs if r["with_scores"] == w] for w in (False, True)}
    peak = {w: [r["peak_mib"] for r in rs] for w, rs in by.items()}
    ratio = statistics.median(peak[True]) / statistics.median(peak[False])
    same = len({r["digest"] for r in runs}) == 1
    print(f"memory: Checkpoint Sweep, 1 checkpoint x {len(PROMPTS)} prompts x 1 seed, {len(by[True])} rounds each; "
          f"peak RSS MiB median (min-max): without scores {_spread(peak[False], '.0f')}, with scores "
          f"{_spread(peak[True], '.0f')}; with / without {ratio:.3f} (target <= {TARGETS['memory']}); the same images "
          f"in every run: {'yes' if same else 'NO'}")
    w = by[True]
    print(f"  with scores: RSS while the scoring models are resident {_spread([r['scoring_rss_mib'] for r in w], '.0f')}"
          f" MiB, after the sweep closed its scorer {_spread([r['closed_rss_mib'] for r in w], '.0f')} MiB; loaded "
          f"in the host then: {w[0]['resident_while_scoring']}")
    after = {x: _spread([r["after_mib"] - r["before_mib"] for r in rs], "+.0f") for x, rs in by.items()}
    print(f"  after the sweep returned: RSS minus RSS before it, MiB: without {after[False]}, with {after[True]}; "
          f"loaded in the host: without {by[False][0]['loaded_after']}, with {w[0]['loaded_after']}; scoring models "
          f"alive (gc): {max(r['scoring_alive_after'] for r in w)}")
    trimmed = {x: _spread([r["trimmed_mib"] - r["before_mib"] for r in rs], "+.0f") for x, rs in by.items()}
    tensors = {x: _spread([r["tensors_mib"] for r in rs], ".0f") for x, rs in by.items()}
    print(f"  then after malloc_trim(0) (glibc hands freed heap pages back): without {trimmed[False]}, with "
          f"{trimmed[True]}; CPU tensors Python still reaches, MiB: without {tensors[False]}, with {tensors[True]}")
    loaded = {x: sorted(by[x][0]["loaded_after"]) for x in by}
    clean = loaded[True] == loaded[False] and max(r["scoring_alive_after"] for r in w) == 0
    print(f"  scoring models resident after scoring: {'none' if clean else 'YES'} (target none)")
    return ratio <= TARGETS["memory"] and clean and same and all(r["scored"] for r in w)


@contextlib.contextmanager
def _mem_lock(smoke: bool):
    """The full run peaks at about 16 GiB: never beside another big job (make test-realsize takes the same lock)."""
    if smoke:
        yield
        return
    with open(LOCK, "a") as f:
        t = time.perf_counter()
        fcntl.flock(f, fcntl.LOCK_EX)
        if time.perf_counter() - t > 1:
            print(f"(waited {time.perf_counter() - t:.0f} s for {LOCK})", flush=True)
        yield


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models, under a minute (the host tier's check)")
    ap.add_argument("--parts", default="time,memory")
    ap.add_argument("--px", type=int, default=None, help="render size (default 256; smoke 64)")
    ap.add_argument("--steps", type=int, default=None, help="time part's steps (default 4; smoke 2)")
    ap.add_argument("--samples", type=int, default=None, help="timed samples per configuration (default 3; smoke 2)")
    ap.add_argument("--rounds", type=int, default=None, help="memory: alternating rounds (default 2; smoke 1)")
    ap.add_argument("--device", choices=["cpu"], default="cpu", help="CPU only (RSS is the memory measured)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = json.loads(args.child)
        fn = {"time": child_time, "memory": child_memory, "build": child_build}[kind]
        print(json.dumps(fn(*rest)))
        return 0
    smoke = args.smoke
    px = args.px or (64 if smoke else 256)
    steps = args.steps or (2 if smoke else 4)
    samples = args.samples or (2 if smoke else 3)
    rounds = args.rounds or (1 if smoke else 2)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    print(f"sweep scores bench{' (smoke: tiny models, the times are not figures)' if smoke else ''}; "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPUs, load average {_load()}", flush=True)
    verdicts = []
    with _mem_lock(smoke), tempfile.TemporaryDirectory(prefix="sd35wb-bench-scores-") as tmp:
        b = bench_child.run(__file__, [json.dumps(["build", smoke])])
        if b:
            print(f"files: Medium {b['medium_gb']:.2f} GB, scoring models "
                  f"{', '.join(f'{k} {v:.2f} GB' for k, v in b['scoring_gb'].items())} (built or found in "
                  f"{b['seconds']:.0f} s)", flush=True)
        if "time" in parts:
            r = bench_child.run(__file__, [json.dumps(["time", str(Path(tmp) / "time"), smoke, px, steps, samples])])
            verdicts.append(report_time(r, smoke))
        if "memory" in parts:
            runs = []
            for k in range(rounds):
                for with_scores in ((False, True) if k % 2 == 0 else (True, False)):
                    work = Path(tmp) / f"mem-{k}-{int(with_scores)}"
                    r = bench_child.run(__file__, [json.dumps(["memory", str(work), smoke, px, 1, with_scores])])
                    runs.append(r)
                    print(f"  round {k + 1}, {'with' if with_scores else 'without'} scores: {r['images']} images "
                          f"({px} px, 1 step), peak RSS {r['peak_mib']:.0f} MiB (before the sweep "
                          f"{r['before_mib']:.0f}), {r['sweep_s']:.0f} s", flush=True)
            verdicts.append(report_memory(runs))
    print(f"load average at the end {_load()}")
    if smoke:  # tiny models: the run must reach its checks; what they give is not judged
        print("smoke: OK (targets are judged on the full run only)")
        return 0
    print("all targets met" if all(verdicts) else "SOME TARGET MISSED")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
