"""Host tier: the SLG explorer's shared variant pass, the sensitivity map and the explorer node
against core's separate SLG passes on a 24-block SD3.5-Medium-structured model (width 64).

References are written the way core does SLG: ``calc_cond_batch([positive])`` with identity
``("dit", "double_block", i)`` patches (core ``SkipLayerGuidanceSD3``), plain ``CFGGuider`` runs and
our SLG guider's ``separate pass`` implementation. Tolerance 1e-5 on predictions and final latents.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import call, progress_events, run_custom

TOL = 1e-5
STEPS = 6


pytestmark = pytest.mark.usefixtures("one_thread")  # sd35m and conds: tests/host/conftest.py


def mod(host):
    import sys

    return sys.modules[host.nodes.NODE_CLASS_MAPPINGS["SD35WB_SLGLayerExplorer"].__module__]


def latent(host, batch=1, size=64):
    (lat,) = call(host.nodes, "EmptySD3LatentImage", width=size, height=size, batch_size=batch)
    return lat


class BlockRows:
    """Rows every joint block computes per forward (torch hooks on the blocks themselves)."""

    def __init__(self, model):
        dm = model.model.diffusion_model
        self.rows = [0] * len(dm.joint_blocks)
        self.forwards = []
        self.handles = [dm.register_forward_pre_hook(lambda m, a: self.forwards.append(a[0].shape[0]))]
        for j, b in enumerate(dm.joint_blocks):
            self.handles.append(b.register_forward_pre_hook(lambda m, a, j=j: self._add(j, a[1].shape[0])))

    def _add(self, j, n):
        self.rows[j] += n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def with_model(host, model, conds, fn):
    """Call ``fn(inner_model, positive, negative, model_options, x, timestep)`` from inside a real sampling run
    (conds processed and the model loaded by the host), at the schedule's third sigma."""
    import comfy.sample
    import comfy.samplers

    out = {}

    class Probe(comfy.samplers.CFGGuider):
        def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006
            if not out:
                out["r"] = fn(self.inner_model, self.conds["positive"], self.conds["negative"], model_options, x,
                              timestep)
            return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds["negative"],
                                                    self.conds["positive"], self.cfg, model_options=model_options)

    g = Probe(model)
    g.set_conds(*conds)
    g.set_cfg(4.0)
    lat = latent(host)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)[2:4]
    noise = comfy.sample.prepare_noise(lat["samples"], 5)
    g.sample(noise, lat["samples"], comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=5)
    return out["r"]


def separate_skip(model, positive, x, timestep, model_options, layers):
    """Core's SLG pass: the positive alone with identity patches on the skipped blocks."""
    import comfy.model_patcher
    import comfy.samplers

    opts = model_options.copy()
    opts["transformer_options"] = dict(opts.get("transformer_options", {}))
    for i in layers:
        opts = comfy.model_patcher.set_model_options_patch_replace(opts, lambda a, e: a, "dit", "double_block", i)
    (out,) = comfy.samplers.calc_cond_batch(model, [positive], x, timestep, opts)
    return out


# ---------------------------------------------------------------------------------------------
# The shared variant pass


@pytest.mark.parametrize("text, per_call", [("each", 0), ("each", 7), ("7,8,9 | 6 | 10,11 | 0 | 23 | 0,23", 0)])
def test_variant_pass_equals_separate_slg_passes(host, sd35m, conds, text, per_call):
    from sd35wb import slg_explorer as E

    cands = E.parse_candidates(text, 24)
    M = mod(host)

    def both(model, pos, neg, opts, x, t):
        runner = M.VariantPass(sd35m, cands, per_call)
        with BlockRows(sd35m) as log:
            cond, uncond, skips = runner(model, x, t, pos, neg, opts)
        import comfy.samplers

        ref_cond, ref_uncond = comfy.samplers.calc_cond_batch(model, [pos, neg], x, t, opts)
        refs = [separate_skip(model, pos, x, t, opts, c) for c in cands]
        return cond, uncond, skips, ref_cond, ref_uncond, refs, log, runner.calls

    cond, uncond, skips, ref_cond, ref_uncond, refs, log, calls = with_model(host, sd35m, conds, both)
    assert (cond - ref_cond).abs().max().item() <= TOL
    assert (uncond - ref_uncond).abs().max().item() <= TOL
    for c, s, r in zip(cands, skips, refs):
        assert (s - r).abs().max().item() <= TOL, c
        assert (s - cond).abs().max().item() > 1e-4, f"skipping {c} must change the prediction"
    # the work really is shared: exactly the plan's block rows (positive + negative once per call)
    expect = [0] * 24
    order = E.variant_order(cands)
    groups = E.chunk_variants(order, per_call)
    assert calls == len(groups)
    for n, g in enumerate(groups):
        for j in range(24):
            expect[j] += 1 + (n == 0) + sum(E.block_action(cands[k], j) == E.RUN for k in g)
    assert log.rows == expect
    assert log.forwards == [2 + len(g) if n == 0 else 1 + len(g) for n, g in enumerate(groups)]


