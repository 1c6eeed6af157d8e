"""``python -m sd35wb.sweep``: the command line (arguments, checks before anything is queued, the
summary and exit status)."""

from __future__ import annotations

import argparse
import shlex
import sys
import urllib.error
from pathlib import Path

from .. import grid, scoreboard, scores, simpletuner
from . import scoring
from .client import Server
from .dispatch import Sweep
from .draw import draw
from .plan import DEFAULT_MAX_IMAGES, parse_model_list, parse_prompt_list, parse_seeds, parse_strengths
from .state import StateLocked
from .workflow import load_workflow

USAGE = """\
    python -m sd35wb.sweep --workflow api.json (--run NAME | --models a,b,c | --lora-run NAME | --loras a,b)
                           --out grid.png [--prompts prompts.txt | --prompt TEXT ...] [--seeds 42,7]
                           [--strengths 0.6,0.8,1.0] [--axis NODE.INPUT=v1,v2 ...]
                           [--server http://127.0.0.1:8188 ...] [--validation-images OUTPUT_DIR]
       follow a run while it trains (renders each checkpoint as SimpleTuner saves it):
    python -m sd35wb.sweep --workflow api.json (--run NAME | --lora-run NAME) --out grid.png
                           --follow [OUTPUT_DIR] [--until-step N] [--poll 2] [--models-dir DIR] ..."""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sd35wb.sweep", usage=USAGE,
                                 description="Checkpoint sweep over ComfyUI servers: checkpoints (or LoRA checkpoints x "
                                             "strengths) x prompts x seeds x any settings, one labelled grid, resumable.")
    ap.add_argument("--workflow", required=True, help="API-format workflow JSON (Export (API))")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="every diffusion model under <run>/ on the first server, numeric order")
    which.add_argument("--models", help="comma-separated diffusion_models names")
    which.add_argument("--lora-run", help="every LoRA under loras/<run>/ on the first server (a SimpleTuner LoRA run "
                                          "linked by the linker), numeric order; the workflow needs a LoRA loader")
    which.add_argument("--loras", help="comma-separated loras names, swapped into the workflow's LoraLoaderModelOnly / "
                                       "LoraLoader")
    ap.add_argument("--strengths", help="LoRA strengths, e.g. 0.6,0.8,1.0 (0 renders the base model); default: the "
                                        "workflow's")
    ap.add_argument("--axis", action="append", default=[], metavar="NODE.INPUT=v1,v2",
                    help="sweep any input too: NODE is a node id or class type, e.g. KSampler.cfg=3.5,4.5 or "
                         "3.sampler_name=euler,dpmpp_2m ('|' between values that hold commas); repeatable")
    ap.add_argument("--prompts", type=Path, help="text file, one prompt per line (default: the workflow's prompt)")
    ap.add_argument("--prompt", action="append", help="a prompt; repeat for several (instead of --prompts)")
    ap.add_argument("--seeds", help="comma-separated seeds (default: the workflow's seed)")
    ap.add_argument("--loader-node", help="id of the loader node whose model is swapped (default: found)")
    ap.add_argument("--lora-node", help="id of the LoRA loader whose lora_name is swapped (default: found)")
    ap.add_argument("--prompt-node", help="id of the text node whose prompt is swapped (default: found)")
    ap.add_argument("--seed-node", help="id of the sampler whose seed is swapped (default: found)")
    ap.add_argument("--output-node", help="id of the node whose images go in the grid (default: the first image output)")
    ap.add_argument("--server", action="append", help="ComfyUI URL; repeat to spread checkpoints (default http://127.0.0.1:8188)")
    ap.add_argument("--out", required=True, type=Path, help="grid PNG to write (pages: <out>-pageN.png)")
    ap.add_argument("--validation-images", metavar="OUTPUT_DIR",
                    help="the run's SimpleTuner output_dir: show its validation_images/ beside each row")
    ap.add_argument("--max-tile", type=int, default=grid.MAX_TILE, help="longer side of a grid tile, px (default 256)")
    ap.add_argument("--page-width", type=int, default=grid.MAX_PAGE, help="widest page, px (default 4096)")
    ap.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES,
                    help=f"refuse a plan of more images than this (default {DEFAULT_MAX_IMAGES})")
    ap.add_argument("--keep-order", action="store_true", help="--models / --loras in the order given, not numeric")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds to wait for one checkpoint's images")
    ap.add_argument("--ray", metavar="auto|ADDRESS", help="run on a Ray cluster: one actor per --server (needs Ray: "
                                                       "pip install \"ray[default]>=2.40\", or the tools installed "
                                                       "with pip install \"./sd35-workbench[cluster]\" from the folder "
                                                       "holding the clone); see docs/sweep_cluster.md")
    ap.add_argument("--ray-resource", metavar="NAME", help="with --ray: each actor takes one unit of this custom "
                                                           "resource instead of a GPU")
    ap.add_argument("--comfyui-path", metavar="PATH", help="with --ray, instead of --server: each actor starts ComfyUI "
                                                           "from PATH (the same path on every node) with that node's "
                                                           "models folder, and stops it at the end")
    ap.add_argument("--comfyui-args", metavar="ARGS", default="", help="with --comfyui-path: more arguments for "
                                                                       "ComfyUI's main.py, e.g. \"--base-directory /models\"")
    ap.add_argument("--ray-workers", type=int, default=0, metavar="N", help="with --comfyui-path: how many ComfyUIs "
                                                                            "to start (default: one per GPU, or per "
                                                                            "unit of --ray-resource)")
    sc = ap.add_argument_group("scores and the recommended checkpoint (docs/scores.md)")
    sc.add_argument("--scores", action="store_true",
                    help="score every image on the server that renders it (CLIP prompt adherence as SimpleTuner's "
                         "evaluation, memorisation, seed diversity, drift on '[held out]' prompts); writes "
                         "<out>.scores.json, <out>.scores.csv and <out>-scoreboard.png and names the best checkpoint")
    sc.add_argument("--clip-model", default=scores.CLIP_HUB_CHOICE, metavar="NAME",
                    help="a clip_vision file on the servers (a Hugging Face CLIP folder's model.safetensors), 'none', "
                         "or the default: SimpleTuner's openai/clip-vit-large-patch14-336 from the Hugging Face cache")
    sc.add_argument("--dino-model", default="none", metavar="NAME",
                    help="a DINOv2 clip_vision file on the servers (memorisation; diversity and drift)")
    sc.add_argument("--training-images", default="", metavar="DIR",
                    help="the run's training images, as the servers see them (under their SD35WB_TRAINING_ROOTS)")
    sc.add_argument("--max-memorisation", type=float, default=scoring.ScoreSpec.max_memorisation, metavar="X",
                    help=f"leave out checkpoints with a render above this (default "
                         f"{scoring.ScoreSpec.max_memorisation:g}: {scores.THRESHOLDS['max_memorisation'][1]})")
    sc.add_argument("--max-drift", type=float, default=scoring.ScoreSpec.max_drift, metavar="X",
                    help=f"leave out checkpoints drifting more on held-out prompts (default "
                         f"{scoring.ScoreSpec.max_drift:g}: {scores.THRESHOLDS['max_drift'][1]})")
    sc.add_argument("--base-model", metavar="NAME", help="a full fine-tune's base (diffusion_models name), rendered as "
                                                        "the first row: the reference of drift")
    fo = ap.add_argument_group("follow a run while it trains (docs/simpletuner.md, \"Follow a run\")")
    fo.add_argument("--follow", nargs="?", const="", metavar="OUTPUT_DIR",
                    help="with --run / --lora-run: keep watching; link each checkpoint SimpleTuner finishes (through "
                         "each server's sync route; OUTPUT_DIR as the servers see it, or under their training roots), "
                         "render it and add it to the grid and the state as it lands; stop after the final save. "
                         "Without OUTPUT_DIR nothing is linked here (SimpleTuner's webhook, cron or Sync now links)")
    fo.add_argument("--until-step", type=int, metavar="N", help="with --follow: stop once step N has landed "
                                                                "(checkpoints after it are not rendered)")
    fo.add_argument("--poll", type=float, default=2.0, metavar="SECONDS",
                    help="with --follow: seconds between syncs while no webhook event arrives (default 2)")
    fo.add_argument("--models-dir", type=Path, metavar="DIR",
                    help="with --follow OUTPUT_DIR: link here, into ComfyUI's models/ folder the servers read (this "
                         "machine sees the run's disk), by the rules of python -m sd35wb.link")
    fo.add_argument("--training-roots", metavar="DIR[:DIR]", help="with --models-dir: the folders holding your runs "
                                                                  "(default: $SD35WB_TRAINING_ROOTS)")
    return ap


