"""Browser tier: the real ComfyUI frontend loads our js/ extension and reaches our route."""


def test_extension_registered_and_route_reached(page):
    page.wait_for_function("() => window.sd35wb !== undefined", timeout=30_000)
    names = page.evaluate("() => window.app.extensions.map(e => e.name)")
    assert "sd35wb.core" in names
    info = page.evaluate("() => window.sd35wb.info")
    assert info and info["name"] == "sd35-workbench"
    assert not [e for e in page.js_errors if "sd35wb" in e], page.js_errors


def test_the_browser_tier_sees_what_the_user_sees(page):
    """The watch every browser test runs under is not a no-op: a warn toast from the frontend's own
    toast service, an uncaught error and an alert dialog are each reported (then marked expected)."""
    page.evaluate("() => window.app.extensionManager.toast.add({severity: 'warn', summary: 'Probe', detail: 'probe toast'})")
    page.evaluate("() => { setTimeout(() => { throw new Error('probe uncaught error'); }, 0); }")
    page.evaluate("() => alert('probe alert')")
    page.wait_for_timeout(500)
    problems = page.watch.problems()
    assert any(p.startswith("warn toast:") and "probe toast" in p for p in problems), problems
    assert any(p.startswith("uncaught page error:") and "probe uncaught error" in p for p in problems), problems
    assert "alert dialog: probe alert" in problems, problems
    page.watch.expect(r"probe (toast|uncaught error|alert)")
    assert not page.watch.problems()
