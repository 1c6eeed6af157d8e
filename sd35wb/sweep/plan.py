"""What a sweep renders: the lists it is given, its cells (checkpoint x strength x prompt x seed x
axis values), their labels, the plan's size, and the checks made before anything renders."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import grid, sd3_inspect

DEFAULT_MAX_IMAGES = 1024


def _lines(text: str, split_commas: bool) -> list[str]:
    out = []
    for line in ((text or "").replace(",", "\n") if split_commas else (text or "")).splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line not in out:
            out.append(line)
    return out


def parse_model_list(text: str) -> list[str]:
    """Model names from a newline- (or comma-) separated list; blank lines and '#' comments dropped."""
    return _lines(text, split_commas=True)


def parse_prompt_list(text: str, what: str = "prompts") -> list[str]:
    """Prompts, one per line (commas belong to prompts); blank lines and '#' comments dropped."""
    out = _lines(text, split_commas=False)
    if not out:
        raise ValueError(f"{what}: the prompt list is empty; give one prompt per line (lines starting with # are "
                         "comments)")
    return out


def parse_seeds(text: str, what: str = "--seeds") -> list[int]:
    """'42, 7 9' -> [42, 7, 9]."""
    out = []
    for tok in re.split(r"[,\s]+", (text or "").strip()):
        if not tok:
            continue
        if not tok.isdigit():
            raise ValueError(f"{what}: {tok!r} is not a seed; give whole numbers >= 0 separated by commas")
        if int(tok) not in out:
            out.append(int(tok))
    if not out:
        raise ValueError(f"{what}: no seeds; give whole numbers separated by commas, e.g. 42,7")
    return out


def parse_strengths(text: str, what: str = "strengths") -> list[float]:
    """'0.6, 0.8, 1.0' -> [0.6, 0.8, 1.0] (LoRA strengths; 0 renders the base model)."""
    out = []
    for tok in re.split(r"[,\s]+", (text or "").strip()):
        if not tok:
            continue
        try:
            v = float(tok)
        except ValueError:
            raise ValueError(f"{what}: {tok!r} is not a number; give LoRA strengths such as 0.6, 0.8, 1.0") from None
        if not -10.0 <= v <= 10.0:
            raise ValueError(f"{what}: {v} is outside -10..10; LoRA strengths are usually 0..1.5")
        if v not in out:
            out.append(v)
    if not out:
        raise ValueError(f"{what}: no strengths; give numbers separated by commas, e.g. 0.6, 0.8, 1.0")
    return out


def model_label(name: str) -> str:
    """'run/checkpoint-800.safetensors' -> 'checkpoint-800'."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base[: -len(".safetensors")] if base.lower().endswith(".safetensors") else base


def labels_for(names: list[str]) -> list[str]:
    """Row labels: the checkpoint names, with their run folder kept when two runs share one."""
    short = [model_label(n) for n in names]
    if len(set(short)) == len(short):
        return short
    return [n.replace("\\", "/")[: -len(".safetensors")] if n.lower().endswith(".safetensors") else n for n in names]


def checkpoint_step(label: str) -> int | None:
    m = re.search(r"checkpoint-(\d+)", label)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# Axes: any setting swept over a list of values


@dataclass(frozen=True)
class Axis:
    """One swept setting: ``name`` is what the user wrote (``cfg`` or ``3.cfg`` / ``KSampler.cfg``),
    ``values`` its typed values in the order given."""

    name: str
    values: tuple

    def label(self, value) -> str:
        short = self.name.rsplit(".", 1)[-1]
        return f"{short} {format_value(value)}"


def format_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def split_values(text: str) -> list[str]:
    """A value list: split on '|' when there is one (values that hold commas, e.g. SLG layer lists
    '7,8,9|6|10'), else on commas."""
    sep = "|" if "|" in text else ","
    return [t.strip() for t in text.split(sep) if t.strip()]


def parse_axis_spec(text: str, what: str) -> tuple[str, list[str]]:
    """'cfg=3.5,4.5' -> ('cfg', ['3.5', '4.5'])."""
    name, eq, values = text.partition("=")
    name = name.strip()
    if not eq or not name:
        raise ValueError(f"{what}: {text.strip()!r} is not 'NAME=v1,v2'; e.g. cfg=3.5,4.5")
    vals = split_values(values)
    if not vals:
        raise ValueError(f"{what}: {name} has an empty value list; give at least one value, e.g. {name}=1,2")
    return name, vals


def parse_axes_text(text: str, what: str = "axes") -> list[tuple[str, list[str]]]:
    """The node's axes field: 'cfg=3.5,4.5; steps=28,40' (';' or new lines between axes)."""
    out = []
    for part in re.split(r"[;\n]", text or ""):
        part = part.strip()
        if part and not part.startswith("#"):
            name, vals = parse_axis_spec(part, what)
            if any(n == name for n, _ in out):
                raise ValueError(f"{what}: {name} is given twice; put all its values in one list")
            out.append((name, vals))
    return out