def publish(sweep, result, args) -> list[Path]:
    """Write every output of the sweep from what is rendered so far (the grid pages; with --scores the
    scores JSON / CSV, the scoreboard and the recommendation): the one place, after a whole sweep and
    after each checkpoint a follower renders."""
    if not sweep.scoring:
        return draw(result, sweep, args.out, args.max_tile, args.page_width, args.validation_images)
    spec = sweep.scoring
    doc = scoring.build_doc(result.rows, sweep.labels, result.scores, sweep.held, args.base_model,
                            {"max_memorisation": spec.max_memorisation, "max_drift": spec.max_drift},
                            bool(sweep.lora), "CLIP image" if spec.dino_model == "none" else "DINOv2")
    notes = {(r["model"], r["strength"]): scoreboard.row_note(r) for r in doc["rows"]}
    pages = draw(result, sweep, args.out, args.max_tile, args.page_width, args.validation_images, notes)
    files = scoreboard.write_outputs(doc, args.out.with_suffix(""))
    rec = doc["recommended"]
    if rec is not None:
        sweep.say(f"recommended: {scores.row_name(rec) if rec['label'] else 'none'} ({rec['why']}); rule: {rec['rule']}")
    return pages + [f for f in files if f.suffix == ".png"]


def _names(args, server: Server) -> list[str]:
    if args.run or args.lora_run:
        run = simpletuner.check_run_name(args.run or args.lora_run)
        listed = server.diffusion_models() if args.run else server.loras()
        names = [n for n in listed if n.replace("\\", "/").startswith(run + "/")]
        if not names:
            folder = "diffusion models" if args.run else "LoRAs"
            raise ValueError(f"--{'run' if args.run else 'lora-run'}: no {folder} under {run}/ on {server.url}; link the "
                             "run first (python -m sd35wb.link ... or the Sync now button)")
        return _with_base(args, simpletuner.natural_sorted(names))
    names = parse_model_list(args.models or args.loras)
    if not names:
        raise ValueError(f"--{'models' if args.models else 'loras'}: empty list")
    return _with_base(args, names if args.keep_order else simpletuner.natural_sorted(names))


