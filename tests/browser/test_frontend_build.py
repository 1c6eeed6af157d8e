"""Browser tier: the page runs the frontend build the run asked for (FRONTEND=newest serves the newest
comfyui-frontend-package through --front-end-root), and is interactive once the page fixture hands it over."""

from __future__ import annotations

import importlib.metadata
import os


def test_the_frontend_served_is_the_one_asked_for(page):
    want = os.environ.get("SD35WB_FRONTEND_VERSION") or importlib.metadata.version("comfyui-frontend-package")
    assert page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == want


def test_the_page_takes_a_click_on_the_canvas_when_handed_over(page):
    # What a user's first click hits: the canvas, not a loading mask.
    hit = page.evaluate("""() => {
        const r = window.app.canvas.canvas.getBoundingClientRect();
        const el = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        return {masked: !!el.closest('.p-blockui-mask'), nodes: window.app.graph.nodes.length};
    }""")
    assert not hit["masked"] and hit["nodes"] > 0, hit
