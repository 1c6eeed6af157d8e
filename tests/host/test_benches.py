"""Host tier: the SLG benches and the sweep scores bench run to the end on the real host at their smallest settings.

A bench that crashes measures nothing, and nothing else runs them: ``slg_speed.py`` and
``slg_explorer_full.py`` both crashed for a while after ``build_guider`` began returning its SLG
values too. Here each runs in its own process (as a user runs it) and must reach its equality
check; the times of these tiny runs are not figures and are not judged.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def bench(*args: str) -> str:
    p = subprocess.run([sys.executable, str(REPO / "bench" / args[0]), *args[1:], "--device", "cpu"], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert "Traceback" not in out, out[-4000:]
    return out


def test_slg_speed_runs_to_its_equality_check():
    out = bench("slg_speed.py", "--rows", "smoke")
    m = re.search(r"max \|ours - core\| on the final latent: (\S+) \(tolerance (\S+)\)", out)
    assert m, out[-3000:]
    assert float(m.group(1)) <= float(m.group(2))
    assert "ratios of medians  ours/CFG" in out and "row floor over CFG" in out


def test_slg_explorer_full_runs_both_explorer_paths_to_their_equality_check():
    out = bench("slg_explorer_full.py", "--k", "3", "--repeats", "1", "--size", "16", "--steps", "6")
    m = re.search(r"max \|explorer - separate\| on the final latents, both explorer paths (\S+) \(tolerance (\S+)\)",
                  out)
    assert m, out[-3000:]
    assert float(m.group(1)) <= float(m.group(2))
    assert re.search(r"explorer / \(CFG run \+ 3 SLG runs\): \S+ measured; joint-block rows \d+ vs \d+ = \S+; MMDiT "
                     r"forward calls 6 vs 24", out), out[-3000:]
    assert "sensitivity map ('each', 1 probe), whole run" in out and "\nOK\n" in out


def test_sweep_scores_smoke_reaches_its_time_and_memory_checks():
    out = bench("sweep_scores.py", "--smoke")
    assert re.search(r"wall: render s/image \S+ \(\S+\); CLIP s/image \S+ \(\S+\); DINOv2 s/image \S+ \(\S+\); "
                     r"scoring / render \S+", out), out[-3000:]
    assert "the same images in every run: yes" in out, out[-3000:]
    assert "scoring models resident after scoring: none" in out and "smoke: OK" in out, out[-3000:]


def test_sweep_follow_measures_both_ways_of_hearing_of_a_checkpoint():
    out = bench("sweep_follow.py", "--checkpoints", "1")
    for mode in ("poll", "webhook"):
        assert re.search(rf"{mode}: follow latency to the grid median \S+ s .* \(target <= 2.0 s, median of 1\)", out), \
            out[-3000:]
