"""Unit tier: the scoreboard (scores against training step), its CSV / JSON / PNG files, and the
scores written under the grid's row labels (plain modules, no host)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from sd35wb import grid
from sd35wb import scoreboard as SB

METRICS = {"clip": {"label": "prompt adherence (CLIP score)", "better": "higher", "unit": "0-100"},
           "memorisation": {"label": "memorisation (DINOv2 cosine)", "better": "lower", "unit": "0-1"},
           "diversity": {"label": "seed diversity", "better": "higher", "unit": "0-1"},
           "drift": {"label": "drift from the base", "better": "lower", "unit": "0-1"}}
NOT_COMPUTED = {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, "n": 0}


def _stat(mean, std=0.02, n=8, **kw):
    return {"mean": mean, "std": std, "min": mean - std, "max": mean + std, "n": n, **kw}


def lora_sweep(checkpoints=10, strengths=(0.6, 0.8, 1.0), metrics=("clip", "memorisation", "drift")):
    """A LoRA run's sweep: the base (strength 0) and every checkpoint at every strength; diversity not computed."""
    def scores(k, s):
        out = {"clip": _stat(30 + s * k * 0.3, 1.1), "diversity": NOT_COMPUTED,
               "memorisation": _stat(0.4 + 0.05 * s * k, nearest=f"train/img_{k:03d}.png"), "drift": _stat(0.04 * s * k)}
        return {m: v for m, v in out.items() if m in metrics or m == "diversity"}

    rows = [{"label": "base", "model": "sd3.5_medium.safetensors", "step": None, "strength": 0.0, "base": True,
             "scores": scores(0, 0.0)}]
    rows += [{"label": f"checkpoint-{250 * k}", "model": f"run/checkpoint-{250 * k}.safetensors", "step": 250 * k,
              "strength": s, "base": False, "scores": scores(k, s)} for k in range(1, checkpoints + 1) for s in strengths]
    return {"version": 1, "metrics": METRICS, "rows": rows, "thresholds": {"max_memorisation": 0.95, "max_drift": 0.4},
            "recommended": {"label": "checkpoint-1500", "step": 1500, "strength": 0.8, "rule": "best CLIP under the limits",
                            "why": "CLIP 31.4"}}


def _has(arr, box, color, line: str = "") -> bool:
    """Whether the panel holds ``color``: anywhere, or as a ``horizontal`` / ``vertical`` line (100+ px)."""
    x0, y0, x1, y1 = box
    hit = np.all(arr[y0:y1 + 1, x0 + 1:x1] == np.array(color, dtype=np.uint8), axis=-1)
    return bool(hit.any()) if not line else bool((hit.sum(axis=1 if line == "horizontal" else 0) >= 100).any())


def test_the_scoreboard_has_a_panel_per_score_with_the_base_its_limit_and_the_recommended_checkpoint():
    doc = lora_sweep()
    boxes = SB.panel_boxes(doc)
    assert [k for k, _ in boxes] == ["clip", "memorisation", "drift"], "diversity has n == 0 everywhere: no panel"
    arr = np.asarray(SB.draw_scoreboard(doc))
    assert arr.shape[1] == 1200
    for key, box in boxes:
        assert _has(arr, box, SB.BASE_COLOR, "horizontal"), f"{key}: the base as a dashed line"
        assert _has(arr, box, SB.REC_COLOR, "vertical"), f"{key}: the recommended checkpoint marked"
        for n in range(3):
            assert _has(arr, box, SB.PALETTE[n]), f"{key}: one line per strength"
        assert _has(arr, box, SB.LIMIT_COLOR, "horizontal") == (key in SB.THRESHOLDS), f"{key}: its limit, only its own"

    fewer = lora_sweep(metrics=("clip",))
    assert [k for k, _ in SB.panel_boxes(fewer)] == ["clip"]
    assert SB.draw_scoreboard(fewer).height < arr.shape[0]


def test_one_full_checkpoint_forty_rows_and_no_scores_all_draw():
    one = {"version": 1, "metrics": METRICS, "thresholds": {},
           "rows": [{"label": "my-finetune", "model": "ft/my-finetune.safetensors", "step": None, "strength": None,
                     "base": False, "scores": {"clip": _stat(31.2, 1.1), "memorisation": _stat(0.5, nearest="a.png")}}],
           "recommended": {"label": "my-finetune", "step": None, "strength": None, "rule": "only one", "why": ""}}
    arr = np.asarray(SB.draw_scoreboard(one))
    for _, box in SB.panel_boxes(one):
        assert _has(arr, box, SB.PALETTE[0]) and _has(arr, box, SB.REC_COLOR, "vertical")
    many = lora_sweep(checkpoints=40, strengths=(1.0,))
    assert len(many["rows"]) == 41 and SB.draw_scoreboard(many).width == 1200
    assert SB.draw_scoreboard({"version": 1, "rows": []}).width == 1200, "no scores: a picture that says so"
    with pytest.raises(ValueError, match="scores doc: version 2"):
        SB.draw_scoreboard({"version": 2, "rows": []})


