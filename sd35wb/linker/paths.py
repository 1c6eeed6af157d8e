"""Path rules, one for node, route and CLI: where a sync writes (destinations) and what it may link
(only files inside the training roots, ``SD35WB_TRAINING_ROOTS``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import names, shards, simpletuner
from .report import LinkError

ROOTS_ENV = "SD35WB_TRAINING_ROOTS"


@dataclass(frozen=True)
class Destinations:
    dirs: dict  # "diffusion_models" / "loras" -> folder a sync writes into
    legacy: tuple = ()  # other diffusion_models folders an earlier version may have written <run>/ into


def destinations(diffusion_paths: list, lora_paths: list) -> Destinations:
    """Where a sync writes, from the host's folder lists (``folder_paths.get_folder_paths``).

    diffusion_models: the first listed folder named ``diffusion_models`` (ComfyUI lists
    ``models/unet`` first, the legacy name; a user's ``is_default`` extra path named
    diffusion_models comes before both), else the first listed; loras likewise. Every other
    diffusion_models folder is a legacy place an earlier version of this pack wrote to."""
    def pick(paths, name):
        paths = [str(p) for p in paths]
        named = [p for p in paths if os.path.basename(os.path.normpath(p)) == name]
        return (named or paths)[0]
    dm = pick(diffusion_paths, simpletuner.DIFFUSION_MODELS)
    legacy = tuple(p for p in map(str, diffusion_paths)
                   if os.path.normpath(p) != os.path.normpath(dm))
    return Destinations({simpletuner.DIFFUSION_MODELS: dm, simpletuner.LORAS: pick(lora_paths, simpletuner.LORAS)},
                        legacy)


def models_dir_destinations(models_dir: str | os.PathLike) -> Destinations:
    """The same rule for a bare ``models/`` folder (the CLI): the host's default folder lists."""
    m = Path(models_dir)
    return destinations([m / "unet", m / "diffusion_models"], [m / "loras"])


def authorize(output_dir: str, roots_env: str) -> Path:
    """The run's real folder, if ``output_dir`` and the roots allow a sync at all (else LinkError)."""
    try:
        names.check_path(output_dir, "output_dir")
        return simpletuner.resolve_training_dir(output_dir, roots_env)
    except PermissionError as e:
        raise LinkError(str(e), "output_dir", 403) from e
    except ValueError as e:
        raise LinkError(str(e), "output_dir", 400) from e


def _files_of(art: simpletuner.Artifact) -> list[Path]:
    return [art.source, *shards.shard_files(art.source)] if art.sharded else [art.source]


_GONE = "gone while this sync ran (checkpoint rotated away?); the next sync sees the run as it is now"


def _refusal(art: simpletuner.Artifact, roots: list[Path]) -> str | None:
    """Why ``art`` may not be linked (a file that resolves outside every root, or one gone since
    the scan), or None."""
    try:
        files = _files_of(art)
    except (OSError, shards.SafetensorsError) as e:  # SimpleTuner rotated it away while we scanned
        return _GONE if not art.source.exists() else f"not linked: {e}"
    if not all(f.exists() for f in files):
        return _GONE
    for f in files:
        real = Path(os.path.realpath(f))
        if not any(real == r or real.is_relative_to(r) for r in roots):
            return (f"refused: {f} resolves to {real}, outside the training roots ({ROOTS_ENV}); "
                    "only files inside them are linked (a symlink out of the run?)")
    return None
