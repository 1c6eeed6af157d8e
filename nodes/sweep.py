"""Checkpoint sweep node: checkpoints x prompts x seeds on one labelled grid, one model resident at a time.

Node: SD35WB_CheckpointSweep. Plain logic: the sd35wb/sweep package (prompt lists, the plan, labels, family
check, SimpleTuner validation images, the render cache that makes an interrupted sweep resume) and
sd35wb/grid.py (the paged grid). The CLI twin over the HTTP API is ``python -m sd35wb.sweep``.
"""

from __future__ import annotations

import json
import logging
import os

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths
import torch
from comfy_api.v0_0_2 import io

from ..sd35wb import folders, grid, scoreboard, scores, simpletuner, sweep
from ..sd35wb import overrides as O
from ..sd35wb import slg as S
from . import _compat as C
from . import _lora, schedulers
from . import scores as scores_node
from . import slg as slg_node

LOG = logging.getLogger("sd35-workbench")
WEIGHT_DTYPES = C.weight_dtype_options()
SLG_CHOICES = ["off", *(n for n in slg_node.PRESET_NAMES if n not in ("off", "custom"))]
SLG_REFERENCE = "SD3.5 Medium (Stability reference)"  # what slg_* axes start from with slg off


def load_checkpoint(path: str, weight_dtype: str):
    """The one place the sweep loads a checkpoint's model, sampled as its files say (v-pred / zero-SNR)."""
    model = comfy.sd.load_diffusion_model(path, model_options=C.weight_dtype_model_options(weight_dtype))
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


def _axis_specs() -> dict[str, sweep.InputSpec]:
    """The settings the node's ``axes`` can sweep, with the same limits as their widgets."""
    return {"cfg": sweep.InputSpec("FLOAT", 0.0, 100.0), "steps": sweep.InputSpec("INT", 1, 10000),
            "sampler_name": sweep.InputSpec("COMBO", options=tuple(comfy.samplers.KSampler.SAMPLERS)),
            "scheduler": sweep.InputSpec("COMBO", options=tuple(comfy.samplers.KSampler.SCHEDULERS)),
            "denoise": sweep.InputSpec("FLOAT", 0.0, 1.0),
            "slg_layers": sweep.InputSpec("STRING"), "slg_scale": sweep.InputSpec("FLOAT", 0.0, 10.0),
            "slg_start": sweep.InputSpec("FLOAT", 0.0, 1.0), "slg_end": sweep.InputSpec("FLOAT", 0.0, 1.0)}


def resolve_slg(preset: str, settings, swept: list[sweep.Axis]) -> dict | None:
    """The SLG values every cell starts from (an slg_* axis then replaces its own), through the SLG
    sampler's own presets; None when no cell gets SLG. With preset 'off' and an slg_* axis, Stability's
    Medium reference is the start, so 'slg_scale=0,2.5' compares plain CFG with that SLG."""
    slg_node._check_settings(settings)  # noqa: SLF001 - the SLG nodes' own settings check, not a copy
    has_axis = any(a.name.startswith("slg_") for a in swept)
    if preset == "off" and not has_axis:
        return None
    if preset == "from settings" and settings is None:
        raise ValueError("slg: 'from settings' needs the SD3.5 loader's SETTINGS connected to 'settings'; connect "
                         "it, or pick a named preset")
    return S.resolve_slg(SLG_REFERENCE if preset == "off" else preset, {}, settings, slg_node.PRESETS)


def slg_line(preset: str, base: dict | None, swept) -> str:
    if base is None:
        return "slg: off (plain CFG)"
    shown = ", ".join(f"{k} {sweep.format_value(v)}" + (" (swept in axes)" if any(a.name == f"slg_{k}" for a in swept)
                                                         else "") for k, v in base.items())
    return f"slg: {preset}: {shown}" + (f" ({SLG_REFERENCE}, for the slg axes)" if preset == "off" else "")


def cell_slg(base: dict | None, axes) -> dict | None:
    """One cell's SLG values, or None when it runs plain CFG (scale 0 or no layers)."""
    if base is None:
        return None
    p = {**base, **{k[4:]: v for k, v in axes if k.startswith("slg_")}}
    return p if p["scale"] > 0 and str(p["layers"]).strip() else None


