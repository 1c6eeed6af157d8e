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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors on a shared 2-core machine: one intra-op thread is 10x faster than two fighting."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sd35m(host):
    """SD3.5-Medium-structured (24 joint blocks, attn2 on 0-12, RMS qk-norm) at width 64."""
    from tools.tiny_models import sd3_model_patcher

    return sd3_model_patcher(num_blocks=24, depth=1)


@pytest.fixture(scope="module")
def conds(host):
    from testnodes import make_conditioning

    return make_conditioning("sd3", 1), make_conditioning("sd3", 2)


@pytest.fixture(scope="module")
def cold_render_cache(host, tmp_path_factory):
    """The sweep's render cache starts empty in a module that asks for it, as on a user's first sweep."""
    fp = host.folder_paths
    saved = fp.get_temp_directory()
    fp.set_temp_directory(str(tmp_path_factory.mktemp("sweep-temp")))
    yield
    fp.set_temp_directory(saved)
