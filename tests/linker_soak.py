"""Soak the linker while a SimpleTuner run rotates underneath (not collected by pytest).

    python tests/linker_soak.py [--seconds 60] [--threads 3]

One thread saves checkpoints as fast as it can (sharded EMA, single EMA, LoRA + EMA LoRA, in turn),
deletes the oldest beyond three and re-saves a rolling checkpoint's sharded EMA now and then; the
other threads sync the run in a loop. Prints the syncs made, every exception by kind (expected:
none), and whether the manifest equals the disk after a last quiet sync. No ComfyUI needed.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402
from linker_helpers import assert_manifest_equals_disk  # noqa: E402

from sd35wb import linker  # noqa: E402
from tools.simpletuner_fixtures import fake_checkpoint, write_sharded_np  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--threads", type=int, default=3)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="sd35wb-soak-"))
    root, models = base / "runs", base / "models"
    out = root / "run"
    for f in ("unet", "diffusion_models", "loras"):
        (models / f).mkdir(parents=True)
    os.environ[linker.ROOTS_ENV] = str(root)
    for step in (100, 200):
        fake_checkpoint(out, step, ema="sharded")
    fake_checkpoint(out, 150, suffix="-rolling", ema="sharded")
    dest = linker.models_dir_destinations(models)
    stop, saved, syncs, errors = threading.Event(), [0], [0], collections.Counter()

    def simpletuner():
        step, rng = 300, np.random.default_rng(1)
        while not stop.is_set():
            kind = ("sharded", "single", "lora")[step // 100 % 3]
            if kind == "lora":
                fake_checkpoint(out, step, kind="lora", ema="lora")
            else:
                fake_checkpoint(out, step, ema=kind)
            ckpts = sorted(out.glob("checkpoint-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))
            for old in ckpts[:-3]:
                shutil.rmtree(old, ignore_errors=True)
            if step % 500 == 0:
                ema = out / "checkpoint-150-rolling" / "transformer_ema"
                shutil.rmtree(ema, ignore_errors=True)
                write_sharded_np(ema, {f"b{i}.w": rng.standard_normal((4, 3)).astype(np.float32) for i in range(5)},
                                 per_shard=2)
            saved[0] += 1
            step += 100

    def syncer():
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            try:
                linker.sync(out, "run", dest)
                syncs[0] += 1
            except Exception as e:  # noqa: BLE001 - counted and printed: the soak expects none
                errors[f"{type(e).__name__}: {str(e)[:200]}"] += 1

    st = threading.Thread(target=simpletuner, daemon=True)
    st.start()
    workers = [threading.Thread(target=syncer) for _ in range(args.threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    st.join()
    linker.sync(out, "run", dest)
    links = assert_manifest_equals_disk(models / "diffusion_models" / "run", models / "loras" / "run")
    print(f"{args.seconds:.0f} s, {args.threads} sync threads: {syncs[0]} syncs while {saved[0]} checkpoints were "
          f"saved and rotated; exceptions: {sum(errors.values())}")
    for what, n in errors.most_common():
        print(f"  {n} x {what}")
    print(f"after a last quiet sync the manifest equals the disk ({links} links)")
    shutil.rmtree(base, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
