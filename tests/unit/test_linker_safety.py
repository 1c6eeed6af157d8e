"""Unit tier: the linker under concurrency, crashes and hostile input (issue 12).

Runs in SimpleTuner's own save layout (tools.simpletuner_fixtures); syncs run as real separate
processes (``python -m sd35wb.link``), faults are injected in a child process through
tests/fault_sync.py (an exception and a SIGKILL at every step), and after every scenario the
manifest must equal the disk: every file of ours recorded with its identity, nothing pending, no
temporary file, every user file byte-for-byte as it was. The API tier repeats the concurrency
with the route of a real server in the mix."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from linker_helpers import assert_manifest_equals_disk

from sd35wb import linker, names, simpletuner
from tools.simpletuner_fixtures import fake_checkpoint, write_fake_safetensors, write_sharded_np

REPO = Path(__file__).resolve().parents[2]
RUN = "st-run"


@pytest.fixture
def root(tmp_path, monkeypatch):
    r = tmp_path / "runs"
    r.mkdir()
    monkeypatch.setenv(linker.ROOTS_ENV, str(r))
    return r


@pytest.fixture
def models(tmp_path):
    m = tmp_path / "ComfyUI" / "models"
    for f in ("unet", "diffusion_models", "loras"):
        (m / f).mkdir(parents=True)
    return m


def eleven_model_run(out: Path) -> Path:
    """8 diffusion models (2 merged from sharded EMA) + 3 LoRAs: full, EMA, rolling, LoRA + EMA LoRA, final."""
    fake_checkpoint(out, 100, ema="sharded")
    fake_checkpoint(out, 200, ema="sharded")
    fake_checkpoint(out, 300, kind="lora", ema="lora")
    fake_checkpoint(out, 400, suffix="-rolling", ema="single")
    fake_checkpoint(out, 500)
    write_fake_safetensors(out / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors", seed=77)
    write_fake_safetensors(out / "pytorch_lora_weights.safetensors", seed=78)
    return out


def cli(*args, roots=None, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if roots is not None:
        env[linker.ROOTS_ENV] = str(roots)
    return subprocess.run([sys.executable, "-m", "sd35wb.link", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def user_files(*folders: Path) -> dict[str, str]:
    """sha256 of every file a user owns under the folders (what is not ours by name)."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.is_symlink() and p.parent.name != RUN:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_dirs(models: Path) -> tuple[Path, Path]:
    return models / "diffusion_models" / RUN, models / "loras" / RUN


# ---------------------------------------------------------------------------------------------
# Concurrency: separate processes on the same run, while SimpleTuner rotates checkpoints


