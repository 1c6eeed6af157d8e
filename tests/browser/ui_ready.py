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


def wait_until_interactive(page, timeout: float = 90.0, poll: float = 0.1) -> None:
    """Block until the page takes clicks as a user's; raise naming what is still in the way."""
    deadline = time.monotonic() + timeout
    ready_polls, reason = 0, "not checked"
    while time.monotonic() < deadline:
        try:
            reason = page.evaluate(_NOT_READY)
        except Exception as e:  # the page is still navigating: its context was replaced
            reason = f"page not scriptable yet: {e}"
        ready_polls = ready_polls + 1 if not reason else 0
        if ready_polls >= 2:
            return
        time.sleep(poll)
    raise TimeoutError(f"the ComfyUI page was not interactive within {timeout:.0f}s: {reason}")
