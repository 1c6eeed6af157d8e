"""Browser tier: the watch every browser test runs under (tools/browser_watch.py) counts every console
error, the frontend's own included, and its offline-noise allowlist applies only where it was seen."""

from __future__ import annotations

import re

from tools.browser_watch import OFFLINE_NOISE, Noise, Watch


def test_a_console_error_from_frontend_code_fails_the_test(page):
    """An error the pack causes inside frontend code is logged from frontend code, without the pack's
    name: it is a problem all the same."""
    page.evaluate("() => console.error('probe: TypeError: cannot read properties of undefined (reading \"widgets\")')")
    page.wait_for_timeout(300)
    problems = page.watch.problems()
    assert any(p.startswith("console error: probe: TypeError") for p in problems), problems
    page.watch.expect(r"^console error: probe: TypeError")
    assert not page.watch.problems()


def test_offline_noise_is_named_and_applies_only_on_the_versions_it_was_seen_on(page):
    version = page.watch.frontend_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    assert OFFLINE_NOISE and len({n.name for n in OFFLINE_NOISE}) == len(OFFLINE_NOISE)
    for n in OFFLINE_NOISE:
        assert n.name and len(n.why) > 40 and n.seen_on and all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in n.seen_on)
    text = ("console error: Failed to load resource: net::ERR_NAME_NOT_RESOLVED "
            "(https://api.comfy.org/releases?project=comfyui:0)")
    elsewhere = Noise("probe", ("0.0.1",), "seen only on a frontend that is not this one", re.compile("api\\.comfy\\.org"))
    here = page.watch.noise(text)
    assert here is None or version in here.seen_on
    strict = Watch.__new__(Watch)
    strict.allowed, strict._version, strict.page = [elsewhere], version, page
    assert strict.noise(text) is None  # an entry for another frontend version does not apply here
    strict.allowed = [elsewhere._replace(seen_on=(version,))]
    assert strict.noise(text) is not None
    # a 404 from one of the pack's own routes is never offline noise
    pack_404 = ("console error: Failed to load resource: the server responded with a status of 404 (Not Found) "
                "(http://127.0.0.1:8188/sd35wb/lora/check:0)")
    assert page.watch.noise(pack_404) is None