def test_the_csv_carries_every_number_and_the_recommended_row():
    doc = lora_sweep(checkpoints=3)
    doc["rows"][1]["scores"].pop("drift")  # not computed for this row
    doc["recommended"].update(label="checkpoint-500", step=500)
    table = list(csv.DictReader(io.StringIO(SB.scores_csv(doc))))
    assert len(table) == len(doc["rows"])
    for row, line in zip(doc["rows"], table):
        assert line["label"] == row["label"] and line["model"] == row["model"]
        assert line["step"] == ("" if row["step"] is None else str(row["step"]))
        assert float(line["strength"]) == row["strength"] and line["base"] == str(row["base"]).lower()
        for m in METRICS:
            s = row["scores"].get(m)
            for f in SB.STATS:
                assert (line[f"{m}_{f}"] == "") if s is None else (float(line[f"{m}_{f}"]) == s[f])
        assert line["memorisation_nearest"] == row["scores"]["memorisation"]["nearest"]
    assert [(ln["label"], ln["strength"]) for ln in table if ln["recommended"] == "true"] == [("checkpoint-500", "0.8")]


def test_write_outputs_writes_all_three_files_whole(tmp_path):
    doc = lora_sweep(checkpoints=4)
    doc["rows"][2]["scores"]["clip"]["std"] = float("nan")  # JSON has no NaN: written as null
    stem = tmp_path / "out" / "grid"
    for _ in range(2):  # the second run replaces the sweep's own files
        paths = SB.write_outputs(doc, stem)
    assert [p.name for p in paths] == ["grid.scores.csv", "grid.scores.json", "grid-scoreboard.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths), "no temp files left"
    back = json.loads(paths[1].read_text())
    assert back["rows"][2]["scores"]["clip"]["std"] is None and back["rows"][3] == doc["rows"][3]
    assert paths[0].read_text() == SB.scores_csv(doc)
    with Image.open(paths[2]) as im:
        assert im.width == 1200
    (tmp_path / "x.scores.json").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        SB.write_outputs(doc, tmp_path / "x")
    assert not (tmp_path / "x.scores.csv").exists(), "nothing written when one file cannot be"


def test_scores_are_written_under_the_grid_row_labels():
    doc = lora_sweep(checkpoints=1, strengths=(1.0,), metrics=("clip", "memorisation", "drift"))
    note = SB.row_note(doc["rows"][1])
    assert note == "CLIP 30.3 \u00b11.1 \u00b7 mem 0.45 \u00b7 drift 0.04", "diversity (n == 0) is left out"
    tile = (96, 96)
    rows = [[Image.new("RGB", tile, (200, 30, 30))] * 2, [Image.new("RGB", tile, (30, 30, 200))] * 2]
    args = (rows, ["base", "step 250"], ["p1\nseed 1", "p1\nseed 2"], tile)
    plain = grid.sweep_pages(*args)[0]
    assert grid.sweep_pages(*args, row_notes=None)[0].tobytes() == plain.tobytes()
    assert grid.sweep_pages(*args, row_notes=["", ""])[0].tobytes() == plain.tobytes(), "empty notes draw nothing"
    noted = np.asarray(grid.sweep_pages(*args, row_notes=["", note])[0])
    label_w = noted.shape[1] - 2 * tile[0]
    head_h = noted.shape[0] - 2 * tile[1]
    assert tuple(noted[head_h + tile[1] + 48, label_w + 48]) == (30, 30, 200), "the tiles stay in place"
    labels = noted[:, :label_w].astype(int)
    bluish = labels[..., 2] - labels[..., 0] >= 20  # the note's colour; the labels are grey
    assert not bluish[:head_h + tile[1]].any(), "no note under row 1's label"
    assert bluish[head_h + tile[1] + 20:].sum() > 50, "row 2's scores under its label"
    with pytest.raises(ValueError, match="row_notes: 1 notes for 2 rows"):
        grid.sweep_pages(*args, row_notes=["x"])
