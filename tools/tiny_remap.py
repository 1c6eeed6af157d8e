"""Point an example workflow (written for real weights) at the tiny test models.

Used by the workflow tests and by `make demo` when no real weights are installed. Rules, by node:
- model loaders get the tiny model of the workflow's family; text encoders are dropped;
- CLIPTextEncode becomes the test-only SD35WBTest_Conditioning (random, correctly shaped);
- a CheckpointLoaderSimple becomes UNETLoader + VAELoader (its CLIP output is only used by encoders);
- VAEs become the matching TAESD-style tiny VAE; latents shrink to 128 px; steps are capped.
Everything else is left as written, so the graph that runs is the workflow's own.
"""

from __future__ import annotations

import copy
import hashlib

TINY_MODEL = {"sd3": "tiny-sd35m.safetensors", "sdxl": "tiny-vega.safetensors", "sd15": "tiny-sd15.safetensors"}
TINY_VAE = {"sd3": "taesd3", "sdxl": "taesdxl", "sd15": "taesd"}
LATENT_NODES = {"EmptySD3LatentImage", "EmptyLatentImage"}
MODEL_INPUTS = {"unet_name", "ckpt_name", "model_name", "vae_name"}


def family_of(prompt: dict) -> str:
    """sd3 / sdxl / sd15 from the workflow's latent and model names."""
    names = " ".join(str(v).lower() for n in prompt.values() for k, v in n["inputs"].items()
                     if isinstance(v, str) and k in MODEL_INPUTS)
    if any(n["class_type"] in ("EmptySD3LatentImage", "SD35WB_SD35Loader") for n in prompt.values()) or "sd3" in names:
        return "sd3"
    if "xl" in names or "vega" in names or "ssd" in names:
        return "sdxl"
    return "sd15"


def _seed_of(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:7], 16)


def tinyify(prompt: dict, family: str | None = None, size: int = 128, max_steps: int = 4,
            extra_rules=None) -> dict:
    """A copy of ``prompt`` that runs on the tiny models. ``extra_rules(nid, node, family)`` may
    edit nodes of a capability the generic rules don't know; its ``finish(prompt, family)``, if it
    has one, runs last, for edits that span nodes."""
    p = copy.deepcopy(prompt)
    fam = family or family_of(p)
    new_id = max(int(k) for k in p if k.isdigit()) + 1 if p else 1
    rewire: dict[tuple[str, int], list] = {}
    for nid, node in list(p.items()):
        ct, inp = node["class_type"], node["inputs"]
        if ct == "CheckpointLoaderSimple":
            p[nid] = {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_MODEL[fam], "weight_dtype": "default"}}
            vid = str(new_id)
            new_id += 1
            p[vid] = {"class_type": "VAELoader", "inputs": {"vae_name": TINY_VAE[fam]}}
            rewire[(nid, 2)] = [vid, 0]
        elif ct == "UNETLoader":
            inp["unet_name"] = TINY_MODEL[fam]
            inp["weight_dtype"] = "default"
        elif ct == "SD35WB_SD35Loader":
            inp.update(model_name=TINY_MODEL["sd3"], clip_l="none", clip_g="none", t5xxl="none", vae="taesd3")
            inp["fetch_missing"] = False
        elif ct == "VAELoader":
            inp["vae_name"] = TINY_VAE[fam]
        elif ct == "CLIPTextEncode":
            text = inp.get("text", "")
            p[nid] = {"class_type": "SD35WBTest_Conditioning",
                      "inputs": {"family": fam, "seed": _seed_of(text if isinstance(text, str) else nid),
                                 "width": size, "height": size}}
        elif ct in LATENT_NODES:
            inp["width"] = inp["height"] = size
        if "steps" in inp and isinstance(inp["steps"], int):
            inp["steps"] = min(inp["steps"], max_steps)
        if extra_rules is not None:
            extra_rules(nid, p[nid], fam)
    for node in p.values():
        for k, v in node["inputs"].items():
            if isinstance(v, list) and len(v) == 2 and (str(v[0]), v[1]) in rewire:
                node["inputs"][k] = rewire[(str(v[0]), v[1])]
    finish = getattr(extra_rules, "finish", None)
    if finish is not None:
        finish(p, fam)
    return p