def test_variant_pass_when_the_host_splits_the_batch(host, sd35m, conds):
    """Under memory pressure the host runs every cond alone: each variant then computes its own
    prefix, exactly a separate SLG pass."""
    from sd35wb import slg_explorer as E

    m = sd35m.clone()
    m.add_object_patch("memory_required", lambda shape, cond_shapes={}: 0 if shape[0] <= 1 else float("inf"))
    cands = E.parse_candidates("3 | 1,2", 24)
    M = mod(host)

    def both(model, pos, neg, opts, x, t):
        with BlockRows(m) as log:
            _, _, skips = M.VariantPass(m, cands, 0)(model, x, t, pos, neg, opts)
        return skips, [separate_skip(model, pos, x, t, opts, c) for c in cands], log

    skips, refs, log = with_model(host, m, conds, both)
    # auto chunking found one variant per call ([pos, neg, v] then [pos, v]); the host then ran each cond alone
    assert log.forwards == [1, 1, 1, 1, 1]
    assert log.rows[0] == 5, "the lone variants computed their own block 0 (the split fallback)"
    for s, r in zip(skips, refs):
        assert (s - r).abs().max().item() <= TOL


# ---------------------------------------------------------------------------------------------
# The sensitivity map


def test_sensitivity_map_numbers_match_separate_passes(host, sd35m, conds):
    import comfy.samplers

    lat = latent(host)
    steps = 10
    with BlockRows(sd35m) as log:
        chart, numbers = call(host.nodes, "SD35WB_SLGSensitivityMap", model=sd35m, positive=conds[0],
                              negative=conds[1], latent_image=lat, seed=5, steps=steps, cfg=4.0, sampler_name="euler",
                              scheduler="simple", start=0.01, end=0.5, gating="steps", probes=2, candidates="each")
    report = json.loads(numbers)
    assert report["probe_steps"] == [2, 4] and report["block_count"] == 24 and len(report["rms"]) == 24
    assert len(log.forwards) == 5, "sampling stops at the last probe (steps 0-4 only)"
    assert chart.shape[0] == 1 and chart.shape[-1] == 3 and chart.shape[2] > 24 * 10

    # reference: record x at the probe sigmas in a plain CFG run, then core's separate passes there
    seen = {}

    class Recorder(comfy.samplers.CFGGuider):
        def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006
            s = float(timestep.reshape(-1)[0])
            if s in report["probe_sigmas"]:
                pos = self.conds["positive"]
                (cond,) = comfy.samplers.calc_cond_batch(self.inner_model, [pos], x, timestep, model_options)
                seen[s] = (cond, [separate_skip(self.inner_model, pos, x, timestep, model_options, [i])
                                  for i in range(24)])
            return super().predict_noise(x, timestep, model_options, seed)

    g = Recorder(sd35m)
    g.set_conds(*conds)
    g.set_cfg(4.0)
    (noise,) = call(host.nodes, "RandomNoise", noise_seed=5)
    sigmas = comfy.samplers.calculate_sigmas(sd35m.get_model_object("model_sampling"), "simple", steps)
    g.sample(noise.generate_noise(lat), lat["samples"], comfy.samplers.sampler_object("euler"), sigmas[:6],
             disable_pbar=True, seed=5)
    rel, cos = np.zeros(24), np.zeros(24)
    for s in report["probe_sigmas"]:
        cond, skips = seen[s]
        c = cond.double().numpy().ravel()
        for i, sk in enumerate(skips):
            k = sk.double().numpy().ravel()
            rel[i] += np.sqrt(np.mean((c - k) ** 2)) / np.sqrt(np.mean(c ** 2)) / 2
            cos[i] += np.dot(c, k) / np.linalg.norm(c) / np.linalg.norm(k) / 2
    assert rel.min() > 1e-4, "every block matters a little, or the comparison proves nothing"
    np.testing.assert_allclose(report["relative_rms"], rel, rtol=1e-3)
    np.testing.assert_allclose(report["cosine"], cos, atol=1e-7)
    assert report["ranking"][0] == str(int(np.argmax(rel)))


