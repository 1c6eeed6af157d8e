"""Read a SimpleTuner ``output_dir`` and decide what ComfyUI should see of it (no side effects).

Layout (SimpleTuner 4.x; see docs/simpletuner.md):

- ``checkpoint-N/transformer/diffusion_pytorch_model.safetensors`` (``unet/`` for SDXL): a full
  fine-tune checkpoint, written into ``temporary-N/`` first, then copied here; SimpleTuner writes
  ``checkpoint_manifest.json`` and ``.guard`` last, so a checkpoint without them is still being saved.
- ``checkpoint-N/transformer_ema/`` (``unet_ema/``, or ``ema/``): the EMA weights, fp32, saved with
  ``max_shard_size="10GB"`` and never merged: a large model's EMA is sharded
  (``diffusion_pytorch_model-0000k-of-0000n.safetensors`` + ``...safetensors.index.json``).
  ``ema_model.pt`` beside it is a pickle and is never touched.
- ``checkpoint-N/pytorch_lora_weights.safetensors`` and ``checkpoint-N/ema/pytorch_lora_weights.safetensors``:
  LoRA (PEFT keys ``transformer.<module>.lora_A.weight``) and its EMA.
- ``checkpoint-N-rolling/``: a rolling checkpoint, same inside; ``checkpoint-N-tmp/`` and
  ``temporary-N/``: saves in progress (rotation deletes ``*-tmp``).
- ``pipeline/transformer/`` (or ``pipeline/unet/``) and ``pytorch_lora_weights.safetensors`` at the top:
  the final model / LoRA. ``pipeline/model_index.json`` names SimpleTuner's own classes, so only the
  component folder is used.
- Accelerate state (``optimizer.bin``, ``scheduler.bin``, ``random_states_0.pkl``,
  ``training_state*.json``) sits beside the weights and is ignored.

Only ``.safetensors`` files are ever offered, and only complete ones (the header describes exactly
the bytes on disk).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from . import names, shards

CATEGORIES = ("full", "ema", "lora", "final")
DIFFUSION_MODELS, LORAS = "diffusion_models", "loras"
WEIGHTS = "diffusion_pytorch_model.safetensors"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
MODEL_DIRS = ("transformer", "unet")  # SD3/Flux-style, SDXL
EMA_DIRS = ("transformer_ema", "unet_ema", "ema")
COMPLETE_MARKERS = ("checkpoint_manifest.json", ".guard")

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)(-rolling|-tmp)?$")
_TEMPORARY = re.compile(r"^temporary-(\d+)$")


@dataclass(frozen=True)
class Artifact:
    """One model file ComfyUI should list: ``<folder>/<run>/<name>``."""

    folder: str  # "diffusion_models" or "loras"
    name: str  # file name inside the run folder, e.g. "checkpoint-800-ema.safetensors"
    category: str  # one of CATEGORIES
    step: int | None  # training step; None for the final model
    source: Path  # the .safetensors file to link, or the shard index to merge
    sharded: bool = False

    @property
    def label(self) -> str:
        return self.name[: -len(".safetensors")]

    @property
    def sort_key(self) -> tuple:
        return sort_key(self.label)


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass
class Scan:
    output_dir: Path
    artifacts: list[Artifact] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def select(self, include=CATEGORIES) -> list[Artifact]:
        include = set(include)
        return [a for a in self.artifacts if a.category in include]


def sort_key(label: str) -> tuple:
    """Numeric order: checkpoint-800 < checkpoint-800-ema < checkpoint-1600 < ... < <run>-final.

    Labels without a step (final models) sort after every checkpoint; ties break on the text with
    digit runs compared as numbers."""
    m = re.match(r"^checkpoint-(\d+)(.*)$", label)
    parts = tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", label) if t)
    if m:
        variant = m.group(2)
        return (0, int(m.group(1)), {"": 0, "-rolling": 1, "-ema": 2, "-rolling-ema": 3}.get(variant, 4), parts)
    return (1, 0, 0, parts)


def natural_sorted(names) -> list[str]:
    """Sort model names (``run/checkpoint-N.safetensors``) by run, then numerically by step."""
    def key(n: str):
        head, _, tail = n.replace("\\", "/").rpartition("/")
        return (head, sort_key(tail[: -len(".safetensors")] if tail.endswith(".safetensors") else tail))
    return sorted(names, key=key)


def check_run_name(run: str) -> str:
    """A run name becomes one folder under the host's model folders: see names.check_run_name."""
    return names.check_run_name(run)


