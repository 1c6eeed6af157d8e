"""Browser tier: the "Sync now" button on the SimpleTuner linker links a run through the route and the
loaders' model lists show the new checkpoints without reloading the page."""

from __future__ import annotations

from browser.ui_ready import widget_point

from tools import simpletuner_fixtures as stf

ROUTE = "/sd35wb/simpletuner/sync"


def test_sync_now_button_links_and_refreshes_model_lists(page, server, training_root):
    run = training_root / "browser-run"
    for step in (500, 1500):
        stf.fake_checkpoint(run, step)
    calls = []
    page.on("request", lambda r: calls.append((r.method, r.url, r.post_data)) if ROUTE in r.url else None)
    page.wait_for_function("() => window.app.extensions.some(e => e.name === 'sd35wb.simpletuner')", timeout=30_000)
    before = page.evaluate("""() => {
        const g = window.app.graph;
        const link = window.LiteGraph.createNode("SD35WB_SimpleTunerLink");
        link.pos = [60, 60];
        g.add(link);
        link.widgets.find(w => w.name === "output_dir").value = "browser-run";
        link.widgets.find(w => w.name === "run").value = "browser-run";
        const unet = window.LiteGraph.createNode("UNETLoader");
        unet.pos = [600, 60];
        g.add(unet);
        window.app.canvas.ds.offset = [0, 0];
        window.app.canvas.ds.scale = 1;
        window.app.canvas.setDirty(true, true);
        window.__st = {link, unet};
        return unet.widgets.find(w => w.name === "unet_name").options.values;
    }""")
    assert "browser-run/checkpoint-500.safetensors" not in before
    # Click the button where the canvas draws it, as a user would.
    x, y = widget_point(page, "window.__st.link", "Sync now")
    # Point, then press: litegraph turns a press into a drag when a pointer move comes in more than
    # 150 ms after the press (CanvasPointer.bufferTime), which a loaded machine can do with the move
    # that arrives with the press; a user's pointer has long arrived when they press.
    page.mouse.move(x, y)
    page.wait_for_timeout(300)
    assert widget_point(page, "window.__st.link", "Sync now") == (x, y), "the button moved while the pointer came"
    page.mouse.down()
    page.mouse.up()
    try:
        page.wait_for_function("() => window.__st.link.sd35wbLastSync !== undefined", timeout=60_000)
    except Exception as e:  # say what the click met, for the next reader of a CI log
        there = page.evaluate("([x, y]) => { const el = document.elementFromPoint(x, y); "
                              "return el && (el.tagName + '.' + el.className); }", [x, y])
        raise AssertionError(f"the click at ({x:.0f}, {y:.0f}) on {there} did not sync; requests: {calls}") from e
    result = page.evaluate("() => window.__st.link.sd35wbLastSync")
    assert result["ok"], result
    assert [c[0] for c in calls] == ["POST"] and '"output_dir":"browser-run"' in calls[0][2]
    names = ["browser-run/checkpoint-500.safetensors", "browser-run/checkpoint-1500.safetensors"]
    assert result["exposed"]["diffusion_models"] == names
    page.wait_for_function(
        "(n) => n.every(x => window.__st.unet.widgets.find(w => w.name === 'unet_name').options.values.includes(x))",
        arg=names, timeout=30_000)
    assert not [e for e in page.js_errors if "sd35wb" in e], page.js_errors