# ---------------------------------------------------------------------------------------------
# The explorer




@pytest.mark.parametrize("gating, start, end, sampler", [("steps", 0.25, 0.6, "euler"), ("sigma", 0.2, 0.7, "dpmpp_2m"),
                                                         ("steps", 0.0, 1.0, "euler_ancestral")])
def test_explorer_equals_separate_runs(host, sd35m, conds, gating, start, end, sampler):
    (vae,) = call(host.nodes, "VAELoader", vae_name="taesd3")
    lat = latent(host)
    steps, cands = 8, "7,8,9 | 3 | 10,11"
    with BlockRows(sd35m) as log:
        images, grid, latents, labels, report = call(
            host.nodes, "SD35WB_SLGLayerExplorer", model=sd35m, vae=vae, positive=conds[0], negative=conds[1],
            latent_image=lat, seed=5, steps=steps, cfg=4.0, sampler_name=sampler, scheduler="simple", scale=2.5,
            start=start, end=end, gating=gating, candidates=cands, columns=0)
    assert labels.splitlines() == ["baseline (CFG)", "skip 7,8,9", "skip 3", "skip 10,11"]
    rule = "steps (Stability's rule)" if gating == "steps" else "sigma (core's rule)"
    assert f"sampling: steps {steps}, cfg 4, sampler_name {sampler}, scheduler simple, seed 5" in report
    assert f"SLG for every candidate: scale 2.5, window {start:g}-{end:g} of {rule}" in report
    assert "renders: baseline (plain CFG) + 3 candidate(s): 7, 8, 9 | 3 | 10, 11 of 24 joint blocks" in report
    assert images.shape == (4, 64, 64, 3) and latents["samples"].shape[0] == 4
    assert grid.shape[0] == 1 and grid.shape[1] > 2 * 64 and grid.shape[2] == 2 * 64
    (cfg_guider,) = call(host.nodes, "CFGGuider", model=sd35m, positive=conds[0], negative=conds[1], cfg=4.0)
    base = run_custom(host, sd35m, cfg_guider, lat, steps, sampler=sampler)
    assert (latents["samples"][0] - base[0]).abs().max().item() <= TOL
    for k, layers in enumerate(["7, 8, 9", "3", "10, 11"], start=1):
        (g, _) = call(host.nodes, "SD35WB_SLGGuider", model=sd35m, positive=conds[0], negative=conds[1], cfg=4.0,
                    preset="custom", layers=layers, scale=2.5, start=start, end=end, gating=gating,
                    implementation="separate pass")
        ref = run_custom(host, sd35m, g, lat, steps, sampler=sampler)
        assert (latents["samples"][k] - ref[0]).abs().max().item() <= TOL, layers
        assert (ref - base).abs().max().item() > 1e-3, "SLG must really act in this window"
    # shared steps: before the window every candidate reuses the baseline's model calls
    if start > 0.2:
        assert len(log.forwards) < 4 * steps
    if sampler == "euler_ancestral":
        assert ("batching: one sampling run per render (sampler euler_ancestral draws batch-shaped noise or is not "
                "checked for lock-step)") in report
        return
    # lock-step: the four renders are one batch, so each step is one model call for all of them
    assert ("batching: lock-step: 4 renders in 1 sampling run(s) of up to 4, one batched model call per step for all "
            "renders of a run") in report
    assert len(log.forwards) == steps, log.forwards
    # ... and no more block work than one render at a time (which makes one call per render and step)
    one_by_one = explorer_rows_one_by_one(host, sd35m, vae, conds, lat, steps, sampler, start, end, gating, cands)
    assert sum(log.rows) <= sum(one_by_one.rows), (log.rows, one_by_one.rows)
    assert len(one_by_one.forwards) > 2 * steps


def explorer_rows_one_by_one(host, model, vae, conds, lat, steps, sampler, start, end, gating, cands):
    """The explorer's block rows with lock-step turned off (the path every non-lock-step sampler takes)."""
    E = mod(host).E  # the pack's own module, as the host loaded it
    saved = E.LOCKSTEP_SAMPLERS
    E.LOCKSTEP_SAMPLERS = frozenset()
    try:
        with BlockRows(model) as log:
            *_, report = call(host.nodes, "SD35WB_SLGLayerExplorer", model=model, vae=vae, positive=conds[0],
                              negative=conds[1], latent_image=lat, seed=5, steps=steps, cfg=4.0, sampler_name=sampler,
                              scheduler="simple", scale=2.5, start=start, end=end, gating=gating, candidates=cands,
                              columns=0)
    finally:
        E.LOCKSTEP_SAMPLERS = saved
    assert "batching: one sampling run per render" in report
    return log


