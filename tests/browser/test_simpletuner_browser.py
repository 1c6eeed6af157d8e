"""Browser tier: the "Sync now" button on the SimpleTuner linker links a run through the route and the
loaders' model lists show the new checkpoints without reloading the page."""

from __future__ import annotations

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
    page.wait_for_function("""() => {
        const w = window.__st.link.widgets.find(w => w.type === "button");
        return w && Number.isFinite(w.last_y ?? w.y);
    }""", timeout=30_000)  # drawn at least once, so the widget knows where it is
    x, y = page.evaluate("""() => {
        const {link} = window.__st;
        const w = link.widgets.find(w => w.type === "button" && w.name === "Sync now");
        const wy = (w.last_y ?? w.y) + 10;
        const [cx, cy] = window.app.canvas.ds.convertOffsetToCanvas([link.pos[0] + link.size[0] / 2, link.pos[1] + wy]);
        const r = window.app.canvas.canvas.getBoundingClientRect();
        return [r.left + cx, r.top + cy];
    }""")
    page.mouse.click(x, y)
    page.wait_for_function("() => window.__st.link.sd35wbLastSync !== undefined", timeout=30_000)
    result = page.evaluate("() => window.__st.link.sd35wbLastSync")
    assert result["ok"], result
    assert [c[0] for c in calls] == ["POST"] and '"output_dir":"browser-run"' in calls[0][2]
    names = ["browser-run/checkpoint-500.safetensors", "browser-run/checkpoint-1500.safetensors"]
    assert result["exposed"]["diffusion_models"] == names
    page.wait_for_function(
        "(n) => n.every(x => window.__st.unet.widgets.find(w => w.name === 'unet_name').options.values.includes(x))",
        arg=names, timeout=30_000)
    assert not [e for e in page.js_errors if "sd35wb" in e], page.js_errors
