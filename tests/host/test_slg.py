"""Host tier: the SLG guider / sampler give core's and Stability's results on a 24-block SD3.5 model.

Fidelity is checked on the final latent (max abs difference <= 1e-5): batching alone moves
results by about 2e-7 per evaluation, SLG itself by about 4e-3 (asserted too, so a guider that
silently did nothing would fail).
"""

from __future__ import annotations

import pytest
import torch
from helpers import call, run_custom

TOL = 1e-5
STEPS = 6


pytestmark = pytest.mark.usefixtures("one_thread")  # sd35m and conds: tests/host/conftest.py


def latent(host, batch=1, size=64):
    (lat,) = call(host.nodes, "EmptySD3LatentImage", width=size, height=size, batch_size=batch)
    return lat


def run_guider(host, model, guider, lat, seed=5, steps=STEPS, sampler="euler", scheduler="simple"):
    return run_custom(host, model, guider, lat, steps, seed, sampler, scheduler)


def core_slg(host, model, conds, lat, layers="7, 8, 9", scale=3.0, start=0.1, end=0.6, cfg=4.0, **kw):
    (m,) = call(host.nodes, "SkipLayerGuidanceSD3", model=model, layers=layers, scale=scale, start_percent=start,
                end_percent=end)
    (guider,) = call(host.nodes, "CFGGuider", model=m, positive=conds[0], negative=conds[1], cfg=cfg)
    return run_guider(host, m, guider, lat, **kw)


def ours(host, model, conds, lat, layers="7, 8, 9", scale=3.0, start=0.1, end=0.6, cfg=4.0, gating="sigma",
         implementation="batched", **kw):
    (guider, _) = call(host.nodes, "SD35WB_SLGGuider", model=model, positive=conds[0], negative=conds[1], cfg=cfg,
                       preset="custom", layers=layers, scale=scale, start=start, end=end, gating=gating, rescale=0.0,
                       implementation=implementation)
    return run_guider(host, model, guider, lat, **kw)


def plain_cfg(host, model, conds, lat, cfg=4.0, **kw):
    (guider,) = call(host.nodes, "CFGGuider", model=model, positive=conds[0], negative=conds[1], cfg=cfg)
    return run_guider(host, model, guider, lat, **kw)


def maxdiff(a, b):
    return (a - b).abs().max().item()


class ForwardLog:
    """Records the batch size every diffusion-model forward and every joint block sees (torch hooks)."""

    def __init__(self, model, blocks=(0, 12)):
        dm = model.model.diffusion_model
        self.calls, self.block_rows = [], {b: [] for b in blocks}
        self.handles = [dm.register_forward_pre_hook(lambda mod, args: self.calls.append(args[0].shape[0]))]
        for b in blocks:
            self.handles.append(dm.joint_blocks[b].register_forward_pre_hook(
                lambda mod, args, b=b: self.block_rows[b].append(args[1].shape[0])))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


# ---------------------------------------------------------------------------------------------
# Fidelity


def test_matches_core_skip_layer_guidance_sigma_window(host, sd35m, conds):
    lat = latent(host)
    core = core_slg(host, sd35m, conds, lat)
    mine = ours(host, sd35m, conds, lat)
    cfg_only = plain_cfg(host, sd35m, conds, lat)
    assert maxdiff(mine, core) <= TOL
    assert maxdiff(core, cfg_only) > 1e-3, "the window must really apply SLG, or the comparison proves nothing"


def reference_step_gated(host, model, conds, lat, layers, scale, start, end, cfg, steps=STEPS):
    """Stability's SkipLayerCFGDenoiser written out: CFG, then on steps start*N < i < end*N a separate
    positive pass with the layers skipped, adding (cond - cond_skip) * scale. Counts model calls."""
    import comfy.model_patcher
    import comfy.samplers

    class Reference(comfy.samplers.CFGGuider):
        step = 0

        def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006
            pos, neg = self.conds["positive"], self.conds["negative"]
            cond, uncond = comfy.samplers.calc_cond_batch(self.inner_model, [pos, neg], x, timestep, model_options)
            scaled = uncond + (cond - uncond) * self.cfg
            if scale > 0 and self.step > start * steps and self.step < end * steps:
                opts = dict(model_options)
                for i in layers:
                    opts = comfy.model_patcher.set_model_options_patch_replace(opts, lambda a, e: a, "dit",
                                                                               "double_block", i)
                (skipped,) = comfy.samplers.calc_cond_batch(self.inner_model, [pos], x, timestep, opts)
                scaled = scaled + (cond - skipped) * scale
            self.step += 1
            return scaled

    guider = Reference(model)
    guider.set_conds(*conds)
    guider.set_cfg(cfg)
    return run_guider(host, model, guider, lat, steps=steps)