def _weights_in(folder: Path) -> tuple[Path | None, bool, str]:
    """(file or index, sharded?, why-not) for a diffusers weights folder."""
    single = folder / WEIGHTS
    if single.is_file():
        ok, why = shards.is_complete_safetensors(single)
        return (single, False, "") if ok else (None, False, why)
    index = shards.find_index(folder)
    if index is not None:
        try:
            files = shards.shard_files(index)
        except shards.SafetensorsError as e:
            return None, True, str(e)
        for f in files:
            if not f.is_file():
                return None, True, f"shard {f.name} listed in {index.name} is missing"
            ok, why = shards.is_complete_safetensors(f)
            if not ok:
                return None, True, why
        return index, True, ""
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        return None, False, "only pickle weights (.bin/.pt) here; only .safetensors is ever linked"
    return None, False, "no diffusion_pytorch_model.safetensors or shard index"


def _lora_in(path: Path) -> tuple[bool, str]:
    return shards.is_complete_safetensors(path)


def scan(output_dir: str | os.PathLike, run: str | None = None) -> Scan:
    """Everything linkable in a SimpleTuner output_dir, in numeric order, plus what was skipped and why.

    ``run`` (default: the folder's name) only names the final model: ``<run>-final.safetensors``."""
    out = Path(output_dir)
    if not out.is_dir():
        raise ValueError(f"output_dir: {str(out)!r} is not a folder; give SimpleTuner's --output_dir of the run")
    result = Scan(out)
    entries = sorted(os.scandir(out), key=lambda e: e.name)
    ckpts = [(e, _CHECKPOINT.match(e.name)) for e in entries if e.is_dir() and _CHECKPOINT.match(e.name)]
    # SimpleTuner >= 4.10 writes the markers last; once a run has them, a checkpoint without them is in progress.
    uses_markers = any(any(os.path.exists(os.path.join(e.path, m)) for m in COMPLETE_MARKERS) for e, _ in ckpts)
    for e in entries:
        if e.is_dir() and _TEMPORARY.match(e.name):
            result.skipped.append(Skipped(Path(e.path), "in progress: SimpleTuner's temporary save folder "
                                          "(renamed to checkpoint-N when the save finishes)"))
    for e, m in ckpts:
        step, variant = int(m.group(1)), m.group(2) or ""
        folder = Path(e.path)
        if variant == "-tmp":
            result.skipped.append(Skipped(folder, "in progress: a '-tmp' checkpoint (SimpleTuner deletes these on rotation)"))
            continue
        if uses_markers:
            missing = [mk for mk in COMPLETE_MARKERS if not (folder / mk).exists()]
            if missing:
                result.skipped.append(Skipped(folder, f"in progress: no {' / '.join(missing)} yet "
                                              "(SimpleTuner writes them last)"))
                continue
        base = f"checkpoint-{step}{variant}"
        _scan_racing(result, folder, partial(_scan_checkpoint, result, folder, base, step))
    _scan_racing(result, out / "pipeline", partial(_scan_final, result, out, run or out.name))
    result.artifacts.sort(key=lambda a: (a.folder, a.sort_key))
    return result


def _scan_racing(result: Scan, folder: Path, scan_one) -> None:
    """Scan one checkpoint (or the final model) while SimpleTuner may delete or rewrite it: a folder
    that changes under the scan is skipped as a whole, never half-read and never an error."""
    n_art, n_skip = len(result.artifacts), len(result.skipped)
    try:
        scan_one()
    except FileNotFoundError:
        del result.artifacts[n_art:], result.skipped[n_skip:]
        why = "changed while it was scanned (SimpleTuner saving it again?)" if folder.exists() else \
            "gone while it was scanned (checkpoint rotated away)"
        result.skipped.append(Skipped(folder, f"{why}; the next sync sees it as it is then"))


def _scan_checkpoint(result: Scan, folder: Path, base: str, step: int) -> None:
    found = False
    for sub in MODEL_DIRS:
        d = folder / sub
        if d.is_dir():
            src, sharded, why = _weights_in(d)
            if src:
                result.artifacts.append(Artifact(DIFFUSION_MODELS, f"{base}.safetensors", "full", step, src, sharded))
                found = True
            else:
                result.skipped.append(Skipped(d, why))
            break
    for sub in EMA_DIRS:
        d = folder / sub
        if not d.is_dir():
            continue
        if (d / LORA_WEIGHTS).is_file():
            ok, why = _lora_in(d / LORA_WEIGHTS)
            if ok:
                result.artifacts.append(Artifact(LORAS, f"{base}-ema.safetensors", "ema", step, d / LORA_WEIGHTS))
                found = True
            else:
                result.skipped.append(Skipped(d / LORA_WEIGHTS, why))
            continue
        if not ((d / WEIGHTS).exists() or shards.find_index(d)):
            continue  # e.g. only ema_model.pt (a pickle): nothing we would load
        src, sharded, why = _weights_in(d)
        if src:
            result.artifacts.append(Artifact(DIFFUSION_MODELS, f"{base}-ema.safetensors", "ema", step, src, sharded))
            found = True
        else:
            result.skipped.append(Skipped(d, why))
        break
    lora = folder / LORA_WEIGHTS
    if lora.is_file():
        ok, why = _lora_in(lora)
        if ok:
            result.artifacts.append(Artifact(LORAS, f"{base}.safetensors", "lora", step, lora))
            found = True
        else:
            result.skipped.append(Skipped(lora, why))
    if not found and not any(s.path.is_relative_to(folder) for s in result.skipped):
        result.skipped.append(Skipped(folder, "no .safetensors weights found (transformer/, unet/, *_ema/, "
                                      "pytorch_lora_weights.safetensors)"))


