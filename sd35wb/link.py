"""Link a SimpleTuner run into ComfyUI's model folders from a shell.

    python -m sd35wb.link <output_dir> --models-dir <ComfyUI>/models [--run NAME]
                          [--include full,ema,lora,final] [--copy] [--json]
                          [--training-roots DIR[:DIR...]]
    python -m sd35wb.link <output_dir> --comfyui <ComfyUI folder> ...

Prints one line per model linked, pruned or skipped (with the reason). Safe to run again at any
time, and at the same time as the node or the Sync now button (e.g. from a cron job or after
each checkpoint): nothing changes when nothing is new. Writes where the node and the route do:
``models/diffusion_models/<run>/`` and ``models/loras/<run>/`` (see ``linker.destinations``).
Links only files inside the training roots: ``--training-roots`` or ``SD35WB_TRAINING_ROOTS``,
the same rule as the node and the route (docs/simpletuner.md, "Who may link what").
Exit status: 0 on success, 2 on bad arguments or a refused sync, 1 when the file system failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import linker, names, simpletuner


def model_dirs(models_dir: Path) -> dict[str, str]:
    """diffusion_models and loras under a models/ folder, by the rule the node and route use."""
    return linker.models_dir_destinations(models_dir).dirs


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
    ap.add_argument("--training-roots", default=None,
                    help=f"folder(s) holding your runs, separated by {os.pathsep!r} (default: ${linker.ROOTS_ENV}); "
                         "only files inside them are linked")
    args = ap.parse_args(argv)
    models = args.models_dir if args.models_dir else args.comfyui / "models"
    if not models.is_dir():
        ap.error(f"{models} is not a folder (give ComfyUI's models/ with --models-dir or its root with --comfyui)")
    roots = args.training_roots if args.training_roots is not None else os.environ.get(linker.ROOTS_ENV, "")
    if not roots.strip():  # say it in CLI words; linker.authorize refuses the same way
        print(f"error: no training roots: pass --training-roots DIR (the folder holding your SimpleTuner "
              f"output_dirs) or set {linker.ROOTS_ENV}; only files inside them are linked", file=sys.stderr)
        return 2
    try:
        names.check_path(args.output_dir, "output_dir")  # before abspath makes it longer or hides '..'
        report = linker.sync(os.path.abspath(args.output_dir), args.run, linker.models_dir_destinations(models), args.include,
                             copy=args.copy, roots=roots)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system failed mid-sync; the manifest still lists every link made
        print(f"error: {e}; nothing made so far is lost: run the same command again", file=sys.stderr)
        return 1
    print(json.dumps(report.as_dict(), indent=1) if args.json else report.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