def test_parallel_cli_syncs_of_one_run_end_with_a_true_manifest(root, models):
    out = eleven_model_run(root / RUN)
    dm, lo = run_dirs(models)
    dm.mkdir()
    (dm / "mine-notes.safetensors").write_bytes(b"the user's own file")
    before = user_files(models, out)
    rounds, per_round, survived = 6, 4, 0
    for r in range(rounds):
        procs = [subprocess.Popen([sys.executable, "-m", "sd35wb.link", str(out), "--models-dir", str(models),
                                   "--run", RUN, "--json"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env={**os.environ, "PYTHONPATH": str(REPO)}) for _ in range(per_round)]
        if r % 2 == 1:  # SimpleTuner rotates underneath: a new checkpoint, the oldest deleted
            fake_checkpoint(out, 500 + r * 100, ema="sharded")
            oldest = min((p for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit()
                          and not p.name.endswith("rolling")), key=lambda p: int(p.name.split("-")[1]))
            shutil.rmtree(oldest)
        for p in procs:
            so, se = p.communicate(timeout=300)
            assert p.returncode == 0, se
            rep = json.loads(so)
            assert not any("collision" in why or "not pruned" in why for _, why in rep["skipped"]), rep["skipped"]
            survived += 1
        assert_manifest_equals_disk(dm, lo)
    final = linker.sync(out, RUN, linker.models_dir_destinations(models))
    assert not final.linked and not final.pruned and not final.repaired, final.text()
    scan = simpletuner.scan(out, RUN)
    assert sum(len(v) for v in final.exposed.values()) == len(scan.artifacts)
    assert assert_manifest_equals_disk(dm, lo) == len(scan.artifacts)
    after = user_files(models, out)
    assert {k: v for k, v in after.items() if k in before} == {k: v for k, v in before.items() if k in after}
    assert (dm / "mine-notes.safetensors").read_bytes() == b"the user's own file"
    assert survived == rounds * per_round
    print(f"\nconcurrent CLI syncs survived: {survived} ({rounds} rounds x {per_round}, rotation in 3 rounds)")


def test_a_killed_sync_never_blocks_the_next(root, models):
    out = eleven_model_run(root / RUN)
    dm, _ = run_dirs(models)
    dm.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR"
                               " | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
                               "time.sleep(60)", str(dm / linker.LOCK)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(linker.LinkError, match="another sync of .* has held its lock for 0 s"):
        with linker.run_lock(dm, timeout=0.2):
            pass
    holder.kill()  # like kill -9: the kernel drops the lock
    holder.wait()
    t0 = time.monotonic()
    report = linker.sync(out, RUN, linker.models_dir_destinations(models))
    assert len(report.linked) == 11 and time.monotonic() - t0 < 30


@pytest.mark.parametrize("ema", ["sharded", "single"])
def test_a_checkpoint_rotated_away_between_scan_and_link_is_skipped_not_an_error(root, models, monkeypatch, ema):
    """SimpleTuner deletes a checkpoint while a sync runs: right after the scan saw it (the moment
    that failed a route sync with 'cannot read the shard index' in CI), the rest still links."""
    out = root / RUN
    fake_checkpoint(out, 100, ema=ema)
    fake_checkpoint(out, 200, ema=ema)
    dest = linker.models_dir_destinations(models)
    first = linker.sync(out, RUN, dest)
    assert len(first.linked) == 4
    real_scan = simpletuner.scan

    def scan_then_rotate(*a, **k):
        seen = real_scan(*a, **k)
        shutil.rmtree(out / "checkpoint-100")
        fake_checkpoint(out, 300, ema=ema)
        return seen

    monkeypatch.setattr(simpletuner, "scan", scan_then_rotate)
    report = linker.sync(out, RUN, dest)
    monkeypatch.setattr(simpletuner, "scan", real_scan)
    gone = {n for n, why in report.skipped if "gone while this sync ran" in why}
    assert gone == {f"{RUN}/checkpoint-100.safetensors", f"{RUN}/checkpoint-100-ema.safetensors"}
    assert sorted(n for n, _ in report.pruned) == [f"{RUN}/checkpoint-100-ema.safetensors",
                                                   f"{RUN}/checkpoint-100.safetensors"]
    assert report.exposed["diffusion_models"] == [f"{RUN}/checkpoint-200.safetensors",
                                                  f"{RUN}/checkpoint-200-ema.safetensors"]
    dm, lo = run_dirs(models)
    assert assert_manifest_equals_disk(dm, lo) == 2
    again = linker.sync(out, RUN, dest)  # the next sync sees checkpoint-300
    assert sorted(n for n, _ in again.linked) == [f"{RUN}/checkpoint-300-ema.safetensors",
                                                  f"{RUN}/checkpoint-300.safetensors"]


def test_a_checkpoint_rotated_away_while_the_scan_reads_it_is_skipped_whole(root, models, monkeypatch):
    """Deleted between reading its transformer/ and its transformer_ema/: neither half is linked."""
    out = root / RUN
    fake_checkpoint(out, 100, ema="sharded")
    fake_checkpoint(out, 200, ema="sharded")
    real = simpletuner._weights_in

    def rotate_midway(folder):
        if folder.parent.name == "checkpoint-100" and folder.name == "transformer_ema":
            shutil.rmtree(folder.parent)
            os.scandir(folder)  # what the glob inside does when the folder goes between its is_dir and its listing
        return real(folder)

    monkeypatch.setattr(simpletuner, "_weights_in", rotate_midway)
    report = linker.sync(out, RUN, linker.models_dir_destinations(models))
    assert report.exposed["diffusion_models"] == [f"{RUN}/checkpoint-200.safetensors",
                                                  f"{RUN}/checkpoint-200-ema.safetensors"]
    assert any(n.endswith("checkpoint-100") and "gone while it was scanned" in why for n, why in report.skipped), \
        report.skipped
    assert assert_manifest_equals_disk(*run_dirs(models)) == 2


# ---------------------------------------------------------------------------------------------
# Fault injection: an exception and a kill -9 at every step, then a resync


def _fault_scenario(base: Path) -> tuple[Path, Path, dict]:
    """A run already synced once, then changed so the next sync prunes, links, merges and re-merges."""
    root = base / "runs"
    out = root / RUN
    models = base / "ComfyUI" / "models"
    for f in ("unet", "diffusion_models", "loras"):
        (models / f).mkdir(parents=True)
    fake_checkpoint(out, 100, ema="sharded")
    fake_checkpoint(out, 150, suffix="-rolling", ema="sharded")
    fake_checkpoint(out, 200, kind="lora")
    env_roots = str(root)
    r = cli(out, "--models-dir", models, "--run", RUN, roots=env_roots)
    assert r.returncode == 0, r.stderr
    dm, lo = run_dirs(models)
    (dm / "mine.safetensors").write_bytes(b"user weights")
    (lo / "mine-lora.safetensors").write_bytes(b"user lora")
    shutil.rmtree(out / "checkpoint-100")  # rotation: prune two links
    fake_checkpoint(out, 300, ema="sharded")  # new: a link and a merge
    fake_checkpoint(out, 400, kind="lora", ema="lora")
    rng = np.random.default_rng(5)  # the rolling checkpoint saved again: its EMA is re-merged
    write_sharded_np(out / "checkpoint-150-rolling" / "transformer_ema",
                     {f"b{i}.w": rng.standard_normal((4, 3)).astype(np.float32) for i in range(5)}, per_shard=2)
    return out, models, user_files(models, out)


def _fault_legacy_scenario(base: Path) -> tuple[Path, Path, dict]:
    """Links an earlier version left in models/unet/<run>/ (symlinks, merges), about to be moved."""
    root = base / "runs"
    out = eleven_model_run(root / RUN)
    models = base / "ComfyUI" / "models"
    for f in ("unet", "diffusion_models", "loras"):
        (models / f).mkdir(parents=True)
    linker.sync(out, RUN, {"diffusion_models": models / "unet", "loras": models / "loras"}, roots=str(root))
    (models / "unet" / RUN / "mine-old.safetensors").write_bytes(b"user file in the old folder")
    return out, models, user_files(models, out)


def _inject_at_every_step(tmp_path: Path, scenario, want: int) -> int:
    faults = 0
    for mode in ("raise", "kill"):
        k = 1
        while True:
            base = tmp_path / f"{mode}-{k}"
            out, models, before = scenario(base)
            env = {**os.environ, "PYTHONPATH": str(REPO), linker.ROOTS_ENV: str(out.parent)}
            r = subprocess.run([sys.executable, str(REPO / "tests" / "fault_sync.py"), str(k), mode, "--", str(out),
                                "--models-dir", str(models), "--run", RUN], cwd=REPO, capture_output=True, text=True,
                               env=env, timeout=120)
            if "FAULT NOT REACHED" in r.stdout:
                assert r.returncode == 0, r.stderr
                break
            assert f"FAULT {mode} at step {k}" in r.stdout, r.stdout + r.stderr
            assert r.returncode == (-9 if mode == "kill" else 1), (r.returncode, r.stderr)
            faults += 1
            dm, lo = run_dirs(models)
            legacy = models / "unet" / RUN
            for d in (dm, lo, legacy):  # right after the fault: every link and temporary file there is recorded
                if not (d / linker.MANIFEST).exists():
                    continue
                links = json.loads((d / linker.MANIFEST).read_text())["links"]
                tmps = {rec.get("tmp") for rec in links.values()}
                for e in os.listdir(d):
                    if e in (linker.MANIFEST, linker.LOCK) or e.startswith("mine") or e.startswith(".." + linker.MANIFEST[1:]):
                        continue
                    assert e in links or e in tmps, f"{mode} at step {k}: {d / e} is not in the manifest"
            fixed = cli(out, "--models-dir", models, "--run", RUN, "--json", roots=out.parent)
            assert fixed.returncode == 0, fixed.stderr
            rep = json.loads(fixed.stdout)
            assert not any("collision" in why or "not pruned" in why for _, why in rep["skipped"]), (mode, k, rep["skipped"])
            assert not any("not what this tool made" in what for _, what in rep["repaired"]), (mode, k, rep["repaired"])
            assert want == len(simpletuner.scan(out, RUN).artifacts) == sum(len(v) for v in rep["exposed"].values()), \
                (mode, k, rep)
            assert assert_manifest_equals_disk(dm, lo) == want
            if legacy.exists():
                assert_manifest_equals_disk(legacy)
            after = user_files(models, out)
            assert {p: h for p, h in after.items() if p in before} == before, f"user files changed ({mode} at {k})"
            again = cli(out, "--models-dir", models, "--run", RUN, "--json", roots=out.parent)
            assert not json.loads(again.stdout)["linked"], "the repair is complete after one resync"
            shutil.rmtree(base)
            k += 1
        assert k > 5, f"only {k - 1} steps in a sync ({mode})"
    return faults


def test_an_exception_or_kill_at_every_step_leaves_a_state_the_next_sync_repairs(tmp_path):
    faults = _inject_at_every_step(tmp_path, _fault_scenario, 7)
    assert faults >= 30
    print(f"\nfaults injected: {faults} (an exception and a SIGKILL at each of {faults // 2} steps); "
          "links unrecorded after resync: 0; user files changed: 0")


def test_a_fault_at_every_step_of_the_move_out_of_unet_is_repaired_too(tmp_path):
    faults = _inject_at_every_step(tmp_path, _fault_legacy_scenario, 11)
    print(f"\nfaults injected in the one-time move from unet/<run>/: {faults}")


# ---------------------------------------------------------------------------------------------
# Hostile input: every name and path checked up front, with its message


RUN_NAMES = [
    ("x" * 255, "255 bytes long, over the limit of 160"),
    ("x" * 300, "300 bytes long, over the limit of 160"),
    ("é" * 100, "200 bytes long, over the limit of 160"),
    ("x\ny", "control characters"),
    ("tab\there", "control characters"),
    ("bell\x07", "control characters"),
    ("nul\x00byte", "control characters"),
    ("rtl\u202eoverride", "control characters"),
    ("line\u2028sep", "control characters"),
    ("../evil", "not a plain folder name"),
    ("..", "not a plain folder name"),
    (".", "not a plain folder name"),
    (".hidden", "not a plain folder name"),
    ("a/b", "not a plain folder name"),
    ("a\\b", "not a plain folder name"),
    ("\uff0e\uff0e", "not a plain folder name"),  # fullwidth '..'
    ("a\uff0fb", "not a plain folder name"),  # fullwidth '/'
    ("\u2024\u2024", "not a plain folder name"),  # one-dot leaders
    ("%2e%2e", "looks URL-encoded"),
    ("..%2fetc", "not a plain folder name"),
    ("run%2f..%2fetc", "looks URL-encoded"),
    ("%2E%2E%5Cwin", "looks URL-encoded"),
    ("x%00", "looks URL-encoded"),
    ("CON", "not a folder name Windows accepts"),
    ("nul.txt", "not a folder name Windows accepts"),
    ("com1", "not a folder name Windows accepts"),
    ("trailing.", "not a folder name Windows accepts"),
    ("a:b", "not a folder name Windows accepts"),
    ("what?", "not a folder name Windows accepts"),
    ("   ", "the run name is empty"),
]

OUTPUT_DIRS = [
    ("/" + "a" * 5000, "5001 bytes long, over the 4095-byte path limit"),
    ("/tmp/" + "b" * 300 + "/run", "300-byte component"),
    ("x\ny", "control characters"),
    ("run\x00", "control characters"),
    ("%2e%2e/outside", "looks URL-encoded"),
    ("..%2F..%2Foutside", "looks URL-encoded"),
    ("\uff0e\uff0e/outside", "look-alike Unicode for '..'"),
    ("../outside/run", "contains '..'"),
    ("st-run/../../outside/run", "contains '..'"),
    ("..\\outside", "contains '..'"),
    ("", "must be a non-empty path"),
]


def test_table_of_bad_names_and_paths_each_refused_with_its_message(root, models):
    out = eleven_model_run(root / RUN)
    dest = linker.models_dir_destinations(models)
    tried = 0
    for bad, msg in RUN_NAMES:
        with pytest.raises(linker.LinkError, match=msg) as e:
            linker.sync(out, bad, dest)
        assert e.value.field == "run" and e.value.status == 400 and str(e.value).startswith("run: "), bad
        tried += 1
    for bad, msg in OUTPUT_DIRS:
        with pytest.raises(linker.LinkError, match=msg) as e:
            linker.sync(bad, RUN, dest)
        assert e.value.field == "output_dir" and str(e.value).startswith("output_dir: "), bad
        tried += 1
    assert not any(p.name != ".sd35wb-links.lock" for f in ("diffusion_models", "loras", "unet")
                   for p in (models / f).rglob("*")), "nothing was written for any bad input"
    # A legal 255-byte name elsewhere is not refused for its length by the path check alone.
    assert names.check_path("/tmp/" + "c" * 255) == "/tmp/" + "c" * 255
    print(f"\nbad names and paths tried: {tried}")


def test_the_cli_refuses_bad_input_with_a_message_and_no_traceback(root, models):
    out = eleven_model_run(root / RUN)
    for args, msg in [(["--run", "x" * 255], "run: "), (["--run", "x\ny"], "control characters"),
                      (["--run", "x" * 300], "over the limit of 160")]:
        r = cli(out, "--models-dir", models, *args, roots=root)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = cli("/" + "a" * 5000, "--models-dir", models, roots=root)
    assert r.returncode == 2 and "4095-byte path limit" in r.stderr and "Traceback" not in r.stderr
    r = cli(out, "--models-dir", models, roots="")
    assert r.returncode == 2 and "no training roots: pass --training-roots" in r.stderr
    assert not (models / "diffusion_models" / RUN).exists()


def test_symlinks_out_of_the_roots_are_refused_at_folder_and_file_level(root, models, tmp_path):
    outside = tmp_path / "outside"
    fake_checkpoint(outside, 900, kind="lora")
    secret = write_fake_safetensors(outside / "secret.safetensors", seed=3)
    out = root / RUN
    fake_checkpoint(out, 100)
    fake_checkpoint(out, 200, kind="lora")
    lora = out / "checkpoint-200" / "pytorch_lora_weights.safetensors"
    lora.unlink()
    os.symlink(secret, lora)  # a file-level symlink out of the root
    os.symlink(outside / "checkpoint-900", out / "checkpoint-900")  # a folder-level one
    fake_checkpoint(out, 300, ema="sharded")
    shard = sorted((out / "checkpoint-300" / "transformer_ema").glob("*-00001-of-*.safetensors"))[0]
    shutil.move(shard, outside / shard.name)
    os.symlink(outside / shard.name, shard)  # one shard of a merge
    inside = write_fake_safetensors(root / "shared" / "base.safetensors", seed=4)
    fake_checkpoint(out, 400)
    w = out / "checkpoint-400" / "transformer" / "diffusion_pytorch_model.safetensors"
    w.unlink()
    os.symlink(inside, w)  # a symlink that stays inside the roots is fine
    report = linker.sync(out, RUN, linker.models_dir_destinations(models))
    refused = {n: why for n, why in report.skipped if why.startswith("refused")}
    assert set(refused) == {f"{RUN}/checkpoint-200.safetensors", f"{RUN}/checkpoint-900.safetensors",
                            f"{RUN}/checkpoint-300-ema.safetensors"}, report.text()
    assert all("outside the training roots (SD35WB_TRAINING_ROOTS)" in w for w in refused.values())
    assert report.exposed["diffusion_models"] == [f"{RUN}/checkpoint-100.safetensors", f"{RUN}/checkpoint-300.safetensors",
                                                  f"{RUN}/checkpoint-400.safetensors"]
    assert report.exposed["loras"] == []
    for p in (models / "diffusion_models" / RUN).iterdir():
        assert not os.path.realpath(p).startswith(str(outside))
    assert os.path.realpath(models / "diffusion_models" / RUN / "checkpoint-400.safetensors") == str(inside)
    # The output_dir itself through a symlink out of the roots: refused before anything happens.
    os.symlink(outside, root / "escape")
    with pytest.raises(linker.LinkError, match="symlink escape") as e:
        linker.sync("escape", "esc", linker.models_dir_destinations(models))
    assert e.value.status == 403
    with pytest.raises(linker.LinkError, match="no training roots configured") as e:
        linker.sync(out, RUN, linker.models_dir_destinations(models), roots="")
    assert e.value.status == 403
    assert_says_how_to_set_the_roots(str(e.value))


def assert_says_how_to_set_the_roots(msg: str) -> None:
    """The roots error names every common way to set the variable where ComfyUI starts."""
    assert msg.startswith("no training roots configured: set SD35WB_TRAINING_ROOTS to the folder(s)"), msg
    assert "restart ComfyUI" in msg
    assert "export SD35WB_TRAINING_ROOTS=" in msg, "a shell"
    assert "run_nvidia_gpu.bat" in msg and "set SD35WB_TRAINING_ROOTS=D:\\runs" in msg, "the portable build's .bat"
    assert "Environment=SD35WB_TRAINING_ROOTS=" in msg and "[Service]" in msg, "a systemd unit"
    assert "Desktop app" in msg and "setx SD35WB_TRAINING_ROOTS" in msg and "launchctl setenv" in msg, "Desktop"


# ---------------------------------------------------------------------------------------------
# Prune proves identity; one destination; the one-time move out of unet/<run>/


def test_prune_never_deletes_a_file_whose_identity_does_not_match(root, models):
    out = root / RUN
    fake_checkpoint(out, 100, ema="sharded")
    fake_checkpoint(out, 200)
    dest = linker.models_dir_destinations(models)
    linker.sync(out, RUN, dest, copy=True)
    dm = models / "diffusion_models" / RUN
    merged, copied = dm / "checkpoint-100-ema.safetensors", dm / "checkpoint-200.safetensors"
    # The user rewrites our merged file in place (same inode, same size, mtime put back): inode alone would say "ours".
    st = merged.stat()
    data = bytearray(merged.read_bytes())
    data[-4:] = b"USER"
    with open(merged, "r+b") as f:
        f.write(bytes(data))
    os.utime(merged, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert merged.stat().st_ino == st.st_ino and merged.stat().st_size == st.st_size
    # ... and edits the copy in place (new mtime).
    with open(copied, "r+b") as f:
        f.seek(-2, os.SEEK_END)
        f.write(b"ME")
    mine = {p: p.read_bytes() for p in (merged, copied)}
    shutil.rmtree(out / "checkpoint-100")
    shutil.rmtree(out / "checkpoint-200")
    report = linker.sync(out, RUN, dest, copy=True)
    assert report.pruned == [(f"{RUN}/checkpoint-100.safetensors", "source gone (checkpoint rotated away or deleted)")], \
        "the copy nobody touched is provably ours"
    assert sorted(n for n, why in report.skipped if "not pruned" in why) == \
        [f"{RUN}/checkpoint-100-ema.safetensors", f"{RUN}/checkpoint-200.safetensors"]
    assert {p: p.read_bytes() for p in mine} == mine
    assert json.loads((dm / linker.MANIFEST).read_text())["links"] == {}


def test_one_destination_for_node_route_and_cli_and_a_one_time_move_from_unet(root, models):
    m = models
    assert linker.destinations([m / "unet", m / "diffusion_models"], [m / "loras"]).dirs == \
        {"diffusion_models": str(m / "diffusion_models"), "loras": str(m / "loras")}
    assert linker.destinations(["/big/diffusion_models", m / "unet", m / "diffusion_models"], [m / "loras"]).dirs[
        "diffusion_models"] == "/big/diffusion_models", "a user's is_default folder named diffusion_models comes first"
    assert linker.destinations([m / "unet"], [m / "loras"]).dirs["diffusion_models"] == str(m / "unet")
    assert linker.models_dir_destinations(m) == linker.destinations([m / "unet", m / "diffusion_models"], [m / "loras"])
    out = eleven_model_run(root / RUN)
    # An earlier version wrote into the host's first diffusion_models folder: models/unet/<run>/.
    old = linker.sync(out, RUN, {"diffusion_models": m / "unet", "loras": m / "loras"})
    assert len(old.exposed["diffusion_models"]) == 8
    unet_run = m / "unet" / RUN
    (unet_run / "mine-own.safetensors").write_bytes(b"kept")
    doc = json.loads((unet_run / linker.MANIFEST).read_text())  # as version 1 wrote it: inode only
    for rec in doc["links"].values():
        if rec["mode"] != "symlink":
            rec["inode"] = rec.pop("id")[:2]
            rec.pop("fp")
    doc["version"] = 1
    (unet_run / linker.MANIFEST).write_text(json.dumps(doc))
    merged_ino = (unet_run / "checkpoint-100-ema.safetensors").stat().st_ino
    report = linker.sync(out, RUN, linker.models_dir_destinations(m))
    assert len(report.moved) == 8 and not report.linked, report.text()
    new = m / "diffusion_models" / RUN
    assert (new / "checkpoint-100-ema.safetensors").stat().st_ino == merged_ino, "moved, not merged again"
    assert sorted(os.listdir(unet_run)) == sorted([linker.MANIFEST, linker.LOCK, "mine-own.safetensors"])
    assert (unet_run / "mine-own.safetensors").read_bytes() == b"kept"
    assert json.loads((unet_run / linker.MANIFEST).read_text())["links"] == {}
    assert assert_manifest_equals_disk(new, m / "loras" / RUN) == 11
    again = linker.sync(out, RUN, linker.models_dir_destinations(m))
    assert not again.moved and not again.linked and len(again.unchanged) == 11
