"""Under CI (any non-empty ``CI``; .ci/run sets it) a skipped test is reported as a failure: every
tier and every tool it needs (chromium, chattr, optional packages) must be there. Outside CI a skip
stays a skip, and its reason says what to install. Loaded with ``-p ci_plugin`` (pyproject addopts)."""

from __future__ import annotations

import os

import pytest

IN_CI = bool(os.environ.get("CI"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if IN_CI and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped in CI (CI={os.environ['CI']!r}), which counts as a failure: {reason}"
