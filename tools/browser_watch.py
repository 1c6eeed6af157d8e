"""What a user would see go wrong in the frontend, collected from a playwright page: every uncaught
page error, every console error (the pack's js or the frontend's own: an error the pack causes
inside frontend code is logged from frontend code), warn/error toasts, the frontend's run-failed
dialog and alert/confirm dialogs.

Each one is a problem unless ``OFFLINE_NOISE`` below names it: a short list of what the frontend logs
only because the test machine is offline (or its user folder is fresh), each entry with its name,
the frontend versions it was seen on, why it is noise, and the pattern. An entry applies only on the
frontend versions it lists (``window.__COMFYUI_FRONTEND_VERSION__``), so a new frontend's errors are
looked at before they are allowed. A test that provokes a problem on purpose says so with
``watch.expect(pattern)``.

Used by the browser test tier (tests/browser/conftest.py fails a test on any problem) and by
tools/make_workflows.py (refuses to write a workflow the frontend complains about).

    watch = Watch(page)          # before page.goto
    ...
    assert not watch.problems(), watch.report()
"""

from __future__ import annotations

import re
from typing import NamedTuple

# Toasts are recorded as they appear (a MutationObserver from before the app starts): a warn toast
# may be closed, or time out, before anyone looks. Text is re-read while the element is on screen,
# since Vue may fill it in after inserting it.
TOAST_WATCH_JS = """
(() => {
  const found = [];
  window.__sd35wbToasts = found;
  const scan = () => {
    // warn/error toasts (PrimeVue up to frontend 1.4x; Reka toasts with data-toast-kind in 1.5x), and the
    // dialog the frontend opens when a run fails (ErrorDialogContent)
    const sel = '.p-toast-message-warn, .p-toast-message-error, .comfy-error-report, ' +
                'li[data-toast-kind="warn"], li[data-toast-kind="warning"], li[data-toast-kind="error"]';
    for (const el of document.querySelectorAll(sel)) {
      let rec = found.find(r => r.el === el);
      if (!rec) {
        const error = el.matches('.p-toast-message-error, li[data-toast-kind="error"]');
        const kind = el.matches('.comfy-error-report') ? 'error dialog' : error ? 'error toast' : 'warn toast';
        rec = {el, kind, text: ''};
        found.push(rec);
      }
      rec.text = (el.innerText || el.textContent || '').trim() || rec.text;
    }
  };
  new MutationObserver(scan).observe(document, {childList: true, subtree: true, characterData: true});
  window.__sd35wbToastTexts = () => { scan(); return found.map(r => `${r.kind}: ${r.text}`); };
})();
"""

class Noise(NamedTuple):
    name: str
    seen_on: tuple[str, ...]  # frontend versions (comfyui-frontend-package) it was seen on
    why: str
    pattern: re.Pattern  # searched in the problem's text