def parse_node_axes(text: str) -> list[sweep.Axis]:
    specs = _axis_specs()
    out = []
    for name, raw in sweep.parse_axes_text(text):
        if name not in specs:
            raise ValueError(f"axes: {name!r} is not a setting this node sweeps; use {', '.join(specs)} "
                             "(e.g. cfg=3.5,4.5; steps=28,40)")
        values = tuple(dict.fromkeys(sweep.coerce(v, specs[name], f"axes: {name}") for v in raw))
        out.append(sweep.Axis(name, values))
    return out


def _base_identity(model) -> list:
    """A cheap identity of the base model a LoRA sweep patches: its class, its patches, and the first
    values of a few of its weights (so another base never reuses this one's cached renders)."""
    sd = model.model.state_dict()
    keys = sorted(sd)
    return [type(model.model).__name__, sorted(map(str, getattr(model, "patches", {}).keys()))[:8],
            *[_np(sd[k].flatten()[:4096]) for k in keys[:2] + keys[-2:]]]


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
                io.Vae.Input("vae", tooltip="Decodes every render (for SD3.5, the VAE inside sd3.5_medium.safetensors)."),
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
                # Appended, and optional: saved workflows and API prompts from before keep their widget order and validate.
                io.Model.Input("model", optional=True,
                               tooltip="A LoRA run: connect the base model here (e.g. UNETLoader with "
                                       "sd3.5_medium.safetensors) and list the run's LoRA files (models/loras, the "
                                       "linker's 'loras' output) in 'models'. The base is loaded once; each LoRA is "
                                       "loaded as LoraLoaderModelOnly does and kept unmerged (a side branch per "
                                       "layer), so switching LoRAs rewrites no weights. Not connected: 'models' are "
                                       "full checkpoints."),
                io.String.Input("strengths", default="1.0", optional=True,
                                tooltip="LoRA sweeps only: the LoRA strengths to render, e.g. 0.6, 0.8, 1.0 (one grid "
                                        "row per LoRA x strength; 0 renders the base model)."),
                io.String.Input("axes", multiline=True, default="", optional=True,
                                tooltip="More settings to compare, as grid columns: e.g. 'cfg=3.5,4.5; steps=28,40; "
                                        "sampler_name=euler,dpmpp_2m; slg_scale=0,2.5'. Sweepable: cfg, steps, sampler_name, "
                                        "scheduler, denoise, slg_scale, slg_layers (blocks by spaces: "
                                        "slg_layers=7 8 9, 6 7), slg_start, slg_end. A swept setting replaces its "
                                        "widget's value; the report says so."),
                io.Int.Input("max_images", **C.advanced(), default=sweep.DEFAULT_MAX_IMAGES, min=1, max=100000, optional=True,
                             tooltip="A plan of more images than this is refused before anything renders (the "
                                     "report and the error say how many); raise it for a bigger sweep."),
                io.Combo.Input("slg", options=SLG_CHOICES, default="off", optional=True, tooltip=(
                    "Skip Layer Guidance for every render (SD3 / SD3.5 only), through the SLG sampler's own presets "
                    "and guider: 'off' plain CFG; 'from settings' the SD3.5 loader's recommendation for the "
                    "variant (connect 'settings'); or a named preset. Other values go in 'axes': slg_scale, "
                    "slg_layers, slg_start, slg_end (with 'off', from Stability's Medium reference), e.g. "
                    "'slg_scale=0, 2.5' or 'slg_layers=7 8 9, 6 7'.")),
                slg_node.SETTINGS.Input("settings", optional=True, tooltip=(
                    "The SD3.5 loader's SETTINGS, for slg 'from settings' (the SLG values only; the sampling "
                    "widgets here stay what they show).")),
                scores_node.SCORER.Input("scorer", optional=True, tooltip=(
                    "The Sweep Scores node: every render is scored (CLIP prompt adherence, memorisation, seed "
                    "diversity, drift on '[held out]' prompts), the scores go beside each grid row, into the "
                    "'scores' JSON and the 'scoreboard' picture, and the report names the recommended checkpoint.")),
            ],
            outputs=[
                io.Image.Output("images", display_name="images",
                                tooltip="Every image at full size: checkpoint by checkpoint, prompt, seed, batch image."),
                io.Image.Output("grid", display_name="grid",
                                tooltip="The labelled grid; one image per page (pages padded to one size)."),
                io.String.Output("labels", display_name="labels", tooltip="The row labels (checkpoints), one per line."),
                io.String.Output("report", display_name="report",
                                 tooltip="The plan (images, model loads, LoRA patches), the settings used, every "
                                         "swept value and why a row failed."),
                io.String.Output("scores", display_name="scores",
                                 tooltip="With a scorer: every row's scores, the thresholds and the recommended "
                                         "checkpoint, as JSON (the CLI writes the same next to its grid)."),
                io.Image.Output("scoreboard", display_name="scoreboard",
                                tooltip="With a scorer: every score against training step, one panel per score, "
                                        "strengths as lines, the base dashed, the recommended checkpoint marked."),
                io.String.Output("scores_csv", display_name="scores_csv",
                                 tooltip="With a scorer: the same scores as CSV, one line per row (for a spreadsheet; "
                                         "the CLI writes it next to its grid)."),
            ],
        )

    @classmethod
    def execute(cls, models: str, negative, latent_image, vae, prompts: str = "", clip=None, positive=None,
                seed: int = 0, seed_count: int = 1, steps: int = 28, cfg: float = 5.0, sampler_name: str = "dpmpp_2m",
                scheduler: str = "sgm_uniform", denoise: float = 1.0, weight_dtype: str = "default",
                order: str = "numeric", validation_images: bool = False, max_tile: int = grid.MAX_TILE,
                page_width: int = grid.MAX_PAGE, model=None, strengths: str = "1.0", axes: str = "",
                max_images: int = sweep.DEFAULT_MAX_IMAGES, slg: str = "off", settings=None,
                scorer=None) -> io.NodeOutput:
        lora = model is not None
        folder = "loras" if lora else "diffusion_models"
        names = sweep.parse_model_list(models)
        if not names:
            raise ValueError("models: no model names; connect the linker's 'models' (or 'loras', with a base 'model') "
                             "output or list file names")
        if order == "numeric":
            names = simpletuner.natural_sorted(names)
        base_name = getattr(scorer, "base", None) if not lora else None
        if base_name:  # a full fine-tune's base: the first row, the reference of drift
            names = [base_name] + [n for n in names if n != base_name]
        bad = [n for n in names if not n.lower().endswith(".safetensors")]
        if bad:
            raise ValueError(f"models: only .safetensors files are loaded, not {', '.join(bad)}")
        paths = {n: folder_paths.get_full_path(folder, n) for n in names}
        missing = [n for n, p in paths.items() if not p]
        if missing:
            hint = ("With a base 'model' connected these are LoRA files; disconnect 'model' to sweep full checkpoints. "
                    if lora else "")
            raise ValueError(folders.not_found("models", ", ".join(missing), {folder: folder_paths.get_folder_paths(folder)},
                                               hint + "Run the SimpleTuner linker (or press Sync now) so they are "
                                               "linked, or fix the names."))
        weights = sweep.parse_strengths(strengths, "strengths") if lora else None
        swept = parse_node_axes(axes)
        held = []
        if prompts.strip():
            texts, held = scores.split_held_out(sweep.parse_prompt_list(prompts))
            if clip is None:
                raise ValueError("clip: 'prompts' needs a text encoder; connect a CLIP (TripleCLIPLoader for SD3.5), "
                                 "or empty 'prompts' and connect a 'positive' conditioning")
        elif positive is not None:
            texts = None
        else:
            raise ValueError("prompts: the prompt list is empty and no 'positive' is connected; give one prompt per "
                             "line (with a 'clip'), or connect a positive conditioning")
        seeds = [seed + k for k in range(seed_count)]
        cells = sweep.plan(names, texts or ["(positive input)"], seeds, weights, swept)
        slg_base = resolve_slg(slg, settings, swept)
        for combo in dict.fromkeys(c.axes for c in cells):
            p = cell_slg(slg_base, combo)
            if p is not None:
                try:
                    S.validate_window(p["start"], p["end"], p["gating"])
                except ValueError as e:
                    raise ValueError(f"slg: {e} (the slg preset, or the slg_start / slg_end axes)") from None
                if lora:  # the base is here: a wrong layer list fails the node now, not every row
                    try:
                        slg_node.build_guider(model, [], [], cfg, "custom", p["layers"], p["scale"], p["start"],
                                              p["end"], p["gating"], 0.0, "batched")
                    except ValueError as e:
                        raise ValueError(f"slg: {e} (the slg preset, slg_layers or an slg_layers axis)") from None
        size = sweep.plan_size(cells, lora, latent_image["samples"].shape[0])
        sweep.check_size(size, max_images, "raise max_images on the node (advanced inputs)")
        skipped = {} if lora else sweep.family_problems(paths)
        if len(skipped) == len(names):
            raise ValueError("models: none of them is a diffusion model this sweep can render: " +
                             "; ".join(f"{sweep.model_label(n)}: {why}" for n, why in skipped.items()))
        for n, why in skipped.items():
            LOG.warning("[sd35-workbench] sweep: skipping %s: %s", n, why)
        if texts is not None:
            conds = [clip.encode_from_tokens_scheduled(clip.tokenize(t)) for t in texts]
        else:
            texts, conds = ["(positive input)"], [positive]
        fixed = dict(steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, denoise=denoise)

        def settings_of(c) -> dict:
            st = {**fixed, **dict(c.axes)}
            st["slg"] = cell_slg(slg_base, c.axes)
            if st["slg"] is None:  # plain CFG keys its renders as before SLG existed
                st = {k: v for k, v in st.items() if not k.startswith("slg")}
            return st

        mm = comfy.model_management
        lat = latent_image["samples"]
        base = [_cond_fingerprint(negative), sweep.fingerprint(_np(lat)), _np(latent_image.get("noise_mask")),
                latent_image.get("batch_index"), weight_dtype, "auto-prediction-1"]
        if lora:
            base.append(sweep.fingerprint(*_base_identity(model)))
        cond_fp = [_cond_fingerprint(c) for c in conds]
        cache = sweep.RenderCache(cache_folder())
        todo = [c for c in cells if c.model not in skipped]
        total = sum(settings_of(c)["steps"] for c in todo)
        pbar = comfy.utils.ProgressBar(max(1, total))
        done_steps = 0
        samples: dict[sweep.Cell, torch.Tensor] = {}
        stats = {"rendered": 0, "reused": 0, "patches": 0, "loads": 0, "branched": 0, "merged": 0}
        for name in names:
            if name in skipped:
                continue
            mine = [c for c in todo if c.model == name]
            keys = {c: sweep.fingerprint(_file_identity(paths[name]), cond_fp[c.prompt_index], c.seed, c.strength,
                                         sorted(settings_of(c).items()), *base) for c in mine}
            for c in mine:
                hit = cache.get(keys[c])
                if hit is not None:
                    samples[c] = torch.from_numpy(hit)
                    stats["reused"] += 1
                    done_steps += settings_of(c)["steps"]
                    pbar.update_absolute(done_steps)
            fresh = [c for c in mine if c not in samples]
            if not fresh:
                continue
            mm.throw_exception_if_processing_interrupted()
            loaded = None
            try:
                if lora:
                    lora_sd = _lora.load(paths[name])
                    match = _lora.check(model, None, lora_sd, name)  # once per file, not per strength
                    if not match.ok():
                        raise _lora.LoraMismatch(_lora.L.mismatch_message(match, "the base model"), match)
                else:
                    loaded = load_checkpoint(paths[name], weight_dtype)
                    stats["loads"] += 1
            except Exception as e:  # noqa: BLE001 - one unloadable checkpoint or LoRA must not stop the sweep
                LOG.warning("[sd35-workbench] sweep: %s did not load: %s", name, e)
                skipped[name] = str(e) if isinstance(e, _lora.LoraMismatch) else f"did not load: {type(e).__name__}: {e}"
                done_steps += sum(settings_of(c)["steps"] for c in fresh)
                pbar.update_absolute(done_steps)
                continue
            try:
                for strength in dict.fromkeys(c.strength for c in fresh):
                    if lora:
                        m, branched, merged = _lora.apply_unmerged(model, lora_sd, strength, name, checked=True)
                        stats["patches"] += m is not model
                        stats["branched"] = max(stats["branched"], branched)
                        stats["merged"] = max(stats["merged"], merged)
                    else:
                        m = loaded
                    x = comfy.sample.fix_empty_latent_channels(m, lat)
                    for c in [c for c in fresh if c.strength == strength]:
                        mm.throw_exception_if_processing_interrupted()  # Cancel between images keeps the finished ones
                        st = settings_of(c)

                        def callback(step, x0, x_, total_steps, _base=done_steps):
                            pbar.update_absolute(_base + step + 1)

                        if st.get("slg"):
                            p = st["slg"]
                            guider, _ = slg_node.build_guider(m, conds[c.prompt_index], negative, st["cfg"], "custom",
                                                           p["layers"], p["scale"], p["start"], p["end"],
                                                           p["gating"], 0.0, "batched")
                            out = slg_node.sample_with_guider(guider, m, latent_image, c.seed, st["steps"],
                                                              st["sampler_name"], st["scheduler"], st["denoise"],
                                                              callback)
                        else:
                            noise = comfy.sample.prepare_noise(x, c.seed, latent_image.get("batch_index"))
                            out = comfy.sample.sample(
                                m, noise, st["steps"], st["cfg"], st["sampler_name"], st["scheduler"],
                                conds[c.prompt_index], negative, x, denoise=st["denoise"],
                                noise_mask=latent_image.get("noise_mask"), callback=callback,
                                disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=c.seed)
                        out = out.detach().float().cpu()
                        cache.put(keys[c], out.numpy())
                        samples[c] = out
                        stats["rendered"] += 1
                        done_steps += st["steps"]
                        pbar.update_absolute(done_steps)
                    del m
            except (mm.InterruptProcessingException, torch.OutOfMemoryError):
                raise
            except Exception as e:  # noqa: BLE001 - e.g. a checkpoint whose shapes do not fit the conditioning
                LOG.warning("[sd35-workbench] sweep: %s failed while sampling: %s", name, e)
                skipped[name] = f"failed while sampling: {type(e).__name__}: {e}"
                done_steps = sum(settings_of(c)["steps"] for c in todo if c in samples or c.model in skipped)
                pbar.update_absolute(done_steps)
            finally:
                if loaded is not None:  # the sweep's own checkpoint; a LoRA sweep's base is the user's
                    _unload(loaded)
                    del loaded
                    mm.cleanup_models_gc()
                    mm.soft_empty_cache()
            LOG.info("[sd35-workbench] sweep %d/%d images: %s", len(samples), len(todo), name)
        given = {"slg": slg, "axes": axes, "prompts": prompts,
                 **({"strengths": strengths} if strengths.strip() not in ("", "1.0", "1") else {}),
                 **({"weight_dtype": weight_dtype} if weight_dtype != "default" else {})}
        connected = {n for n, v in (("model", model), ("settings", settings), ("positive", positive), ("clip", clip))
                     if v is not None}
        report = cls._report(size, lora, names, weights, swept, fixed, skipped, stats, len(seeds), len(texts),
                             [slg_line(slg, slg_base, swept),
                              *O.report_lines("SD35WB_CheckpointSweep", given, {}, connected)])
        decoded = cls._decode(cells, samples, vae, skipped)
        doc, notes, board = None, None, None
        if scorer is not None:
            prompted = bool(prompts.strip())  # else texts is the placeholder of the 'positive' input: no CLIP score
            doc = score_sweep(scorer, names, cells, decoded, texts if prompted else None, held, lora, base_name, paths)
            report += "\n" + "\n".join(scores.report_lines(doc))
            notes = {(r["model"], r["strength"]): scoreboard.row_note(r) for r in doc["rows"]}
            board = torch.from_numpy(grid.to_array(scoreboard.draw_scoreboard(doc)))[None]
        images, grid_t, labels = cls._draw(names, texts, seeds, cells, decoded, skipped, paths, validation_images,
                                           max_tile, page_width, swept, notes)
        return io.NodeOutput(images, grid_t, labels, report, json.dumps(doc) if doc else "",
                             board if board is not None else torch.zeros(1, 64, 64, 3),
                             scoreboard.scores_csv(doc) if doc else "", ui={"text": [report]})

    @staticmethod
    def _report(size, lora, names, weights, swept, fixed, skipped, stats, n_seeds, n_prompts, extra=()) -> str:
        what = "LoRA checkpoints" if lora else "checkpoints"
        parts = [f"{len(names)} {what}"] + ([f"{len(weights)} strengths"] if weights else [])
        parts += [f"{n_prompts} prompts", f"{n_seeds} seeds"] + [f"{len(a.values)} {a.name}" for a in swept]
        lines = [f"{size.describe()}: {' x '.join(parts)}"]
        if lora:
            lines.append(f"base model: the connected 'model', loaded once; {stats['patches']} LoRA patch(es) applied "
                         f"on copies (strength 0 = the base itself)")
            if stats["branched"] or stats["merged"]:
                lines.append(f"LoRA layers: {stats['branched']} unmerged (a rank-r side branch each: the base weights are "
                             f"never rewritten, so a switch costs no re-patch), {stats['merged']} merged by ComfyUI "
                             f"(LoCon, DoRA, bias and other non-plain patches)")
        else:
            lines.append(f"checkpoint loads this run: {stats['loads']} (one at a time, each unloaded after its images)")
        sw = {a.name for a in swept}
        lines.append("settings: " + ", ".join(f"{k} {sweep.format_value(v)}" + (" (widget; swept in axes)" if k in sw else "")
                                              for k, v in fixed.items()))
        lines += extra
        for a in swept:
            lines.append(f"axis {a.name}: {', '.join(map(sweep.format_value, a.values))}")
        lines.append(f"rendered {stats['rendered']}, reused from the render cache {stats['reused']}")
        for n, why in skipped.items():
            lines.append(f"row {sweep.model_label(n)}: {why}")
        return "\n".join(lines)

    @staticmethod
    def _decode(cells, samples, vae, skipped) -> dict:
        decoded = {}
        for c in cells:
            if c in samples:
                im = vae.decode(samples[c])
                decoded[c] = (im.reshape(-1, *im.shape[-3:]) if im.ndim == 5 else im).detach().float().cpu()
        if not decoded:
            raise ValueError("models: no checkpoint rendered: " +
                             "; ".join(f"{sweep.model_label(n)}: {why}" for n, why in skipped.items()))
        return decoded

    @classmethod
    def _draw(cls, names, texts, seeds, cells, decoded, skipped, paths, with_validation, max_tile, page_width,
              swept=(), notes=None):
        batch = max(t.shape[0] for t in decoded.values())
        row_keys = list(dict.fromkeys(c.row for c in cells))
        combos = list(dict.fromkeys(c.axes for c in cells))
        by = {(c.row, c.prompt_index, c.seed, c.axes): c for c in cells}
        rows = []
        for rk in row_keys:
            row = []
            for i in range(len(texts)):
                for s in seeds:
                    for a in combos:
                        t = decoded.get(by.get((rk, i, s, a)))
                        for b in range(batch):
                            row.append(t[b].numpy() if t is not None and b < t.shape[0] else
                                       grid.Note(skipped[rk[0]]) if rk[0] in skipped and not row else None)
            rows.append(row)
        labels = dict(zip(names, sweep.labels_for(names)))
        row_labels = [labels[n] for n, _ in row_keys]
        cols = sweep.column_labels(texts, seeds, batch, list(swept))
        if with_validation:
            vlabels, vcells = sweep.validation_columns(row_labels, [sweep.run_dir_of(paths[n]) for n, _ in row_keys])
            cols += vlabels
            rows = [r + v for r, v in zip(rows, vcells)]
        first = next(iter(decoded.values()))
        pages = grid.sweep_pages(rows, [sweep.row_label(lb, st) for lb, (_, st) in zip(row_labels, row_keys)], cols,
                                 grid.tile_size([(first.shape[2], first.shape[1])], max_tile), max_width=page_width,
                                 row_notes=[notes.get(rk, "") for rk in row_keys] if notes else None)
        grid_t = torch.stack([torch.from_numpy(grid.to_array(p)) for p in grid.same_size(pages)])
        images = torch.cat([decoded[c] for c in cells if c in decoded], dim=0)
        text = [lb if st is None else f"{lb} @ {sweep.format_value(st)}" for lb, (_, st) in zip(row_labels, row_keys)]
        return images, grid_t, "\n".join(text)


