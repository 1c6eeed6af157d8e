"""API-tier fixtures."""

import pytest


@pytest.fixture(scope="session")
def workflow_fixtures(tiny_models, user_models, training_root):
    """Capability-specific edits that let an example workflow run on the tiny models."""
    from lcm_helpers import workflow_rule, write_loras

    lcm_rule = workflow_rule(write_loras(tiny_models, user_models))

    def rules(nid: str, node: dict, family: str) -> None:
        lcm_rule(nid, node, family)
        if node["class_type"] in ("SD35WB_SLGSampler", "SD35WB_SLGGuider"):
            node["inputs"].pop("settings", None)
            node["inputs"].update(preset="custom", layers="1, 2")

    return rules
