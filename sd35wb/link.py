"""Link a SimpleTuner run into ComfyUI's model folders from a shell.

    python -m sd35wb.link <output_dir> --models-dir <ComfyUI>/models [--run NAME]
                          [--include full,ema,lora,final] [--copy] [--json]
    python -m sd35wb.link <output_dir> --comfyui <ComfyUI folder> ...

Prints one line per model linked, pruned or skipped (with the reason). Safe to run again at any
time (e.g. from a cron job or after each checkpoint): nothing changes when nothing is new.
Exit status: 0 on success, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import linker, simpletuner


def model_dirs(models_dir: Path) -> dict[str, Path]:
    """diffusion_models (or the legacy unet/ when only that exists) and loras under a models/ folder."""
    dm = models_dir / "diffusion_models"
    if not dm.is_dir() and (models_dir / "unet").is_dir():
        dm = models_dir / "unet"
    return {simpletuner.DIFFUSION_MODELS: dm, simpletuner.LORAS: models_dir / "loras"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sd35wb.link", description=__doc__.split("\n\n")[0])
    ap.add_argument("output_dir", help="SimpleTuner's --output_dir of the run")
    ap.add_argument("--run", help="folder name under diffusion_models/ and loras/ (default: output_dir's name)")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--models-dir", type=Path, help="ComfyUI's models/ folder")
    where.add_argument("--comfyui", type=Path, help="ComfyUI's folder (uses its models/)")
    ap.add_argument("--include", default=",".join(simpletuner.CATEGORIES),
                    help="comma list of full, ema, lora, final (default: all)")
    ap.add_argument("--copy", action="store_true", help="copy files instead of linking (uses disk space)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    models = args.models_dir if args.models_dir else args.comfyui / "models"
    if not models.is_dir():
        ap.error(f"{models} is not a folder (give ComfyUI's models/ with --models-dir or its root with --comfyui)")
    try:
        report = linker.sync(args.output_dir, args.run, model_dirs(models), args.include, copy=args.copy)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=1) if args.json else report.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
