"""Follow latency: from a checkpoint's rename into ``checkpoint-N/`` to its row in the follower's state
and grid, minus the time the server spent rendering it.

A real ComfyUI server on 127.0.0.1 (CPU, the tiny SD3.5-Medium-shaped model, a LoRA written by PEFT's
own saver as SimpleTuner does), the follower as a user runs it (``python -m sd35wb.sweep --follow``, a
child process), and a stand-in trainer (tools/simpletuner_trainer.py) saving checkpoints in
SimpleTuner's order, one at a time, each after the previous row is in the grid, at save times spread
over the poll interval. Two ways to learn of a checkpoint, side by side on the same server:

- poll: ``--follow OUTPUT_DIR`` with the default ``--poll 2``: a sync through the server's route every 2 s;
- webhook: the trainer posts SimpleTuner's raw ``training.checkpoint`` event to the server's webhook
  route (which links), and the follower long-polls ``/sd35wb/simpletuner/events``.

Per checkpoint: t_state (the state file holds its image), t_grid (the follower's ``grid:`` line after
it), render = the server's execution_start -> execution_success of its prompt (/history). Latency =
t - t_rename - render. Target: grid latency <= 2 s (median).

Run: $COMFYUI_PYTHON bench/sweep_follow.py [--checkpoints 6] [--modes poll,webhook]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))

from tools.sweep_host import lora_workflow  # noqa: E402 - after the repository is on sys.path

TARGET = 2.0
POLL = 2.0  # the CLI's default --poll


def _workflow(path: Path) -> Path:
    path.write_text(json.dumps(lora_workflow(prefix="bench_follow")))
    return path


class Watch:
    """The follower's stdout lines with their arrival times, and the state file's models as they appear."""

    def __init__(self, proc, state: Path):
        self.proc, self.state = proc, state
        self.lines: list[tuple[float, str]] = []
        self.seen: dict[str, float] = {}
        self.done = False
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._poll, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.time(), line))
        self.done = True

    def _poll(self):
        while not self.done:
            try:
                cells = json.loads(self.state.read_text())["cells"]
            except (OSError, ValueError, KeyError):
                cells = {}
            now = time.time()
            for e in cells.values():
                self.seen.setdefault(e["model"], now)
            time.sleep(0.01)

    def grid_with(self, rows: int, t: float) -> float | None:
        """When the follower first printed a grid of ``rows`` rows or more, at or after ``t``."""
        for ts, line in list(self.lines):
            m = re.match(r"grid: .* \((\d+) rows;", line)
            if ts >= t and m and int(m.group(1)) >= rows:
                return ts
        return None

    def wait_grid(self, model: str, rows: int, t: float, timeout: float = 300) -> tuple[float, float]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if (g := self.grid_with(rows, t)) is not None:
                while model not in self.seen and time.time() < deadline:  # the state is written before the grid
                    time.sleep(0.01)
                return min(self.seen.get(model, g), g), g
            if self.done:
                break
            time.sleep(0.01)
        raise RuntimeError(f"{model} never reached the grid; follower said:\n" + "".join(s for _, s in self.lines))


def _render_seconds(server, lora_name: str) -> float:
    for entry in server.get_json("/history?max_items=100000").values():
        if entry["prompt"][2].get("2", {}).get("inputs", {}).get("lora_name") != lora_name:
            continue
        msgs = {kind: d["timestamp"] for kind, d in entry["status"]["messages"]}
        return (msgs["execution_success"] - msgs["execution_start"]) / 1000
    raise RuntimeError(f"no execution of {lora_name} in the server's history")


def _follower(*args) -> subprocess.Popen:
    """``python -m sd35wb.sweep`` as a user starts it, in its own process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-u", "-m", "sd35wb.sweep", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_mode(mode: str, server, root: Path, weights: bytes, n: int, work: Path) -> list[dict]:
    from tools.simpletuner_trainer import Trainer

    run = f"bench-{mode}"
    out_dir = root / run
    hook = f"{server.url}/sd35wb/simpletuner/webhook?run={run}" if mode == "webhook" else None
    trainer = Trainer(out_dir, weights, limit=n + 2, webhook=hook, half_pause=0.0, marker_pause=0.0)
    out = work / f"{mode}.png"
    follow = ["--follow"] if mode == "webhook" else ["--follow", str(out_dir)]
    proc = _follower("--workflow", _workflow(work / "wf.json"), "--lora-run", run, *follow, "--server", server.url,
               "--out", out, "--poll", str(POLL))
    watch = Watch(proc, out.with_name(out.stem + ".sweep.json"))
    rows = []
    try:
        while not any("follow: watching" in s for _, s in watch.lines):
            time.sleep(0.05)
        for k in range(n):
            time.sleep(0.5 + (k * 0.77) % POLL)  # save times spread over the poll's phase
            step = 100 * (k + 1)
            trainer.save(step)
            name = f"{run}/checkpoint-{step}.safetensors"
            t0 = trainer.times[step]["renamed"]
            t_state, t_grid = watch.wait_grid(name, k + 1, t0)
            render = _render_seconds(server, name)
            rows.append({"step": step, "state": t_state - t0 - render, "grid": t_grid - t0 - render, "render": render})
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return rows


def _spread(xs) -> str:
    return f"median {statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=6, help="checkpoints saved per mode")
    ap.add_argument("--modes", default="poll,webhook")
    ap.add_argument("--device", default="cpu", choices=["cpu"], help="the server runs on CPU (latency, not speed)")
    args = ap.parse_args()
    from tools import host

    host.use_host_python()  # the LoRA is written by PEFT and diffusers, from the test-tools layer
    from tools import lora_fixtures, tiny_models
    from tools.comfy_server import ComfyServer, prepare_base

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("poll", "webhook") for m in modes) or args.checkpoints < 1:
        ap.error("--modes: poll and/or webhook; --checkpoints >= 1")
    models = tiny_models.build_all()
    weights = lora_fixtures.build_all()["sd3-peft"].read_bytes()
    with tempfile.TemporaryDirectory(prefix="sd35wb-bench-follow-") as tmp:
        tmp = Path(tmp)
        root = tmp / "runs"
        root.mkdir()
        roots = {"loras": [tmp / "models" / "loras"]}
        for folder, paths in tiny_models.model_dirs(models).items():
            roots.setdefault(folder, []).extend(paths)
        cfg = prepare_base(tmp / "base", roots, {"sd35wb_testnodes": REPO / "tests" / "testnodes"})
        server = ComfyServer(tmp / "base", cfg, env={"SD35WB_TRAINING_ROOTS": str(root)}).start()
        results = {}
        try:
            for mode in modes:
                results[mode] = run_mode(mode, server, root, weights, args.checkpoints, tmp)
        finally:
            server.stop()
    ok = True
    for mode, rows in results.items():
        for r in rows:
            print(f"{mode:>7} checkpoint-{r['step']}: render {r['render']:.2f} s; rename -> state {r['state']:.2f} s, "
                  f"-> grid {r['grid']:.2f} s (render time taken off)", flush=True)
        grid = [r["grid"] for r in rows]
        print(f"{mode:>7}: follow latency to the grid {_spread(grid)}; to the state "
              f"{_spread([r['state'] for r in rows])}; render {_spread([r['render'] for r in rows])} "
              f"(target <= {TARGET} s, median of {len(rows)})", flush=True)
        ok &= statistics.median(grid) <= TARGET
    print(json.dumps({m: round(statistics.median(r["grid"] for r in rows), 3) for m, rows in results.items()}))
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