NODES = [CheckpointSweep]


def score_sweep(scorer, names, cells, decoded, texts, held, lora, base_name, paths) -> dict:
    """Score every decoded render (one progress bar), then drop the scoring models: the scores document."""
    labels = dict(zip(names, sweep.labels_for(names)))
    rows, seen = [], set()
    for c in cells:
        if c.row in seen:
            continue
        seen.add(c.row)
        rows.append(scores.Row(c.model, labels[c.model], sweep.checkpoint_step(labels[c.model]), c.strength,
                               base=(c.strength == 0) if lora else c.model == base_name))
    run_dir = next((d for d in (sweep.run_dir_of(paths[n]) for n in names) if d is not None), None)
    scorer.find_training(run_dir)
    todo = [c for c in cells if c in decoded]
    total = sum(decoded[c].shape[0] for c in todo)
    pbar = comfy.utils.ProgressBar(max(1, total))
    samples, done = [], 0
    try:
        for c in todo:
            comfy.model_management.throw_exception_if_processing_interrupted()
            ims = decoded[c]
            prompt = texts[c.prompt_index] if texts is not None else None
            got = scorer.score(ims, [prompt or ""] * ims.shape[0], clip=prompt is not None, offload=False)
            for b, o in enumerate(got):
                samples.append(scores.Sample(c.row, c.prompt_index, c.seed, c.axes, b,
                                             held[c.prompt_index] if held else False, o.get("clip"),
                                             o.get("memorisation"), o.get("nearest"), o.get("look")))
            done += ims.shape[0]
            pbar.update_absolute(done)
    finally:
        scorer.close()
    return scores.score_doc(rows, samples, scores.Options(dict(scorer.thresholds),
                                                          "DINOv2" if scorer.dino_path else "CLIP image"))


