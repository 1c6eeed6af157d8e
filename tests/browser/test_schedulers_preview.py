"""Browser tier: after a run the real frontend shows the schedule picture on the preview and scheduler nodes."""

PROMPT = {
    "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-sd15.safetensors", "weight_dtype": "default"}},
    "2": {"class_type": "SD35WB_HighSigmaScheduler", "inputs": {
        "model": ["1", 0], "steps": 12, "width": 1024, "height": 768, "shape": "karras", "rho": 7.0, "base_resolution": 0,
        "rule": "area", "flow_rule": "sqrt_area", "only_scale_up": True, "sigma_max_override": 0.0,
        "sigma_min_override": 0.0, "shift_override": 0.0}},
    "3": {"class_type": "SD35WB_SigmaPreview", "inputs": {"sigmas": ["2", 0], "title": "browser", "compare_with": "karras",
                                                           "model": ["1", 0]}},
}


def test_preview_image_appears_on_the_nodes_after_a_run(page):
    page.evaluate("async (p) => { await window.app.loadApiJson(p, 'sched.json'); }", PROMPT)
    ids = page.evaluate("() => window.app.graph._nodes.map(n => [n.id, n.comfyClass || n.type])")
    by_class = {cls: nid for nid, cls in ids}
    assert {"SD35WB_HighSigmaScheduler", "SD35WB_SigmaPreview"} <= set(by_class), ids
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    for cls in ("SD35WB_SigmaPreview", "SD35WB_HighSigmaScheduler"):
        nid = by_class[cls]
        page.wait_for_function(
            """(id) => { const o = window.app.nodeOutputs && window.app.nodeOutputs[String(id)];
                         const n = window.app.graph.getNodeById(id);
                         return (o && o.images && o.images.length > 0) && n && n.imgs && n.imgs.length > 0
                                && n.imgs[0].complete && n.imgs[0].naturalWidth === 768; }""",
            arg=nid, timeout=120_000)
    assert not [e for e in page.js_errors if "sd35wb" in e.lower()], page.js_errors
