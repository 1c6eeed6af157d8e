"""Browser tier: the real ComfyUI frontend loads our js/ extension and reaches our route."""


def test_extension_registered_and_route_reached(page):
    page.wait_for_function("() => window.sd35wb !== undefined", timeout=30_000)
    names = page.evaluate("() => window.app.extensions.map(e => e.name)")
    assert "sd35wb.core" in names
    info = page.evaluate("() => window.sd35wb.info")
    assert info and info["name"] == "sd35-workbench"
    assert not [e for e in page.js_errors if "sd35wb" in e], page.js_errors
