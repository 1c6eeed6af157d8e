"""One CLI sweep: its plan over a workflow, the resume state, the collector that writes each image
exactly once, and the local scheduler that hands checkpoints to a list of ComfyUI servers.

A scheduler is any callable ``dispatch(sweep, groups)`` that renders ``groups`` (one
``(checkpoint, [cells])`` per checkpoint, so a server loads each checkpoint once) by queueing
``sweep.prompt_for(cell)`` and handing what comes back to ``sweep.collect`` / ``sweep.store`` /
``sweep.fail``; it returns the groups it could not place. :func:`run_local` is the one-machine
scheduler; ``ray_dispatch`` places the same groups on a Ray cluster."""

from __future__ import annotations

import sys
import threading
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

from . import scoring
from .client import PromptError, Result, Server, ServerGone, output_images
from .plan import DEFAULT_MAX_IMAGES, Axis, Cell, PlanSize, check_size, fingerprint, format_value, labels_for, plan, plan_size
from .state import SweepState
from .workflow import (
    Edits,
    find_base_model,
    find_loader,
    find_lora_loader,
    find_prompt,
    find_seed,
    resolve_axes,
    workflow_signature,
)


@dataclass
class SweepResult:
    rows: list[tuple[str, float | None]] = field(default_factory=list)  # (checkpoint, strength), grid order
    files: dict[Cell, list[Path]] = field(default_factory=dict)  # rendered (or resumed) images per cell
    failures: dict[Cell, str] = field(default_factory=dict)
    reused: int = 0
    rendered: int = 0
    servers: dict[Cell, str] = field(default_factory=dict)  # cell -> server url that rendered it
    throughput: dict[str, list[float]] = field(default_factory=dict)  # url -> seconds per image it rendered
    scores: dict[Cell, list[dict]] = field(default_factory=dict)  # with --scores: each image's scores (scoring.py)


