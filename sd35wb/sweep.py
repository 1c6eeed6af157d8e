"""Checkpoint sweep: checkpoints x prompts x seeds, one labelled grid, resumable, across servers.

    python -m sd35wb.sweep --workflow api.json (--run NAME | --models a,b,c) --out grid.png
                           [--prompts prompts.txt | --prompt TEXT ...] [--seeds 42,7]
                           [--server http://127.0.0.1:8188 ...] [--validation-images OUTPUT_DIR]

Takes an API-format workflow (the frontend's "Export (API)") and finds in it the diffusion-model
loader (``UNETLoader``, our SD3.5 loader, or any ``unet_name`` input), the positive prompt's text
node and the sampler's seed (``--loader-node`` / ``--prompt-node`` / ``--seed-node`` pick them).
For every checkpoint, every prompt and every seed it queues a copy of the workflow with only those
three inputs changed. Each ``--server`` is handed one checkpoint at a time (all its prompts and
seeds, so each server loads each checkpoint once and ComfyUI's own cache keeps it loaded between
them) and the next when it is done; a server that stops answering has its unfinished images handed
to the others. Results are read from ``/history`` and images fetched through ``/view``; every image
is written under ``<out>-images/`` as soon as it arrives and recorded in ``<out>.sweep.json``, so
running the same command again after a crash or Ctrl-C renders only what is missing. The grid
(rows: checkpoints in numeric step order; columns: prompt x seed x batch image) is drawn from those
files at the end, downscaled and split into pages when too wide. Exit status: 0 all rendered,
1 some failed (grid of the rest written), 2 nothing rendered or bad arguments.

Runs outside ComfyUI: standard library, numpy and Pillow. The plain pieces the sweep node uses
(prompt lists, the plan, labels, SimpleTuner's validation images, the render cache) live here too.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import grid, sd3_inspect, simpletuner

# Loader class -> the input naming its diffusion model (our SD3.5 loader takes checkpoints too).
LOADERS = {"UNETLoader": "unet_name", "SD35WB_SD35Loader": "model_name"}
SEED_INPUTS = ("seed", "noise_seed")
STATE_VERSION = 1


def parse_model_list(text: str) -> list[str]:
    """Model names from a newline- (or comma-) separated list; blank lines and '#' comments dropped."""
    out = []
    for line in (text or "").replace(",", "\n").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line not in out:
            out.append(line)
    return out


def parse_prompt_list(text: str, what: str = "prompts") -> list[str]:
    """Prompts, one per line (commas belong to prompts); blank lines and '#' comments dropped."""
    out = []
    for line in (text or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line not in out:
            out.append(line)
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


@dataclass(frozen=True)
class Cell:
    """One image to render (or one latent batch): a checkpoint, a prompt and a seed."""

    model: str
    prompt_index: int
    prompt: str
    seed: int


def plan(models: list[str], prompts: list[str], seeds: list[int]) -> list[Cell]:
    """Checkpoint-major order: every prompt and seed of a checkpoint before the next checkpoint,
    so each checkpoint is loaded once."""
    return [Cell(m, i, p, s) for m in models for i, p in enumerate(prompts) for s in seeds]


def column_labels(prompts: list[str], seeds: list[int], batch: int = 1) -> list[str]:
    """Two lines per column: 'p1: a red fox sitting…' and 'seed 42' (plus '#2' per batch image)."""
    out = []
    for i, p in enumerate(prompts):
        for s in seeds:
            for b in range(batch):
                out.append(f"p{i + 1}: {grid.snippet(p)}\nseed {s}" + (f" #{b + 1}" if batch > 1 else ""))
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
            out[n] = f"{desc}, but this sweep's other checkpoints are {fam_desc(fam, expected)}"
    return out


def fam_desc(fam: dict, family: str | None) -> str:
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


# ---------------------------------------------------------------------------------------------
# Resume: the CLI's state file and the node's render cache


class StateLocked(RuntimeError):
    pass


class SweepState:
    """``<out>.sweep.json``: which images of which cells are on disk. Written atomically after every
    image (a kill loses at most the image in flight); one CLI at a time per output (a lock file)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._lockfile = None
        self.cells: dict[str, dict] = {}
        if self.path.exists():
            try:
                doc = json.loads(self.path.read_text())
                if doc.get("version") == STATE_VERSION and isinstance(doc.get("cells"), dict):
                    self.cells = doc["cells"]
            except (ValueError, OSError):
                self.cells = {}  # unreadable: start again, the images on disk are rewritten, never deleted

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(self.path.with_name(self.path.name + ".lock"), "a+")
        try:
            import fcntl

            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no advisory lock; the atomic writes still keep the file whole
            pass
        except OSError as e:
            self._lockfile.close()
            raise StateLocked(f"--out: another sweep is writing {self.path.parent / self.path.stem}; wait for it "
                              "or choose another --out") from e

    def release(self) -> None:
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None

    def done(self, key: str) -> list[str] | None:
        entry = self.cells.get(key)
        if not entry:
            return None
        files = [str(self.path.parent / f) for f in entry.get("files", [])]
        return files if files and all(os.path.isfile(f) for f in files) else None

    def record(self, key: str, files: list[Path], **info) -> None:
        with self._lock:
            self.cells[key] = {"files": [os.path.relpath(f, self.path.parent) for f in files], **info}
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": STATE_VERSION, "cells": self.cells}, indent=1))
            os.replace(tmp, self.path)


