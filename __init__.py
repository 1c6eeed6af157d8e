"""SD3.5 Workbench: a ComfyUI node pack (V3 API). This file only wires the pack into the host."""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./js"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