class Sweep:
    def __init__(self, prompt: dict, models: list[str], prompts: list[str] | None, seeds: list[int] | None,
                 servers: list[str], out: Path, loader_node: str | None = None, prompt_node: str | None = None,
                 seed_node: str | None = None, output_node: str | None = None, timeout: float = 3600, log=sys.stdout,
                 lora: bool = False, lora_node: str | None = None, strengths: list[float] | None = None,
                 axes: list[str] | None = None, max_images: int = DEFAULT_MAX_IMAGES):
        self.prompt, self.models, self.out, self.log = prompt, models, Path(out), log
        self.scoring = None  # a scoring.ScoreSpec: every queued workflow scores its images on its server
        self.held: list[bool] = []  # which prompts are marked '[held out]' (drift)
        self.lora = find_lora_loader(prompt, lora_node) if lora else None
        self.loader = None if lora else find_loader(prompt, loader_node)
        if strengths and not lora:
            raise ValueError("--strengths: only a LoRA sweep (--loras / --lora-run) has a strength to sweep")
        text = find_prompt(prompt, prompt_node) if prompts or prompt_node else None
        if seeds or seed_node:
            seed = find_seed(prompt, seed_node)
        else:  # the workflow's own seed, only to label the column
            try:
                seed = find_seed(prompt)
            except ValueError:
                seed = None
        if not prompts and not text:
            try:
                text = find_prompt(prompt)
            except ValueError:
                pass
        self.edits = Edits(self.loader, self.lora, text, seed)
        self.prompts = prompts or [prompt[text[0]]["inputs"]["text"] if text else "(the workflow's prompt)"]
        self.seeds = seeds or [prompt[seed[0]]["inputs"][seed[1]] if seed else 0]
        self.strengths = strengths
        self.output_node, self.timeout = output_node, timeout
        self.servers = [Server(u) for u in servers]
        self.axis_specs = list(axes or [])
        self.axes: list[Axis] = []
        self.max_images = max_images
        self.labels = dict(zip(models, labels_for(models)))
        self.state = SweepState(self.out.with_name(self.out.stem + ".sweep.json"))
        self.images_dir = self.out.with_name(self.out.stem + "-images")
        self._lock = threading.Lock()
        self._t0 = 0.0
        self.total = 0
        self.inflight: dict[str, dict[str, Cell]] = {}
        self.refused: dict[Cell, dict[str, str]] = {}  # cell -> {server url: why}; tried on the others
        self.cells: list[Cell] = []
        self.size: PlanSize | None = None
        self.signature = ""
        self.result = SweepResult()

    # -- the plan -----------------------------------------------------------------------------

    def set_models(self, models: list[str]) -> None:
        """The checkpoints (or LoRA files), when they are only known after asking the server."""
        self.models = list(models)
        self.labels = dict(zip(self.models, labels_for(self.models)))

    def prepare(self) -> PlanSize:
        """Type the axes against the first server's ``/object_info`` and size the plan: every bad
        argument is an error here, before anything is queued."""
        taken = self.edits.changed(self.prompt, [])
        cache: dict[str, dict] = {}

        def info(class_type: str) -> dict:
            if class_type not in cache:
                cache[class_type] = self.servers[0].object_info(class_type)
            return cache[class_type]

        self.axes = resolve_axes(self.prompt, self.axis_specs, info, taken)
        self.signature = workflow_signature(self.prompt, self.edits.changed(self.prompt, self.axes), self.output_node)
        self.cells = plan(self.models, self.prompts, self.seeds, self.strengths if self.lora else None, self.axes)
        self.total = len(self.cells)
        self.size = plan_size(self.cells, bool(self.lora))
        check_size(self.size, self.max_images, "raise the limit with --max-images N")
        self.result.rows = list(dict.fromkeys(c.row for c in self.cells))
        return self.size

    def describe_plan(self) -> str:
        s = self.size
        what = "LoRA checkpoints" if self.lora else "checkpoints"
        parts = [f"{len(self.models)} {what}"]
        if self.strengths and self.lora:
            parts.append(f"{len(self.strengths)} strengths")
        parts += [f"{len(self.prompts)} prompts", f"{len(self.seeds)} seeds"]
        parts += [f"{len(a.values)} {a.name}" for a in self.axes]
        loads = ("the base model once per server (ComfyUI keeps it loaded while only the LoRA changes)" if self.lora
                 else f"{s.model_loads} checkpoint load(s), each once")
        return (f"sweep: {' x '.join(parts)} = {s.images} images over {len(self.servers)} server(s); {loads}"
                + (f"; {s.lora_patches} LoRA patch(es)" if s.lora_patches else ""))

    def check_loras(self, groups: list[tuple[str, list[Cell]]]) -> list[tuple[str, list[Cell]]]:
        """A LoRA sweep asks the first server (the pack's route) whether each LoRA fits the workflow's
        base model; one that does not is a row error instead of an unchanged image. A server without
        the pack cannot tell: said once, and the sweep goes on."""
        base = find_base_model(self.prompt, self.lora)
        if base is None:
            self.say("note: the LoRA loader's model is not a UNETLoader file, so LoRAs are not checked against it")
            return groups
        keep = []
        for model, cells in groups:
            doc = self.servers[0].lora_check(model, base)
            if doc is None:
                self.say(f"note: {self.servers[0].url} has no SD3.5 Workbench pack: a LoRA that matches nothing of "
                         f"{base} would render the base unchanged (ComfyUI only logs 'lora key not loaded')")
                return groups
            if doc.get("ok"):
                keep.append((model, cells))
                continue
            for c in cells:
                if c.strength == 0:  # strength 0 is the base itself, fit or not
                    keep.append((model, [c]))
                else:
                    self.fail(c, doc.get("message", "does not fit the base model"), self.servers[0].url)
        return keep

    def key(self, cell: Cell) -> str:
        return fingerprint(self.signature, cell.model, cell.prompt, cell.seed, *cell.key_parts())

    def prompt_for(self, cell: Cell) -> dict:
        p = self.edits.apply(self.prompt, cell)
        return scoring.add_to(p, self.scoring, cell.prompt, self.output_node) if self.scoring else p

    def cell_name(self, cell: Cell) -> str:
        parts = [self.labels[cell.model]]
        if cell.strength is not None:
            parts.append(f"strength {format_value(cell.strength)}")
        parts += [f"p{cell.prompt_index + 1}", f"seed {cell.seed}"]
        parts += [f"{n.rsplit('.', 1)[-1]} {format_value(v)}" for n, v in cell.axes]
        return " ".join(parts)

    def say(self, line: str) -> None:
        with self._lock:
            print(line, file=self.log, flush=True)

    # -- the collector: every image written once, whoever rendered it --------------------------

    def collect(self, server: Server, cell: Cell, res: Result, call=None, seconds: float | None = None) -> None:
        """A finished prompt: fetch its images from ``server`` and store them (or record why not)."""
        call = call or (lambda fn, *a: fn(*a))
        if res.status != "success":
            return self.fail(cell, res.error or res.status, server.url)
        ims = output_images(res.outputs, self.output_node)
        if not ims:
            return self.fail(cell, "the prompt finished without an image output (end the workflow in SaveImage)",
                             server.url)
        self.store(cell, [call(server.view, im) for im in ims], server.url, seconds, scoring.read(res.outputs))

    def file_for(self, cell: Cell, b: int) -> Path:
        name = _safe(self.labels[cell.model])
        if cell.strength is not None:
            name += f"-w{format_value(cell.strength)}"
        name += f"-p{cell.prompt_index + 1}-{fingerprint(cell.prompt)[:6]}-s{cell.seed}"
        if cell.axes:
            name += "-a" + fingerprint([list(a) for a in cell.axes])[:8]
        return self.images_dir / f"{name}-{b + 1}.png"

    def store(self, cell: Cell, images: list[bytes], url: str, seconds: float | None = None,
              scores: list[dict] | None = None) -> bool:
        """Write one cell's images (and their scores) and record them; False (nothing written) when the
        cell is done already, e.g. a retried render that finished twice."""
        with self._lock:
            if cell in self.result.files:
                return False
            files = []
            for b, data in enumerate(images):
                f = self.file_for(cell, b)
                f.parent.mkdir(parents=True, exist_ok=True)
                tmp = f.with_name(f".{f.name}.tmp")
                tmp.write_bytes(data)
                tmp.replace(f)
                files.append(f)
            self.state.record(self.key(cell), files, model=cell.model, prompt=cell.prompt, seed=cell.seed,
                              **({"strength": cell.strength} if cell.strength is not None else {}),
                              **({"axes": [list(a) for a in cell.axes]} if cell.axes else {}),
                              **({"scores": scores} if scores is not None else {}))
            r = self.result
            r.files[cell] = files
            if scores is not None:
                r.scores[cell] = scores
            r.failures.pop(cell, None)
            r.servers[cell] = url
            r.rendered += 1
            if seconds is not None:
                r.throughput.setdefault(url, []).append(seconds)
            done = r.reused + r.rendered + len(r.failures)
            rate = (time.time() - self._t0) / max(1, r.rendered)
            left = (self.total - done) * rate
            eta = f", about {_duration(left)} left" if done < self.total else ""
            print(f"[{done}/{self.total}] {self.cell_name(cell)}  ({url}; {rate:.1f} s/image{eta})", file=self.log,
                  flush=True)
        return True

    def fail(self, cell: Cell, why: str, url: str) -> None:
        with self._lock:
            if cell in self.result.files:
                return
            self.result.failures[cell] = why
        self.say(f"FAILED  {self.cell_name(cell)} on {url}: {why}")

    # -- running ------------------------------------------------------------------------------

    def run(self, dispatch=None) -> SweepResult:
        if self.size is None:
            self.prepare()
        dispatch = dispatch or run_local
        held = self.state._lockfile is not None  # a follower holds the lock across its batches
        if not held:
            self.state.acquire()
        try:
            todo: dict[str, list[Cell]] = {}
            for cell in self.cells:
                if cell in self.result.files:  # rendered by an earlier batch of this sweep (follow): not a resume
                    continue
                files = self.state.done(self.key(cell))
                kept = self.state.cells.get(self.key(cell), {}).get("scores")
                if files and self.scoring and kept is None:
                    files = None  # rendered before without --scores: rendered again, now scored
                if files:
                    self.result.files[cell] = [Path(f) for f in files]
                    self.result.reused += 1
                    if kept is not None:
                        self.result.scores[cell] = kept
                else:
                    todo.setdefault(cell.model, []).append(cell)
            groups = list(todo.items())
            if self.lora:
                groups = self.check_loras(groups)
            n_todo = sum(len(c) for _, c in groups)
            self.say(self.describe_plan())
            if self.result.reused:
                self.say(f"resume: {self.result.reused} of {self.total} images already rendered ({self.state.path.name});"
                         f" rendering the other {n_todo}")
            self._t0 = time.time()
            try:
                left = dispatch(self, groups)
            except KeyboardInterrupt:
                self.cancel()
                raise
            for _model, cells in left:  # every server gone, or every live one refused these
                for cell in cells:
                    why = "; ".join(f"{u}: {w}" for u, w in self.refused.get(cell, {}).items())
                    self.result.failures[cell] = why or "not rendered: no server left (run the same command again to resume)"
            if any(c not in self.refused for _, cells in left for c in cells):
                self.say(f"no server left: {sum(len(c) for _, c in left)} image(s) not rendered; run the same "
                         "command again to resume")
        finally:
            if not held:
                self.state.release()
        return self.result

    def cancel(self) -> None:
        """Ctrl-C: take this sweep's prompts back off every server; finished images stay recorded."""
        for server in self.servers:
            try:
                server.cancel(list(self.inflight.get(server.url, {})))
            except (urllib.error.URLError, OSError):
                pass  # a server that is gone has nothing of ours left to run


