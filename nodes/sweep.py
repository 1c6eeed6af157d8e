"""Checkpoint sweep node: checkpoints x prompts x seeds on one labelled grid, one model resident at a time.

Node: SD35WB_CheckpointSweep. Plain logic: the sd35wb/sweep package (prompt lists, the plan, labels, family
check, SimpleTuner validation images, the render cache that makes an interrupted sweep resume) and
sd35wb/grid.py (the paged grid). The CLI twin over the HTTP API is ``python -m sd35wb.sweep``.
"""

from __future__ import annotations

import logging
import os

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..sd35wb import folders, grid, simpletuner, sweep
from . import _compat as C
from . import schedulers

LOG = logging.getLogger("sd35-workbench")
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


def _model_options(weight_dtype: str) -> dict:
    if weight_dtype == "fp8_e4m3fn":
        return {"dtype": torch.float8_e4m3fn}
    if weight_dtype == "fp8_e4m3fn_fast":
        return {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}
    if weight_dtype == "fp8_e5m2":
        return {"dtype": torch.float8_e5m2}
    return {}


def load_checkpoint(path: str, weight_dtype: str):
    """The one place the sweep loads a checkpoint's model, sampled as its files say (v-pred / zero-SNR)."""
    model = comfy.sd.load_diffusion_model(path, model_options=_model_options(weight_dtype))
    model, note = schedulers.auto_patch(model, path)
    LOG.info("[sd35-workbench] sweep %s: %s", os.path.basename(path), note.replace("\n", "; "))
    return model


def _unload(model) -> None:
    """Take this one model out of the host's memory manager; keep everything else loaded."""
    C.unload_model(model)


def _np(t):
    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else t


def _cond_fingerprint(cond) -> str:
    parts = []
    for c, extra in cond:
        parts.append(_np(c))
        for k in sorted(extra):
            v = extra[k]
            parts += [k, _np(v) if isinstance(v, torch.Tensor) else repr(v)]
    return sweep.fingerprint(*parts)


def _file_identity(path: str) -> list:
    st = os.stat(path)
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns]


def cache_folder() -> str:
    """The render cache: the host's temp folder (emptied when ComfyUI starts)."""
    return os.path.join(folder_paths.get_temp_directory(), "sd35wb-sweep")


class CheckpointSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SD35WB_CheckpointSweep",
            **C.search_aliases("simpletuner", "checkpoint comparison", "xy grid"),
            display_name="Checkpoint Sweep (checkpoints x prompts x seeds)",
            category="SD3.5 Workbench/training",
            description=(
                "Renders every listed diffusion model (a training run's checkpoints) with every prompt and seed, "
                "one model resident at a time and each loaded once, and draws one grid: rows = checkpoints in "
                "numeric step order, columns = prompt x seed (every image of a batched latent), tiles downscaled, "
                "pages when too wide. Interrupted? Queue it again unchanged: what was rendered is reused."
            ),
            inputs=[
                io.String.Input("models", multiline=True, default="",
                                tooltip="diffusion_models names, one per line (the linker's 'models' output, or typed)."),
                io.Conditioning.Input("negative", tooltip="One negative conditioning for every prompt."),
                io.Latent.Input("latent_image", tooltip="Size and batch: every image of the batch is a grid column."),
                io.Vae.Input("vae"),
                io.String.Input("prompts", multiline=True, default="",
                                tooltip="Positive prompts, one per line (# starts a comment): the ones the run was trained "
                                        "for and a few held out. Needs 'clip'. Empty: the 'positive' input is the one prompt."),
                io.Clip.Input("clip", optional=True, tooltip="Text encoder for 'prompts' (e.g. TripleCLIPLoader for SD3.5)."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="A single ready-made positive conditioning, used when 'prompts' is empty."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="The first seed; the same seeds are rendered on every checkpoint."),
                io.Int.Input("seed_count", default=1, min=1, max=64,
                             tooltip="Seeds per prompt: seed, seed+1, ... (2-4 tell a checkpoint from a lucky seed)."),
                io.Int.Input("steps", default=28, min=1, max=10000,
                             tooltip="Sampling steps per image; 28 is diffusers' SD3 default (Stability's reference uses 50)."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="CFG scale; 5.0 is Stability's SD3.5 Medium reference (4.5 for Large)."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="dpmpp_2m",
                               tooltip="dpmpp_2m as in Stability's SD3.5 reference."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="sgm_uniform",
                               tooltip="sgm_uniform, the usual choice for SD3-family flow models."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1.0 for text-to-image; lower with an encoded image as latent_image (img2img)."),
                io.Combo.Input("weight_dtype", **C.advanced(), options=WEIGHT_DTYPES, default="default",
                               tooltip="As in the core diffusion-model loader (fp8 halves memory per checkpoint)."),
                io.Combo.Input("order", options=["numeric", "as listed"], default="numeric",
                               tooltip="numeric: checkpoint-800 before checkpoint-1600 (not text order)."),
                io.Boolean.Input("validation_images", default=False,
                                 tooltip="Show SimpleTuner's own validation_images/ (step_N_<name>_WxH.png) of each "
                                         "checkpoint's step beside its row; found through the linker's links."),
                io.Int.Input("max_tile", default=grid.MAX_TILE, min=32, max=2048,
                             tooltip="Longer side of a grid tile in pixels; renders are downscaled to it (256 keeps a "
                                     "40 x 8 grid viewable)."),
                io.Int.Input("page_width", default=grid.MAX_PAGE, min=256, max=16384,
                             tooltip="Widest grid page in pixels; more columns continue on further pages (the grid "
                                     "output's batch)."),
            ],
            outputs=[
                io.Image.Output("images", display_name="images",
                                tooltip="Every image at full size: checkpoint by checkpoint, prompt, seed, batch image."),
                io.Image.Output("grid", display_name="grid",
                                tooltip="The labelled grid; one image per page (pages padded to one size)."),
                io.String.Output("labels", display_name="labels", tooltip="The row labels (checkpoints), one per line."),
            ],
        )

    @classmethod
    def execute(cls, models: str, negative, latent_image, vae, prompts: str = "", clip=None, positive=None,
                seed: int = 0, seed_count: int = 1, steps: int = 28, cfg: float = 5.0, sampler_name: str = "dpmpp_2m",
                scheduler: str = "sgm_uniform", denoise: float = 1.0, weight_dtype: str = "default",
                order: str = "numeric", validation_images: bool = False, max_tile: int = grid.MAX_TILE,
                page_width: int = grid.MAX_PAGE) -> io.NodeOutput:
        names = sweep.parse_model_list(models)
        if not names:
            raise ValueError("models: no model names; connect the linker's 'models' output or list diffusion_models names")
        if order == "numeric":
            names = simpletuner.natural_sorted(names)
        bad = [n for n in names if not n.lower().endswith(".safetensors")]
        if bad:
            raise ValueError(f"models: only .safetensors files are loaded, not {', '.join(bad)}")
        paths = {n: folder_paths.get_full_path("diffusion_models", n) for n in names}
        missing = [n for n, p in paths.items() if not p]
        if missing:
            raise ValueError(folders.not_found("models", ", ".join(missing),
                                               {"diffusion_models": folder_paths.get_folder_paths("diffusion_models")},
                                               "Run the SimpleTuner linker (or press Sync now) so they are linked, or fix the names."))
        if prompts.strip():
            texts = sweep.parse_prompt_list(prompts)
            if clip is None:
                raise ValueError("clip: 'prompts' needs a text encoder; connect a CLIP (TripleCLIPLoader for SD3.5), "
                                 "or empty 'prompts' and connect a 'positive' conditioning")
        elif positive is not None:
            texts = None
        else:
            raise ValueError("prompts: the prompt list is empty and no 'positive' is connected; give one prompt per "
                             "line (with a 'clip'), or connect a positive conditioning")
        skipped = sweep.family_problems(paths)
        if len(skipped) == len(names):
            raise ValueError("models: none of them is a diffusion model this sweep can render: " +
                             "; ".join(f"{sweep.model_label(n)}: {why}" for n, why in skipped.items()))
        for n, why in skipped.items():
            LOG.warning("[sd35-workbench] sweep: skipping %s: %s", n, why)
        if texts is not None:
            conds = [clip.encode_from_tokens_scheduled(clip.tokenize(t)) for t in texts]
        else:
            texts, conds = ["(positive input)"], [positive]
        seeds = [seed + k for k in range(seed_count)]
        cells = sweep.plan(names, texts, seeds)
        mm = comfy.model_management
        lat = latent_image["samples"]
        base = [_cond_fingerprint(negative), sweep.fingerprint(_np(lat)), _np(latent_image.get("noise_mask")),
                latent_image.get("batch_index"), steps, cfg, sampler_name, scheduler, denoise, weight_dtype,
                "auto-prediction-1"]
        cond_fp = [_cond_fingerprint(c) for c in conds]
        cache = sweep.RenderCache(cache_folder())
        todo = [c for c in cells if c.model not in skipped]
        pbar = comfy.utils.ProgressBar(len(todo) * steps)
        done = 0
        samples: dict[sweep.Cell, torch.Tensor | str] = {}
        for name in names:
            if name in skipped:
                continue
            mine = [c for c in todo if c.model == name]
            keys = {c: sweep.fingerprint(_file_identity(paths[name]), cond_fp[c.prompt_index], c.seed, *base) for c in mine}
            for c in mine:
                hit = cache.get(keys[c])
                if hit is not None:
                    samples[c] = torch.from_numpy(hit)
                    done += 1
                    pbar.update_absolute(done * steps)
            fresh = [c for c in mine if c not in samples]
            if not fresh:
                continue
            mm.throw_exception_if_processing_interrupted()
            try:
                model = load_checkpoint(paths[name], weight_dtype)
            except Exception as e:  # noqa: BLE001 - one unloadable checkpoint must not stop the sweep
                LOG.warning("[sd35-workbench] sweep: %s did not load: %s", name, e)
                skipped[name] = f"did not load: {type(e).__name__}: {e}"
                done += len(fresh)
                continue
            try:
                x = comfy.sample.fix_empty_latent_channels(model, lat)
                for c in fresh:
                    mm.throw_exception_if_processing_interrupted()  # Cancel between images keeps the finished ones
                    noise = comfy.sample.prepare_noise(x, c.seed, latent_image.get("batch_index"))

                    def callback(step, x0, x_, total, _base=done * steps):
                        pbar.update_absolute(_base + step + 1)

                    out = comfy.sample.sample(
                        model, noise, steps, cfg, sampler_name, scheduler, conds[c.prompt_index], negative, x,
                        denoise=denoise, noise_mask=latent_image.get("noise_mask"), callback=callback,
                        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=c.seed)
                    out = out.detach().float().cpu()
                    cache.put(keys[c], out.numpy())
                    samples[c] = out
                    done += 1
                    pbar.update_absolute(done * steps)
            except (mm.InterruptProcessingException, torch.OutOfMemoryError):
                raise
            except Exception as e:  # noqa: BLE001 - e.g. a checkpoint whose shapes do not fit the conditioning
                LOG.warning("[sd35-workbench] sweep: %s failed while sampling: %s", name, e)
                skipped[name] = f"failed while sampling: {type(e).__name__}: {e}"
                done = sum(1 for c in todo if c in samples) + sum(1 for c in todo if c.model in skipped)
                pbar.update_absolute(done * steps)
            finally:
                _unload(model)
                del model
                mm.cleanup_models_gc()
                mm.soft_empty_cache()
            LOG.info("[sd35-workbench] sweep %d/%d images: %s", done, len(todo), name)
        return io.NodeOutput(*cls._draw(names, texts, seeds, cells, samples, skipped, vae, paths, validation_images,
                                        max_tile, page_width))

    @classmethod
    def _draw(cls, names, texts, seeds, cells, samples, skipped, vae, paths, with_validation, max_tile, page_width):
        decoded = {}
        for c in cells:
            if c in samples:
                im = vae.decode(samples[c])
                decoded[c] = (im.reshape(-1, *im.shape[-3:]) if im.ndim == 5 else im).detach().float().cpu()
        if not decoded:
            raise ValueError("models: no checkpoint rendered: " +
                             "; ".join(f"{sweep.model_label(n)}: {why}" for n, why in skipped.items()))
        batch = max(t.shape[0] for t in decoded.values())
        rows = []
        for n in names:
            row = []
            for i in range(len(texts)):
                for s in seeds:
                    t = decoded.get(sweep.Cell(n, i, texts[i], s))
                    for b in range(batch):
                        row.append(t[b].numpy() if t is not None and b < t.shape[0] else
                                   grid.Note(skipped[n]) if n in skipped and not row else None)
            rows.append(row)
        labels = sweep.labels_for(names)
        cols = sweep.column_labels(texts, seeds, batch)
        if with_validation:
            vlabels, vcells = sweep.validation_columns(labels, [sweep.run_dir_of(paths[n]) for n in names])
            cols += vlabels
            rows = [r + v for r, v in zip(rows, vcells)]
        first = next(iter(decoded.values()))
        pages = grid.sweep_pages(rows, [grid.step_label(s) for s in labels], cols,
                                 grid.tile_size([(first.shape[2], first.shape[1])], max_tile), max_width=page_width)
        grid_t = torch.stack([torch.from_numpy(grid.to_array(p)) for p in grid.same_size(pages)])
        images = torch.cat([decoded[c] for c in cells if c in decoded], dim=0)
        return images, grid_t, "\n".join(labels)


NODES = [CheckpointSweep]