@dataclass(frozen=True)
class InputSpec:
    """What an input accepts, from a node's schema (``/object_info`` or the node's own inputs)."""

    kind: str  # INT, FLOAT, BOOLEAN, STRING, COMBO
    min: float | None = None
    max: float | None = None
    options: tuple = ()

    @classmethod
    def from_object_info(cls, spec) -> InputSpec:
        """From an ``/object_info`` input entry: ``["INT", {...}]``, ``[[options], {...}]`` or
        ``["COMBO", {"options": [...]}]``."""
        kind = spec[0] if spec else None
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if isinstance(kind, list):
            return cls("COMBO", options=tuple(kind))
        if kind == "COMBO":
            return cls("COMBO", options=tuple(opts.get("options", ())))
        if kind in ("INT", "FLOAT", "BOOLEAN", "STRING"):
            return cls(kind, opts.get("min"), opts.get("max"))
        return cls(str(kind))


def coerce(raw: str, spec: InputSpec, what: str):
    """One axis value typed and range-checked against the input it goes to."""
    if spec.kind == "INT":
        try:
            v = int(raw)
        except ValueError:
            raise ValueError(f"{what}: {raw!r} is not a whole number") from None
    elif spec.kind == "FLOAT":
        try:
            v = float(raw)
        except ValueError:
            raise ValueError(f"{what}: {raw!r} is not a number") from None
    elif spec.kind == "BOOLEAN":
        if raw.lower() not in ("true", "false", "1", "0", "on", "off"):
            raise ValueError(f"{what}: {raw!r} is not true / false")
        v = raw.lower() in ("true", "1", "on")
    elif spec.kind == "COMBO":
        if raw not in spec.options:
            shown = ", ".join(map(str, spec.options[:12])) + (", ..." if len(spec.options) > 12 else "")
            raise ValueError(f"{what}: {raw!r} is not one of this server's options ({shown})")
        v = raw
    elif spec.kind == "STRING":
        v = raw
    else:
        raise ValueError(f"{what}: a {spec.kind} input is not a setting that can be swept (it takes a link)")
    if spec.kind in ("INT", "FLOAT"):
        if spec.min is not None and v < spec.min or spec.max is not None and v > spec.max:
            raise ValueError(f"{what}: {raw} is outside {format_value(spec.min)}..{format_value(spec.max)}")
    return v


# ---------------------------------------------------------------------------------------------
# Cells and the plan


@dataclass(frozen=True)
class Cell:
    """One image to render (or one latent batch): a checkpoint (a LoRA for LoRA sweeps, with its
    strength), a prompt, a seed and one value of every axis as ``((axis name, value), ...)``."""

    model: str
    prompt_index: int
    prompt: str
    seed: int
    strength: float | None = None
    axes: tuple = ()

    @property
    def row(self) -> tuple:
        return (self.model, self.strength)

    def key_parts(self) -> list:
        """What the resume key covers beyond the model, prompt and seed (nothing extra for a plain
        checkpoint x prompt x seed cell, so older state files still resume)."""
        extra = []
        if self.strength is not None:
            extra.append(["strength", self.strength])
        if self.axes:
            extra.append(["axes", [list(a) for a in self.axes]])
        return extra


def plan(models: list[str], prompts: list[str], seeds: list[int], strengths: list[float] | None = None,
         axes: list[Axis] | None = None) -> list[Cell]:
    """Checkpoint-major order: every strength, prompt, seed and axis value of a checkpoint before
    the next checkpoint, so each checkpoint is loaded (or its LoRA read) once."""
    combos: list[tuple] = [()]
    for ax in axes or []:
        combos = [c + ((ax.name, v),) for c in combos for v in ax.values]
    return [Cell(m, i, p, s, st, a) for m in models for st in (strengths or [None])
            for i, p in enumerate(prompts) for s in seeds for a in combos]


@dataclass(frozen=True)
class PlanSize:
    images: int
    model_loads: int
    lora_patches: int
    rows: int
    columns: int

    def describe(self) -> str:
        loads = f"{self.model_loads} model load{'s' if self.model_loads != 1 else ''}"
        patches = f", {self.lora_patches} LoRA patch{'es' if self.lora_patches != 1 else ''}" if self.lora_patches else ""
        return f"plan: {self.images} images ({self.rows} rows x {self.columns} columns), {loads}{patches}"


def plan_size(cells: list[Cell], lora: bool, batch: int = 1) -> PlanSize:
    rows = list(dict.fromkeys(c.row for c in cells))
    models = {c.model for c in cells}
    patches = len({c.row for c in cells if c.strength not in (None, 0)}) if lora else 0
    n_cols = len(cells) // max(1, len(rows))
    return PlanSize(len(cells) * batch, 1 if lora and cells else len(models), patches, len(rows), n_cols * batch)


