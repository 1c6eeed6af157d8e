"""Unit tier: the overrides table's rules decide what the reports call overridden (no ComfyUI)."""

from sd35wb import overrides as O


def test_settings_override_the_sampler_widgets_only_when_connected_and_on():
    given = {"steps": 50, "cfg": 4.0, "sampler_name": "dpmpp_2m", "scheduler": "sgm_uniform",
             "sampling_from_settings": True, "preset": "custom"}
    used = {"steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "sgm_uniform"}
    (line,) = O.report_lines("SD35WB_SLGSampler", given, used, {"settings"})
    assert line.startswith("warning: steps=50, cfg=4, sampler_name='dpmpp_2m' on the node did not run")
    assert "settings wins (from settings): steps=4, cfg=1, sampler_name='euler'" in line
    assert O.report_lines("SD35WB_SLGSampler", given, used, set()) == []
    assert O.report_lines("SD35WB_SLGSampler", {**given, "sampling_from_settings": False}, used, {"settings"}) == []


def test_a_named_preset_that_contradicts_its_fields_warns_and_one_that_matches_does_not():
    given = {"preset": "ComfyUI core defaults", "layers": "7, 8, 9", "scale": 2.5, "start": 0.01, "end": 0.2,
             "gating": "steps"}
    used = {"layers": "7, 8, 9", "scale": 3.0, "start": 0.01, "end": 0.15, "gating": "sigma"}
    (line,) = O.report_lines("SD35WB_SLGGuider", given, used, set())
    assert "scale=2.5, end=0.2, gating='steps' on the node did not run: preset wins" in line
    assert "layers" not in line.split("did not run")[0]
    assert O.report_lines("SD35WB_SLGGuider", {**given, **used}, used, set()) == []
    assert O.report_lines("SD35WB_SLGGuider", {**given, "preset": "custom"}, used, set()) == []


def test_ignored_inputs_give_notes_and_axes_override_only_the_named_widgets():
    assert O.report_lines("SD35WB_LCMLoraSampler", {"cfg": 1.0, "strength": 1.0}, {}, {"negative"}) == [
        "note: negative has no effect (unused at cfg 1)"]
    assert O.report_lines("SD35WB_LCMLoraSampler", {"cfg": 1.5, "strength": 1.0}, {}, {"negative"}) == []
    rules = O.active("SD35WB_CheckpointSweep", {"axes": "cfg=3,4\n# steps=2\nbad; denoise = 0.5", "prompts": " "},
                     {"model"})
    assert [(r["by"], t) for r, t in rules] == [("axes", ["cfg", "denoise"]), ("prompts", ["clip"]),
                                                 ("model", ["weight_dtype"])]
    assert O.axis_names("cfg=3,4\n# steps=2\nbad; denoise = 0.5") == ["cfg", "denoise"]


def test_payload_is_the_table():
    assert O.payload() == {"version": O.VERSION, "nodes": O.OVERRIDES}
