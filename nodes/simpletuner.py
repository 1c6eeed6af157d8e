"""SimpleTuner checkpoint linker: from a training run to checkpoints ComfyUI lists.

Node: SD35WB_SimpleTunerLink (link a run's checkpoints into the host's model folders); the
checkpoint sweep that renders them is nodes/sweep.py.
Route: POST /sd35wb/simpletuner/sync (the "Sync now" button in js/sd35wb_simpletuner.js).
Plain logic: sd35wb/simpletuner.py (layout), sd35wb/linker.py (links), sd35wb/shards.py (merging).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import folder_paths
from comfy_api.latest import io

from ..sd35wb import linker, simpletuner

LOG = logging.getLogger("sd35-workbench")
_SYNC_LOCK = threading.Lock()  # the node and the route may sync the same run at once
ROOTS_ENV = "SD35WB_TRAINING_ROOTS"
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


def host_model_dirs() -> dict[str, str]:
    """The host's first diffusion_models and loras folders: the only places a sync writes to."""
    return {simpletuner.DIFFUSION_MODELS: folder_paths.get_folder_paths("diffusion_models")[0],
            simpletuner.LORAS: folder_paths.get_folder_paths("loras")[0]}


def refresh_host_lists() -> None:
    """Make the host list the new files at once.

    ``folder_paths.get_filename_list`` re-scans when a cached folder's mtime changed (on ext4 here
    every link changed its folder's mtime), but filesystems with coarse timestamps (FAT/exFAT: 2 s,
    some network mounts) can let a change slip past that check, and the host has no public
    invalidation call (0.3.75), so the two folders' cache entries are dropped."""
    for name in (simpletuner.DIFFUSION_MODELS, simpletuner.LORAS):
        folder_paths.filename_list_cache.pop(name, None)
        folder_paths.cache_helper.cache.pop(name, None)


def run_sync(output_dir: str, run: str | None, include, copy: bool = False) -> linker.Report:
    with _SYNC_LOCK:
        report = linker.sync(output_dir, run or None, host_model_dirs(), include, copy=copy)
    if report.changed:
        refresh_host_lists()
    LOG.info("[sd35-workbench] SimpleTuner sync %s: %d linked, %d pruned, %d skipped", report.run,
             len(report.linked), len(report.pruned), len(report.skipped))
    return report


class SimpleTunerLink(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SD35WB_SimpleTunerLink",
            display_name="SimpleTuner Checkpoint Linker",
            category="SD3.5 Workbench/training",
            description=(
                "Links a SimpleTuner run's checkpoints (full fine-tune, EMA, LoRA, final) into ComfyUI's "
                "diffusion_models/<run>/ and loras/<run>/ folders as checkpoint-N.safetensors, in numeric "
                "order; merges sharded EMA weights; prunes only its own links when SimpleTuner rotates "
                "checkpoints away; never touches your files. Layout: SimpleTuner 4.x (docs/simpletuner.md)."
            ),
            inputs=[
                io.String.Input("output_dir", default="",
                                tooltip="SimpleTuner's --output_dir of the run (the folder holding checkpoint-N/)."),
                io.String.Input("run", default="",
                                tooltip="Folder name under diffusion_models/ and loras/. Empty: the output_dir's name."),
                io.Boolean.Input("full", default=True, tooltip="Full fine-tune checkpoints (checkpoint-N/transformer or unet)."),
                io.Boolean.Input("ema", default=True,
                                 tooltip="EMA weights (transformer_ema/, unet_ema/, ema/); sharded EMA is merged once into one file."),
                io.Boolean.Input("lora", default=True, tooltip="LoRA checkpoints (pytorch_lora_weights.safetensors) into loras/<run>/."),
                io.Boolean.Input("final", default=True,
                                 tooltip="The final model (pipeline/transformer) and final LoRA as <run>-final."),
            ],
            outputs=[
                io.String.Output("models", display_name="models",
                                 tooltip="The exposed diffusion-model names, one per line, numeric order (feed the Checkpoint Sweep)."),
                io.String.Output("loras", display_name="loras", tooltip="The exposed LoRA names, one per line."),
                io.String.Output("report", display_name="report", tooltip="What was linked, pruned and skipped, and why."),
            ],
        )

    @classmethod
    def _include(cls, full: bool, ema: bool, lora: bool, final: bool) -> list[str]:
        return [c for c, on in zip(simpletuner.CATEGORIES, (full, ema, lora, final)) if on]

    @classmethod
    def fingerprint_inputs(cls, output_dir: str, run: str, full: bool, ema: bool, lora: bool, final: bool):
        """Re-run when the training run changes (a new or rotated checkpoint), not on every queue."""
        try:
            scan = simpletuner.scan(output_dir, run or None)
        except (ValueError, OSError) as e:
            return f"error: {e}"
        sig = []
        for a in scan.artifacts:
            try:
                st = a.source.stat()
                sig.append((a.folder, a.name, st.st_size, st.st_mtime_ns))
            except OSError:
                sig.append((a.folder, a.name))
        return (tuple(sig), tuple(cls._include(full, ema, lora, final)))

    @classmethod
    def execute(cls, output_dir: str, run: str, full: bool, ema: bool, lora: bool, final: bool) -> io.NodeOutput:
        include = cls._include(full, ema, lora, final)
        if not include:
            raise ValueError("SimpleTuner Linker: full, ema, lora and final are all off; switch on at least one")
        if not output_dir.strip():
            raise ValueError("output_dir: empty; give SimpleTuner's --output_dir of the run")
        out_dir = output_dir.strip()
        roots = os.environ.get(ROOTS_ENV, "")
        if roots.strip():  # the same rule as the route: anyone who can queue a prompt can run this node
            try:
                out_dir = str(simpletuner.resolve_training_dir(out_dir, roots))
            except PermissionError as e:
                raise ValueError(f"{e} ({ROOTS_ENV} is set, so only runs under it are linked)") from e
        report = run_sync(out_dir, run.strip() or None, include)
        dm = report.exposed.get(simpletuner.DIFFUSION_MODELS, [])
        lo = report.exposed.get(simpletuner.LORAS, [])
        return io.NodeOutput("\n".join(dm), "\n".join(lo), report.text())


NODES = [SimpleTunerLink]  # the checkpoint sweep node lives in nodes/sweep.py


# ---------------------------------------------------------------------------------------------
# POST /sd35wb/simpletuner/sync


def register_routes(server) -> None:
    from aiohttp import web

    @server.routes.post("/sd35wb/simpletuner/sync")
    async def simpletuner_sync(request):
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - any unparsable body is the client's error
            return web.json_response({"error": "body must be JSON: {\"output_dir\": ..., \"run\": ...}"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("output_dir"), str) or not body["output_dir"].strip():
            return web.json_response({"error": "output_dir (a string) is required"}, status=400)
        run = body.get("run") or None
        if run is not None and not isinstance(run, str):
            return web.json_response({"error": "run must be a string"}, status=400)
        include = body.get("include", list(simpletuner.CATEGORIES))
        try:
            include = simpletuner.parse_include(include)
            if run:
                simpletuner.check_run_name(run)
        except (ValueError, TypeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        try:
            out_dir = simpletuner.resolve_training_dir(body["output_dir"], os.environ.get(ROOTS_ENV, ""))
        except PermissionError as e:
            return web.json_response({"error": str(e)}, status=403)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        loop = asyncio.get_running_loop()
        try:
            report = await loop.run_in_executor(None, run_sync, str(out_dir), run, include)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=409)
        return web.json_response(report.as_dict())