class RenderCache:
    """The sweep node's finished cells (sampled latents, numpy) in one folder, one safetensors file
    per cell key; files are written to a temporary name and renamed, so concurrent writers and a
    kill mid-write never leave a half file."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def get(self, key: str):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        p = self._path(key)
        if not p.is_file():
            return None
        try:
            return load_file(str(p))["samples"]
        except (SafetensorError, OSError, KeyError):
            return None

    def put(self, key: str, samples) -> None:
        from safetensors.numpy import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        save_file({"samples": samples}, str(tmp))
        os.replace(tmp, self._path(key))


# ---------------------------------------------------------------------------------------------
# The workflow: which inputs the sweep changes


def load_workflow(path: str | os.PathLike) -> dict:
    doc = json.loads(Path(path).read_text())
    if isinstance(doc, dict) and isinstance(doc.get("prompt"), dict):
        doc = doc["prompt"]
    if not isinstance(doc, dict) or "nodes" in doc and isinstance(doc.get("nodes"), list):
        raise ValueError(f"--workflow: {path} is a UI workflow; save it with 'Export (API)' instead")
    if not all(isinstance(v, dict) and "class_type" in v for v in doc.values()):
        raise ValueError(f"--workflow: {path} is not an API-format prompt (node id -> {{class_type, inputs}})")
    return doc


def find_loader(prompt: dict, node_id: str | None = None) -> tuple[str, str]:
    """(node id, input name) of the diffusion-model loader whose model the sweep swaps."""
    def key_of(node: dict) -> str | None:
        key = LOADERS.get(node.get("class_type"), "unet_name")
        value = node.get("inputs", {}).get(key)
        return key if isinstance(value, str) else None  # a [node, output] link is not a file name

    if node_id is not None:
        node = prompt.get(str(node_id))
        if node is None:
            raise ValueError(f"--loader-node: no node {node_id!r} in the workflow (ids: {', '.join(sorted(prompt))})")
        key = key_of(node)
        if key is None:
            raise ValueError(f"--loader-node: node {node_id} ({node['class_type']}) has no model-name input "
                             f"({', '.join(sorted(set(LOADERS.values())))})")
        return str(node_id), key
    found = [(nid, key_of(node)) for nid, node in prompt.items() if key_of(node)]
    if not found:
        raise ValueError("--workflow: no diffusion-model loader (UNETLoader, SD35WB_SD35Loader, or a unet_name "
                         "input) found; pass --loader-node ID")
    if len(found) > 1:
        raise ValueError(f"--workflow: several loaders ({', '.join(n for n, _ in found)}); pick one with --loader-node")
    return found[0]


def find_seed(prompt: dict, node_id: str | None = None) -> tuple[str, str]:
    """(node id, input name) of the sampler's seed (``seed`` or ``noise_seed``)."""
    def key_of(node: dict) -> str | None:
        return next((k for k in SEED_INPUTS if isinstance(node.get("inputs", {}).get(k), int)), None)

    if node_id is not None:
        node = prompt.get(str(node_id))
        if node is None or key_of(node) is None:
            raise ValueError(f"--seed-node: node {node_id!r} has no seed / noise_seed number input")
        return str(node_id), key_of(node)
    found = [(nid, key_of(n)) for nid, n in prompt.items() if key_of(n)]
    if len(found) > 1:  # other nodes may take a seed too (noise generators, test nodes): prefer the sampler
        found = [(nid, k) for nid, k in found if any(isinstance(prompt[nid]["inputs"].get(i), list)
                                                     for i in ("model", "positive"))] or found
    if len(found) != 1:
        raise ValueError(f"--seeds: {'no' if not found else 'several'} sampler seed inputs in the workflow"
                         f"{' (' + ', '.join(n for n, _ in found) + ')' if found else ''}; pick one with --seed-node ID")
    return found[0]