def _scan_final(result: Scan, out: Path, run_label: str) -> None:
    pipe = out / "pipeline"
    if pipe.is_dir():
        for sub in MODEL_DIRS:
            d = pipe / sub
            if d.is_dir():
                src, sharded, why = _weights_in(d)
                if src:
                    result.artifacts.append(Artifact(DIFFUSION_MODELS, f"{run_label}-final.safetensors", "final", None,
                                                     src, sharded))
                else:
                    result.skipped.append(Skipped(d, why))
                break
    lora = out / LORA_WEIGHTS
    if lora.is_file():
        ok, why = _lora_in(lora)
        if ok:
            result.artifacts.append(Artifact(LORAS, f"{run_label}-final.safetensors", "final", None, lora))
        else:
            result.skipped.append(Skipped(lora, why))


def parse_include(spec) -> tuple[str, ...]:
    """'full,ema,lora,final' (or a list) -> the categories, checked."""
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    bad = [s for s in items if s not in CATEGORIES]
    if bad or not items:
        raise ValueError(f"include: {bad or spec!r} not understood; use a comma list of {', '.join(CATEGORIES)}")
    return tuple(c for c in CATEGORIES if c in items)


# How to set the variable where ComfyUI is started; the error says it because the node cannot.
ROOTS_HOWTO = (
    "set SD35WB_TRAINING_ROOTS to the folder(s) holding your SimpleTuner output_dirs (several: separated by ':' "
    "on Linux/macOS, ';' on Windows), then restart ComfyUI:\n"
    "- shell: export SD35WB_TRAINING_ROOTS=/data/simpletuner-runs (before python main.py; Windows cmd: "
    "set SD35WB_TRAINING_ROOTS=D:\\runs, PowerShell: $env:SD35WB_TRAINING_ROOTS='D:\\runs')\n"
    "- portable build: add the line  set SD35WB_TRAINING_ROOTS=D:\\runs  to run_nvidia_gpu.bat (or run_cpu.bat) "
    "above the python_embeded line\n"
    "- systemd unit: Environment=SD35WB_TRAINING_ROOTS=/data/simpletuner-runs under [Service] "
    "(systemctl edit <unit>), then systemctl restart <unit>\n"
    "- ComfyUI Desktop app: it inherits your user environment: on Windows setx SD35WB_TRAINING_ROOTS \"D:\\runs\" "
    "(or System Properties > Environment Variables), on macOS launchctl setenv SD35WB_TRAINING_ROOTS "
    "/Users/you/runs; then quit the app fully and reopen it")


def roots_unset_message() -> str:
    return "no training roots configured: " + ROOTS_HOWTO


def training_roots(env_value: str) -> list[Path]:
    """The training roots from ``SD35WB_TRAINING_ROOTS`` (os.pathsep-separated), symlinks resolved."""
    return [Path(os.path.realpath(p)) for p in (env_value or "").split(os.pathsep) if p.strip()]


def resolve_training_dir(raw: str, env_value: str) -> Path:
    """The real folder ``raw`` names, if it lies under one of the training roots.

    ``raw`` is absolute, or relative to a root (e.g. just the run folder's name). Raises
    PermissionError (answered 403) for ``..``, paths outside the roots and symlinks that lead out
    of them, and when no root is configured; ValueError (400) for a malformed or missing folder."""
    if not isinstance(raw, str) or not raw.strip() or "\x00" in raw:
        raise ValueError("output_dir: must be a non-empty path")
    raw = raw.strip()
    if ".." in re.split(r"[/\\]", raw):
        raise PermissionError(f"output_dir: {raw!r} contains '..'; give the run's folder under a training root")
    roots = training_roots(env_value)
    if not roots:
        raise PermissionError(roots_unset_message())
    candidates = [Path(raw)] if os.path.isabs(raw) else [r / raw for r in roots]
    for cand in candidates:
        real = Path(os.path.realpath(cand))
        inside = [r for r in roots if real == r or real.is_relative_to(r)]
        if not inside:
            if os.path.isabs(raw):
                raise PermissionError(f"output_dir: {raw!r} is outside the training roots (or a link leading out of them)")
            if os.path.lexists(cand):
                raise PermissionError(f"output_dir: {raw!r} leads out of the training roots (a symlink escape)")
            continue
        if real.is_dir():
            return real
    raise ValueError(f"output_dir: {raw!r} is not a folder under the training roots")