# ---------------------------------------------------------------------------------------------
# The local scheduler: one thread per server, one checkpoint at a time each


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


def call_with_retries(fn, *a):
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


def _render(sweep: Sweep, server: Server, model: str, cells: list[Cell], others: int) -> list[Cell]:
    """Queue every cell of one checkpoint on one server, then collect the images as they finish.
    Returns the cells this server refused that another server has not tried yet."""
    call = call_with_retries
    pending: dict[str, Cell] = {}
    started: dict[str, float] = {}
    sweep.inflight[server.url] = pending  # what Ctrl-C takes back off this server's queue
    todo = [c for c in cells if server.url not in sweep.refused.get(c, {})]
    bounce = [c for c in cells if c not in todo]  # refused here before: another server's
    try:
        while todo:
            try:
                pid = call(server.queue, sweep.prompt_for(todo[0]))
                pending[pid] = todo[0]
                started[pid] = time.time()
            except PromptError as e:
                tried = sweep.refused.setdefault(todo[0], {})
                tried[server.url] = str(e)
                if len(tried) <= others:
                    bounce.append(todo[0])
                    sweep.say(f"refused {sweep.cell_name(todo[0])} on {server.url}: {e}; trying another server")
                else:
                    sweep.fail(todo[0], str(e), server.url)
            todo.pop(0)
        deadline = time.time() + sweep.timeout
        last = time.time()
        while pending and time.time() < deadline:
            for pid, cell in list(pending.items()):
                res = call(server.result, pid)
                if res is None:
                    continue
                now = time.time()  # seconds per image: from its start, or from the image before it
                sweep.collect(server, cell, res, call, now - max(last, started[pid]))
                last = now
                del pending[pid]
            if pending:
                time.sleep(0.2)
        for cell in pending.values():
            sweep.fail(cell, f"no result within {sweep.timeout:.0f} s", server.url)
    except ServerGone as e:
        e.left = [c for c in cells if c in pending.values() or c in todo] + bounce
        raise
    return bounce


