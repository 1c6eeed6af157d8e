"""SLG layer explorer: find Skip Layer Guidance layers for SD3.5 Large and fine-tunes by looking.

Stability tuned SLG only for SD3.5 Medium (joint blocks 7, 8, 9); users report those break Large,
and a fine-tune moves which blocks carry anatomy. Two nodes:

* **SD3.5 SLG Sensitivity Map** (``SD35WB_SLGSensitivityMap``): samples plain CFG up to one or a
  few steps inside the SLG window and there measures, for every joint block, how far skipping it
  moves the positive prediction (RMS of ``cond - cond_with_block_skipped``, relative to
  RMS(cond), and the cosine): a bar chart and JSON numbers, in about the time of a few steps.
* **SD3.5 SLG Layer Explorer** (``SD35WB_SLGLayerExplorer``): renders the same seed with plain
  CFG and once per candidate layer set, returning the images and one labelled grid.

Both evaluate many skip variants of the positive pass at one input. Every variant is identical to
the positive pass up to its first skipped block, so one batched ``calc_cond_batch`` call carries
the positive, the negative and the variants (sorted by first skipped block) and
``("dit", "double_block", i)`` replace patches compute each block once per distinct prefix: the
guider's fast path (nodes/slg.py) generalised to many variants. Chunks are matched by uuid; a
variant the host split away from its positive computes its own prefix, as a separate pass would.
The explorer's runs share more: until the SLG window opens every candidate follows the baseline
exactly, so those steps are computed once (reused only where the input is bitwise the same), and
at the window's first step all candidates' skip passes come from one shared variant call.

With a sampler that treats every batch row alone and draws no noise (``E.LOCKSTEP_SAMPLERS``), the
baseline and the candidates are stepped together ("lanes" of one batch), so every later step is one
batched model call for all renders instead of one per render: the same block rows, far fewer
calls (the point on a GPU, where a small batch leaves the device idle). Lanes per run are bounded
by the host's memory estimate; other samplers run one render at a time.

Here: the two nodes. The engine: ``_slg_variants`` (many variants in one call), ``_slg_explorer_guiders``
(shared steps, lock-step lanes, the map's guider), ``_slg_explorer_render`` (sampling plumbing and the
two render paths); the numbers and plans: ``sd35wb/slg_explorer.py``.
"""

from __future__ import annotations

import json
import math

import comfy.samplers
import comfy.utils
import torch
from comfy_api.v0_0_2 import io

from ..sd35wb import grid as G
from ..sd35wb import overrides as O
from ..sd35wb import presets as presets_mod
from ..sd35wb import slg as S
from ..sd35wb import slg_explorer as E
from ._slg_explorer_guiders import MapGuider
from ._slg_explorer_render import (
    _check_sampling,
    _lockstep_plan,
    _prepare,
    _Progress,
    _render_lockstep,
    _render_one_by_one,
    _window_sigmas,
)
from ._slg_variants import VariantPass
from .slg import mmdit_block_count

_REF = presets_mod.SLG_STABILITY_MEDIUM
_MEDIUM = presets_mod.VARIANTS["medium"]

CITE = ("SLG (Stability AI's SD3.5 reference, ComfyUI core SkipLayerGuidanceSD3; inspired by Perturbed Attention "
        "Guidance, arXiv 2403.17377) was tuned only for SD3.5 Medium (blocks 7,8,9). ")