def find_prompt(prompt: dict, node_id: str | None = None) -> tuple[str, str]:
    """(node id, "text") of the positive prompt: the text node feeding the sampler's ``positive``."""
    if node_id is not None:
        node = prompt.get(str(node_id))
        if node is None or not isinstance(node.get("inputs", {}).get("text"), str):
            raise ValueError(f"--prompt-node: node {node_id!r} has no text input")
        return str(node_id), "text"
    found = []
    for node in prompt.values():
        link = node.get("inputs", {}).get("positive")
        if isinstance(link, list) and len(link) == 2 and isinstance(prompt.get(str(link[0]), {}).get("inputs", {}).get("text"), str):
            if str(link[0]) not in found:
                found.append(str(link[0]))
    if len(found) != 1:
        raise ValueError(f"--prompts: {'no' if not found else 'several'} text nodes feed a sampler's positive input"
                         f"{' (' + ', '.join(found) + ')' if found else ''}; pick one with --prompt-node ID")
    return found[0], "text"


def workflow_signature(prompt: dict, blank: list[tuple[str, str]], output_node: str | None) -> str:
    """What every image of the sweep shares: the workflow without the inputs the sweep changes."""
    p = copy.deepcopy(prompt)
    for nid, key in blank:
        p[nid]["inputs"].pop(key, None)
    for node in p.values():
        node.pop("_meta", None)
        if node.get("class_type") in ("SaveImage", "PreviewImage"):
            node["inputs"].pop("filename_prefix", None)
    return fingerprint(p, output_node)


# ---------------------------------------------------------------------------------------------
# A small ComfyUI API client (standard library only)


class Server:
    def __init__(self, url: str, timeout: float = 30):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _open(self, path: str, data: dict | None = None):
        body = json.dumps(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"} if body else {})
        return urllib.request.urlopen(req, timeout=self.timeout)

    def get_json(self, path: str):
        with self._open(path) as r:
            return json.loads(r.read())

    def queue(self, prompt: dict) -> str:
        try:
            with self._open("/prompt", {"prompt": prompt, "client_id": self.client_id}) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise PromptError(_rejection_text(e.code, e.read())) from e
        if doc.get("node_errors"):  # accepted with some outputs dropped: ours would never come
            raise PromptError(_rejection_text(200, json.dumps(doc).encode()))
        return doc["prompt_id"]

    def view(self, image: dict) -> bytes:
        q = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                    "type": image.get("type", "output")})
        with self._open(f"/view?{q}") as r:
            return r.read()

    def diffusion_models(self) -> list[str]:
        info = self.get_json("/object_info/UNETLoader")
        spec = info["UNETLoader"]["input"]["required"]["unet_name"]
        return list(spec[1]["options"] if isinstance(spec[0], str) else spec[0])


class PromptError(Exception):
    pass


class ServerGone(Exception):
    left: list = []  # the cells it had not finished


def _rejection_text(status: int, body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return f"HTTP {status}: {body[:300]!r}"
    msg = [doc.get("error", {}).get("message", "")] if isinstance(doc.get("error"), dict) else [str(doc.get("error", ""))]
    for nid, ne in (doc.get("node_errors") or {}).items():
        for err in ne.get("errors", []):
            msg.append(f"node {nid}: {err.get('message')}: {err.get('details')}")
    return f"rejected (HTTP {status}): " + "; ".join(m for m in msg if m)


def _history_images(entry: dict, output_node: str | None) -> list[dict]:
    found = []
    for nid, out in sorted(entry.get("outputs", {}).items(), key=lambda kv: (kv[0] != output_node, kv[0])):
        if output_node is not None and nid != output_node:
            continue
        found += [im for im in out.get("images", []) if im.get("type", "output") in ("output", "temp")]
        if found:
            break  # one node's images: the first image output (all of its batch)
    return found


def _error_text(entry: dict) -> str:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('exception_type')}: {data.get('exception_message', '').strip()} (node {data.get('node_id')})"
        if kind == "execution_interrupted":
            return "interrupted"
    return "failed"


