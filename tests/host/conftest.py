"""Host-tier fixtures."""

import pytest


@pytest.fixture(scope="module")
def training_roots_env(tmp_path_factory):
    """The linker node links only under SD35WB_TRAINING_ROOTS (the same rule as the route and the CLI):
    a module's runs all live under pytest's base temp folder. Use with
    ``pytestmark = pytest.mark.usefixtures("training_roots_env")``."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SD35WB_TRAINING_ROOTS", str(tmp_path_factory.getbasetemp()))
    yield tmp_path_factory.getbasetemp()
    mp.undo()