def check_lora_for_model(lora_name: str, model_name: str) -> dict:
    """What ``/sd35wb/lora/check`` answers: whether a LoRA's modules all land on a diffusion model,
    from the two files' headers (no weights read). ValueError names the bad field."""
    lora_path = folder_paths.get_full_path("loras", lora_name) if lora_name else None
    if not lora_path:
        raise ValueError(f"lora: {lora_name!r} is not in models/loras; give a name from the loras list")
    model_path = folder_paths.get_full_path("diffusion_models", model_name) if model_name else None
    if not model_path:
        raise ValueError(f"model: {model_name!r} is not in models/diffusion_models; give the base's unet_name")
    m = _lora.check_file(lora_path, model_path)
    msg = m.describe() if m.ok() else _lora.L.mismatch_message(m, model_name)
    return {"ok": m.ok(), "modules": m.modules, "matched": m.matched, "message": msg}


def register_routes(server) -> None:
    import asyncio

    from aiohttp import web

    @server.routes.get("/sd35wb/lora/check")
    async def lora_check(request):
        q = request.rel_url.query
        try:
            doc = await asyncio.get_running_loop().run_in_executor(None, check_lora_for_model, q.get("lora", ""),
                                                                   q.get("model", ""))
        except (ValueError, OSError) as e:  # a name not listed, or a file that cannot be read: the request's
            field = str(e).split(":", 1)[0] if isinstance(e, ValueError) else "lora"
            return web.json_response({"error": str(e), "field": field}, status=400)
        return web.json_response(doc)
