"""Write the UI-format example workflows (and their thumbnails) from workflows/api/*.json.

    python -m tools.make_workflows [--no-thumbnails]

Starts a real ComfyUI server with the pack (no models needed) to read /object_info, writes
workflows/<name>.json from workflows/api/<name>.json + workflows/notes/<name>.md, then loads each
one in headless Chromium and saves workflows/<name>.jpg, the thumbnail the templates browser shows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from tools import host
from tools.browser_watch import Watch
from tools.comfy_server import REPO, ComfyServer, prepare_base
from tools.workflow_format import api_to_ui

WF = REPO / "workflows"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]


def title_of(note: str, name: str) -> str:
    for line in note.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return name.replace("_", " ")


def build_ui(object_info: dict) -> dict[Path, dict]:
    """workflows/<name>.json -> its UI workflow before the frontend lays it out (nothing written)."""
    built = {}
    for api_path in sorted((WF / "api").glob("*.json")):
        name = api_path.stem
        note_path = WF / "notes" / f"{name}.md"
        note = note_path.read_text() if note_path.exists() else None
        ui = api_to_ui(json.loads(api_path.read_text()), object_info, note=note, title=title_of(note or "", name))
        built[WF / f"{name}.json"] = ui
    return built


LAYOUT_JS = """
async (wf) => {
  await window.app.loadGraphData(wf);
  const g = window.app.graph;
  g.arrange(60);  // the frontend's own layout, from real node sizes: its columns give the reading order
  const note = g._nodes.find(n => n.type === 'MarkdownNote');
  const items = g._nodes.filter(n => n !== note).sort((a, b) => a.pos[0] - b.pos[0] || a.pos[1] - b.pos[1]);
  // Wrap that order into columns no taller than H, picking the H whose bounds (note on top) give the
  // largest fit-to-view zoom in a 1400x900 editor. The frontend's "Fit view" zooms to 0.75 of the
  // bounds (DragAndScale.fitToBounds) and litegraph draws nodes without text below 8 / 14 = 0.571
  // (MinFontSizeForLOD / NODE_TEXT_SIZE); GROW leaves room for newer frontends' taller, wider nodes.
  const GAP = 30, TITLE = 30, NOTE_H = 300, GROW_W = 1.04, GROW_H = 1.08;
  // Columns no taller than H, filled in reading order; with firstFit an item may drop into an earlier
  // column that still has room (a short node beside a tall one), which keeps wide graphs to fewer columns.
  // The note sits on top of the first k columns (a readable 520-900 px wide), which move down under it;
  // the columns after them start at the top, so one tall node (a sweep's) need not stand under the note.
  const pack = (H, firstFit, k) => {
    const cols = [], at = [];
    for (const n of items) {
      const h = n.size[1] + TITLE + GAP;
      const open = (firstFit ? cols : cols.slice(-1)).find(c => c.h === 0 || c.h + h <= H + GAP);
      const c = open ?? (cols.push({w: 0, h: 0}), cols[cols.length - 1]);
      at.push([c, c.h + TITLE]);
      c.h += h; c.w = Math.max(c.w, n.size[0]);
    }
    let x = 0;
    for (const c of cols) { c.x = x; x += c.w + GAP; }
    const under = note ? Math.min(k, cols.length) : 0;  // columns under the note
    const span = under < cols.length ? cols[under].x - GAP : Math.max(x - GAP, 520);
    if (note && (span < 520 && under < cols.length)) return null;  // the note would cover the next column
    const noteW = note ? Math.min(Math.max(span, 520), 900) : 0;
    cols.forEach((c, i) => { c.y = i < under ? NOTE_H + GAP : 0; });
    const pos = at.map(([c, y]) => [c.x, c.y + y]);
    const w = Math.max(x - GAP, noteW), h = Math.max(...cols.map(c => c.y + c.h));
    return {pos, w, h, noteW, scale: 0.75 * Math.min(1400 / (w * GROW_W), 900 / (h * GROW_H))};
  };
  let best = null;
  for (const k of [items.length, ...items.keys()].filter(k => k > 0)) {  // note over everything first
    for (const firstFit of [false, true]) {  // reading order first: first fit only where it fits better
      for (let H = 300; H <= 2400; H += 20) {
        const r = pack(H, firstFit, k);
        if (r && (!best || r.scale > best.scale + 1e-9)) best = r;
      }
    }
  }
  const top = 60;
  items.forEach((n, i) => { n.pos = [60 + best.pos[i][0], top + best.pos[i][1]]; });
  if (note) {  // the note goes top left, above the columns it spans
    note.size = [best.noteW, NOTE_H];
    note.pos = [60, 60];
  }
  window.app.canvas.setDirty(true, true);
  // What the frontend writes when a user saves: JSON.stringify drops the undefined fields that a
  // structured copy would turn into nulls (floatingLinks, extra.reroutes, definitions, slot_index),
  // and the frontend's workflow schema rejects nulls there.
  return JSON.parse(JSON.stringify(g.serialize()));
}
"""

RELOAD_JS = "async (wf) => { await window.app.loadGraphData(wf); }"

FIT_JS = """
() => {
  const c = window.app.canvas, g = window.app.graph;
  const xs = g._nodes.flatMap(n => [n.pos[0], n.pos[0] + n.size[0]]);
  const ys = g._nodes.flatMap(n => [n.pos[1] - 30, n.pos[1] + n.size[1]]);
  const [x0, x1, y0, y1] = [Math.min(...xs) - 20, Math.max(...xs) + 20, Math.min(...ys) - 20, Math.max(...ys) + 20];
  const el = c.canvas.getBoundingClientRect();
  const scale = Math.min((el.width - 120) / (x1 - x0), (el.height - 120) / (y1 - y0), 1.0);
  c.ds.scale = scale;
  c.ds.offset = [(el.width - (x1 - x0) * scale) / 2 / scale - x0, (el.height - (y1 - y0) * scale) / 2 / scale - y0];
  c.setDirty(true, true);
  c.draw(true, true);
  return {x: el.x + (el.width - (x1 - x0) * scale) / 2, y: el.y + (el.height - (y1 - y0) * scale) / 2,
          width: (x1 - x0) * scale, height: (y1 - y0) * scale};
}
"""


def layout_and_thumbnails(server: ComfyServer, files: dict[Path, dict], thumbs: bool) -> None:
    """Lay each workflow out with the frontend, save what the editor serialises, and screenshot it.

    Each saved file is then loaded back the way a user opens it; if the frontend shows a warning
    (its workflow schema check) or an error, nothing is left half-written and the run fails."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if not chromium:
        raise SystemExit("chromium not installed: `sudo apt-get install chromium` (scripts/setup.sh does it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1800, "height": 1100})
        watch = Watch(page)
        page.goto(server.url)
        page.wait_for_function("() => window.app && window.app.graph && window.app.extensionManager", timeout=90_000)
        # Thumbnails show the graph: the missing-models dialog (no models here) and toasts stay out of them.
        page.add_style_tag(content=".from-blue-600, .p-toast, .p-dialog-mask { display: none !important; }")
        laid_out = {}
        for f, ui in files.items():
            wf = page.evaluate(LAYOUT_JS, ui)
            seen = len(watch.problems())
            page.evaluate(RELOAD_JS, wf)
            page.wait_for_timeout(300)
            if len(watch.problems()) > seen:
                raise SystemExit(f"{f.name}: the frontend rejects the workflow it serialised\n  " + "\n  ".join(watch.problems()[seen:]))
            laid_out[f] = wf
        for f, wf in laid_out.items():
            f.write_text(json.dumps(wf, indent=1) + "\n")
            if thumbs:
                page.evaluate(RELOAD_JS, wf)
                page.wait_for_timeout(500)
                clip = page.evaluate(FIT_JS)
                page.wait_for_timeout(500)
                page.screenshot(path=str(f.with_suffix(".jpg")), type="jpeg", quality=75, clip=clip)
        browser.close()


def main() -> None:
    host.use_host_python()  # playwright lives in the host's venv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-thumbnails", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cfg = prepare_base(base, {})
        server = ComfyServer(base, cfg).start()
        try:
            files = build_ui(server.get_json("/object_info"))
            layout_and_thumbnails(server, files, thumbs=not args.no_thumbnails)
        finally:
            server.stop()
    for f in files:
        print(f"wrote {f.relative_to(REPO)}")


if __name__ == "__main__":
    main()
