"""What a user would see go wrong in the frontend, collected from a playwright page: uncaught page
errors, console errors from the pack's own js, warn/error toasts (PrimeVue), the frontend's
run-failed dialog and alert/confirm dialogs.

Console errors from the host's frontend itself (404s for a fresh user folder's user.css and
workflow lists, failed fetches to api.comfy.org offline, its own Vue warnings) are kept in
``other_console`` for the report but are not the pack's to fix and no user sees them.

Used by the browser test tier (tests/browser/conftest.py fails a test on any) and by
tools/make_workflows.py (refuses to write a workflow the frontend complains about).

    watch = Watch(page)          # before page.goto
    ...
    assert not watch.problems(), watch.report()
"""

from __future__ import annotations

import re

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

PACK_JS = re.compile(r"/extensions/sd35-workbench/|\bsd35wb")  # the pack's js files / its names in a stack

# Noise that exists only because the test machine is offline, which a user online never sees:
# (why it is allowed, pattern matched against the problem's text). Nothing the browser tier has met
# so far needed an entry: the offline failures seen (api.comfy.org release notes and node registry
# lookups, net::ERR_NAME_NOT_RESOLVED) are console errors of the frontend itself, not problems.
OFFLINE_NOISE: list[tuple[str, re.Pattern]] = []


class Watch:
    def __init__(self, page, allowed: list[tuple[str, re.Pattern]] | None = None):
        self.page = page
        self.allowed = OFFLINE_NOISE if allowed is None else allowed
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.dialogs: list[str] = []
        self.other_console: list[str] = []
        self.expected: list[re.Pattern] = []
        page.add_init_script(TOAST_WATCH_JS)
        page.on("pageerror", lambda e: self.page_errors.append(f"uncaught page error: {e}"))
        page.on("console", self._on_console)
        page.on("dialog", self._on_dialog)

    def _on_console(self, msg) -> None:
        if msg.type != "error":
            return
        loc = msg.location or {}
        text = f"console error: {msg.text}" + (f" ({loc.get('url')}:{loc.get('lineNumber')})" if loc.get("url") else "")
        (self.console_errors if PACK_JS.search(text) else self.other_console).append(text)

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

    def problems(self) -> list[str]:
        found = [*self.page_errors, *self.console_errors, *self.dialogs, *self.toasts()]
        allowed = [pat for _, pat in self.allowed] + self.expected
        return [p for p in found if not any(pat.search(p) for pat in allowed)]

    def report(self) -> str:
        lines = ["the frontend showed the user problems:", *self.problems()]
        if self.other_console:
            lines += ["(for context, the frontend's own console errors:)", *self.other_console[-10:]]
        return "\n  ".join(lines)
