"""Test-only nodes (never shipped): loaded into the test/demo servers' custom_nodes beside the pack.

SD3 / SDXL / SD1.5 conditioning without text-encoder weights, shaped exactly like what
``CLIPTextEncode`` emits for each family, deterministic for a seed.
"""

import torch
from comfy_api.v0_0_2 import ComfyExtension, io
from typing_extensions import override

SHAPES = {  # family: (cond tokens, cond width, pooled width)
    "sd3": (154, 4096, 2048),
    "sdxl": (77, 2048, 1280),
    "sd15": (77, 768, None),
}


def make_conditioning(family: str, seed: int, width: int = 1024, height: int = 1024):
    tokens, dim, pooled = SHAPES[family]
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn((1, tokens, dim), generator=g)
    extra = {}
    if pooled is not None:
        extra["pooled_output"] = torch.randn((1, pooled), generator=g)
    if family == "sdxl":
        extra.update(width=width, height=height, crop_w=0, crop_h=0, target_width=width, target_height=height)
    return [[cond, extra]]


class TestConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SD35WBTest_Conditioning",
            category="sd35wb_test",
            description="Test-only: random conditioning shaped like CLIPTextEncode's output for a family.",
            inputs=[
                io.Combo.Input("family", options=list(SHAPES)),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                io.Int.Input("width", default=1024, min=64, max=8192),
                io.Int.Input("height", default=1024, min=64, max=8192),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, family: str, seed: int, width: int, height: int) -> io.NodeOutput:
        return io.NodeOutput(make_conditioning(family, seed, width, height))


class TestNodes(ComfyExtension):
    @override
    async def get_node_list(self):
        return [TestConditioning]


async def comfy_entrypoint():
    return TestNodes()