def separate_slg_run(host, model, conds, lat, steps, sampler, layers, start, end, gating):
    (g, _) = call(host.nodes, "SD35WB_SLGGuider", model=model, positive=conds[0], negative=conds[1], cfg=4.0,
                  preset="custom", layers=layers, scale=2.5, start=start, end=end, gating=gating,
                  implementation="separate pass")
    return run_custom(host, model, g, lat, steps, sampler=sampler)


@pytest.mark.parametrize("sampler", sorted(__import__("sd35wb.slg_explorer", fromlist=["x"]).LOCKSTEP_SAMPLERS))
def test_every_lockstep_sampler_equals_separate_runs(host, sd35m, conds, sampler):
    """Each sampler the explorer steps in lock-step gives every render its separate run's latent."""
    (vae,) = call(host.nodes, "VAELoader", vae_name="taesd3")
    lat, steps = latent(host), 4
    with progress_events() as progress:
        _, _, latents, _, report = call(
            host.nodes, "SD35WB_SLGLayerExplorer", model=sd35m, vae=vae, positive=conds[0], negative=conds[1],
            latent_image=lat, seed=5, steps=steps, cfg=4.0, sampler_name=sampler, scheduler="simple", scale=2.5,
            start=0.0, end=1.0, gating="sigma", candidates="7,8,9 | 2", columns=0)
    assert "batching: lock-step: 3 renders in 1 sampling run(s)" in report
    assert progress[-1] == (steps, steps) and [v for v, _ in progress] == sorted(v for v, _ in progress)
    # references at KSampler's sigmas, as the explorer takes them (dpm_2 and uni_pc drop the penultimate one)
    import comfy.samplers

    sigmas, samples, noise = mod(host)._prepare(sd35m, lat, 5, steps, sampler, "simple")
    (cfg_guider,) = call(host.nodes, "CFGGuider", model=sd35m, positive=conds[0], negative=conds[1], cfg=4.0)
    guiders = [cfg_guider] + [call(host.nodes, "SD35WB_SLGGuider", model=sd35m, positive=conds[0], negative=conds[1],
                                   cfg=4.0, preset="custom", layers=layers, scale=2.5, start=0.0, end=1.0,
                                   gating="sigma", implementation="separate pass")[0] for layers in ("7, 8, 9", "2")]
    refs = [g.sample(noise, samples, comfy.samplers.sampler_object(sampler), sigmas, disable_pbar=True, seed=5)
            for g in guiders]
    for k, ref in enumerate(refs):
        assert (latents["samples"][k] - ref[0]).abs().max().item() <= TOL, (sampler, k)
    assert (refs[1] - refs[0]).abs().max().item() > 1e-3


def test_lockstep_in_runs_bounded_by_variants_per_call_and_a_split_batch(host, sd35m, conds):
    """variants_per_call 1 steps two renders per run (baseline + 3 candidates: 2 runs), and under memory
    pressure the host runs every cond alone: each skip twin then computes its own prefix. Both still
    equal the separate runs."""
    (vae,) = call(host.nodes, "VAELoader", vae_name="taesd3")
    lat, steps, start, end = latent(host, batch=2), 6, 0.2, 0.8
    cands, layers = "7,8,9 | 3 | 10,11", ("7, 8, 9", "3", "10, 11")
    kw = dict(model=sd35m, vae=vae, positive=conds[0], negative=conds[1], latent_image=lat, seed=5, steps=steps,
              cfg=4.0, sampler_name="dpmpp_2m", scheduler="simple", scale=2.5, start=start, end=end, gating="steps",
              candidates=cands, columns=0)
    _, _, by_two, labels, report = call(host.nodes, "SD35WB_SLGLayerExplorer", variants_per_call=1, **kw)
    assert "batching: lock-step: 4 renders in 2 sampling run(s) of up to 2" in report
    assert labels.splitlines()[:3] == ["baseline (CFG) #0", "baseline (CFG) #1", "skip 7,8,9 #0"]
    split = sd35m.clone()  # one cond chunk (4 lanes x 2 rows) fits, two never do
    split.add_object_patch("memory_required", lambda shape, cond_shapes={}: 0 if shape[0] <= 8 else float("inf"))
    with BlockRows(split) as log:
        _, _, alone, _, report = call(host.nodes, "SD35WB_SLGLayerExplorer", variants_per_call=3,
                                      **{**kw, "model": split})
    assert "batching: lock-step: 4 renders in 1 sampling run(s) of up to 4" in report
    # the window's steps 3 and 4, once the renders differ: positive, negative and skip twins as one call each
    assert max(log.forwards) <= 8 and log.forwards.count(8) >= 6, log.forwards
    (cfg_guider,) = call(host.nodes, "CFGGuider", model=sd35m, positive=conds[0], negative=conds[1], cfg=4.0)
    refs = [run_custom(host, sd35m, cfg_guider, lat, steps, sampler="dpmpp_2m")]
    refs += [separate_slg_run(host, sd35m, conds, lat, steps, "dpmpp_2m", x, start, end, "steps") for x in layers]
    for k, ref in enumerate(refs):
        for got in (by_two, alone):
            assert (got["samples"][2 * k:2 * k + 2] - ref).abs().max().item() <= TOL, k


