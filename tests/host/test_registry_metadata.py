"""The Comfy Registry / Manager read pyproject.toml with the host's own comfy_config parser."""

import re

from conftest import REPO


def test_pyproject_parses_with_the_hosts_comfy_config_reader(host):
    from comfy_config.config_parser import extract_node_configuration

    cfg = extract_node_configuration(str(REPO))
    assert cfg.project.name == "sd35-workbench"
    assert re.fullmatch(r"\d+\.\d+\.\d+", cfg.project.version)
    assert cfg.project.description and cfg.project.license.file == "LICENSE"
    assert cfg.tool_comfy.publisher_id and cfg.tool_comfy.display_name == "SD3.5 Workbench" and cfg.tool_comfy.icon
    assert cfg.project.supported_comfyui_version.startswith(">=0.3.")
    assert cfg.project.urls.repository and cfg.project.urls.issues
    assert {d.split(">")[0].split("=")[0] for d in cfg.project.dependencies} >= {"huggingface_hub", "safetensors", "numpy", "pillow"}
