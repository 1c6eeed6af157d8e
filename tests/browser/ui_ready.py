"""Wait until the ComfyUI page is interactive, as a user waits before clicking.

From frontend 1.45 on, a full-screen PrimeVue BlockUI mask (`.p-blockui-mask`) stays up after
`window.app` exists while the default workflow loads; a real click then lands on the mask. So the
page counts as ready only when the app and its graph exist, the default workflow has been loaded,
no blocking mask covers the page, and what lies under the canvas's centre is the canvas's own
layer rather than an overlay. The state must hold on two polls in a row.
"""

from __future__ import annotations

import time

# Returns "" when ready, else what is still in the way (used in the timeout message).
_NOT_READY = """() => {
    const app = window.app;
    if (!app) return "window.app does not exist yet";
    if (!app.graph || !app.canvas || !app.extensionManager) return "the app has no graph/canvas/extension manager yet";
    const nodes = app.graph.nodes ?? app.graph._nodes ?? [];
    if (!nodes.length) return "the default workflow has not been loaded (graph is empty)";
    const masks = ".p-blockui-mask, .p-overlay-mask, .p-dialog-mask, .p-component-overlay";
    for (const m of document.querySelectorAll(masks)) {
        const r = m.getBoundingClientRect();
        if (r.width > 0 && r.height > 0 && getComputedStyle(m).visibility !== "hidden")
            return "a blocking mask is up: " + m.className;
    }
    const c = app.canvas.canvas.getBoundingClientRect();
    const top = document.elementFromPoint(c.left + c.width / 2, c.top + c.height / 2);
    if (!top) return "nothing under the canvas centre";
    if (top.closest(masks)) return "the canvas centre is covered by " + top.className;
    return "";
}"""

# Where the page's furniture and the canvas are: a banner that mounts late (frontend 1.32's "Nodes 2.0"
# one) shifts them, and a click aimed before the shift lands beside its target.
_LAYOUT = """() => {
    const c = window.app.canvas.canvas.getBoundingClientRect();
    const ds = window.app.canvas.ds;
    return JSON.stringify([c.left, c.top, c.width, c.height, ds.offset[0], ds.offset[1], ds.scale]);
}"""


def wait_until_interactive(page, timeout: float = 90.0, poll: float = 0.1) -> None:
    """Block until the page takes clicks as a user's; raise naming what is still in the way."""
    deadline = time.monotonic() + timeout
    ready_polls, reason, layout = 0, "not checked", None
    while time.monotonic() < deadline:
        try:
            reason = page.evaluate(_NOT_READY)
            now = page.evaluate(_LAYOUT) if not reason else None
        except Exception as e:  # the page is still navigating: its context was replaced
            reason, now = f"page not scriptable yet: {e}", None
        if not reason and now != layout:
            reason = "the layout is still moving"
        layout = now
        ready_polls = ready_polls + 1 if not reason else 0
        if ready_polls >= 3:
            return
        time.sleep(poll)
    raise TimeoutError(f"the ComfyUI page was not interactive within {timeout:.0f}s: {reason}")


# The screen point of a canvas-drawn widget of node ``window.__target``, and what lies there.
_WIDGET_POINT = """(name) => {
    const node = window.__target, canvas = window.app.canvas;
    canvas.draw(true, true);  // widgets learn their place when drawn; before that y reads 0 on newer litegraph
    const w = node.widgets.find(w => w.name === name);
    const wy = w && (w.last_y ?? w.y);
    if (!(wy > 0)) return {why: "the widget has not been drawn yet"};
    const h = w.computeSize?.(node.size[0])?.[1] ?? window.LiteGraph.NODE_WIDGET_HEIGHT;
    const gx = node.pos[0] + node.size[0] / 2, gy = node.pos[1] + wy + h / 2;
    const [cx, cy] = canvas.ds.convertOffsetToCanvas([gx, gy]);
    const r = canvas.canvas.getBoundingClientRect();
    const x = r.left + cx, y = r.top + cy;
    const el = document.elementFromPoint(x, y);
    if (el !== canvas.canvas) return {why: "covered by " + (el ? el.tagName + "." + el.className : "nothing"), x, y};
    const hit = canvas.graph.getNodeOnPos(gx, gy);
    if (hit !== node) return {why: "another node lies there: " + (hit?.type ?? "none"), x, y};
    const on = node.getWidgetOnPos?.(gx, gy, true);
    if (on !== undefined && on !== w) return {why: "litegraph sees another widget there: " + on?.name, x, y};
    return {x, y, layout: (""" + _LAYOUT + """)()};
}"""


def widget_point(page, node_js: str, widget: str, timeout: float = 30.0) -> tuple[float, float]:
    """Where a user would click widget ``widget`` of the node that ``node_js`` evaluates to: on the
    canvas itself (no overlay there), on that node by litegraph's own hit test, with the layout the
    same on two polls in a row. Raise naming what is in the way."""
    page.evaluate(f"() => {{ window.__target = ({node_js}); }}")
    deadline, last, where = time.monotonic() + timeout, None, {"why": "not checked"}
    while time.monotonic() < deadline:
        where = page.evaluate(_WIDGET_POINT, widget)
        if "why" not in where:
            if last == where["layout"]:
                return where["x"], where["y"]
            last = where["layout"]
        else:
            last = None
        time.sleep(0.1)
    raise TimeoutError(f"widget {widget!r} could not be clicked within {timeout:.0f}s: {where}")


# A workflow file dropped onto the canvas, as a user drags one in from their file manager.
_DROP_JS = """
async ([text, name]) => {
  const canvas = document.querySelector('#graph-canvas');
  const dt = new DataTransfer();
  dt.items.add(new File([text], name, {type: 'application/json'}));
  for (const type of ['dragenter', 'dragover', 'drop']) {
    canvas.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
  }
}
"""


def drop_workflow(page, text: str, name: str) -> None:
    page.evaluate(_DROP_JS, [text, name])
