"""Capability-specific edits that let an example workflow (written for real weights) run on the tiny
test models, on top of tools.tiny_remap's generic rules: tiny LoRAs for the LCM templates, a finished
tiny training run for the SimpleTuner templates, candidates that exist on the tiny model's 4 joint
blocks, a random-weight CLIP-L for the sweep's own prompts, a kohya-metadata file for auto-detection.

Used by the api tier (tests/api/conftest.py: ``workflow_fixtures``) and by
``python -m tools.make_template_gallery``, so the gallery shows exactly what the tests run. Needs
tests/ on sys.path (lcm_helpers) and the host bootstrapped (the fixtures build files with torch).
"""

from __future__ import annotations

import os
from pathlib import Path

from tools.demo import tiny_slg_rules

FROM_LOADER = "the model's loader"  # nodes/_ztsnr_patch.py's choice (the node module needs the host)


def template_rules(tiny_models: Path, user_models: Path, training_root: Path):
    """``rules(nid, node, family)`` for tinyify's ``extra_rules``; writes the files it needs once."""
    from lcm_helpers import workflow_rule, write_loras

    lcm_rule = workflow_rule(write_loras(tiny_models, user_models))
    sweep_rule = sweep_clip_rule(user_models)

    def rules(nid: str, node: dict, family: str) -> None:
        if node["class_type"] == "SD35WB_LCMLoraPatch" and node["inputs"].get("style_lora", "none") == "none":
            # the template ships `none` and says where to put a style LoRA: run it as a user who did
            node["inputs"]["style_lora"] = "user-style-lora.safetensors"  # lcm_rule maps it to a tiny style LoRA
        lcm_rule(nid, node, family)
        tiny_slg_rules(nid, node, family)
        tiny_slg_explorer_rules(nid, node, family)
        sweep_rule(nid, node, family)
        if node["class_type"] == "SD35WB_SimpleTunerLink" and node["inputs"].get("lora"):
            from tools.lora_fixtures import lora_run  # a finished LoRA run (SimpleTuner's saver) on the tiny base

            run = training_root / "example-lora-run"
            if not run.exists():
                lora_run(run)
            node["inputs"].update(output_dir=str(run), run="example-lora-run")
        elif node["class_type"] == "SD35WB_SimpleTunerLink":  # a finished run under the server's training root
            from tools.simpletuner_fixtures import tiny_example_run

            run = tiny_example_run(training_root / "example-run", tiny_models / "diffusion_models" / "tiny-sd35m.safetensors")
            node["inputs"].update(output_dir=str(run), run="example-run")
        if node["class_type"] == "SD35WB_SweepScores":  # tiny random CLIP and DINOv2 in models/clip_vision
            from tools.score_fixtures import write_tiny_clip, write_tiny_dino

            write_tiny_clip(user_models / "clip_vision" / "openai-clip-tiny")
            write_tiny_dino(user_models / "clip_vision" / "dinov2-tiny")
            node["inputs"].update(clip_model="openai-clip-tiny/model.safetensors",
                                  dino_model="dinov2-tiny/model.safetensors")
        if node["class_type"] == "SD35WB_ZTSNRModelPatch" and "/" in node["inputs"].get("detect_from", "none"):
            # a file picked in detect_from: the tiny SDXL-family model saved with kohya v-pred zero-SNR metadata
            node["inputs"]["detect_from"] = f"diffusion_models/{kohya_file()}"

    def finish(prompt: dict, family: str) -> None:
        """The patch reads whatever its model's loader picked: that loader loads the kohya-metadata file."""
        for node in prompt.values():
            if node["class_type"] == "SD35WB_ZTSNRModelPatch" and node["inputs"].get("detect_from") == FROM_LOADER:
                src = prompt[str(node["inputs"]["model"][0])]
                assert src["class_type"] == "UNETLoader", src  # tinyify's stand-in for the template's loader
                src["inputs"]["unet_name"] = kohya_file()

    def kohya_file() -> str:
        from tools.finetune_fixtures import convention_file

        src = convention_file("kohya", tiny_models)
        link = user_models / "diffusion_models" / src.name
        if not os.path.lexists(link):
            os.symlink(src, link)
        return src.name

    rules.finish = finish  # tinyify calls it once the whole prompt is tiny

    return rules


def tiny_slg_explorer_rules(nid: str, node: dict, family: str) -> None:
    """The tiny model has 4 joint blocks and its steps are capped at 4: candidates that exist, and a window
    that holds steps 1-3 (Stability's 1-20 % of 4 steps holds none)."""
    if node["class_type"] == "SD35WB_SLGLayerExplorer":
        node["inputs"].update(candidates="1 | 2 | 0,3", start=0.0, end=1.0)
    elif node["class_type"] == "SD35WB_SLGSensitivityMap":
        node["inputs"].update(candidates="each", start=0.0, end=1.0)


def sweep_clip_rule(user_models: Path):
    """The checkpoint sweep encodes its own prompts: give it a real (random-weight) CLIP-L as SD3's
    text encoder instead of the three real ones (only nodes something still reads ever execute)."""
    from tools import sd35_fixtures

    dest = user_models / "text_encoders" / "tiny-sweep-clip_l.safetensors"

    def rule(nid: str, node: dict, family: str) -> None:
        if node["class_type"] == "TripleCLIPLoader":
            if not dest.exists():
                dest.symlink_to(sd35_fixtures.clip_l_file())
            node.update(class_type="CLIPLoader", inputs={"clip_name": dest.name, "type": "sd3", "device": "default"})
        elif node["class_type"] == "SD35WB_CheckpointSweep":  # CPU time: one trained and one held-out prompt, one seed
            lines = node["inputs"]["prompts"].splitlines()
            keep = [ln for i, ln in enumerate(lines) if i and lines[i - 1].startswith("#") and not ln.startswith("#")]
            node["inputs"].update(prompts="\n".join(keep), seed_count=1)
            if node["inputs"].get("slg", "off") != "off":  # the tiny model has joint blocks 0-3 and 4 steps
                axes = node["inputs"].get("axes", "")
                node["inputs"].update(slg="off", axes=f"{axes}; slg_layers=1 2; slg_start=0; slg_end=1".lstrip("; "))

    return rule