def test_matches_reference_formula_on_step_window(host, sd35m, conds):
    lat = latent(host)
    steps = 10  # window 0.01-0.5 of 10 steps: steps 1-4 get SLG (0.1 < i < 5)
    ref = reference_step_gated(host, sd35m, conds, lat, [7, 8, 9], 2.5, 0.01, 0.5, 4.0, steps=steps)
    mine = ours(host, sd35m, conds, lat, scale=2.5, start=0.01, end=0.5, gating="steps", steps=steps)
    assert maxdiff(mine, ref) <= TOL
    assert maxdiff(ref, plain_cfg(host, sd35m, conds, lat, steps=steps)) > 1e-3


def test_batched_fast_path_equals_separate_pass_and_shares_the_prefix(host, sd35m, conds):
    lat = latent(host)
    with ForwardLog(sd35m) as slow_log:
        slow = ours(host, sd35m, conds, lat, start=0.0, end=1.0, implementation="separate pass")
    with ForwardLog(sd35m) as fast_log:
        fast = ours(host, sd35m, conds, lat, start=0.0, end=1.0, implementation="batched")
    assert maxdiff(fast, slow) <= TOL
    assert slow_log.calls == [2, 1] * STEPS  # core's way: an extra forward per step
    assert fast_log.calls == [3] * STEPS  # ours: one forward carries all three
    assert fast_log.block_rows[0] == [2] * STEPS, "blocks before the first skipped one run once for pos + skip"
    assert fast_log.block_rows[12] == [3] * STEPS


def test_cfg_one_skips_the_negative_like_core(host, sd35m, conds):
    lat = latent(host)
    with ForwardLog(sd35m) as log:
        mine = ours(host, sd35m, conds, lat, cfg=1.0, start=0.0, end=1.0)
    assert log.calls == [2] * STEPS  # positive + skip, no negative (the host's cfg-1 shortcut)
    assert maxdiff(mine, core_slg(host, sd35m, conds, lat, cfg=1.0, start=0.0, end=1.0)) <= TOL


def test_batch_of_two_latents_matches_core(host, sd35m, conds):
    lat = latent(host, batch=2)
    core = core_slg(host, sd35m, conds, lat, start=0.0, end=0.5)
    with ForwardLog(sd35m) as log:
        mine = ours(host, sd35m, conds, lat, start=0.0, end=0.5)
    assert mine.shape[0] == 2
    assert maxdiff(mine, core) <= TOL
    assert 6 in log.calls and 4 in log.block_rows[0]  # 3 conds x 2 rows batched; prefix on 4 rows


def test_chains_another_packs_block_patches(host, sd35m, conds):
    """Another pack's replace patches on a prefix block (3) and a skipped block (8) keep working."""
    seen = []

    def other_pack(args, extra):
        seen.append(args["img"].shape[0])
        out = extra["original_block"](args)
        return {"img": out["img"] * 1.01, "txt": out["txt"]}

    m = sd35m.clone()
    m.set_model_patch_replace(other_pack, "dit", "double_block", 3)
    m.set_model_patch_replace(other_pack, "dit", "double_block", 8)
    lat = latent(host)
    core = core_slg(host, m, conds, lat)
    seen.clear()
    mine = ours(host, m, conds, lat)
    assert seen, "the other pack's patch must still be called"
    assert maxdiff(mine, core) <= TOL
    assert maxdiff(core, core_slg(host, sd35m, conds, lat)) > 1e-4, "the other patch changes the result"


def test_area_conditioning_matches_core(host, sd35m, conds):
    """Area conds make the host copy entries (uuid included) between the positive and negative lists."""
    (neg_area,) = call(host.nodes, "ConditioningSetArea", conditioning=make_conds(host, 3), width=32, height=32, x=0,
                       y=0, strength=1.0)
    (neg,) = call(host.nodes, "ConditioningCombine", conditioning_1=conds[1], conditioning_2=neg_area)
    (pos_area,) = call(host.nodes, "ConditioningSetArea", conditioning=make_conds(host, 4), width=32, height=64, x=32,
                       y=0, strength=1.0)
    (pos,) = call(host.nodes, "ConditioningCombine", conditioning_1=conds[0], conditioning_2=pos_area)
    lat = latent(host)
    core = core_slg(host, sd35m, (pos, neg), lat, start=0.0, end=1.0)
    mine = ours(host, sd35m, (pos, neg), lat, start=0.0, end=1.0)
    assert maxdiff(mine, core) <= TOL


def make_conds(host, seed):
    from testnodes import make_conditioning

    return make_conditioning("sd3", seed)


