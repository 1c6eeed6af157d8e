"""Fine-tune detection in the SimpleTuner linker: what it adds to a sync of a 1,000-checkpoint run.

    $COMFYUI_PYTHON bench/finetune_detect_speed.py

Prints, measured side by side in this one run (interleaved repeats, CPU-time medians): a re-sync with
nothing new (which now includes one detection per exposed checkpoint) and the detections alone
(header + the run's configs read once), and their ratio. No ComfyUI or torch needed.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sd35wb import finetune, linker  # noqa: E402
from tools.simpletuner_fixtures import fake_checkpoint, write_empty_safetensors  # noqa: E402

N_CHECKPOINTS = 1000
REPEATS = 5


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "train" / "vpred-run"
        for step in range(1, N_CHECKPOINTS + 1):
            fake_checkpoint(out, step * 100, accelerate=False, model_dir="unet", writer=write_empty_safetensors)
        (out / "config.json").write_text(json.dumps({"--model_family": "sdxl", "--prediction_type": "v_prediction",
                                                     "--rescale_betas_zero_snr": True}))
        dirs = {"diffusion_models": Path(tmp) / "models" / "diffusion_models", "loras": Path(tmp) / "models" / "loras"}
        first = linker.sync(out, None, dirs, roots=str(Path(tmp) / "train"))
        names = first.exposed["diffusion_models"]
        assert len(names) == N_CHECKPOINTS and all(d["prediction"]["value"] == "v" for d in first.detected.values())
        sync_t, detect_t = [], []
        for _ in range(REPEATS):
            t0 = time.process_time()
            again = linker.sync(out, None, dirs, roots=str(Path(tmp) / "train"))
            sync_t.append(time.process_time() - t0)
            assert not again.linked
            t0 = time.process_time()
            run = finetune.run_claims(out)
            for n in names:
                finetune.detect_checkpoint(dirs["diffusion_models"] / n, out, run)
            detect_t.append(time.process_time() - t0)
        s, d = statistics.median(sync_t), statistics.median(detect_t)
        print(f"run of {N_CHECKPOINTS} checkpoints, {REPEATS} interleaved repeats, CPU-time medians")
        print(f"  re-sync (nothing new, detections included): {s:8.3f} s")
        print(f"  the {N_CHECKPOINTS} detections alone:                 {d:8.3f} s")
        print(f"  detections / re-sync:                       {d / s:8.3f}")


if __name__ == "__main__":
    main()
