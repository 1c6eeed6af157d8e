"""SimpleTuner checkpoint linker and checkpoint sweep: from a training run to "which checkpoint is best".

Nodes: SD35WB_SimpleTunerLink (link a run's checkpoints into the host's model folders) and
SD35WB_CheckpointSweep (render the same seed on every checkpoint, one model resident at a time).
Route: POST /sd35wb/simpletuner/sync (the "Sync now" button in js/sd35wb_simpletuner.js).
Plain logic: sd35wb/simpletuner.py (layout), sd35wb/linker.py (links), sd35wb/shards.py (merging),
sd35wb/grid.py (the labelled strip).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..sd35wb import folders, grid, linker, simpletuner, sweep

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


def _model_options(weight_dtype: str) -> dict:
    if weight_dtype == "fp8_e4m3fn":
        return {"dtype": torch.float8_e4m3fn}
    if weight_dtype == "fp8_e4m3fn_fast":
        return {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}
    if weight_dtype == "fp8_e5m2":
        return {"dtype": torch.float8_e5m2}
    return {}


def _unload(model) -> None:
    """Take this one model out of the host's memory manager; keep everything else loaded."""
    mm = comfy.model_management
    others = [lm for lm in mm.current_loaded_models if lm.model is not model]
    for device in {lm.device for lm in mm.current_loaded_models if lm.model is model}:
        mm.free_memory(1e30, device, keep_loaded=others)


class CheckpointSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SD35WB_CheckpointSweep",
            display_name="Checkpoint Sweep (same seed, every checkpoint)",
            category="SD3.5 Workbench/training",
            description=(
                "Renders the same seed and settings on every listed diffusion model, one model resident at a "
                "time through the host's model management, and returns the images plus one labelled strip "
                "(checkpoint-800, checkpoint-1600, ...) to pick the best checkpoint of a training run."
            ),
            inputs=[
                io.String.Input("models", multiline=True, default="",
                                tooltip="diffusion_models names, one per line (the linker's 'models' output, or typed)."),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image"),
                io.Vae.Input("vae"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="The same seed is rendered on every checkpoint."),
                io.Int.Input("steps", default=28, min=1, max=10000,
                             tooltip="Sampling steps per checkpoint; 28 is diffusers' SD3 default (Stability's reference uses 50)."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="CFG scale; 5.0 is Stability's SD3.5 Medium reference (4.5 for Large)."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="dpmpp_2m",
                               tooltip="dpmpp_2m as in Stability's SD3.5 reference."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="sgm_uniform",
                               tooltip="sgm_uniform, the usual choice for SD3-family flow models."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1.0 for text-to-image; lower with an encoded image as latent_image (img2img)."),
                io.Combo.Input("weight_dtype", options=WEIGHT_DTYPES, default="default",
                               tooltip="As in the core diffusion-model loader (fp8 halves memory per checkpoint)."),
                io.Combo.Input("order", options=["numeric", "as listed"], default="numeric",
                               tooltip="numeric: checkpoint-800 before checkpoint-1600 (not text order)."),
                io.Int.Input("columns", default=0, min=0, max=64,
                             tooltip="Tiles per row; 0 puts every checkpoint in one row."),
            ],
            outputs=[
                io.Image.Output("images", display_name="images", tooltip="Every image of every checkpoint (the latent's batch per checkpoint), in strip order."),
                io.Image.Output("strip", display_name="strip", tooltip="The labelled strip / grid: the first image of each checkpoint."),
                io.String.Output("labels", display_name="labels", tooltip="Tile labels, one per line, in order."),
            ],
        )

    @classmethod
    def execute(cls, models: str, positive, negative, latent_image, vae, seed: int, steps: int, cfg: float,
                sampler_name: str, scheduler: str, denoise: float, weight_dtype: str = "default",
                order: str = "numeric", columns: int = 0) -> io.NodeOutput:
        names = sweep.parse_model_list(models)
        if not names:
            raise ValueError("models: no model names; connect the linker's 'models' output or list diffusion_models names")
        if order == "numeric":
            names = simpletuner.natural_sorted(names)
        paths, missing = [], []
        for n in names:
            p = folder_paths.get_full_path("diffusion_models", n)
            (paths.append(p) if p else missing.append(n))
        if missing:
            raise ValueError(folders.not_found("models", ", ".join(missing),
                                               {"diffusion_models": folder_paths.get_folder_paths("diffusion_models")},
                                               "Run the SimpleTuner linker (or press Sync now) so they are linked, or fix the names."))
        bad = [n for n in names if not n.lower().endswith(".safetensors")]
        if bad:
            raise ValueError(f"models: only .safetensors files are loaded, not {', '.join(bad)}")
        mm = comfy.model_management
        pbar = comfy.utils.ProgressBar(len(names) * steps)
        images = []
        for i, (name, path) in enumerate(zip(names, paths)):
            mm.throw_exception_if_processing_interrupted()
            model = comfy.sd.load_diffusion_model(path, model_options=_model_options(weight_dtype))
            try:
                lat = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
                noise = comfy.sample.prepare_noise(lat, seed, latent_image.get("batch_index"))

                def callback(step, x0, x, total, _base=i * steps):
                    pbar.update_absolute(_base + step + 1)

                samples = comfy.sample.sample(
                    model, noise, steps, cfg, sampler_name, scheduler, positive, negative, lat, denoise=denoise,
                    noise_mask=latent_image.get("noise_mask"), callback=callback,
                    disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
            finally:
                _unload(model)
                del model
                mm.cleanup_models_gc()
                mm.soft_empty_cache()
            decoded = vae.decode(samples)
            if decoded.ndim == 5:
                decoded = decoded.reshape(-1, *decoded.shape[-3:])
            images.append(decoded.detach().float().cpu())
            pbar.update_absolute((i + 1) * steps)
            LOG.info("[sd35-workbench] sweep %d/%d: %s", i + 1, len(names), name)
        labels = sweep.labels_for(names)
        strip = grid.labelled_strip([im[0].numpy() for im in images], labels, columns or None)  # first of each batch
        strip_t = torch.from_numpy(grid.to_array(strip))[None]
        return io.NodeOutput(torch.cat(images, dim=0), strip_t, "\n".join(labels))


NODES = [SimpleTunerLink, CheckpointSweep]


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
