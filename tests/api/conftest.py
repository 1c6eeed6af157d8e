"""API-tier fixtures."""

import pytest
import sweep_helpers as swh

from tools import simpletuner_fixtures as stf


@pytest.fixture(scope="session")
def workflow_fixtures(user_models, training_root, tiny_models):
    """Capability-specific edits that let an example workflow run on the tiny models (tools/workflow_fixtures.py,
    shared with the template gallery tool)."""
    from tools.workflow_fixtures import template_rules

    return template_rules(tiny_models, user_models, training_root)


# The sweep CLI's tests (test_sweep_*.py): a linked tiny run on the shared server, a second server, a text encoder.


@pytest.fixture(scope="module")
def linked(server, training_root):
    out = training_root / swh.RUN
    if not out.exists():
        for step in (100, 250, 1000):
            stf.diffusers_checkpoint(out, step)
    swh.link(server)
    return [f"{swh.RUN}/checkpoint-{s}.safetensors" for s in (100, 250, 1000)]


@pytest.fixture(scope="module")
def second_server(tiny_models, user_models, training_root, tmp_path_factory, linked):
    """Another ComfyUI on the same training root, with the run linked too (a second GPU box)."""
    srv = swh.start_server(tmp_path_factory.mktemp("comfy-base-2"), tiny_models, user_models, training_root)
    swh.link(srv)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def clip_link(user_models):
    from tools import sd35_fixtures

    dest = user_models / "text_encoders" / "tiny-sweep-clip_l.safetensors"
    if not dest.exists():
        dest.symlink_to(sd35_fixtures.clip_l_file())
    return dest
