"""What the memory-measuring benches share: each measurement in a fresh child process (nothing one
load leaves behind reaches the next), its peak RSS from /proc, its result as the last stdout line (JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def status_kib(field: str) -> int:
    """One /proc/self/status field in KiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak() -> int:
    """Reset this process's peak RSS (VmHWM) to its current RSS, so the peak measured next is the
    measured work's own (setup is not it); returns that RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kib("VmRSS")


def run(script: str, args: list[str]) -> dict:
    """``script --child ARGS...`` in this python, the repo on PYTHONPATH (the caller's entries kept):
    its last stdout line as JSON. A failed child prints its output's tail and exits 2."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True, env=env)
    if p.returncode:
        sys.stderr.write(p.stdout[-2000:] + p.stderr[-6000:])
        raise SystemExit(2)
    return json.loads(p.stdout.strip().splitlines()[-1])
