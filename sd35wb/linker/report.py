"""What a sync answers: the refusal (LinkError) and the report of what it did."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field


class LinkError(ValueError):
    """A sync refused before doing anything; ``field`` names the input, ``status`` the HTTP answer."""

    def __init__(self, message: str, field: str = "output_dir", status: int = 400):
        super().__init__(message)
        self.field, self.status = field, status


@dataclass
class Exposed:
    """One model a sync leaves visible to the host (i14 adds its detector's answer here)."""

    name: str  # host model name, e.g. "my-run/checkpoint-800.safetensors"
    folder: str
    category: str
    step: int | None
    source: str
    mode: str  # symlink / hardlink / copy / merged


@dataclass
class Report:
    run: str
    output_dir: str
    linked: list[tuple[str, str]] = field(default_factory=list)  # (model name, how: symlink/hardlink/copy/merged)
    unchanged: list[str] = field(default_factory=list)
    pruned: list[tuple[str, str]] = field(default_factory=list)  # (model name, why)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path or name, why)
    repaired: list[tuple[str, str]] = field(default_factory=list)  # (name, what an interrupted sync left and what was done)
    moved: list[tuple[str, str]] = field(default_factory=list)  # (old path, new model name): one-time move from unet/
    exposed: dict[str, list[str]] = field(default_factory=dict)  # folder -> model names, numeric order
    entries: dict[str, list[Exposed]] = field(default_factory=dict)  # folder -> one record per exposed model
    bytes_copied: int = 0  # copies (only with copy=True) and merges
    bytes_merged: int = 0
    seconds: float = 0.0
    detected: dict[str, dict] = field(default_factory=dict)  # exposed diffusion model -> finetune detection

    @property
    def changed(self) -> bool:
        return bool(self.linked or self.pruned or self.moved or self.repaired)

    def lines(self) -> list[str]:
        out = [f"moved     {old} -> {new}" for old, new in self.moved]
        out += [f"repaired  {n}  ({what})" for n, what in self.repaired]
        out += [f"linked    {n}  ({how})" for n, how in self.linked]
        out += [f"pruned    {n}  ({why})" for n, why in self.pruned]
        out += [f"skipped   {n}  ({why})" for n, why in self.skipped]
        out += [f"detected  {n}  {d.get('summary') or d.get('error')}" for n, d in self.detected.items()]
        total = sum(len(v) for v in self.exposed.values())
        out.append(f"run {self.run!r}: {len(self.linked)} linked, {len(self.unchanged)} unchanged, "
                   f"{len(self.pruned)} pruned, {len(self.skipped)} skipped; {total} models exposed; "
                   f"{self.bytes_copied} bytes copied, {self.bytes_merged} bytes merged; {self.seconds:.3f} s")
        return out

    def text(self) -> str:
        return "\n".join(self.lines())

    def as_dict(self) -> dict:
        return {"run": self.run, "output_dir": self.output_dir, "linked": [list(x) for x in self.linked],
                "unchanged": self.unchanged, "pruned": [list(x) for x in self.pruned],
                "skipped": [list(x) for x in self.skipped], "repaired": [list(x) for x in self.repaired],
                "moved": [list(x) for x in self.moved], "exposed": self.exposed,
                "entries": {k: [asdict(e) for e in v] for k, v in self.entries.items()},
                "bytes_copied": self.bytes_copied, "bytes_merged": self.bytes_merged, "seconds": self.seconds,
                "detected": self.detected}


def _model_name(run: str, name: str) -> str:
    return os.path.join(run, name)  # what the host's get_filename_list shows on this OS