def test_memory_split_falls_back_to_a_separate_pass(host, sd35m, conds):
    """The host runs every cond on its own when memory is short; the skip rows then arrive without
    their positive twin and are computed in full: same result as core under the same pressure."""
    m = sd35m.clone()
    rows = 1

    def memory_required(input_shape, cond_shapes={}):  # noqa: B006 - the host's signature
        return 0 if input_shape[0] <= rows else float("inf")

    m.add_object_patch("memory_required", memory_required)
    lat = latent(host)
    core = core_slg(host, m, conds, lat, start=0.0, end=1.0)
    with ForwardLog(m) as log:
        mine = ours(host, m, conds, lat, start=0.0, end=1.0)
    assert log.calls == [1, 1, 1] * STEPS, "the host must really have split the batch"
    assert log.block_rows[0] == [1, 1, 1] * STEPS, "the lone skip chunk computes its own prefix"
    assert maxdiff(mine, core) <= TOL


def test_chains_other_cond_batch_and_post_cfg_functions(host, sd35m, conds):
    """A model that already carries a cond-batch function (core SkipLayerGuidanceDiTSimple, which
    unpacks exactly [cond, uncond]) and a post-CFG function (core CFGZeroStar): both still run."""
    (m,) = call(host.nodes, "CFGZeroStar", model=sd35m)
    (m,) = call(host.nodes, "SkipLayerGuidanceDiTSimple", model=m, double_layers="3", single_layers="",
                start_percent=0.0, end_percent=1.0)
    lat = latent(host)
    core = core_slg(host, m, conds, lat, start=0.0, end=1.0)
    mine = ours(host, m, conds, lat, start=0.0, end=1.0)
    assert maxdiff(mine, core) <= TOL
    assert maxdiff(mine, ours(host, sd35m, conds, lat, start=0.0, end=1.0)) > 1e-4, "the other functions had effect"


