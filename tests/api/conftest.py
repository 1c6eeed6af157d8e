"""API-tier fixtures."""

import pytest


@pytest.fixture(scope="session")
def workflow_fixtures(user_models, training_root):
    """Capability-specific edits that let an example workflow run on the tiny models."""

    def rules(nid: str, node: dict, family: str) -> None:
        if node["class_type"] in ("SD35WB_SLGSampler", "SD35WB_SLGGuider"):
            node["inputs"].pop("settings", None)
            node["inputs"].update(preset="custom", layers="1, 2")

    return rules