def check_size(size: PlanSize, max_images: int, how_to_raise: str) -> None:
    if size.images > max_images:
        raise ValueError(f"max_images: this plan renders {size.images} images, above the limit of {max_images} "
                         f"({size.describe()}); use fewer checkpoints, prompts, seeds or axis values, or {how_to_raise}")


def row_label(label: str, strength: float | None) -> str:
    step = grid.step_label(label)
    return step if strength is None else f"{step}\nstrength {format_value(strength)}"


def column_labels(prompts: list[str], seeds: list[int], batch: int = 1, axes: list[Axis] | None = None) -> list[str]:
    """One header line per level: 'p1: a red fox sitting…', 'seed 42', then one line per axis
    ('cfg 3.5'), and '#2' per batch image; the grid draws each level as its own header row."""
    combos: list[tuple] = [()]
    for ax in axes or []:
        combos = [c + (ax.label(v),) for c in combos for v in ax.values]
    out = []
    for i, p in enumerate(prompts):
        for s in seeds:
            for combo in combos:
                for b in range(batch):
                    lines = [f"p{i + 1}: {grid.snippet(p)}", f"seed {s}" + (f" #{b + 1}" if batch > 1 and not combo else "")]
                    lines += list(combo)
                    if batch > 1 and combo:
                        lines[-1] += f" #{b + 1}"
                    out.append("\n".join(lines))
    return out


def fingerprint(*parts) -> str:
    """A stable short hash of strings, numbers and arrays (anything with .tobytes())."""
    h = hashlib.sha256()
    for p in parts:
        if hasattr(p, "tobytes"):
            h.update(f"{getattr(p, 'dtype', '')}{getattr(p, 'shape', '')}".encode())
            h.update(p.tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# Which checkpoints the sweep can render


def model_family(path: str) -> tuple[str | None, str]:
    """(family, description) from the file's header alone; family None for what is no diffusion model."""
    try:
        sd3_inspect.inspect_model(path, "models")
        return "sd3", "an SD3 / SD3.5 (MMDiT) model"
    except sd3_inspect.ModelFileError:
        pass
    try:
        header = sd3_inspect.read_header(path, "models")
    except (sd3_inspect.ModelFileError, OSError) as e:
        return None, str(e)
    desc = sd3_inspect.guess_family(header.tensors)
    return (desc if "UNet model" in desc or "Flux" in desc else None), desc


def family_problems(paths: dict[str, str]) -> dict[str, str]:
    """name -> why, for the checkpoints that are not a model of the sweep's family (the family most
    of them share)."""
    fam = {n: model_family(p) for n, p in paths.items()}
    known = [f for f, _ in fam.values() if f]
    expected = max(set(known), key=known.count) if known else None
    out = {}
    for n, (f, desc) in fam.items():
        if f is None:
            out[n] = f"not a diffusion model: {desc}" if not desc.startswith("models:") else desc
        elif f != expected:
            out[n] = f"{desc}, but this sweep's other checkpoints are {_fam_desc(fam, expected)}"
    return out


def _fam_desc(fam: dict, family: str | None) -> str:
    return next((d for f, d in fam.values() if f == family), "of another family")


# ---------------------------------------------------------------------------------------------
# SimpleTuner's own validation images: <output_dir>/validation_images/step_<N>_<shortname>_<W>x<H>.png

_VALIDATION = re.compile(r"^step_(\d+)_(.+)_(\d+x\d+)\.(png|jpg|jpeg|webp)$", re.IGNORECASE)


def validation_images(output_dir: str | os.PathLike, step: int) -> dict[str, Path]:
    """shortname (+ resolution when a run validates at several) -> file, for one training step."""
    folder = Path(output_dir) / "validation_images"
    found: dict[str, list[tuple[str, Path]]] = {}
    if folder.is_dir():
        for f in sorted(folder.iterdir()):
            m = _VALIDATION.match(f.name)
            if m and int(m.group(1)) == step and f.is_file():
                found.setdefault(m.group(2), []).append((m.group(3), f))
    out = {}
    for short, items in found.items():
        for res, f in items:
            out[short if len(items) == 1 else f"{short} {res}"] = f
    return out


def run_dir_of(model_path: str | os.PathLike) -> Path | None:
    """The SimpleTuner output_dir a linked checkpoint comes from (the folder holding checkpoint-N/),
    found by following the linker's symlink; None when the file is not inside a run."""
    real = Path(os.path.realpath(model_path))
    for parent in real.parents:
        if re.match(r"^checkpoint-\d+", parent.name):
            return parent.parent
    return None


def validation_columns(rows: list[str], run_dirs: list[Path | None]) -> tuple[list[str], list[list[Path | None]]]:
    """Extra grid columns of SimpleTuner's validation images: (labels, one cell list per row)."""
    found = []
    for label, d in zip(rows, run_dirs):
        step = checkpoint_step(label)
        found.append(validation_images(d, step) if d is not None and step is not None else {})
    names = sorted({k for f in found for k in f})
    return [f"SimpleTuner\n{n}" for n in names], [[f.get(n) for n in names] for f in found]
