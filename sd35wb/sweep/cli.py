"""``python -m sd35wb.sweep``: the command line (arguments, checks before anything is queued, the
summary and exit status)."""

from __future__ import annotations

import argparse
import shlex
import sys
import urllib.error
from pathlib import Path

from .. import grid, simpletuner
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
                           [--server http://127.0.0.1:8188 ...] [--validation-images OUTPUT_DIR]"""


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
    return ap


def _names(args, server: Server) -> list[str]:
    if args.run or args.lora_run:
        run = simpletuner.check_run_name(args.run or args.lora_run)
        listed = server.diffusion_models() if args.run else server.loras()
        names = [n for n in listed if n.replace("\\", "/").startswith(run + "/")]
        if not names:
            folder = "diffusion models" if args.run else "LoRAs"
            raise ValueError(f"--{'run' if args.run else 'lora-run'}: no {folder} under {run}/ on {server.url}; link the "
                             "run first (python -m sd35wb.link ... or the Sync now button)")
        return simpletuner.natural_sorted(names)
    names = parse_model_list(args.models or args.loras)
    if not names:
        raise ValueError(f"--{'models' if args.models else 'loras'}: empty list")
    return names if args.keep_order else simpletuner.natural_sorted(names)


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
    pages = draw(res, sweep, args.out, args.max_tile, args.page_width, args.validation_images)
    print(f"grid: {', '.join(map(str, pages))} ({len(res.rows)} rows x {sweep.size.columns} columns; "
          f"{res.rendered} rendered, {res.reused} reused)")
    return 1 if res.failures else 0
