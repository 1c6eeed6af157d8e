"""Keep pytest from collecting the repository root as a Python package.

The root is the custom-node folder, so it has an ``__init__.py`` that only the host can import (and
its folder name, e.g. ``sd35-workbench``, is no valid module name). Collected as a plain directory,
it is never imported by pytest."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path, parent):
    if Path(path) == REPO:
        return pytest.Dir.from_parent(parent, path=Path(path))
    return None