def test_explorer_with_scale_zero_renders_the_baseline_for_every_candidate(host, sd35m, conds):
    (vae,) = call(host.nodes, "VAELoader", vae_name="taesd3")
    lat = latent(host, batch=2)
    with progress_events() as progress:
        images, grid, latents, labels, report = call(
            host.nodes, "SD35WB_SLGLayerExplorer", model=sd35m, vae=vae, positive=conds[0], negative=conds[1],
            latent_image=lat, seed=5, steps=3, cfg=4.0, sampler_name="euler", scheduler="simple", scale=0.0,
            start=0.0, end=1.0, gating="sigma", candidates="1 | 2", columns=2)
    assert "note: candidates has no effect (no SLG at scale 0)" in report
    # one progress bar for the whole run: 3 renders x 3 steps, counting up once
    assert progress == [(v, 9) for v in range(1, 10)]
    assert images.shape[0] == 6 and labels.splitlines()[:2] == ["baseline (CFG) #0", "baseline (CFG) #1"]
    s = latents["samples"]
    assert torch.equal(s[0:2], s[2:4]) and torch.equal(s[0:2], s[4:6])


# ---------------------------------------------------------------------------------------------
# Bad input, before any sampling


def explorer_kw(model, conds, **over):
    kw = dict(model=model, positive=conds[0], negative=conds[1], latent_image=None, seed=1, steps=4, cfg=4.0,
              sampler_name="euler", scheduler="simple", scale=2.5, start=0.01, end=0.2, gating="steps",
              candidates="1 | 2", columns=0)
    kw.update(over)
    return kw


@pytest.mark.parametrize("node", ["SD35WB_SLGLayerExplorer", "SD35WB_SLGSensitivityMap"])
@pytest.mark.parametrize("candidates, match", [
    ("1 | 7", r"^candidates: block 7 does not exist; this model has 4 joint blocks, so valid layers are 0-3"),
    ("", r"^candidates: the candidate list is empty"),
])
def test_bad_candidates_are_named_before_sampling(host, conds, node, candidates, match):
    (model,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")
    kw = explorer_kw(model, conds, candidates=candidates, latent_image=latent(host))
    if node == "SD35WB_SLGSensitivityMap":
        for k in ("scale", "columns"):
            kw.pop(k)
        kw["probes"] = 1
    else:
        (kw["vae"],) = call(host.nodes, "VAELoader", vae_name="taesd3")
    with BlockRows(model) as log, pytest.raises(ValueError, match=match):
        call(host.nodes, node, **kw)
    assert log.forwards == []


def test_non_mmdit_model_is_refused(host, conds):
    (model,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd15.safetensors", weight_dtype="default")
    (vae,) = call(host.nodes, "VAELoader", vae_name="taesd3")
    with pytest.raises(ValueError, match=r"^model: this SD15 model has no MMDiT joint blocks"):
        call(host.nodes, "SD35WB_SLGLayerExplorer", **explorer_kw(model, conds, vae=vae, latent_image=latent(host)))


def test_map_window_without_steps_is_named(host, sd35m, conds):
    with pytest.raises(ValueError, match=r"^start/end: the SLG window"):
        call(host.nodes, "SD35WB_SLGSensitivityMap", model=sd35m, positive=conds[0], negative=conds[1],
             latent_image=latent(host), seed=1, steps=4, cfg=4.0, sampler_name="euler", scheduler="simple",
             start=0.0, end=0.1, gating="steps", probes=1, candidates="each")