# ---------------------------------------------------------------------------------------------
# The sweep


@dataclass
class SweepResult:
    rows: list[str] = field(default_factory=list)  # row labels (checkpoints), grid order
    files: dict[Cell, list[Path]] = field(default_factory=dict)  # rendered (or resumed) images per cell
    failures: dict[Cell, str] = field(default_factory=dict)
    pages: list[Path] = field(default_factory=list)
    reused: int = 0
    rendered: int = 0
    servers: dict[Cell, str] = field(default_factory=dict)  # cell -> server url that rendered it


class _Work:
    """Checkpoints waiting for a server; a dead server's unfinished cells go back to the front."""

    def __init__(self, items):
        self.items = list(items)  # [(model, [cells])]
        self.busy = 0
        self.cond = threading.Condition()

    def take(self, accept=lambda item: True):
        """The next item this server may take (not one it refused); None when none is left for it."""
        with self.cond:
            while True:
                mine = next((it for it in self.items if accept(it)), None)
                if mine is not None:
                    self.items.remove(mine)
                    self.busy += 1
                    return mine
                if not self.busy:
                    return None
                self.cond.wait(0.5)

    def finish(self, *give_back) -> None:
        with self.cond:
            for item in reversed([g for g in give_back if g]):
                self.items.insert(0, item)
            self.busy -= 1
            self.cond.notify_all()


