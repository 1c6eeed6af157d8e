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


def write_ui(object_info: dict) -> list[Path]:
    written = []
    for api_path in sorted((WF / "api").glob("*.json")):
        name = api_path.stem
        note_path = WF / "notes" / f"{name}.md"
        note = note_path.read_text() if note_path.exists() else None
        ui = api_to_ui(json.loads(api_path.read_text()), object_info, note=note, title=title_of(note or "", name))
        out = WF / f"{name}.json"
        out.write_text(json.dumps(ui, indent=1) + "\n")
        written.append(out)
    return written


def load_in_page(page, workflow: dict) -> None:
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)


def thumbnails(server: ComfyServer, files: list[Path]) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(server.url)
        page.wait_for_function("() => window.app && window.app.graph", timeout=90_000)
        for f in files:
            load_in_page(page, json.loads(f.read_text()))
            page.wait_for_timeout(800)
            page.locator("canvas#graph-canvas").screenshot(path=str(f.with_suffix(".jpg")), type="jpeg", quality=70)
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-thumbnails", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cfg = prepare_base(base, {})
        server = ComfyServer(base, cfg).start()
        try:
            files = write_ui(server.get_json("/object_info"))
            if not args.no_thumbnails:
                thumbnails(server, files)
        finally:
            server.stop()
    for f in files:
        print(f"wrote {f.relative_to(REPO)}")


if __name__ == "__main__":
    main()