# What the frontend logs only offline / with a fresh user folder (and one start-up bug of its own,
# reproduced without the pack): the whole list. Keep it short; every entry applies only on the
# versions it was seen on (found by running the browser tier on the pinned 1.32.9 and newest 1.58.1).
OFFLINE_NOISE: list[Noise] = [
    Noise("fresh-user-folder-404", ("1.32.9", "1.49.6", "1.58.1"),
          "a new user's folder has no workflows/ or subgraphs/ folder, user.css or comfy.templates.json yet: the "
          "frontend asks for each at start-up and logs the host's 404; with 1.32.9 the browser's own favicon.ico "
          "request too (that frontend ships none). The pack's own routes are not in the pattern",
          re.compile(r"^console error: Failed to load resource: the server responded with a status of 404 \(Not Found\) "
                     r"\(http://127\.0\.0\.1:\d+/(favicon\.ico|user\.css|api/userdata/(user\.css|comfy\.templates\.json)|"
                     r"api/userdata\?dir=(workflows|subgraphs(%2F)?)&[^ ]*):0\)$")),
    Noise("offline-release-notes", ("1.32.9", "1.49.6", "1.58.1"),
          "the frontend asks api.comfy.org for ComfyUI's release notes at start-up; the test machine has no DNS",
          re.compile(r"^console error: Failed to load resource: net::ERR_NAME_NOT_RESOLVED \(https://api\.comfy\.org/releases\?")),
    Noise("offline-node-registry", ("1.32.9",),
          "frontend 1.32.9 looks every node up in the Comfy node registry (api.comfy.org/nodes?node_id=comfy-core, "
          "api.comfy.org/comfy-nodes/<node id>/node) for its node badges and help; the test machine has no DNS",
          re.compile(r"^console error: Failed to load resource: net::ERR_NAME_NOT_RESOLVED "
                     r"\(https://api\.comfy\.org/(nodes\?node_id=|comfy-nodes/[A-Za-z0-9_]+/node:)")),
    Noise("frontend-1.32.9-render-mode-setting", ("1.32.9",),
          "not offline noise but the frontend's own start-up bug: 1.32.9's GraphView (useRenderModeSetting) calls "
          "the setting store's set() before that setting is registered, and onChange reads .id of the missing "
          "definition. Seen with no custom nodes at all (same host, fresh user folder), so not the pack's; only "
          "this stack (onChange from set() from GraphView's load) matches",
          re.compile(r"^console error: TypeError: Cannot read properties of undefined \(reading 'id'\)\s+"
                     r"at onChange \(http://127\.0\.0\.1:\d+/assets/index-[\w-]+\.js:\d+:\d+\)\s+"
                     r"at Proxy\.set \(.*?at load \(http://127\.0\.0\.1:\d+/assets/GraphView-", re.S)),
    Noise("frontend-1.49.6-root-graph-at-start-up", ("1.49.6",),
          "not offline noise but the frontend's own start-up: 1.49.6's ComfyApp.rootGraph getter logs this when its "
          "start-up reads the graph before creating it. Seen with every file of the pack's js/ removed (so no pack "
          "extension reads it), on the 0.33.0 host that pins 1.49.6; 1.32.9 and 1.58.1 do not log it",
          re.compile(r"^console error: ComfyApp graph accessed before initialization "
                     r"\(http://127\.0\.0\.1:\d+/assets/settingStore-[\w-]+\.js:\d+\)$")),
    Noise("offline-model-url-check", ("1.32.9", "1.49.6", "1.58.1"),
          "on loading a workflow the frontend checks the download URL of each model it lists (its missing-models "
          "dialog; the z_image_turbo one is in the frontend's own default graph); offline they do not resolve, "
          "and 1.32.9 also logs its own 'Error fetching file size' for each",
          re.compile(r"^console error: (Failed to load resource: net::ERR_NAME_NOT_RESOLVED \(https://huggingface\.co/"
                     r"|Error fetching file size: TypeError: Failed to fetch(\s+at fetchFileSize \(|$))")),
]


class Watch:
    def __init__(self, page, allowed: list[Noise] | None = None):
        self.page = page
        self.allowed = OFFLINE_NOISE if allowed is None else allowed
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.dialogs: list[str] = []
        self.expected: list[re.Pattern] = []
        self._version: str | None = None
        page.add_init_script(TOAST_WATCH_JS)
        page.on("pageerror", lambda e: self.page_errors.append(f"uncaught page error: {e}"))
        page.on("console", self._on_console)
        page.on("dialog", self._on_dialog)

    def _on_console(self, msg) -> None:
        if msg.type != "error":
            return
        loc = msg.location or {}
        text = f"console error: {msg.text}" + (f" ({loc.get('url')}:{loc.get('lineNumber')})" if loc.get("url") else "")
        self.console_errors.append(text)

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type} dialog: {dialog.message}")
        dialog.dismiss()

    def toasts(self) -> list[str]:
        try:
            return self.page.evaluate("() => window.__sd35wbToastTexts ? window.__sd35wbToastTexts() : []")
        except Exception as e:  # noqa: BLE001 - a closed or crashed page is itself a problem
            return [f"page could not be read for toasts: {e}"]

    def expect(self, pattern: str) -> None:
        """A problem the test provokes on purpose (e.g. a run that must fail with a message)."""
        self.expected.append(re.compile(pattern, re.S))

    def frontend_version(self) -> str:
        if self._version is None:
            try:
                self._version = str(self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || ''"))
            except Exception:  # noqa: BLE001 - a closed page: no entry applies
                return ""
        return self._version

    def noise(self, problem: str) -> Noise | None:
        """The allowlist entry that explains ``problem`` on this frontend, if any."""
        version = self.frontend_version()
        return next((n for n in self.allowed if version in n.seen_on and n.pattern.search(problem)), None)

    def found(self) -> list[str]:
        return [*self.page_errors, *self.console_errors, *self.dialogs, *self.toasts()]

    def problems(self) -> list[str]:
        return [p for p in self.found()
                if not any(pat.search(p) for pat in self.expected) and self.noise(p) is None]

    def report(self) -> str:
        lines = [f"the frontend ({self.frontend_version() or 'version unknown'}) showed the user problems:",
                 *self.problems()]
        allowed = [f"{p}  [allowed: {n.name}]" for p in self.found() if (n := self.noise(p))]
        if allowed:
            lines += ["(for context, allowed as offline noise:)", *allowed[-10:]]
        return "\n  ".join(lines)
