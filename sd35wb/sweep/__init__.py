"""Checkpoint sweep: checkpoints (or a LoRA run's checkpoints x strengths) x prompts x seeds x any
settings, one labelled grid, resumable, across ComfyUI servers.

    python -m sd35wb.sweep --workflow api.json (--run NAME | --models a,b,c | --lora-run NAME | --loras a,b)
                           --out grid.png [--prompts prompts.txt | --prompt TEXT ...] [--seeds 42,7]
                           [--strengths 0.6,0.8,1.0] [--axis NODE.INPUT=v1,v2 ...]
                           [--server http://127.0.0.1:8188 ...] [--validation-images OUTPUT_DIR]

Takes an API-format workflow (the frontend's "Export (API)") and finds in it the diffusion-model
loader (or, for a LoRA sweep, the ``LoraLoaderModelOnly`` / ``LoraLoader``), the positive prompt's
text node and the sampler's seed. For every cell of the plan it queues a copy of the workflow with
only those inputs (and the ``--axis`` inputs) changed. Each server is handed one checkpoint at a
time (all its cells, so it loads each checkpoint once); a server that stops answering has its
unfinished images handed to the others. Every image is written under ``<out>-images/`` as soon as
it arrives and recorded in ``<out>.sweep.json``, so the same command again renders only what is
missing. Exit status: 0 all rendered, 1 some failed (grid of the rest written), 2 nothing rendered
or bad arguments, 130 interrupted.

One module per job: :mod:`.plan` (lists, axes, cells, labels, the plan's size), :mod:`.state`
(resume state, the node's render cache), :mod:`.workflow` (what the sweep changes in a workflow),
:mod:`.client` (the HTTP client), :mod:`.dispatch` (the collector and the local scheduler),
:mod:`.draw` (the grid), :mod:`.cli`. Standard library, numpy and Pillow only: no ComfyUI.
"""

from .client import PromptError, Result, Server, ServerGone, output_images
from .dispatch import Sweep, SweepResult, run_local
from .draw import draw
from .plan import (
    DEFAULT_MAX_IMAGES,
    Axis,
    Cell,
    InputSpec,
    PlanSize,
    check_size,
    checkpoint_step,
    coerce,
    column_labels,
    family_problems,
    fingerprint,
    format_value,
    labels_for,
    model_family,
    model_label,
    parse_axes_text,
    parse_axis_spec,
    parse_model_list,
    parse_prompt_list,
    parse_seeds,
    parse_strengths,
    plan,
    plan_size,
    row_label,
    run_dir_of,
    split_values,
    validation_columns,
    validation_images,
)
from .state import STATE_VERSION, RenderCache, StateLocked, SweepState
from .workflow import find_loader, find_lora_loader, find_prompt, find_seed, load_workflow, resolve_axes, workflow_signature


def main(argv=None) -> int:
    from .cli import main as _main

    return _main(argv)


__all__ = [
    "DEFAULT_MAX_IMAGES", "STATE_VERSION", "Axis", "Cell", "InputSpec", "PlanSize", "PromptError", "RenderCache",
    "Result", "Server", "ServerGone", "output_images", "StateLocked", "Sweep", "SweepResult", "SweepState", "check_size",
    "checkpoint_step", "coerce", "column_labels", "draw", "family_problems", "find_loader", "find_lora_loader",
    "find_prompt", "find_seed", "fingerprint", "format_value", "labels_for", "load_workflow", "main", "model_family",
    "model_label", "parse_axes_text", "parse_axis_spec", "parse_model_list", "parse_prompt_list", "parse_seeds",
    "parse_strengths", "plan", "plan_size", "resolve_axes", "row_label", "run_dir_of", "run_local", "split_values",
    "validation_columns", "validation_images", "workflow_signature",
]
