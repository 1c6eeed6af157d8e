"""Unit tier: reading SimpleTuner output_dirs and linking them into model folders (no ComfyUI).

Layouts are SimpleTuner 4.x's (see docs/simpletuner.md) with tiny valid safetensors files; the
host-tier tests repeat the important cases with files written by diffusers/peft themselves."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sd35wb import linker, simpletuner
from tools.simpletuner_fixtures import fake_checkpoint, write_fake_safetensors

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def training_root(tmp_path, monkeypatch):
    """Every run of these tests lives under tmp_path, the training root (SD35WB_TRAINING_ROOTS)."""
    monkeypatch.setenv(linker.ROOTS_ENV, str(tmp_path))
    return tmp_path


def sync(*args, **kw):
    return linker.sync(*args, **kw)


@pytest.fixture
def models(tmp_path):
    root = tmp_path / "models"
    for f in ("diffusion_models", "loras"):
        (root / f).mkdir(parents=True)
    return {"diffusion_models": root / "diffusion_models", "loras": root / "loras"}


@pytest.fixture
def run_dir(tmp_path):
    out = tmp_path / "train" / "my-run"
    out.mkdir(parents=True)
    return out


def test_numeric_order_not_text_order(run_dir, models):
    for step in (1600, 800, 10000, 200):
        fake_checkpoint(run_dir, step)
    report = sync(run_dir, None, models)
    assert report.exposed["diffusion_models"] == [f"my-run/checkpoint-{s}.safetensors" for s in (200, 800, 1600, 10000)]
    for s in (200, 800, 1600, 10000):
        link = models["diffusion_models"] / "my-run" / f"checkpoint-{s}.safetensors"
        assert link.is_symlink()
        assert os.path.realpath(link) == str(run_dir / f"checkpoint-{s}" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert simpletuner.natural_sorted(["r/checkpoint-1600.safetensors", "r/checkpoint-800-ema.safetensors",
                                       "r/r-final.safetensors", "r/checkpoint-800.safetensors"]) == \
        ["r/checkpoint-800.safetensors", "r/checkpoint-800-ema.safetensors", "r/checkpoint-1600.safetensors",
         "r/r-final.safetensors"]


def test_every_kind_is_named_and_filed(run_dir, models):
    fake_checkpoint(run_dir, 100, ema="sharded")  # full + sharded EMA
    fake_checkpoint(run_dir, 200, ema="single", model_dir="unet")  # SDXL layout
    fake_checkpoint(run_dir, 300, kind="lora", ema="lora")
    fake_checkpoint(run_dir, 400, suffix="-rolling")
    write_fake_safetensors(run_dir / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors")
    (run_dir / "pipeline" / "model_index.json").write_text('{"_class_name": "SimpleTunerPipeline"}')
    write_fake_safetensors(run_dir / "pytorch_lora_weights.safetensors", seed=9)
    report = sync(run_dir, "exp1", models)
    assert report.exposed["diffusion_models"] == [
        "exp1/checkpoint-100.safetensors", "exp1/checkpoint-100-ema.safetensors", "exp1/checkpoint-200.safetensors",
        "exp1/checkpoint-200-ema.safetensors", "exp1/checkpoint-400-rolling.safetensors", "exp1/exp1-final.safetensors"]
    assert report.exposed["loras"] == ["exp1/checkpoint-300.safetensors", "exp1/checkpoint-300-ema.safetensors",
                                       "exp1/exp1-final.safetensors"]
    merged = models["diffusion_models"] / "exp1" / "checkpoint-100-ema.safetensors"
    assert merged.is_file() and not merged.is_symlink()  # merged from shards, a file of ours
    assert dict(report.linked)["exp1/checkpoint-100-ema.safetensors"].startswith("merged")
    # Nothing but .safetensors is ever linked: no ema_model.pt, optimizer.bin, random_states_0.pkl.
    made = [p.name for f in models.values() for p in (f / "exp1").iterdir()]
    assert all(n.endswith(".safetensors") or n in (linker.MANIFEST, linker.LOCK) for n in made), made


def test_include_selects_categories(run_dir, models):
    fake_checkpoint(run_dir, 100, ema="single")
    fake_checkpoint(run_dir, 200, kind="lora")
    report = sync(run_dir, None, models, include="lora")
    assert report.exposed == {"diffusion_models": [], "loras": ["my-run/checkpoint-200.safetensors"]}
    assert not (models["diffusion_models"] / "my-run").exists()
    with pytest.raises(ValueError, match="include: .*full, ema, lora, final"):
        sync(run_dir, None, models, include="full,weird")


def test_in_progress_folders_are_skipped_with_reasons(run_dir, models):
    fake_checkpoint(run_dir, 100)
    fake_checkpoint(run_dir, 200, suffix="-tmp")
    fake_checkpoint(run_dir, 300, markers=False)  # SimpleTuner writes the manifest and .guard last
    tmp = run_dir / "temporary-400"
    write_fake_safetensors(tmp / "transformer" / "diffusion_pytorch_model.safetensors")
    half = fake_checkpoint(run_dir, 500)
    f = half / "transformer" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:-5])  # still being written
    report = sync(run_dir, None, models)
    assert report.exposed["diffusion_models"] == ["my-run/checkpoint-100.safetensors"]
    why = {Path(p).name: r for p, r in report.skipped}
    assert "'-tmp'" in why["checkpoint-200-tmp"]
    assert "checkpoint_manifest.json / .guard" in why["checkpoint-300"]
    assert "temporary save folder" in why["temporary-400"]
    assert "truncated or still being written" in why["transformer"]
    # Old SimpleTuner (no markers anywhere): markers are not required.
    old = run_dir.parent / "old-run"
    fake_checkpoint(old, 10, markers=False)
    assert sync(old, None, models).exposed["diffusion_models"] == ["old-run/checkpoint-10.safetensors"]


def test_resync_is_idempotent_and_rotation_prunes_only_our_links(run_dir, models):
    for step in (100, 200, 300):
        fake_checkpoint(run_dir, step, ema="sharded")
    first = sync(run_dir, None, models)
    assert len(first.linked) == 6 and not first.pruned
    second = sync(run_dir, None, models)
    assert not second.linked and not second.pruned and len(second.unchanged) == 6 and second.bytes_copied == 0
    dm = models["diffusion_models"] / "my-run"
    # The user's own file and a link of their own in the run folder.
    (dm / "my-notes.safetensors").write_bytes(b"mine")
    os.symlink(run_dir / "nowhere.safetensors", dm / "my-old-link.safetensors")
    # SimpleTuner rotation: the oldest checkpoint is deleted.
    import shutil

    shutil.rmtree(run_dir / "checkpoint-100")
    third = sync(run_dir, None, models)
    assert sorted(n for n, _ in third.pruned) == ["my-run/checkpoint-100-ema.safetensors", "my-run/checkpoint-100.safetensors"]
    assert all("rotated away" in why for _, why in third.pruned)
    assert not os.path.lexists(dm / "checkpoint-100.safetensors") and not (dm / "checkpoint-100-ema.safetensors").exists()
    assert (dm / "my-notes.safetensors").read_bytes() == b"mine"
    assert os.path.islink(dm / "my-old-link.safetensors"), "a dangling link we did not make is left alone"
    assert any("dangling link not made by this tool" in why for _, why in third.skipped)
    manifest = json.loads((dm / linker.MANIFEST).read_text())
    assert sorted(manifest["links"]) == ["checkpoint-200-ema.safetensors", "checkpoint-200.safetensors",
                                         "checkpoint-300-ema.safetensors", "checkpoint-300.safetensors"]


def test_collision_with_a_user_file_is_reported_and_untouched(run_dir, models):
    fake_checkpoint(run_dir, 100)
    fake_checkpoint(run_dir, 200)
    mine = models["diffusion_models"] / "my-run" / "checkpoint-200.safetensors"
    mine.parent.mkdir()
    mine.write_bytes(b"my own fine-tune")
    report = sync(run_dir, None, models)
    assert mine.read_bytes() == b"my own fine-tune" and not mine.is_symlink()
    assert ("my-run/checkpoint-200.safetensors", "collision: a file you put there has this name; left untouched "
            "(rename it, or sync under another run name)") in report.skipped
    assert report.exposed["diffusion_models"] == ["my-run/checkpoint-100.safetensors"]
    # If the user later replaces one of our links with a file, we neither overwrite nor prune it.
    ours = models["diffusion_models"] / "my-run" / "checkpoint-100.safetensors"
    ours.unlink()
    ours.write_bytes(b"replaced by hand")
    import shutil

    shutil.rmtree(run_dir / "checkpoint-100")
    sync(run_dir, None, models)
    assert ours.read_bytes() == b"replaced by hand"


def test_old_script_links_are_adopted(run_dir, models):
    src = fake_checkpoint(run_dir, 100) / "transformer" / "diffusion_pytorch_model.safetensors"
    d = models["diffusion_models"] / "my-run"
    d.mkdir()
    os.symlink(src, d / "checkpoint-100.safetensors")
    report = sync(run_dir, None, models)
    assert report.unchanged == ["my-run/checkpoint-100.safetensors"] and not report.skipped


def test_hard_link_fallback_and_copy_only_when_asked(run_dir, models, monkeypatch):
    fake_checkpoint(run_dir, 100)

    def no_symlinks(*a, **k):
        raise OSError(errno.EPERM, "symbolic links are not allowed")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    report = sync(run_dir, None, models)
    assert report.linked == [("my-run/checkpoint-100.safetensors", "hardlink")] and report.bytes_copied == 0
    dest = models["diffusion_models"] / "my-run" / "checkpoint-100.safetensors"
    src = run_dir / "checkpoint-100" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert os.path.samefile(dest, src)
    assert sync(run_dir, None, models).unchanged == ["my-run/checkpoint-100.safetensors"]

    def no_hardlinks(*a, **k):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_hardlinks)
    fake_checkpoint(run_dir, 200)
    report = sync(run_dir, None, models)
    assert report.skipped[-1][0] == "my-run/checkpoint-200.safetensors" and "--copy" in report.skipped[-1][1]
    report = sync(run_dir, None, models, copy=True)
    assert report.linked == [("my-run/checkpoint-200.safetensors", "copy")]
    assert report.bytes_copied == src.stat().st_size


def test_run_name_and_output_dir_checks(run_dir, models, tmp_path):
    fake_checkpoint(run_dir, 100)
    for bad in ("../evil", "a/b", ".hidden", "..", ""):
        with pytest.raises(ValueError, match="run"):
            sync(run_dir, bad, models) if bad else simpletuner.check_run_name(bad)
    with pytest.raises(ValueError, match="output_dir: .* is not a folder"):
        sync(tmp_path / "missing", "x", models)
    other = tmp_path / "other-run"
    fake_checkpoint(other, 5)
    sync(run_dir, "shared", models)
    with pytest.raises(ValueError, match="already holds links to"):
        sync(other, "shared", models)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, models["diffusion_models"] / "sneaky")
    with pytest.raises(ValueError, match="leads outside .* refusing to write through it"):
        sync(run_dir, "sneaky", models)
    assert list(elsewhere.iterdir()) == []


def test_training_root_checks(tmp_path):
    root = tmp_path / "roots" / "a"
    (root / "run1").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, root / "escape")
    env = str(root)
    assert simpletuner.resolve_training_dir("run1", env) == root / "run1"
    assert simpletuner.resolve_training_dir(str(root / "run1"), env) == root / "run1"
    for bad, msg in [("../elsewhere", "'..'"), (str(root / ".." / "a" / "run1"), "'..'"),
                     (str(outside), "outside the training roots"), ("escape", "symlink escape"),
                     (str(root / "escape"), "outside the training roots")]:
        with pytest.raises(PermissionError, match=msg):
            simpletuner.resolve_training_dir(bad, env)
    with pytest.raises(PermissionError, match="SD35WB_TRAINING_ROOTS"):
        simpletuner.resolve_training_dir("run1", "")
    with pytest.raises(ValueError, match="not a folder"):
        simpletuner.resolve_training_dir("nope", env)


def test_cli_prints_linked_pruned_skipped(run_dir, tmp_path):
    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "diffusion_models").mkdir(parents=True)
    fake_checkpoint(run_dir, 100)
    fake_checkpoint(run_dir, 200, suffix="-tmp")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "sd35wb.link", *map(str, args)], cwd=REPO, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})

    r = cli(run_dir, "--comfyui", comfy, "--run", "cli-run")
    assert r.returncode == 0, r.stderr
    assert "linked    cli-run/checkpoint-100.safetensors  (symlink)" in r.stdout
    assert "skipped" in r.stdout and "checkpoint-200-tmp" in r.stdout
    import shutil

    shutil.rmtree(run_dir / "checkpoint-100")
    r = cli(run_dir, "--models-dir", comfy / "models", "--run", "cli-run", "--include", "full,ema")
    assert "pruned    cli-run/checkpoint-100.safetensors  (source gone" in r.stdout, r.stdout
    r = cli(run_dir, "--models-dir", comfy / "models", "--run", "../x")
    assert r.returncode == 2 and "run:" in r.stderr


def test_truncated_ema_shard_is_skipped_and_changed_shards_are_remerged(run_dir, models):
    from safetensors.numpy import load_file

    from tools.simpletuner_fixtures import write_sharded_np

    ck = fake_checkpoint(run_dir, 100, ema="sharded", suffix="-rolling")
    ema = ck / "transformer_ema"
    shard = sorted(ema.glob("*-00002-of-*.safetensors"))[0]
    good = shard.read_bytes()
    shard.write_bytes(good[:-3])  # SimpleTuner still writing the EMA
    report = sync(run_dir, None, models)
    assert report.exposed["diffusion_models"] == ["my-run/checkpoint-100-rolling.safetensors"]
    assert any(p.endswith("transformer_ema") and "truncated or still being written" in why for p, why in report.skipped)
    assert sorted(p.name for p in (models["diffusion_models"] / "my-run").iterdir()) == \
        [linker.MANIFEST, linker.LOCK, "checkpoint-100-rolling.safetensors"], "no partial merge left behind"
    shard.write_bytes(good)
    report = sync(run_dir, None, models)
    assert [n for n, _ in report.linked] == ["my-run/checkpoint-100-rolling-ema.safetensors"]
    merged = models["diffusion_models"] / "my-run" / "checkpoint-100-rolling-ema.safetensors"
    # The rolling checkpoint is saved again with new EMA weights: the merge is redone, once.
    new = {f"b{i}.w": np.full((4, 3), i, dtype=np.float32) for i in range(5)}
    write_sharded_np(ema, new, per_shard=2)
    report = sync(run_dir, None, models)
    assert [n for n, _ in report.linked] == ["my-run/checkpoint-100-rolling-ema.safetensors"]
    assert all(np.array_equal(load_file(str(merged))[k], v) for k, v in new.items())
    assert not sync(run_dir, None, models).linked


@given(st.lists(st.integers(min_value=0, max_value=10**7), min_size=1, max_size=30, unique=True),
       st.sampled_from(["", "-ema", "-rolling"]))
def test_sort_key_is_numeric_for_any_steps(steps, variant):
    names = [f"r/checkpoint-{s}{variant}.safetensors" for s in steps]
    assert simpletuner.natural_sorted(names) == [f"r/checkpoint-{s}{variant}.safetensors" for s in sorted(steps)]
