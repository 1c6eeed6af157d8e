"""A LoRA applied without merging it into the weights: y = f(x) + s * up(down(x)).

Merging (what the host's LoRA loader does) rewrites every patched weight when the patched model is
loaded: W' = W + s * up @ down, in float32, for each LoRA and each strength. In a sweep over dozens of
LoRA checkpoints on one resident base that rewrite is the whole cost of a switch (seconds on a 2.5B
model), more than reading a full checkpoint again. Kept as a side branch, a switch costs nothing and the
base weights are never touched; each step pays two rank-r matmuls per patched layer. Training-time
validation (PEFT, SimpleTuner) computes LoRAs this way too.

Torch, no ComfyUI (so not in ``sd35wb/``, which imports neither): which of the host's patches qualify,
and where they sit, is decided in ``nodes/_compat.py``. Not a node module (leading underscore).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Part:
    """One LoRA on (a slice of) a Linear's output: ``y[..., start:start+size] += scale * up(down(x))``.

    ``size`` None: the whole output. Fused layers (SD3's qkv) carry one part per q / k / v slice."""

    down: torch.Tensor  # [rank, in]
    up: torch.Tensor  # [out or size, rank]
    scale: float
    start: int = 0
    size: int | None = None


class Branch:
    """A Linear's forward plus LoRA parts, callable in its place (set as the module's ``forward``)."""

    def __init__(self, forward, parts: list[Part]):
        while isinstance(forward, Branch):  # never stack on a branch another clone left in place
            forward = forward.forward
        self.forward = forward
        self.parts = list(parts)
        self._cast: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _weights(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        key = (x.device, x.dtype)
        hit = self._cast.get(key)
        if hit is None:  # once per device / dtype, not per call; the scale folded into up in float32
            hit = [(p.down.to(x.device, x.dtype), (p.up.float() * p.scale).to(x.device, x.dtype)) for p in self.parts]
            self._cast[key] = hit
        return hit

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.forward(x, *args, **kwargs)
        for p, (down, up) in zip(self.parts, self._weights(x)):
            h = F.linear(F.linear(x, down), up)
            (y if p.size is None else y.narrow(-1, p.start, p.size)).add_(h)
        return y

    def __repr__(self) -> str:
        return f"Branch({len(self.parts)} LoRA part(s), rank {', '.join(str(p.down.shape[0]) for p in self.parts)})"
