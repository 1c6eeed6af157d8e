"""Helpers for the SimpleTuner linker / sweep tests: remap the shipped workflows to tiny models."""

from __future__ import annotations

import copy
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows" / "api"


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def tiny(prompt: dict, px: int = 64, steps: int = 2, prefix: str = "st_test") -> dict:
    """The same graph on the test host: test conditioning instead of text encoders, taesd3, small
    latents, few steps, euler."""
    p = copy.deepcopy(prompt)
    seeds = iter(range(1, 100))
    for nid, node in list(p.items()):
        ct, inp = node["class_type"], node["inputs"]
        if ct in ("TripleCLIPLoader", "CLIPLoader", "DualCLIPLoader"):
            del p[nid]
        elif ct == "CLIPTextEncode":
            p[nid] = {"class_type": "SD35WBTest_Conditioning",
                      "inputs": {"family": "sd3", "seed": next(seeds), "width": px, "height": px}}
        elif ct == "VAELoader":
            inp["vae_name"] = "taesd3"
        elif ct == "CheckpointLoaderSimple":  # the templates read only its VAE (output 2): taesd3 instead
            p[nid] = {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}}
            for other in p.values():
                for k, v in other["inputs"].items():
                    if v == [nid, 2]:
                        other["inputs"][k] = [nid, 0]
        elif ct == "EmptySD3LatentImage":
            inp.update(width=px, height=px, batch_size=1)
        elif ct in ("KSampler", "SD35WB_CheckpointSweep"):
            inp.update(steps=steps, cfg=4.0, sampler_name="euler", scheduler="simple")
        if ct == "SD35WB_CheckpointSweep" and "clip" in inp:  # its prompts need a text encoder: one test prompt
            del inp["clip"]
            inp["prompts"] = ""
            pid = f"{nid}_positive"
            p[pid] = {"class_type": "SD35WBTest_Conditioning",
                      "inputs": {"family": "sd3", "seed": next(seeds), "width": px, "height": px}}
            inp["positive"] = [pid, 0]
        elif ct == "SaveImage":
            inp["filename_prefix"] = prefix
    return p