def test_third_party_code_sees_only_cond_and_uncond_indices(host, sd35m, conds):
    seen = []

    def wrapper(apply_model, args):
        seen.append(list(args["cond_or_uncond"]))
        seen.append(list(args["c"]["transformer_options"]["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m = sd35m.clone()
    m.set_model_unet_function_wrapper(wrapper)
    lat = latent(host)
    mine = ours(host, m, conds, lat, start=0.0, end=1.0)
    assert seen and all(set(s) <= {0, 1} for s in seen)
    assert maxdiff(mine, core_slg(host, sd35m, conds, lat, start=0.0, end=1.0)) <= TOL


# ---------------------------------------------------------------------------------------------
# The all-in-one sampler and settings


def test_sampler_node_equals_guider_through_sampler_custom_advanced(host, sd35m, conds):
    lat = latent(host)
    (out, report) = call(host.nodes, "SD35WB_SLGSampler", model=sd35m, positive=conds[0], negative=conds[1],
                  latent_image=lat, seed=5, steps=STEPS, cfg=4.0, sampler_name="euler", scheduler="simple",
                  denoise=1.0, preset="custom", layers="7, 8, 9", scale=3.0, start=0.0, end=0.6,
                  gating="sigma", rescale=0.0)
    via_guider = core_slg(host, sd35m, conds, lat, start=0.0, end=0.6)
    assert maxdiff(out["samples"], via_guider) <= TOL
    assert f"steps {STEPS}, cfg 4, sampler_name euler, scheduler simple" in report and "(from the widgets)" in report
    assert "SLG: layers 7, 8, 9, scale 3, window 0-0.6 of sigma (core's rule); from the fields (preset 'custom')" \
        in report and "warning" not in report
    assert maxdiff(via_guider, plain_cfg(host, sd35m, conds, lat)) > 1e-3


def test_medium_settings_give_stabilitys_slg(host, sd35m, conds):
    """The loader's Medium settings + preset "from settings" = Stability's reference SLG."""
    from sd35wb.presets import recommended_settings

    lat = latent(host)
    (out, report) = call(host.nodes, "SD35WB_SLGSampler", model=sd35m, positive=conds[0], negative=conds[1],
                  latent_image=lat, seed=5, steps=20, cfg=4.0, sampler_name="euler", scheduler="simple", denoise=1.0,
                  preset="from settings", layers="1", scale=9.0, start=0.0, end=1.0, gating="sigma",
                  settings=recommended_settings("medium"), sampling_from_settings=False)
    ref = reference_step_gated(host, sd35m, conds, lat, [7, 8, 9], 2.5, 0.01, 0.20, 4.0, steps=20)
    assert maxdiff(out["samples"], ref) <= TOL
    assert maxdiff(ref, plain_cfg(host, sd35m, conds, lat, steps=20)) > 1e-4
    # What ran, and that the fields given on the node did not: the settings won.
    assert "(from the widgets (sampling_from_settings off))" in report
    assert "SLG: layers 7, 8, 9, scale 2.5, window 0.01-0.2 of steps (Stability's rule); from settings for medium" \
        in report
    assert ("warning: layers='1', scale=9, start=0, end=1, gating='sigma' on the node did not run: settings wins "
            "(from settings): layers='7, 8, 9', scale=2.5, start=0.01, end=0.2, gating='steps'") in report


def test_large_settings_mean_plain_cfg_with_the_loaders_sampling(host, conds):
    from sd35wb.presets import recommended_settings

    (model,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")
    (lat,) = call(host.nodes, "EmptySD3LatentImage", width=64, height=64, batch_size=1)
    s = recommended_settings("large_turbo")
    (out, report) = call(host.nodes, "SD35WB_SLGSampler", model=model, positive=conds[0], negative=conds[1],
                  latent_image=lat, seed=3, steps=20, cfg=7.0, sampler_name="dpmpp_2m", scheduler="normal",
                  denoise=1.0, preset="from settings", layers="1, 2", scale=3.0, start=0.0, end=1.0,
                  gating="sigma", settings=s)
    (ref,) = call(host.nodes, "KSampler", model=model, seed=3, steps=s["steps"], cfg=s["cfg"],
                  sampler_name=s["sampler_name"], scheduler=s["scheduler"], positive=conds[0], negative=conds[1],
                  latent_image=lat, denoise=1.0)
    assert torch.equal(out["samples"], ref["samples"])
    assert "sampling: steps 4, cfg 1, sampler_name euler, scheduler sgm_uniform, denoise 1, seed 3 " \
           "(from settings for large_turbo)" in report
    assert ("warning: steps=20, cfg=7, sampler_name='dpmpp_2m', scheduler='normal' on the node did not run: "
            "settings wins (from settings): steps=4, cfg=1, sampler_name='euler', scheduler='sgm_uniform'") in report
    assert "SLG: off" in report and "from settings for large_turbo" in report


def test_a_named_preset_warns_about_the_fields_it_overrides(host, sd35m, conds):
    """An API prompt sets preset 'ComfyUI core defaults' and leaves the fields at the widget defaults
    (Stability's values): the preset runs and the report names every field that did not."""
    kw = guider_kw(sd35m, conds, preset="ComfyUI core defaults")
    (guider, report) = call(host.nodes, "SD35WB_SLGGuider", **kw)
    assert (guider.slg_scale, guider.slg_end, guider.slg_gating) == (3.0, 0.15, "sigma")
    assert ("warning: scale=2.5, end=0.2, gating='steps' on the node did not run: preset wins (from preset): "
            "scale=3, end=0.15, gating='sigma'") in report
    assert "SLG: layers 7, 8, 9, scale 3, window 0.01-0.15 of sigma (core's rule); from preset 'ComfyUI core " \
           "defaults'" in report
    out = host.nodes.NODE_CLASS_MAPPINGS["SD35WB_SLGGuider"].execute(**{**kw, "scale": 3.0, "end": 0.15,
                                                                         "gating": "sigma", "layers": "9,8,7"})
    assert "warning" not in out.result[1] and out.ui == {"text": [out.result[1]]}, "fields that agree: no warning"


# ---------------------------------------------------------------------------------------------
# Bad input


def guider_kw(model, conds, **over):
    kw = dict(model=model, positive=conds[0], negative=conds[1], cfg=4.0, preset="custom", layers="7, 8, 9",
              scale=2.5, start=0.01, end=0.2, gating="steps")
    kw.update(over)
    return kw


def test_layers_beyond_the_models_blocks_are_named(host, conds):
    (model,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd35m.safetensors", weight_dtype="default")
    with pytest.raises(ValueError) as e:
        call(host.nodes, "SD35WB_SLGGuider", **guider_kw(model, conds))
    msg = str(e.value)
    assert msg.startswith("layers:") and "block 7 does not exist" in msg and "4 joint blocks" in msg and "0-3" in msg


def test_model_without_mmdit_blocks_is_refused(host, conds):
    (model,) = call(host.nodes, "UNETLoader", unet_name="tiny-sd15.safetensors", weight_dtype="default")
    with pytest.raises(ValueError, match=r"^model: this SD15 model has no MMDiT joint blocks"):
        call(host.nodes, "SD35WB_SLGGuider", **guider_kw(model, conds))


def test_reversed_window_and_garbage_layers_are_named(host, sd35m, conds):
    with pytest.raises(ValueError, match=r"start \(0.5\) is after end \(0.2\)"):
        call(host.nodes, "SD35WB_SLGGuider", **guider_kw(sd35m, conds, start=0.5, end=0.2))
    with pytest.raises(ValueError, match=r"^layers: 'x' is not a block number"):
        call(host.nodes, "SD35WB_SLGGuider", **guider_kw(sd35m, conds, layers="7, x"))
    with pytest.raises(ValueError, match=r"^settings: expected the SD3.5 loader's SETTINGS"):
        call(host.nodes, "SD35WB_SLGGuider", **guider_kw(sd35m, conds, settings="medium"))