def run_local(sweep: Sweep, groups: list[tuple[str, list[Cell]]]) -> list[tuple[str, list[Cell]]]:
    """Each server takes one checkpoint (all its cells) at a time; a server that stops answering
    has its unfinished cells handed to the others. Returns what no server could take."""
    work = _Work(groups)
    alive = list(sweep.servers)

    def worker(server: Server) -> None:
        def accept(item) -> bool:
            return any(server.url not in sweep.refused.get(c, {}) for c in item[1])

        while (item := work.take(accept)) is not None:
            model, cells = item
            give_back = None
            try:
                bounced = _render(sweep, server, model, cells, len(alive) - 1)
                give_back = (model, bounced) if bounced else None
            except ServerGone as e:
                give_back = (model, e.left) if e.left else None
                sweep.say(f"server {server.url} stopped answering ({e}): its {len(e.left)} unfinished image(s) of "
                          f"{sweep.labels[model]} go to the other server(s)")
                with sweep._lock:
                    alive.remove(server)
                return
            except Exception as e:  # noqa: BLE001 - one checkpoint's surprise must not stop the sweep
                for c in cells:
                    if c not in sweep.result.files and c not in sweep.result.failures:
                        sweep.fail(c, f"{type(e).__name__}: {e}", server.url)
            finally:
                work.finish(give_back)

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in sweep.servers]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.2)
    return work.items


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