def _with_base(args, names: list[str]) -> list[str]:
    """A full fine-tune's --base-model as the first row (the reference of drift)."""
    if not getattr(args, "base_model", None):
        return names
    return [args.base_model] + [n for n in names if n != args.base_model]


def main(argv: list[str] | None = None, dispatch=None) -> int:
    args = parser().parse_args(argv)
    servers = args.server or ["http://127.0.0.1:8188"]
    try:
        if args.ray and dispatch is None:  # first: no Ray, or no cluster there, is said before any server is asked
            from .ray_dispatch import make_dispatch  # only here: the local path and the node pack never import Ray

            if args.comfyui_path and args.server:
                raise ValueError("--comfyui-path starts the servers: give it or --server, not both")
            dispatch = make_dispatch(args.ray, servers, args.comfyui_path, shlex.split(args.comfyui_args),
                                     args.ray_workers, args.ray_resource)
            servers = dispatch.servers
        elif args.comfyui_path:
            raise ValueError("--comfyui-path: only with --ray (the actors start ComfyUI on their nodes)")
        prompt = load_workflow(args.workflow)
        if args.prompts and args.prompt:
            raise ValueError("--prompts and --prompt: give one of them")
        prompts = None
        if args.prompts:
            prompts = parse_prompt_list(args.prompts.read_text(), f"--prompts {args.prompts}")
        elif args.prompt is not None:
            prompts = parse_prompt_list("\n".join(args.prompt), "--prompt")
        held: list[bool] = []
        if prompts:
            prompts, held = scores.split_held_out(prompts)
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        strengths = parse_strengths(args.strengths, "--strengths") if args.strengths is not None else None
        if args.max_tile < 16 or args.page_width < 64:
            raise ValueError("--max-tile must be >= 16 and --page-width >= 64 (pixels)")
        if args.max_images < 1:
            raise ValueError("--max-images must be >= 1")
        if args.validation_images and not Path(args.validation_images, "validation_images").is_dir():
            raise ValueError(f"--validation-images: no validation_images/ folder in {args.validation_images}; give "
                             "the run's SimpleTuner output_dir")
        lora = bool(args.loras or args.lora_run)
        sweep = Sweep(prompt, [], prompts, seeds, servers, args.out, args.loader_node, args.prompt_node,
                      args.seed_node, args.output_node, args.timeout, lora=lora, lora_node=args.lora_node,
                      strengths=strengths, axes=args.axis, max_images=args.max_images)
        _scoring_args(args, sweep, held)
        if args.follow is not None:
            return _follow(args, sweep, dispatch)
        _follow_only(args)
        models = _names(args, sweep.servers[0])
        sweep.set_models(models)
        sweep.prepare()
        res = sweep.run(dispatch)
    except (ValueError, OSError, urllib.error.URLError, StateLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was rendered is kept; run the same command again to resume", file=sys.stderr)
        return 130
    for cell, why in res.failures.items():
        print(f"failed: {sweep.cell_name(cell)}: {why}")
    if res.throughput and len(sweep.servers) > 1:
        for url, secs in sorted(res.throughput.items()):
            print(f"server {url}: {len(secs)} images, {sum(secs) / len(secs):.2f} s/image")
    if not res.files:
        print("grid: none (nothing rendered)")
        return 2
    pages = publish(sweep, res, args)
    print(f"grid: {', '.join(map(str, pages))} ({len(res.rows)} rows x {sweep.size.columns} columns; "
          f"{res.rendered} rendered, {res.reused} reused)")
    return 1 if res.failures else 0


def _scoring_args(args, sweep, held: list[bool]) -> None:
    given = [f for f in ("training_images", "base_model") if getattr(args, f)]
    if args.dino_model != "none":
        given.append("dino_model")
    if not args.scores:
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')}: only with --scores")
        return
    if args.clip_model == "none" and args.dino_model == "none":
        raise ValueError("--scores: --clip-model none and no --dino-model: nothing would be scored")
    if args.base_model and (args.loras or args.lora_run):
        raise ValueError("--base-model: a LoRA sweep's base is strength 0; add 0 to --strengths instead")
    scoring.image_source(sweep.prompt, sweep.output_node)  # a workflow that saves nothing is said now
    sweep.scoring = scoring.ScoreSpec(args.clip_model, args.dino_model, args.training_images, args.max_memorisation,
                                      args.max_drift)
    sweep.held = held


def _follow_only(args) -> None:
    for name in ("until_step", "models_dir", "training_roots"):
        if getattr(args, name) is not None:
            raise ValueError(f"--{name.replace('_', '-')}: only with --follow")


def _follow(args, sweep, dispatch) -> int:
    """--follow: the Follower (sd35wb/sweep/follow.py) drives the same Sweep per batch of landed checkpoints."""
    from .follow import Follower, FollowError, follow_link

    if not (args.run or args.lora_run):
        raise ValueError("--follow: give --run NAME or --lora-run NAME (the run's folder in the servers' lists)")
    if args.comfyui_path:
        raise ValueError("--follow with --comfyui-path: give --server (the actors attach to running servers for "
                         "each batch)")
    if args.poll <= 0 or args.until_step is not None and args.until_step < 0:
        raise ValueError("--poll must be > 0 seconds and --until-step >= 0")
    run = simpletuner.check_run_name(args.run or args.lora_run)
    try:
        link = follow_link(args.follow or None, args.models_dir, args.training_roots)
    except FollowError as e:
        raise ValueError(str(e)) from None
    sweep.prepare()  # the axes are checked against the first server now, before any checkpoint lands
    fresh = [dispatch]

    def make():
        if not args.ray:
            return dispatch  # None: the local scheduler; else a caller's (tests, benches)
        if fresh:
            return fresh.pop()
        from .ray_dispatch import make_dispatch  # Ray's scheduler stops its actors after each call: one per batch

        return make_dispatch(args.ray, [s.url for s in sweep.servers], None, [], 0, args.ray_resource)

    def out(result):
        pages = publish(sweep, result, args)
        print(f"grid: {', '.join(map(str, pages))} ({len(result.rows)} rows; {result.rendered} rendered, "
              f"{result.reused} reused)", flush=True)

    f = Follower(sweep, run, bool(args.lora_run), link, args.until_step, args.poll, make, out)
    try:
        f.follow()
    except FollowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if sweep.result.files:
            out(sweep.result)
        print("interrupted: what was rendered is kept; run the same command again to resume following",
              file=sys.stderr)
        return 130
    res = sweep.result
    for cell, why in res.failures.items():
        print(f"failed: {sweep.cell_name(cell)}: {why}")
    print(f"follow: stopped: {f.stop_reason}")
    if not res.files:
        print("grid: none (nothing rendered)")
        return 2
    return 1 if res.failures else 0
