"""Unit tier: the SLG explorer's candidate parsing, per-block row plan, work count and map numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sd35wb import slg_explorer as E


def test_each_means_every_single_block():
    assert E.parse_candidates("each", 4) == [(0,), (1,), (2,), (3,)]
    assert E.parse_candidates(" EACH ", 2) == [(0,), (1,)]


def test_groups_split_on_bars_sorted_and_deduplicated():
    assert E.parse_candidates("7,8,9 | 6 | 10,11", 24) == [(7, 8, 9), (6,), (10, 11)]
    assert E.parse_candidates("9 8 7 | 7,8,9 | 3", 24) == [(7, 8, 9), (3,)]


@pytest.mark.parametrize("text, match", [
    ("", r"^candidates: the candidate list is empty"),
    ("   ", r"^candidates: the candidate list is empty"),
    ("1 | | 2", r"^candidates: group 2 of '1 \| \| 2' is empty"),
    ("1 | , ", r"^candidates: group 2 of .1 \| ,. is empty"),
    ("1 | 4", r"^candidates: block 4 does not exist; this model has 4 joint blocks, so valid layers are 0-3"),
    ("1 | x", r"^candidates: 'x' is not a block number"),
])
def test_bad_candidates_name_the_input(text, match):
    with pytest.raises(ValueError, match=match):
        E.parse_candidates(text, 4)


def test_labels_and_order_by_first_skipped_block():
    cands = [(7, 8, 9), (6,), (10, 11), (6, 12)]
    assert E.candidate_label(cands[0]) == "skip 7,8,9"
    assert E.variant_order(cands) == [1, 3, 0, 2]
    assert E.chunk_variants([1, 3, 0, 2], 0) == [[1, 3, 0, 2]]
    assert E.chunk_variants([1, 3, 0, 2], 3) == [[1, 3, 0], [2]]
    assert E.chunk_variants([], 3) == []


def test_block_action_walks_prefix_take_pass_run():
    acts = [E.block_action((2, 4), j) for j in range(6)]
    assert acts == [E.CARRY, E.TAKE, E.PASS, E.RUN, E.PASS, E.RUN]
    assert [E.block_action((0,), j) for j in range(2)] == [E.PASS, E.RUN]
    # no positive twin in the call: compute the whole pass, as a separate SLG pass would
    assert [E.block_action((2, 4), j, has_twin=False) for j in range(6)] == [
        E.RUN, E.RUN, E.PASS, E.RUN, E.PASS, E.RUN]


def test_variant_block_plan_in_the_hosts_reversed_batch_order():
    # the host batches [pos, neg, v(1), v(3)] in reverse: v3, v1, neg, pos
    variants = {"v1": ("p", (1,)), "v3": ("p", (3,))}
    uuids, rows = ["v3", "v1", "n", "p"], [3, 2, 1, 0]
    # block 0 is the one before v1's first skip: v1 takes pos's output; v3 is carried untouched
    assert E.variant_block_plan(uuids, variants, 0, rows) == ([2, 3], [("in", 0), ("out", 1), ("out", 0),
                                                                       ("out", 1)])
    run, src = E.variant_block_plan(["v1", "n", "p"], {"v1": ("p", (1,))}, 0, [2, 1, 0])
    assert run == [1, 2] and src == [("out", 1), ("out", 0), ("out", 1)]
    # block 1: v1 passes it through, v3 is still carried, pos/neg compute
    run, src = E.variant_block_plan(uuids, variants, 1, rows)
    assert run == [2, 3] and src == [("in", 0), ("in", 1), ("out", 0), ("out", 1)]
    # block 2: v3 takes pos, v1 runs
    run, src = E.variant_block_plan(uuids, variants, 2, rows)
    assert run == [1, 2, 3] and src == [("out", 2), ("out", 0), ("out", 1), ("out", 2)]
    # beyond every skip: nothing to do
    assert E.variant_block_plan(uuids, variants, 4, rows) is None


def test_variant_without_its_twin_computes_its_own_prefix():
    # the host split the batch: the variant arrives alone (or only with the negative)
    assert E.variant_block_plan(["v"], {"v": ("p", (2,))}, 0, [2]) is None
    run, src = E.variant_block_plan(["v"], {"v": ("p", (2,))}, 2, [2])
    assert run == [] and src == [("in", 0)]
    # a uuid seen on a negative chunk (area conds copy entries) is not a twin
    assert E.variant_block_plan(["v", "p"], {"v": ("p", (2,))}, 0, [2, 1]) is None


def test_block_rows_for_24_single_block_candidates():
    rows = E.block_rows(E.parse_candidates("each", 24), 24)
    # separate: the positive pass (24) + 24 SLG passes of 23 blocks; shared: the positive + sum(23 - i)
    assert rows["separate"] == 24 + 24 * 23 == 576
    assert rows["shared"] == 24 + 276 == 300
    assert rows["ratio"] == pytest.approx(300 / 576)
    assert E.block_rows(E.parse_candidates("each", 24), 24, calls=3)["shared"] == 72 + 276
    assert E.block_rows([(7, 8, 9)], 24) == {"shared": 24 + 14, "separate": 24 + 21, "ratio": 38 / 45}
    assert E.patched_blocks([(7, 8, 9), (3,)]) == 10


def test_probe_steps_inside_the_window():
    sched = [1.0 - i / 10 for i in range(11)]
    assert E.probe_steps(sched, 0.01, 0.5, "steps", 1) == [3]  # active steps 1-4
    assert E.probe_steps(sched, 0.01, 0.5, "steps", 2) == [2, 4]
    assert E.probe_steps(sched, 0.01, 0.5, "steps", 9) == [1, 2, 3, 4]
    assert E.probe_steps(sched, 0.0, 1.0, "sigma", 1, sigma_start=0.75, sigma_end=0.55) == [4]
    with pytest.raises(ValueError, match=r"^start/end: the SLG window 0.0-0.05 \(steps\) holds no step"):
        E.probe_steps(sched, 0.0, 0.05, "steps", 1)
    with pytest.raises(ValueError, match=r"^probes:"):
        E.probe_steps(sched, 0.0, 1.0, "steps", 0)


def test_sensitivity_numbers_against_numpy():
    rng = np.random.default_rng(0)
    cond = rng.standard_normal((2, 16, 8, 8)).astype(np.float32)
    skips = [cond, cond * 0.5, -cond, cond + 1.0]
    s = E.sensitivity(cond, skips)
    c_rms = np.sqrt(np.mean(cond.astype(np.float64) ** 2))
    assert s["rms"][0] == 0 and s["cosine"][0] == pytest.approx(1.0)
    assert s["rms"][1] == pytest.approx(0.5 * c_rms) and s["relative_rms"][1] == pytest.approx(0.5)
    assert s["cosine"][2] == pytest.approx(-1.0) and s["relative_rms"][2] == pytest.approx(2.0)
    assert s["rms"][3] == pytest.approx(1.0)
    report = E.map_report([(0,), (1,), (2,), (3,)], [s, s], [1, 2], [0.9, 0.8], 4)
    assert report["ranking"][0] == "2" and report["labels"] == ["0", "1", "2", "3"]
    assert report["relative_rms"] == pytest.approx(s["relative_rms"])
    assert json.loads(json.dumps(report)) == report


def test_bar_chart_draws_a_red_bar_per_top_block():
    img = E.bar_chart([0.1, 0.9, 0.3, 0.5], ["0", "1", "2", "3"], "title", "sub", highlight=2)
    arr = np.asarray(img)
    assert img.height == 360 and img.width >= 64 + 16 + 4 * 10
    red = np.all(arr == np.array(E.BAR_TOP, dtype=np.uint8), axis=-1)
    blue = np.all(arr == np.array(E.BAR, dtype=np.uint8), axis=-1)
    assert red.sum() > 0 and blue.sum() > 0
    cols_red = np.where(red.any(axis=0))[0]
    cols_blue = np.where(blue.any(axis=0))[0]
    slot = (img.width - 80) / 4
    assert {int((c - 64) // slot) for c in cols_red} == {1, 3}
    assert {int((c - 64) // slot) for c in cols_blue} == {0, 2}
    # bar heights follow the values: bar 1 is 9x bar 0
    h = [int(red[:, c].sum() + blue[:, c].sum()) for c in (int(64 + (i + 0.5) * slot) for i in range(4))]
    assert h[1] == pytest.approx(9 * h[0], rel=0.1)
    with pytest.raises(ValueError, match="^values:"):
        E.bar_chart([1.0], ["a", "b"], "t")


def test_lane_groups_split_in_order():
    assert E.lane_groups(4, 0) == [[0, 1, 2, 3]]
    assert E.lane_groups(4, 2) == [[0, 1], [2, 3]]
    assert E.lane_groups(5, 2) == [[0, 1], [2, 3], [4]]


def test_lane_block_plan_per_lane_of_the_twin_chunk():
    """Chunks [positive, negative, twin], 3 lanes each: baseline (no layers), skip 2, skip 0,1."""
    lanes = [(), (2,), (0, 1)]
    uuids, twins, rows = ["p", "n", "t"], {"t": "p"}, [0, 1, 2]
    # block 0: lane 2 skips it (pass), lane 1 is before its prefix end (carry), the baseline's twin rows carry
    run, src = E.lane_block_plan(uuids, twins, lanes, 0, rows)
    assert run == list(range(6))
    assert src[6:] == [("in", 6), ("in", 7), ("in", 8)]
    # block 1: lane 1 takes its positive twin's output (the same lane of chunk 0), lane 2 passes
    run, src = E.lane_block_plan(uuids, twins, lanes, 1, rows)
    assert src[6:] == [("in", 6), ("out", 1), ("in", 8)]
    # block 2: lane 1 skips it, lane 2 computes
    run, src = E.lane_block_plan(uuids, twins, lanes, 2, rows)
    assert run == [0, 1, 2, 3, 4, 5, 8] and src[6:] == [("in", 6), ("in", 7), ("out", 6)]
    # block 3: every lane with layers runs; the baseline's twin rows are still never computed
    run, src = E.lane_block_plan(uuids, twins, lanes, 3, rows)
    assert run == [0, 1, 2, 3, 4, 5, 7, 8] and src[6] == ("in", 6)
    assert E.lane_block_plan(["p", "n"], twins, lanes, 0, [0, 1]) is None


def test_lane_block_plan_without_the_positive_in_the_call():
    """The host split the batch: the twin computes its own prefix (runs before its first skipped block)."""
    run, src = E.lane_block_plan(["t"], {"t": "p"}, [(), (2,)], 0, [2])
    assert run == [1] and src == [("in", 0), ("out", 0)]
    run, src = E.lane_block_plan(["t"], {"t": "p"}, [(), (2,)], 2, [2])
    assert run == [] and src == [("in", 0), ("in", 1)]
    # a positive uuid that is not unique (None) is never shared
    assert E.lane_block_plan(["p", "t"], {"t": None}, [(2,)], 1, [0, 2]) is None  # computes its own block 1
    assert E.lane_block_plan(["p", "t"], {"t": None}, [(2,)], 2, [0, 2]) == ([0], [("out", 0), ("in", 1)])
