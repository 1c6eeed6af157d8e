"""Unit tier: SLG layer parsing, the two gating rules and the batched path's row plan (no ComfyUI)."""

import pytest

from sd35wb import presets
from sd35wb import slg as S


def test_layers_parse_and_sort():
    assert S.parse_layers("7, 8, 9", 24) == [7, 8, 9]
    assert S.parse_layers(" 9 7;8 8 ", 24) == [7, 8, 9]
    assert S.parse_layers("", 24) == []
    assert S.format_layers([7, 8, 9]) == "7, 8, 9"


def test_layer_beyond_block_count_names_input_count_and_range():
    with pytest.raises(ValueError) as e:
        S.parse_layers("7, 24", 24)
    msg = str(e.value)
    assert msg.startswith("layers:") and "block 24 does not exist" in msg and "24 joint blocks" in msg and "0-23" in msg
    with pytest.raises(ValueError, match=r"^layers: '-1' is not a block number|^layers: block -1"):
        S.parse_layers("-1", 24)
    with pytest.raises(ValueError, match=r"^layers: 'seven' is not a block number"):
        S.parse_layers("seven", 24)


def test_window_validation():
    S.validate_window(0.01, 0.2, "steps")
    with pytest.raises(ValueError, match=r"^gating:"):
        S.validate_window(0.01, 0.2, "time")
    with pytest.raises(ValueError, match=r"^end: 1.5 is outside 0-1"):
        S.validate_window(0.0, 1.5, "sigma")
    with pytest.raises(ValueError, match=r"start \(0.3\) is after end \(0.2\)"):
        S.validate_window(0.3, 0.2, "steps")


def test_step_window_is_stabilitys_strict_rule():
    # sd3_impls.SkipLayerCFGDenoiser: step > start*steps and step < end*steps
    m = presets.SLG_STABILITY_MEDIUM
    active = [i for i in range(50) if S.step_active(i, 50, m["start"], m["end"])]
    assert active == list(range(1, 10))
    assert not S.step_active(0, 10, 0.0, 1.0)  # the reference never applies SLG on its first call
    assert [i for i in range(10) if S.step_active(i, 10, 0.0, 1.0)] == list(range(1, 10))


def test_sigma_window_is_cores_rule():
    assert S.sigma_active(0.5, 0.9, 0.1)
    assert S.sigma_active(0.9, 0.9, 0.1) and S.sigma_active(0.1, 0.9, 0.1)
    assert not S.sigma_active(0.95, 0.9, 0.1) and not S.sigma_active(0.05, 0.9, 0.1)
    assert S.always_active(0.0, 1.0, "sigma") and not S.always_active(0.0, 1.0, "steps")
    assert S.never_active(0.0, [7], 0.0, 1.0) and S.never_active(2.5, [], 0.0, 1.0)


def test_nearest_step_maps_a_call_to_its_step():
    sched = [1.0, 0.8, 0.5, 0.2, 0.0]
    assert [S.nearest_step(s, sched) for s in sched[:-1]] == [0, 1, 2, 3]
    assert S.nearest_step(0.79, sched) == 1  # an intermediate evaluation counts toward the nearest step
    assert S.nearest_step(0.01, sched) == 3  # never the terminal 0


def test_row_plan_pairs_skip_chunks_with_their_positive_twins_by_uuid():
    skip_map = {"s1": "p1", "s2": "p2"}
    # The host reverses the cond order in a batch: [skip, neg, pos]
    plan = S.plan_rows(["s1", "n", "p1"], skip_map)
    assert plan.skip == (0,) and plan.shared_map == {0: 2}
    assert plan.prefix_run() == [1, 2] and plan.skipped_run() == [1, 2]
    # Combined conditioning: two positive entries, each with its own twin, any order
    plan = S.plan_rows(["s2", "s1", "n", "p2", "p1"], skip_map)
    assert plan.shared_map == {0: 3, 1: 4}
    # Memory split: the skip chunk arrives alone and must be computed in full
    plan = S.plan_rows(["s1"], skip_map)
    assert plan.skip == (0,) and plan.shared == () and plan.prefix_run() == [0] and plan.skipped_run() == []
    # A call without skip rows is left alone
    assert S.plan_rows(["n", "p1"], skip_map).skip == ()


def test_row_plan_never_takes_a_twin_from_another_cond():
    # The host's area handling copies a negative entry, uuid included, into the positive list, so
    # the uuid "u" names a negative chunk and a positive chunk; only the positive one is the twin.
    skip_map = {"s": "u"}
    plan = S.plan_rows(["s", "u", "u"], skip_map, rows=[2, 0, 1])
    assert plan.shared_map == {0: 1}
    plan = S.plan_rows(["s", "u", "u"], skip_map, rows=[2, 1, 0])
    assert plan.shared_map == {0: 2}
    # Two positive chunks with the same uuid: ambiguous, so the skip chunk computes its own prefix
    plan = S.plan_rows(["s", "u", "u"], skip_map, rows=[2, 0, 0])
    assert plan.shared == () and plan.prefix_run() == [0, 1, 2]


def test_segments_merge_contiguous_reads():
    assert S.merge_segments([("out", 0), ("out", 1), ("in", 2)]) == [("out", 0, 2), ("in", 2, 3)]
    assert S.merge_segments([("out", 1), ("out", 0), ("out", 1)]) == [("out", 1, 2), ("out", 0, 2)]


def test_public_cond_indices_show_skip_rows_as_positive():
    assert S.public_cond_or_uncond([2, 1, 0], 2) == [0, 1, 0]


def test_presets_resolve_from_the_shared_table():
    fields = {"layers": "1", "scale": 1.0, "start": 0.0, "end": 1.0, "gating": "sigma"}
    ref = S.resolve_slg("SD3.5 Medium (Stability reference)", fields, None, presets.SLG_PRESETS)
    assert ref == {"layers": "7, 8, 9", "scale": 2.5, "start": 0.01, "end": 0.2, "gating": "steps"}
    assert S.resolve_slg("custom", fields, None, presets.SLG_PRESETS) == fields
    assert S.resolve_slg("from settings", fields, None, presets.SLG_PRESETS) == fields
    large = S.resolve_slg("from settings", fields, presets.recommended_settings("large"), presets.SLG_PRESETS)
    assert large["scale"] == 0.0 and large["layers"] == ""
    with pytest.raises(ValueError, match=r"^preset: unknown preset"):
        S.resolve_slg("nope", fields, None, presets.SLG_PRESETS)
    with pytest.raises(ValueError, match=r"^settings: the connected settings carry no 'slg'"):
        S.resolve_slg("from settings", fields, {"variant": "medium"}, presets.SLG_PRESETS)
