"""SimpleTuner checkpoint linker: from a training run to checkpoints ComfyUI lists.

Node: SD35WB_SimpleTunerLink (link a run's checkpoints into the host's model folders); the
checkpoint sweep that renders them is nodes/sweep.py.
Route: POST /sd35wb/simpletuner/sync (the "Sync now" button in js/sd35wb_simpletuner.js); SimpleTuner's
webhook: POST /sd35wb/simpletuner/webhook, and GET /sd35wb/simpletuner/events for followers.
Plain logic: sd35wb/simpletuner.py (layout), sd35wb/linker/ (links), sd35wb/shards.py (merging).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

import folder_paths
from comfy_api.v0_0_2 import io

from ..sd35wb import linker, simpletuner, webhook
from . import _compat as C

LOG = logging.getLogger("sd35-workbench")
ROOTS_ENV = linker.ROOTS_ENV


def host_destinations() -> linker.Destinations:
    """Where a sync writes on this host: linker.destinations' rule, the same as the CLI's."""
    return linker.destinations(folder_paths.get_folder_paths("diffusion_models"), folder_paths.get_folder_paths("loras"))


def refresh_host_lists() -> None:
    """Make the host list the new files at once.

    ``folder_paths.get_filename_list`` re-scans when a cached folder's mtime changed (on ext4 here
    every link changed its folder's mtime), but filesystems with coarse timestamps (FAT/exFAT: 2 s,
    some network mounts) can let a change slip past that check (see _compat)."""
    C.refresh_filename_lists((simpletuner.DIFFUSION_MODELS, simpletuner.LORAS))


def run_sync(output_dir: str, run: str | None, include, copy: bool = False) -> linker.Report:
    """The node's and the route's sync: the linker's one rule (training roots, names, lock)."""
    report = linker.sync(output_dir, run or None, host_destinations(), include, copy=copy,
                         roots=os.environ.get(linker.ROOTS_ENV, ""))
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
            **C.search_aliases("simpletuner", "checkpoint linker", "training output"),
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
                io.String.Output("detected", display_name="detected",
                                 tooltip="JSON: per exposed checkpoint, its family, prediction (eps / v / flow) and "
                                         "zero-SNR, each with the file or config that says so."),
            ],
        )

    @classmethod
    def _include(cls, full: bool, ema: bool, lora: bool, final: bool) -> list[str]:
        return [c for c, on in zip(simpletuner.CATEGORIES, (full, ema, lora, final)) if on]

    @classmethod
    def fingerprint_inputs(cls, output_dir: str, run: str, full: bool, ema: bool, lora: bool, final: bool):
        """Re-run when the training run changes (a new or rotated checkpoint), not on every queue."""
        try:  # nothing outside the training roots is even scanned
            out = linker.authorize(output_dir.strip(), os.environ.get(linker.ROOTS_ENV, ""))
            scan = simpletuner.scan(out, run.strip() or None)
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
        report = run_sync(output_dir.strip(), run.strip() or None, include)
        dm = report.exposed.get(simpletuner.DIFFUSION_MODELS, [])
        lo = report.exposed.get(simpletuner.LORAS, [])
        return io.NodeOutput("\n".join(dm), "\n".join(lo), report.text(), json.dumps(report.detected, indent=1))


NODES = [SimpleTunerLink]  # the checkpoint sweep node lives in nodes/sweep.py


# ---------------------------------------------------------------------------------------------
# POST /sd35wb/simpletuner/sync


def register_routes(server) -> None:
    from aiohttp import web

    def error(message: str, field: str | None, status: int = 400):
        return web.json_response({"error": message, "field": field}, status=status)

    @server.routes.post("/sd35wb/simpletuner/sync")
    async def simpletuner_sync(request):
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - any unparsable body is the client's error
            return error("body must be JSON: {\"output_dir\": ..., \"run\": ...}", None)
        if not isinstance(body, dict):
            return error("body must be a JSON object: {\"output_dir\": ..., \"run\": ...}", None)
        if not isinstance(body.get("output_dir"), str) or not body["output_dir"].strip():
            return error("output_dir (a string) is required", "output_dir")
        run = body.get("run") or None
        if run is not None and not isinstance(run, str):
            return error("run must be a string", "run")
        include = body.get("include", list(simpletuner.CATEGORIES))
        if not isinstance(include, (str, list)) or (isinstance(include, list) and
                                                     not all(isinstance(i, str) for i in include)):
            return error("include must be a comma list or a list of full, ema, lora, final", "include")
        loop = asyncio.get_running_loop()
        try:  # every check (names, roots, lock) is the linker's, the same as the node's and the CLI's
            report = await loop.run_in_executor(None, run_sync, body["output_dir"], run, include)
        except linker.LinkError as e:
            return error(str(e), e.field, e.status)
        except ValueError as e:
            return error(str(e), "include" if str(e).startswith("include") else None)
        except OSError as e:  # the file system failed mid-sync: not the client's input; the manifest stays true
            LOG.exception("[sd35-workbench] SimpleTuner sync failed")
            return error(f"the sync failed ({e}); links made so far are recorded: sync again", None, 500)
        return web.json_response(report.as_dict())

    # SimpleTuner's raw webhook (sd35wb/webhook.py does the parsing and the rules; the same linker sync).
    @server.routes.post("/sd35wb/simpletuner/webhook")
    async def simpletuner_webhook(request):
        if (request.content_length or 0) > webhook.MAX_BODY:
            return error(f"body: above the limit of {webhook.MAX_BODY} bytes", None, 413)
        body = await request.content.read(webhook.MAX_BODY + 1)  # never more than the limit in memory
        run = request.query.get("run") or None
        loop = asyncio.get_running_loop()
        status, doc = await loop.run_in_executor(None, webhook.handle, body, request.content_type, run,
                                                 lambda out, r: run_sync(out, r, list(simpletuner.CATEGORIES)))
        return web.json_response(doc, status=status)

    @server.routes.get("/sd35wb/simpletuner/events")
    async def simpletuner_events(request):
        try:
            since, wait = webhook.events_query(request.query.get("since"), request.query.get("wait"))
        except webhook.WebhookError as e:
            return error(str(e), e.field)
        run = request.query.get("run") or None
        deadline = asyncio.get_running_loop().time() + wait
        while True:  # a long poll that holds no thread: a follower hears of a checkpoint within 0.1 s
            events, last = webhook.EVENTS.since(since, run)
            if events or asyncio.get_running_loop().time() >= deadline:
                return web.json_response({"events": events, "last": last, "boot": webhook.EVENTS.boot})
            await asyncio.sleep(0.1)
