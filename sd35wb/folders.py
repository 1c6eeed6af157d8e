"""Wording for "file not found" errors: name every folder that was searched, so a user who put the
file in another models/ folder (or an extra_model_paths.yaml one) sees where the pack looked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def searched(folders: Mapping[str, Sequence[str]]) -> str:
    """'models/checkpoints (/a/checkpoints, /b/ckpt) or models/diffusion_models (/a/unet)'."""
    parts = []
    for kind, paths in folders.items():
        where = ", ".join(str(p) for p in paths)
        parts.append(f"models/{kind} ({where})" if where else f"models/{kind} (no folder configured)")
    return " or ".join(parts)


def not_found(input_name: str, name: str, folders: Mapping[str, Sequence[str]], todo: str) -> str:
    """'<input>: <name> is not in <every folder searched>. <todo>'"""
    return f"{input_name}: {name} is not in {searched(folders)}. {todo}"
