"""Unit tier: the sweep's plan, labels, state file, render cache, SimpleTuner validation images and
the paged grid (plain modules, no host)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from sd35wb import grid, sweep


def test_plan_is_checkpoint_major_so_each_checkpoint_loads_once():
    cells = sweep.plan(["a", "b"], ["p", "q"], [1, 2])
    assert [(c.model, c.prompt, c.seed) for c in cells] == [
        ("a", "p", 1), ("a", "p", 2), ("a", "q", 1), ("a", "q", 2),
        ("b", "p", 1), ("b", "p", 2), ("b", "q", 1), ("b", "q", 2)]
    models = [c.model for c in cells]
    assert models == sorted(models), "one contiguous run per checkpoint"


def test_prompt_and_seed_lists_and_their_errors():
    assert sweep.parse_prompt_list("a fox, in snow\n\n# held out\na cat\na fox, in snow") == ["a fox, in snow", "a cat"]
    with pytest.raises(ValueError, match="prompts: the prompt list is empty"):
        sweep.parse_prompt_list("\n  \n# only a comment\n")
    assert sweep.parse_seeds("42, 7 9,42") == [42, 7, 9]
    with pytest.raises(ValueError, match="--seeds: 'x' is not a seed"):
        sweep.parse_seeds("1,x")
    with pytest.raises(ValueError, match="--seeds: no seeds"):
        sweep.parse_seeds(" , ")


def test_axis_labels_name_the_step_and_a_prompt_snippet():
    assert grid.step_label("checkpoint-800") == "step 800"
    assert grid.step_label("run/checkpoint-1600-ema") == "step 1600 ema"
    assert grid.step_label("my-run-final") == "my-run-final"
    cols = sweep.column_labels(["a red fox sitting in fresh snow at dawn, detailed fur", "a cat"], [42, 7])
    assert cols[0] == "p1: a red fox sitting in fresh\u2026\nseed 42"
    assert cols[3] == "p2: a cat\nseed 7"
    assert sweep.column_labels(["a"], [1], batch=2) == ["p1: a\nseed 1 #1", "p1: a\nseed 1 #2"]


def _tile(color, size=(64, 48)):
    return Image.new("RGB", size, color)


def test_grid_pages_split_when_too_wide_and_keep_both_axes():
    rows = [[_tile((10 * r, 20 * c, 200)) for c in range(6)] for r in range(3)]
    tile = grid.tile_size([(64, 48)], max_tile=256)
    assert tile == (64, 48)
    one = grid.sweep_pages(rows, ["step 1", "step 2", "step 3"], [f"p{c}\nseed 1" for c in range(6)], tile)
    assert len(one) == 1
    label_w = one[0].width - 6 * 64
    head_h = one[0].height - 3 * 48
    assert label_w > 0 and head_h > 0
    paged = grid.sweep_pages(rows, ["step 1", "step 2", "step 3"], [f"p{c}\nseed 1" for c in range(6)], tile,
                             max_width=label_w + 4 * 64)
    assert [p.size for p in paged] == [(label_w + 4 * 64, head_h + 3 * 48), (label_w + 2 * 64, head_h + 3 * 48)]
    # Tile (row 2, column 5) is on page 2, column 1, exactly where the grid puts it.
    px = np.asarray(paged[1])[head_h + 2 * 48 + 24, label_w + 64 + 32]
    assert tuple(px) == (20, 100, 200)
    padded = grid.same_size(paged)
    assert {p.size for p in padded} == {paged[0].size}


def test_tiles_are_downscaled_and_cells_can_be_files_or_notes(tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (1024, 768), (0, 255, 0)).save(big)
    tile = grid.tile_size([(1024, 768)], max_tile=128)
    assert tile == (128, 96)
    pages = grid.sweep_pages([[str(big), grid.Note("failed: Could not detect model type"), None]], ["step 5"],
                             ["p1\nseed 1", "p1\nseed 2", "p1\nseed 3"], tile)
    page = np.asarray(pages[0])
    head_h = page.shape[0] - 96
    label_w = page.shape[1] - 3 * 128
    assert tuple(page[head_h + 48, label_w + 64]) == (0, 255, 0), "the file, downscaled into its tile"
    note_tile = page[head_h:, label_w + 128:label_w + 256]
    assert (note_tile != grid.BACKGROUND).any(), "the failure is written in its tile"
    assert (page[head_h:, label_w + 256:] == grid.BACKGROUND).all(), "an empty cell stays empty"
    with pytest.raises(ValueError, match="rows: every row needs one label"):
        grid.sweep_pages([[None]], ["a", "b"], ["c"], tile)


def test_state_file_records_atomically_and_forgets_missing_images(tmp_path):
    st = sweep.SweepState(tmp_path / "grid.sweep.json")
    st.acquire()
    img = tmp_path / "grid-images" / "a.png"
    img.parent.mkdir()
    img.write_bytes(b"png")
    st.record("k1", [img], model="m")
    assert st.done("k1") == [str(img)]
    again = sweep.SweepState(tmp_path / "grid.sweep.json")
    assert again.done("k1") == [str(img)] and again.done("k2") is None
    with pytest.raises(sweep.StateLocked, match="another sweep is writing"):
        again.acquire()
    st.release()
    again.acquire()
    again.release()
    img.unlink()
    assert sweep.SweepState(tmp_path / "grid.sweep.json").done("k1") is None, "a deleted image is rendered again"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert json.loads((tmp_path / "grid.sweep.json").read_text())["version"] == sweep.STATE_VERSION


def test_render_cache_round_trip(tmp_path):
    cache = sweep.RenderCache(tmp_path / "c")
    assert cache.get("k") is None
    a = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    cache.put("k", a)
    assert np.array_equal(cache.get("k"), a)
    (tmp_path / "c" / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    assert cache.get("bad") is None, "a damaged entry is rendered again, not an error"
    assert sweep.fingerprint("a", a) == sweep.fingerprint("a", a.copy()) != sweep.fingerprint("a", a + 1)


def test_simpletuner_validation_images_by_step(tmp_path):
    v = tmp_path / "run" / "validation_images"
    v.mkdir(parents=True)
    for name in ("step_800_validation_1024x1024.png", "step_800_my_prompt_1024x1024.png",
                 "step_1600_validation_1024x1024.png", "step_800_two_res_512x512.png", "step_800_two_res_1024x1024.png",
                 "notes.txt"):
        (v / name).write_bytes(b"")
    found = sweep.validation_images(tmp_path / "run", 800)
    assert sorted(found) == ["my_prompt", "two_res 1024x1024", "two_res 512x512", "validation"]
    assert found["validation"].name == "step_800_validation_1024x1024.png"
    labels, cells = sweep.validation_columns(["checkpoint-800", "checkpoint-1600", "final"],
                                             [tmp_path / "run", tmp_path / "run", tmp_path / "run"])
    assert labels[-1] == "SimpleTuner\nvalidation"
    assert [c is not None for c in cells[1]] == [False, False, False, True]
    assert cells[2] == [None] * 4


def test_run_dir_follows_the_linkers_symlink(tmp_path):
    src = tmp_path / "out" / "checkpoint-800" / "transformer" / "diffusion_pytorch_model.safetensors"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"")
    link = tmp_path / "models" / "run" / "checkpoint-800.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(src)
    assert sweep.run_dir_of(link) == tmp_path / "out"
    assert sweep.run_dir_of(tmp_path / "models" / "plain.safetensors") is None


def test_family_check_from_headers(tmp_path):
    from tools.simpletuner_fixtures import write_fake_safetensors

    junk = write_fake_safetensors(tmp_path / "junk.safetensors")
    problems = sweep.family_problems({"run/checkpoint-5.safetensors": str(junk)})
    assert "not a diffusion model: an unrecognised model" in problems["run/checkpoint-5.safetensors"]
    notsafe = tmp_path / "x.safetensors"
    notsafe.write_bytes(b"not a safetensors file")
    assert "x.safetensors" in sweep.family_problems({"x": str(notsafe)})["x"]


def test_an_axis_names_one_node_by_id_or_by_a_class_type_that_is_unique():
    from sd35wb.sweep.workflow import axis_target

    prompt = {"3": {"class_type": "KSampler", "inputs": {"cfg": 5.0, "model": ["1", 0]}},
              "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a"}},
              "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "b"}}}
    assert axis_target(prompt, "KSampler.cfg", "--axis") == ("3", "cfg")
    assert axis_target(prompt, "5.text", "--axis") == ("5", "text")
    with pytest.raises(ValueError, match=r"2 CLIPTextEncode nodes \(4, 5\); name one by id"):
        axis_target(prompt, "CLIPTextEncode.text", "--axis")
    with pytest.raises(ValueError, match="is fed by a link"):
        axis_target(prompt, "KSampler.model", "--axis")


def test_axes_multiply_the_plan_and_key_every_value():
    axes = [sweep.Axis("6.cfg", (1.0, 2.0)), sweep.Axis("6.steps", (10, 20))]
    cells = sweep.plan(["a", "b"], ["p"], [1], strengths=[0.5, 1.0], axes=axes)
    assert len(cells) == 2 * 2 * 4 and len(set(cells)) == 16
    assert len({(c.model, c.strength, c.axes) for c in cells}) == 16
    size = sweep.plan_size(cells, lora=True)
    assert (size.images, size.model_loads, size.lora_patches, size.rows, size.columns) == (16, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="max_images: this plan renders 16 images, above the limit of 8"):
        sweep.check_size(size, 8, "raise it")
    assert sweep.column_labels(["p"], [1], axes=axes)[3] == "p1: p\nseed 1\ncfg 2\nsteps 20"
    assert sweep.parse_axes_text("cfg=3.5,4.5; slg_layers=7,8,9|6") == [("cfg", ["3.5", "4.5"]),
                                                                          ("slg_layers", ["7,8,9", "6"])]
    assert sweep.parse_strengths("0.6, 0.8 1") == [0.6, 0.8, 1.0]