class Sweep:
    def __init__(self, prompt: dict, models: list[str], prompts: list[str] | None, seeds: list[int] | None,
                 servers: list[str], out: Path, loader_node: str | None = None, prompt_node: str | None = None,
                 seed_node: str | None = None, output_node: str | None = None, timeout: float = 3600, log=sys.stdout):
        self.prompt, self.models, self.out, self.log = prompt, models, Path(out), log
        self.loader = find_loader(prompt, loader_node)
        self.text = find_prompt(prompt, prompt_node) if prompts or prompt_node else None
        if seeds or seed_node:
            self.seed = find_seed(prompt, seed_node)
        else:  # the workflow's own seed, only to label the column
            try:
                self.seed = find_seed(prompt)
            except ValueError:
                self.seed = None
        if not prompts and not self.text:
            try:
                self.text = find_prompt(prompt)
            except ValueError:
                pass
        self.prompts = prompts or [prompt[self.text[0]]["inputs"]["text"] if self.text else "(the workflow's prompt)"]
        self.seeds = seeds or [prompt[self.seed[0]]["inputs"][self.seed[1]] if self.seed else 0]
        self.output_node, self.timeout = output_node, timeout
        self.servers = [Server(u) for u in servers]
        self.labels = dict(zip(models, labels_for(models)))
        self.signature = workflow_signature(prompt, [x for x in (self.loader, self.text, self.seed) if x], output_node)
        self.state = SweepState(self.out.with_name(self.out.stem + ".sweep.json"))
        self.images_dir = self.out.with_name(self.out.stem + "-images")
        self.result = SweepResult(rows=[self.labels[m] for m in models])
        self._lock = threading.Lock()
        self._t0 = 0.0
        self.total = 0
        self.inflight: dict[str, dict[str, Cell]] = {}
        self.refused: dict[Cell, dict[str, str]] = {}  # cell -> {server url: why}; tried on the others

    def key(self, cell: Cell) -> str:
        return fingerprint(self.signature, cell.model, cell.prompt, cell.seed)

    def say(self, line: str) -> None:
        with self._lock:
            print(line, file=self.log, flush=True)

    def _prompt_for(self, cell: Cell) -> dict:
        p = copy.deepcopy(self.prompt)
        p[self.loader[0]]["inputs"][self.loader[1]] = cell.model
        if self.text:
            p[self.text[0]]["inputs"]["text"] = cell.prompt
        if self.seed:
            p[self.seed[0]]["inputs"][self.seed[1]] = cell.seed
        return p

    def _done_line(self, cell: Cell, url: str) -> None:
        with self._lock:
            r = self.result
            done = r.reused + r.rendered + len(r.failures)
            rate = (time.time() - self._t0) / max(1, r.rendered)
            left = (self.total - done) * rate
            eta = f", about {_duration(left)} left" if r.rendered and done < self.total else ""
            print(f"[{done}/{self.total}] {self.labels[cell.model]}  p{cell.prompt_index + 1} seed {cell.seed}  "
                  f"({url}; {rate:.1f} s/image{eta})", file=self.log, flush=True)

    def _fail(self, cell: Cell, why: str, url: str) -> None:
        with self._lock:
            self.result.failures[cell] = why
        self.say(f"FAILED  {self.labels[cell.model]} p{cell.prompt_index + 1} seed {cell.seed} on {url}: {why}")

    def _call(self, fn, *a):
        """One HTTP call; a server that fails three times in a row (about 2 s) is taken as gone."""
        for attempt in range(3):
            try:
                return fn(*a)
            except PromptError:
                raise
            except (urllib.error.URLError, OSError, ValueError) as e:
                if attempt == 2:
                    raise ServerGone(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from e
                time.sleep(0.7)

    def _render(self, server: Server, model: str, cells: list[Cell], others: int) -> list[Cell]:
        """Queue every cell of one checkpoint on one server, then collect the images as they finish.
        Returns the cells this server refused that another server has not tried yet."""
        pending: dict[str, Cell] = {}
        self.inflight[server.url] = pending  # what Ctrl-C takes back off this server's queue
        todo = [c for c in cells if server.url not in self.refused.get(c, {})]
        bounce = [c for c in cells if c not in todo]  # refused here before: another server's
        try:
            while todo:
                try:
                    pending[self._call(server.queue, self._prompt_for(todo[0]))] = todo[0]
                except PromptError as e:
                    tried = self.refused.setdefault(todo[0], {})
                    tried[server.url] = str(e)
                    if len(tried) <= others:
                        bounce.append(todo[0])
                        self.say(f"refused {self.labels[model]} p{todo[0].prompt_index + 1} seed {todo[0].seed} on "
                                 f"{server.url}: {e}; trying another server")
                    else:
                        self._fail(todo[0], str(e), server.url)
                todo.pop(0)
            deadline = time.time() + self.timeout
            while pending and time.time() < deadline:
                for pid, cell in list(pending.items()):
                    entry = self._call(server.get_json, f"/history/{pid}").get(pid)
                    status = (entry or {}).get("status", {})
                    if not entry or not (status.get("completed") or status.get("status_str") in ("success", "error")):
                        continue
                    self._collect(server, cell, entry)
                    del pending[pid]
                if pending:
                    time.sleep(0.2)
            for cell in pending.values():
                self._fail(cell, f"no result within {self.timeout:.0f} s", server.url)
        except ServerGone as e:
            e.left = [c for c in cells if c in pending.values() or c in todo] + bounce
            raise
        return bounce

    def _collect(self, server: Server, cell: Cell, entry: dict) -> None:
        if entry.get("status", {}).get("status_str") == "error":
            return self._fail(cell, _error_text(entry), server.url)
        ims = _history_images(entry, self.output_node)
        if not ims:
            return self._fail(cell, "the prompt finished without an image output (end the workflow in SaveImage)",
                              server.url)
        files = []
        for b, im in enumerate(ims):
            data = self._call(server.view, im)
            f = self.images_dir / (f"{_safe(self.labels[cell.model])}-p{cell.prompt_index + 1}-"
                                   f"{fingerprint(cell.prompt)[:6]}-s{cell.seed}-{b + 1}.png")
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_name(f".{f.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, f)
            files.append(f)
        self.state.record(self.key(cell), files, model=cell.model, prompt=cell.prompt, seed=cell.seed)
        with self._lock:
            self.result.files[cell] = files
            self.result.servers[cell] = server.url
            self.result.rendered += 1
        self._done_line(cell, server.url)

    def _worker(self, server: Server, work: _Work, alive: list) -> None:
        def accept(item) -> bool:
            return any(server.url not in self.refused.get(c, {}) for c in item[1])

        while (item := work.take(accept)) is not None:
            model, cells = item
            give_back = None
            try:
                bounced = self._render(server, model, cells, len(alive) - 1)
                give_back = (model, bounced) if bounced else None
            except ServerGone as e:
                give_back = (model, e.left) if e.left else None
                self.say(f"server {server.url} stopped answering ({e}): its {len(e.left)} unfinished image(s) of "
                         f"{self.labels[model]} go to the other server(s)")
                with self._lock:
                    alive.remove(server)
                return
            except Exception as e:  # noqa: BLE001 - one checkpoint's surprise must not stop the sweep
                for c in cells:
                    if c not in self.result.files and c not in self.result.failures:
                        self._fail(c, f"{type(e).__name__}: {e}", server.url)
            finally:
                work.finish(give_back)

    def run(self) -> SweepResult:
        cells = plan(self.models, self.prompts, self.seeds)
        self.total = len(cells)
        self.state.acquire()
        try:
            todo: dict[str, list[Cell]] = {}
            for cell in cells:
                files = self.state.done(self.key(cell))
                if files:
                    self.result.files[cell] = [Path(f) for f in files]
                    self.result.reused += 1
                else:
                    todo.setdefault(cell.model, []).append(cell)
            n_todo = sum(map(len, todo.values()))
            self.say(f"sweep: {len(self.models)} checkpoints x {len(self.prompts)} prompts x {len(self.seeds)} seeds "
                     f"= {self.total} images over {len(self.servers)} server(s)")
            if self.result.reused:
                self.say(f"resume: {self.result.reused} of {self.total} images already rendered ({self.state.path.name});"
                         f" rendering the other {n_todo}")
            self._t0 = time.time()
            work = _Work(todo.items())
            alive = list(self.servers)
            threads = [threading.Thread(target=self._worker, args=(s, work, alive), daemon=True) for s in self.servers]
            for t in threads:
                t.start()
            try:
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(0.2)
            except KeyboardInterrupt:
                self.cancel()
                raise
            for _model, left in work.items:  # every server gone, or every live one refused these
                for cell in left:
                    why = "; ".join(f"{u}: {w}" for u, w in self.refused.get(cell, {}).items())
                    self.result.failures[cell] = why or "not rendered: no server left (run the same command again to resume)"
            if any(c not in self.refused for _, left in work.items for c in left):
                self.say(f"no server left: {sum(len(c) for _, c in work.items)} image(s) not rendered; run the same "
                         "command again to resume")
        finally:
            self.state.release()
        return self.result


    def cancel(self) -> None:
        """Ctrl-C: take this sweep's prompts back off every server (queued ones deleted, running ones
        interrupted by id, so nobody else's prompt is touched); finished images stay recorded."""
        for server in self.servers:
            pids = list(self.inflight.get(server.url, {}))
            if not pids:
                continue
            try:
                with server._open("/queue", {"delete": pids}):
                    pass
                for pid in pids:
                    with server._open("/interrupt", {"prompt_id": pid}):
                        pass
            except (urllib.error.URLError, OSError):
                pass  # a server that is gone has nothing of ours left to run


def draw(result: SweepResult, sweep: Sweep, out: Path, max_tile: int = grid.MAX_TILE, page_width: int = grid.MAX_PAGE,
         validation_dir: str | os.PathLike | None = None) -> list[Path]:
    """The grid pages from the image files on disk (one image open at a time)."""
    from PIL import Image

    batch = max([len(f) for f in result.files.values()] or [1])
    cols = [(i, s, b) for i in range(len(sweep.prompts)) for s in sweep.seeds for b in range(batch)]
    by_cell = {(c.model, c.prompt_index, c.seed): c for c in list(result.files) + list(result.failures)}
    rows = []
    for m in sweep.models:
        row = []
        for i, s, b in cols:
            c = by_cell.get((m, i, s))
            files = result.files.get(c) if c else None
            row.append(files[b] if files and b < len(files) else
                       grid.Note(result.failures[c]) if c in result.failures and b == 0 else None)
        rows.append(row)
    labels = column_labels(sweep.prompts, sweep.seeds, batch)
    if validation_dir is not None:
        vlabels, vcells = validation_columns(result.rows, [Path(validation_dir)] * len(result.rows))
        labels += vlabels
        rows = [r + v for r, v in zip(rows, vcells)]
    sizes = []
    for f in [f for fs in result.files.values() for f in fs][:64]:
        with Image.open(f) as im:
            sizes.append(im.size)
    pages = grid.sweep_pages(rows, [grid.step_label(r) for r in result.rows], labels,
                             grid.tile_size(sizes or [(max_tile, max_tile)], max_tile), max_width=page_width)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(pages) == 1 else [out.with_name(f"{out.stem}-page{k + 1}{out.suffix}") for k in range(len(pages))]
    for page, p in zip(pages, paths):
        page.save(p)
    return paths


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sd35wb.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workflow", required=True, help="API-format workflow JSON (Export (API))")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="every diffusion model under <run>/ on the first server, numeric order")
    which.add_argument("--models", help="comma-separated diffusion_models names")
    ap.add_argument("--prompts", type=Path, help="text file, one prompt per line (default: the workflow's prompt)")
    ap.add_argument("--prompt", action="append", help="a prompt; repeat for several (instead of --prompts)")
    ap.add_argument("--seeds", help="comma-separated seeds (default: the workflow's seed)")
    ap.add_argument("--loader-node", help="id of the loader node whose model is swapped (default: found)")
    ap.add_argument("--prompt-node", help="id of the text node whose prompt is swapped (default: found)")
    ap.add_argument("--seed-node", help="id of the sampler whose seed is swapped (default: found)")
    ap.add_argument("--output-node", help="id of the node whose images go in the grid (default: the first image output)")
    ap.add_argument("--server", action="append", help="ComfyUI URL; repeat to spread checkpoints (default http://127.0.0.1:8188)")
    ap.add_argument("--out", required=True, type=Path, help="grid PNG to write (pages: <out>-pageN.png)")
    ap.add_argument("--validation-images", metavar="OUTPUT_DIR",
                    help="the run's SimpleTuner output_dir: show its validation_images/ beside each row")
    ap.add_argument("--max-tile", type=int, default=grid.MAX_TILE, help="longer side of a grid tile, px (default 256)")
    ap.add_argument("--page-width", type=int, default=grid.MAX_PAGE, help="widest page, px (default 4096)")
    ap.add_argument("--keep-order", action="store_true", help="--models in the order given, not numeric")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds to wait for one checkpoint's images")
    args = ap.parse_args(argv)
    servers = args.server or ["http://127.0.0.1:8188"]
    try:
        prompt = load_workflow(args.workflow)
        find_loader(prompt, args.loader_node)
        if args.prompts and args.prompt:
            raise ValueError("--prompts and --prompt: give one of them")
        prompts = None
        if args.prompts:
            prompts = parse_prompt_list(args.prompts.read_text(), f"--prompts {args.prompts}")
        elif args.prompt is not None:
            prompts = parse_prompt_list("\n".join(args.prompt), "--prompt")
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        if args.max_tile < 16 or args.page_width < 64:
            raise ValueError("--max-tile must be >= 16 and --page-width >= 64 (pixels)")
        if args.validation_images and not Path(args.validation_images, "validation_images").is_dir():
            raise ValueError(f"--validation-images: no validation_images/ folder in {args.validation_images}; give "
                             "the run's SimpleTuner output_dir")
        if args.run:
            run = simpletuner.check_run_name(args.run)
            names = [n for n in Server(servers[0]).diffusion_models() if n.replace("\\", "/").startswith(run + "/")]
            if not names:
                raise ValueError(f"--run: no diffusion models under {run}/ on {servers[0]}; link the run first "
                                 "(python -m sd35wb.link ... or the Sync now button)")
            models = simpletuner.natural_sorted(names)
        else:
            models = parse_model_list(args.models)
            if not models:
                raise ValueError("--models: empty list")
            if not args.keep_order:
                models = simpletuner.natural_sorted(models)
        sweep = Sweep(prompt, models, prompts, seeds, servers, args.out, args.loader_node, args.prompt_node,
                      args.seed_node, args.output_node, args.timeout)
        res = sweep.run()
    except (ValueError, OSError, urllib.error.URLError, StateLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was rendered is kept; run the same command again to resume", file=sys.stderr)
        return 130
    for cell, why in res.failures.items():
        print(f"failed: {sweep.labels[cell.model]} p{cell.prompt_index + 1} seed {cell.seed}: {why}")
    if not res.files:
        print("grid: none (nothing rendered)")
        return 2
    pages = draw(res, sweep, args.out, args.max_tile, args.page_width, args.validation_images)
    print(f"grid: {', '.join(map(str, pages))} ({len(models)} rows x {len(sweep.prompts) * len(sweep.seeds)} "
          f"prompt/seed columns; {res.rendered} rendered, {res.reused} reused)")
    return 1 if res.failures else 0


if __name__ == "__main__":
    sys.exit(main())