def _sampling_inputs(include_scale: bool) -> list:
    out = [
        io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                     tooltip="Noise seed: every render uses the same noise (same as KSampler for this seed)."),
        io.Int.Input("steps", default=_MEDIUM["steps"], min=1, max=10000, tooltip=(
            "Sampling steps of the run (the SLG window is a fraction of them). Stability: Medium 50, Large 40.")),
        io.Float.Input("cfg", default=_MEDIUM["cfg"], min=0.0, max=100.0, step=0.1, round=0.01, tooltip=(
            "CFG scale. Stability's reference: 4.0 for Medium with SLG, 4.5 Large.")),
        io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default=_MEDIUM["sampler_name"],
                       tooltip="Sampler; Stability's reference uses dpmpp_2m."),
        io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default=_MEDIUM["scheduler"],
                       tooltip="Scheduler; sgm_uniform matches the reference's linear timestep spacing."),
    ]
    if include_scale:
        out.append(io.Float.Input("scale", default=_REF["scale"], min=0.0, max=10.0, step=0.1, tooltip=(
            "SLG strength for every candidate: adds (cond - cond with the layers skipped) x scale. Stability 2.5.")))
    out += [
        io.Float.Input("start", default=_REF["start"], min=0.0, max=1.0, step=0.001, tooltip=(
            "Where the SLG window opens (fraction of the run; 0.01 = 1 %). Stability 0.01.")),
        io.Float.Input("end", default=_REF["end"], min=0.0, max=1.0, step=0.001, tooltip=(
            "Where the SLG window closes (fraction of the run). Stability 0.20 of steps, core 0.15 of sigma.")),
        io.Combo.Input("gating", options=list(S.GATINGS), default=_REF["gating"], tooltip=(
            "'steps': Stability's rule (step i of N when start*N < i < end*N). 'sigma': core's rule "
            "(percent_to_sigma(end) <= sigma <= percent_to_sigma(start)).")),
    ]
    return out


_PER_CALL = io.Int.Input("variants_per_call", default=0, min=0, max=256, optional=True, tooltip=(
    "Skip variants batched into one model call with the positive (memory bound); in the explorer also the "
    "candidates stepped together in one sampling run (plus the baseline). 0 = as many as the host's memory estimate "
    "allows. Fewer means less memory and more model calls."))


# ---------------------------------------------------------------------------------------------
# Nodes


class SLGSensitivityMapNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WB_SLGSensitivityMap",
            display_name="SD3.5 SLG Sensitivity Map",
            category="SD3.5 Workbench/SLG explorer",
            description=CITE + "This map shows which joint blocks matter for YOUR model: it samples plain CFG up to "
                        "one or a few steps inside the SLG window and there measures, per block, how much skipping "
                        "it changes the positive prediction (bar: RMS of the change relative to the prediction; "
                        "JSON also has the cosine). Costs about a few sampling steps. Tall bars are blocks SLG acts "
                        "strongly through; try them (and their neighbours) in the SLG Layer Explorer.",
            inputs=[
                io.Model.Input("model", tooltip="An SD3 / SD3.5 model (MMDiT): Medium has 24 joint blocks, Large 38."),
                io.Conditioning.Input("positive", tooltip="The prompt's conditioning; every skip variant is a "
                                                          "pass of this one with blocks skipped."),
                io.Conditioning.Input("negative", tooltip="The negative prompt's conditioning (plain CFG)."),
                io.Latent.Input("latent_image", tooltip="The latent you would sample (EmptySD3LatentImage)."),
                *_sampling_inputs(include_scale=False),
                io.Int.Input("probes", default=1, min=1, max=16, tooltip=(
                    "How many sigmas to measure at, spread evenly over the steps inside the SLG window; the "
                    "numbers are averaged over them. More probes = a steadier map, a little more time.")),
                io.String.Input("candidates", default=E.EACH, tooltip=(
                    "\"each\": every single joint block. Or groups separated by |, e.g. \"7,8,9 | 6 | 10,11\".")),
                _PER_CALL,
            ],
            outputs=[
                io.Image.Output("chart", display_name="chart",
                                tooltip="Bar chart: per block, RMS(cond - cond skipped) / RMS(cond)."),
                io.String.Output("numbers", display_name="numbers", tooltip=(
                    "JSON: rms, relative_rms, cosine per candidate (averaged and per probe), the probe steps and "
                    "sigmas, and the ranking.")),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed: int, steps: int, cfg: float, sampler_name: str,
                scheduler: str, start: float, end: float, gating: str, probes: int, candidates: str,
                variants_per_call: int = 0) -> io.NodeOutput:
        block_count = mmdit_block_count(model)
        cands = E.parse_candidates(candidates, block_count)
        S.validate_window(start, end, gating)
        _check_sampling(sampler_name, scheduler)
        sigmas, samples, noise = _prepare(model, latent_image, seed, steps, sampler_name, scheduler)
        schedule = [float(s) for s in sigmas]
        s_start, s_end = _window_sigmas(model, start, end, gating)
        probe = E.probe_steps(schedule, start, end, gating, probes, s_start, s_end)

        guider = MapGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        guider.set_map(VariantPass(model, cands, variants_per_call), [schedule[i] for i in probe])
        progress = _Progress(model, probe[-1] + 1)
        try:
            guider.sample(noise, samples, comfy.samplers.sampler_object(sampler_name), sigmas[:probe[-1] + 2],
                          denoise_mask=latent_image.get("noise_mask"), callback=progress.callback,
                          disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        except MapGuider.Done:
            progress.pbar.update_absolute(progress.total, progress.total)
        if len(guider.results) != len(probe):
            raise RuntimeError(f"the sampler never called the model at the probe sigmas {probe}; use a sampler that "
                               "evaluates at the schedule's sigmas (euler, dpmpp_2m)")
        per_probe = [E.sensitivity(cond.detach().float().cpu().numpy(), [s.detach().float().cpu().numpy() for s in skips])
                     for _, cond, skips in guider.results]
        report = E.map_report(cands, per_probe, probe, [r[0] for r in guider.results], block_count)
        chart = E.bar_chart(report["relative_rms"], report["labels"],
                            f"SLG sensitivity: {block_count} joint blocks, skip one candidate at a time",
                            f"probe step(s) {', '.join(str(s) for s in probe)} of {steps} "
                            f"(sigma {', '.join(f'{r[0]:.3g}' for r in guider.results)}); "
                            f"most sensitive: {', '.join(report['ranking'][:3])}")
        image = torch.from_numpy(G.to_array(chart))[None]
        return io.NodeOutput(image, json.dumps(report))


class SLGLayerExplorerNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WB_SLGLayerExplorer",
            display_name="SD3.5 SLG Layer Explorer",
            category="SD3.5 Workbench/SLG explorer",
            description=CITE + "This node renders one seed with plain CFG and once per candidate layer set, and "
                        "returns the images and one labelled grid (baseline first), so you can pick SLG layers for "
                        "Large or a fine-tune by looking. Steps before the SLG window are computed once for every "
                        "candidate, all candidates' first SLG step shares one batched call, and with a sampler that "
                        "draws no noise (euler, dpmpp_2m, ...) all renders step together as one batch: one model call "
                        "per step for all of them. Same result as separate SLG runs.",
            inputs=[
                io.Model.Input("model", tooltip="An SD3 / SD3.5 model (MMDiT): Medium has 24 joint blocks, Large 38."),
                io.Vae.Input("vae", tooltip="Decodes every render for the images and the grid."),
                io.Conditioning.Input("positive", tooltip="The prompt's conditioning; every skip variant is a "
                                                          "pass of this one with blocks skipped."),
                io.Conditioning.Input("negative", tooltip="The negative prompt's conditioning (plain CFG)."),
                io.Latent.Input("latent_image", tooltip="The latent to sample (EmptySD3LatentImage)."),
                *_sampling_inputs(include_scale=True),
                io.String.Input("candidates", default="7,8,9 | 6 | 10,11", tooltip=(
                    "Layer sets to try, separated by |: \"7,8,9 | 6 | 10,11\" renders three SLG images (skip 7,8,9; "
                    "skip 6; skip 10,11). \"each\" = every single joint block (24 renders on Medium, 38 on Large: "
                    "run the Sensitivity Map first to narrow it down).")),
                io.Int.Input("columns", default=0, min=0, max=64, tooltip="Grid columns; 0 = about square."),
                _PER_CALL,
            ],
            outputs=[
                io.Image.Output("images", display_name="images",
                                tooltip="Every render, baseline (plain CFG) first, then each candidate."),
                io.Image.Output("grid", display_name="grid",
                                tooltip="One labelled grid of all renders (baseline first)."),
                io.Latent.Output("latents", display_name="latents", tooltip="The renders' latents, in the same order."),
                io.String.Output("labels", display_name="labels", tooltip="One label per render, one per line."),
                # Appended as the last output: saved workflows link outputs by index.
                io.String.Output("report", display_name="report", tooltip=(
                    "What ran: sampling values, the SLG window and scale, each candidate's layers and how many steps "
                    "all renders shared. Also shown on the node.")),
            ],
        )

    @classmethod
    def execute(cls, model, vae, positive, negative, latent_image, seed: int, steps: int, cfg: float,
                sampler_name: str, scheduler: str, scale: float, start: float, end: float, gating: str,
                candidates: str, columns: int, variants_per_call: int = 0) -> io.NodeOutput:
        block_count = mmdit_block_count(model)
        cands = E.parse_candidates(candidates, block_count)
        S.validate_window(start, end, gating)
        _check_sampling(sampler_name, scheduler)
        sigmas, samples, noise = _prepare(model, latent_image, seed, steps, sampler_name, scheduler)
        lanes = [(), *cands]  # the baseline first
        per_run, why = _lockstep_plan(model, samples, sampler_name, scale, len(lanes), variants_per_call)
        sampler = comfy.samplers.sampler_object(sampler_name)
        mask = latent_image.get("noise_mask")
        if per_run > 1:
            latents, shared_steps, how = _render_lockstep(model, positive, negative, samples, noise, mask, seed, cfg,
                                                          sampler, sigmas, cands, scale, start, end, gating, lanes,
                                                          per_run, variants_per_call)
        else:
            latents, shared_steps = _render_one_by_one(model, positive, negative, samples, noise, mask, seed, cfg,
                                                       sampler, sigmas, cands, scale, start, end, gating,
                                                       variants_per_call)
            how = f"one sampling run per render ({why})"
        labels = ["baseline (CFG)"] + [E.candidate_label(c) for c in cands]
        batch = samples.shape[0]
        if batch > 1:
            labels = [f"{lab} #{i}" for lab in labels for i in range(batch)]
        images = []
        for lat in latents:
            img = vae.decode(lat)
            if img.ndim == 5:  # video VAEs decode a time axis
                img = img.reshape(-1, *img.shape[-3:])
            images.append(img)
        images = torch.cat(images)
        cols = columns or math.ceil(math.sqrt(len(images)))
        grid = G.labelled_strip([im.detach().float().cpu().numpy() for im in images], labels, columns=cols)
        out = latent_image.copy()
        out.pop("noise_mask", None)
        out.pop("batch_index", None)
        out["samples"] = torch.cat(latents)
        report = "\n".join([
            "SD3.5 SLG Layer Explorer",
            f"sampling: steps {steps}, cfg {cfg:g}, sampler_name {sampler_name}, scheduler {scheduler}, seed {seed}",
            "SLG for every candidate: " + S.describe_window({"scale": scale, "start": start, "end": end,
                                                              "gating": gating}),
            f"renders: baseline (plain CFG) + {len(cands)} candidate(s): "
            + " | ".join(S.format_layers(c) for c in cands) + f" of {block_count} joint blocks",
            f"shared: {shared_steps} model call(s) before the SLG window computed once for every render",
            f"batching: {how}",
            *O.report_lines("SD35WB_SLGLayerExplorer", {"scale": float(scale), "candidates": candidates}, {}, set()),
        ])
        return io.NodeOutput(images, torch.from_numpy(G.to_array(grid))[None], out, "\n".join(labels), report,
                             ui={"text": [report]})


NODES = [SLGSensitivityMapNode, SLGLayerExplorerNode]
