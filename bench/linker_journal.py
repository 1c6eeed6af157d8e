"""SimpleTuner linker: what the lock, the journaled manifest and identity checks cost, side by side.

    $COMFYUI_PYTHON bench/linker_journal.py [--baseline REV] [--checkpoints N] [--repeats R]

Runs the linker of REV (default: main, unpacked with ``git archive`` into a temporary folder)
and this tree's linker in turn, interleaved, each in a fresh child process on its own copy of
the same synthetic run (N full fine-tune checkpoints in SimpleTuner's layout, half with a
sharded EMA that is merged), and prints the median CPU time (user + system, child process) of a
first sync (link + merge everything) and of a second sync (nothing new), and their ratios.
No ComfyUI or torch needed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
sys.path.insert(1, sys.argv[2])  # tools/ of this tree for the fixtures
from sd35wb import linker
from tools.simpletuner_fixtures import fake_checkpoint
tmp, n = sys.argv[3], int(sys.argv[4])
out = os.path.join(tmp, "runs", "bench-run")
from pathlib import Path
for i in range(1, n + 1):
    fake_checkpoint(Path(out), i * 100, accelerate=False, ema="sharded" if i % 2 else None)
dirs = {"diffusion_models": os.path.join(tmp, "models", "diffusion_models"), "loras": os.path.join(tmp, "models", "loras")}
kw = {"roots": os.path.join(tmp, "runs")} if "roots" in linker.sync.__code__.co_varnames else {}
def cpu():
    t = os.times()
    return t.user + t.system
t0 = cpu(); first = linker.sync(out, None, dirs, **kw); t1 = cpu(); second = linker.sync(out, None, dirs, **kw); t2 = cpu()
assert len(first.linked) == n + (n + 1) // 2 and not second.linked, (len(first.linked), len(second.linked))
print(json.dumps({"first": t1 - t0, "second": t2 - t1}))
"""


def unpack(rev: str, dest: Path) -> Path:
    tar = dest / "base.tar"
    with open(tar, "wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", rev, "sd35wb"], stdout=f, check=True)
    with tarfile.open(tar) as t:
        t.extractall(dest / "tree", filter="data")
    return dest / "tree"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default="main")
    ap.add_argument("--checkpoints", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    res = {"baseline": [], "this": []}
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", a.baseline + "^{commit}"],
                      capture_output=True).returncode != 0:
        print(f"baseline {a.baseline!r} is not a commit in this clone: nothing measured (pass --baseline REV)")
        return
    with tempfile.TemporaryDirectory(prefix="sd35wb-journal-bench-") as d:
        trees = {"baseline": unpack(a.baseline, Path(d)), "this": REPO}
        for r in range(a.repeats):
            for name in (("baseline", "this") if r % 2 == 0 else ("this", "baseline")):
                work = tempfile.mkdtemp(dir=d)
                p = subprocess.run([sys.executable, "-c", CHILD, str(trees[name]), str(REPO), work, str(a.checkpoints)],
                                   capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": ""})
                res[name].append(json.loads(p.stdout))
    med = {k: {s: statistics.median(x[s] for x in v) for s in ("first", "second")} for k, v in res.items()}
    n = a.checkpoints
    print(f"run of {n} checkpoints ({(n + 1) // 2} with a sharded EMA merged), {a.repeats} interleaved repeats, "
          f"median CPU seconds per sync")
    for s, label in (("first", "first sync (link + merge all)"), ("second", "second sync (nothing new)")):
        print(f"  {label:32s} {a.baseline}: {med['baseline'][s]:.3f}  this: {med['this'][s]:.3f}  "
              f"ratio this/{a.baseline}: {med['this'][s] / med['baseline'][s]:.2f}")


if __name__ == "__main__":
    main()
