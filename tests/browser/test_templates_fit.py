"""Browser tier: every template, dropped on a 1400x900 editor and fitted to view with the frontend's
own command, opens at a zoom where litegraph still draws node text (its low-quality threshold)."""

from __future__ import annotations

import json

from browser.ui_ready import drop_workflow

from tools.comfy_server import REPO

UI = sorted((REPO / "workflows").glob("*.json"))

# The frontend's "Fit view" command (the '.' key), then what litegraph decides from the zoom: its
# threshold is min_font_size_for_lod / (NODE_TEXT_SIZE * sqrt(dpr)), 8 / 14 = 0.571 by default on
# frontends 1.32, 1.49 and 1.58 (LiteGraph.Canvas.MinFontSizeForLOD).
FIT_JS = """
async () => {
  const c = window.app.canvas;
  c.deselectAll?.();
  await window.app.extensionManager.command.execute('Comfy.Canvas.FitView');
  await new Promise(r => setTimeout(r, 800));  // newer frontends animate the fit
  c.draw(true, true);
  return {scale: c.ds.scale, threshold: c._lowQualityZoomThreshold, low: c.low_quality,
          w: c.canvas.clientWidth, h: c.canvas.clientHeight};
}
"""


def test_every_template_fits_the_editor_above_the_low_quality_zoom(page):
    """One editor for all templates (one app start instead of ten); each is dropped, fitted, measured."""
    zooms, low = {}, []
    for ui_path in UI:
        text = ui_path.read_text()
        page.evaluate("() => window.app.graph.clear()")  # so the count below is this template's, not the last one's
        drop_workflow(page, text, ui_path.name)
        page.wait_for_function("(n) => window.app.graph._nodes.length === n", arg=len(json.loads(text)["nodes"]),
                               timeout=20_000)
        fit = page.evaluate(FIT_JS)
        assert fit["w"] >= 1000 and fit["h"] >= 800, fit  # the canvas is the editor's, at the user's window size
        assert fit["threshold"] > 0.5, fit  # the frontend's default level of detail is on
        zooms[ui_path.stem] = round(fit["scale"], 3)
        if fit["low"] or fit["scale"] < fit["threshold"]:
            low.append(ui_path.stem)
    print(f"fit-to-view zoom at 1400x900 (low-quality below {fit['threshold']:.3f}): {zooms}")
    assert not low, f"drawn without text after fit-to-view: {low} (zooms {zooms}, threshold {fit['threshold']:.3f})"
