"""SimpleTuner linker: sync speed on a 1,000-checkpoint run, bytes copied, shard-merge peak memory.

    $COMFYUI_PYTHON bench/linker_speed.py

Prints, measured side by side in this one run:
- first sync vs second sync (nothing new) of a synthetic run of 1,000 full fine-tune checkpoints
  (valid safetensors with empty headers, SimpleTuner's folder layout and completion markers);
- bytes copied by that full-fine-tune sync (links only: 0);
- peak memory of merging a sharded EMA (diffusers layout) into one file, against the model size,
  for ``sd35wb.shards.merge_shards`` and for the naive load-everything-then-save approach, each in a
  fresh child process (peak RSS growth) and, for ours, Python's tracemalloc peak.
No ComfyUI or torch needed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sd35wb import linker  # noqa: E402
from tools.simpletuner_fixtures import fake_checkpoint, write_empty_safetensors  # noqa: E402

N_CHECKPOINTS = 1000
MODEL_MB = 192  # sharded EMA size for the merge measurement
LARGEST_MB = 24


def bench_sync(tmp: Path) -> None:
    out = tmp / "train" / "big-run"
    t0 = time.perf_counter()
    for step in range(1, N_CHECKPOINTS + 1):
        fake_checkpoint(out, step * 100, accelerate=False, writer=write_empty_safetensors)
    build = time.perf_counter() - t0
    dirs = {"diffusion_models": tmp / "models" / "diffusion_models", "loras": tmp / "models" / "loras"}
    first = linker.sync(out, None, dirs, roots=str(tmp))
    second = linker.sync(out, None, dirs, roots=str(tmp))
    fake_checkpoint(out, (N_CHECKPOINTS + 1) * 100, accelerate=False, writer=write_empty_safetensors)
    third = linker.sync(out, None, dirs, roots=str(tmp))
    shutil.rmtree(out / "checkpoint-100")
    fourth = linker.sync(out, None, dirs, roots=str(tmp))
    assert len(first.linked) == N_CHECKPOINTS and not second.linked and len(third.linked) == 1 and len(fourth.pruned) == 1
    print(f"run of {N_CHECKPOINTS} checkpoints (built in {build:.1f} s)")
    print(f"  first sync (link all):          {first.seconds:8.3f} s  ({len(first.linked)} linked)")
    print(f"  second sync (nothing new):      {second.seconds:8.3f} s  ({len(second.unchanged)} unchanged)")
    print(f"  one new checkpoint:             {third.seconds:8.3f} s")
    print(f"  one rotated away (pruned):      {fourth.seconds:8.3f} s")
    print(f"  ratio second / first sync:      {second.seconds / first.seconds:8.3f}")
    print(f"  bytes copied by the full-fine-tune sync: {first.bytes_copied}")


CHILD = r"""
import json, sys, tracemalloc
sys.path.insert(0, sys.argv[1])
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
mode, index, dest = sys.argv[2:5]
base = hwm()
if mode == "ours":
    from sd35wb import shards
    tracemalloc.start()
    shards.merge_shards(index, dest)
    peak_py = tracemalloc.get_traced_memory()[1]
else:
    import os
    from safetensors.numpy import load_file, save_file
    folder = os.path.dirname(index)
    wm = json.load(open(index))["weight_map"]
    sd = {}
    for shard in sorted(set(wm.values())):
        sd.update(load_file(os.path.join(folder, shard)))
    save_file(sd, dest)
    peak_py = None
print(json.dumps({"rss_growth": hwm() - base, "tracemalloc_peak": peak_py}))
"""


def bench_merge(tmp: Path) -> None:
    import numpy as np

    from tools.simpletuner_fixtures import write_sharded_np

    rng = np.random.default_rng(0)
    tensors = {"big.weight": rng.standard_normal(LARGEST_MB * 2**20 // 4).astype(np.float32)}
    left, i = MODEL_MB - LARGEST_MB, 0
    while left > 0:
        mb = min(left, 8)
        tensors[f"block.{i}.weight"] = rng.standard_normal(mb * 2**20 // 4).astype(np.float32)
        left -= mb
        i += 1
    folder = tmp / "checkpoint-100" / "transformer_ema"
    index = write_sharded_np(folder, tensors, per_shard=4)
    del tensors
    model = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    n_shards = len(list(folder.glob("*.safetensors")))
    res = {}
    for mode in ("ours", "naive"):
        dest = tmp / f"merged-{mode}.safetensors"
        r = subprocess.run([sys.executable, "-c", CHILD, str(REPO), mode, str(index), str(dest)],
                           capture_output=True, text=True, check=True)
        res[mode] = json.loads(r.stdout)
        assert dest.stat().st_size > 0.99 * model
    print(f"merge of a sharded EMA: {model / 2**20:.0f} MiB in {n_shards} shards, largest tensor {LARGEST_MB} MiB")
    ours, naive = res["ours"], res["naive"]
    print(f"  merge_shards peak RSS growth / model size:  {ours['rss_growth'] / model:6.3f}  ({ours['rss_growth'] / 2**20:.1f} MiB)")
    print(f"  merge_shards tracemalloc peak / model size: {ours['tracemalloc_peak'] / model:6.3f}  "
          f"({ours['tracemalloc_peak'] / 2**20:.1f} MiB; copy buffer 8 MiB, largest tensor {LARGEST_MB} MiB)")
    print(f"  naive load-all + save peak RSS / model size: {naive['rss_growth'] / model:6.3f}  ({naive['rss_growth'] / 2**20:.1f} MiB)")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sd35wb-linker-bench-") as d:
        bench_sync(Path(d))
    with tempfile.TemporaryDirectory(prefix="sd35wb-merge-bench-") as d:
        bench_merge(Path(d))


if __name__ == "__main__":
    main()
