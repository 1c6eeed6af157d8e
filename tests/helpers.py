"""Small helpers shared by host-tier tests: call a node (V1 or V3) the way the executor would."""

from __future__ import annotations

import contextlib


def call(nodes_module, node_id: str, **inputs):
    """Run one node's function with these inputs and return its outputs as a tuple."""
    cls = nodes_module.NODE_CLASS_MAPPINGS[node_id]
    if hasattr(cls, "define_schema"):  # V3
        out = cls.execute(**inputs)
        return tuple(out.result) if out.result is not None else ()
    return tuple(getattr(cls(), cls.FUNCTION)(**inputs))


def sd3_txt2img(seed: int = 7, prefix: str = "api_sd3") -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-sd35m.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "SD35WBTest_Conditioning", "inputs": {"family": "sd3", "seed": 1, "width": 128, "height": 128}},
        "3": {"class_type": "SD35WBTest_Conditioning", "inputs": {"family": "sd3", "seed": 2, "width": 128, "height": 128}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                    "latent_image": ["4", 0], "seed": seed, "steps": 4, "cfg": 4.5,
                                                    "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "6": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["6", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }


def run_custom(host, model, guider, lat, steps, seed=5, sampler="euler", scheduler="simple"):
    """Sample with a GUIDER as SamplerCustomAdvanced does (RandomNoise, KSamplerSelect, BasicScheduler)."""
    (noise,) = call(host.nodes, "RandomNoise", noise_seed=seed)
    (smp,) = call(host.nodes, "KSamplerSelect", sampler_name=sampler)
    (sigmas,) = call(host.nodes, "BasicScheduler", model=model, scheduler=scheduler, steps=steps, denoise=1.0)
    out, _ = call(host.nodes, "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=smp, sigmas=sigmas,
                  latent_image=lat)
    return out["samples"]


@contextlib.contextmanager
def progress_events(on_event=None):
    """Record every progress update the nodes send, as (value, total), into the yielded list.

    Newer hosts (0.33.0) throttle updates to 100 ms / 0.5 % (comfy.utils.PROGRESS_THROTTLE_*) on
    their way to the UI; a test that counts steps must see each one, so the throttle is off while
    recording. on_event(value, total) runs on each update (to press Cancel at a given step)."""
    import comfy.utils

    events: list[tuple[int, int]] = []

    def hook(value, total, preview=None, node_id=None):
        events.append((value, total))
        if on_event is not None:
            on_event(value, total)

    throttle = {k: getattr(comfy.utils, k) for k in ("PROGRESS_THROTTLE_MIN_INTERVAL", "PROGRESS_THROTTLE_MIN_PERCENT")
                if hasattr(comfy.utils, k)}
    saved = comfy.utils.PROGRESS_BAR_HOOK
    for k in throttle:
        setattr(comfy.utils, k, 0)
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        yield events
    finally:
        comfy.utils.set_progress_bar_global_hook(saved)
        for k, v in throttle.items():
            setattr(comfy.utils, k, v)


def sweep_node_inputs(host, px: int = 64, steps: int = 3, seed: int = 5, **kw) -> dict:
    """The Checkpoint Sweep node's inputs on the tiny SD3 models (test conditioning, taesd3), ``kw`` on top."""
    from testnodes import make_conditioning

    (latent,) = call(host.nodes, "EmptySD3LatentImage", width=px, height=px, batch_size=1)
    (vae,) = call(host.nodes, "VAELoader", vae_name="taesd3")
    base = dict(negative=make_conditioning("sd3", 2, px, px), positive=make_conditioning("sd3", 3, px, px),
                latent_image=latent, vae=vae, steps=steps, cfg=4.0, sampler_name="euler", scheduler="simple",
                seed=seed, order="as listed")
    return {**base, **kw}
