"""Browser tier: what the pack's js does to the editor, as a user meets it.

- pack nodes carry no colour of their own: nothing fixed is saved into a workflow, and a light theme
  draws them like core's nodes;
- "Sync now" posts what the node would run with: a converted widget is read from its primitive, and
  when its value only exists at run time nothing stale is posted;
- with the loader's `settings` connected, the SLG sampler's widgets that settings override are greyed
  out and relabelled (the rules come from GET /sd35wb/overrides, the table the node reports use);
- a successful sync is shown to the user: a toast, or the frontend's dialog where it has no toasts.
"""

from __future__ import annotations

import json

from tools import simpletuner_fixtures as stf
from tools.comfy_server import REPO

ROUTE = "/sd35wb/simpletuner/sync"
OLD_COLOUR = "#2a3a4a"

ADD = """([type, x, y]) => {
  const n = window.LiteGraph.createNode(type);
  n.pos = [x, y];
  window.app.graph.add(n);
  return n.id;
}"""


def _fresh_graph(page):
    page.evaluate("() => { window.app.graph.clear(); window.app.canvas.ds.offset = [0, 0]; window.app.canvas.ds.scale = 1; }")


def _wait_for_extensions(page, *names):
    page.wait_for_function("(ns) => ns.every(n => window.app.extensions.some(e => e.name === n))", arg=list(names),
                           timeout=30_000)


def test_no_fixed_colour_is_saved_into_a_workflow(page):
    _wait_for_extensions(page, "sd35wb.core")
    _fresh_graph(page)
    for i, t in enumerate(["SD35WB_SLGSampler", "SD35WB_SD35Loader", "SD35WB_SimpleTunerLink", "KSampler"]):
        page.evaluate(ADD, [t, 50 + 400 * i, 50])
    saved = page.evaluate("() => JSON.parse(JSON.stringify(window.app.graph.serialize()))")
    assert [n for n in saved["nodes"] if "color" in n or "bgcolor" in n] == [], saved["nodes"]
    # every shipped template is saved without one too (they are what the frontend serialises)
    for f in sorted((REPO / "workflows").glob("*.json")):
        nodes = json.loads(f.read_text())["nodes"]
        assert [n["type"] for n in nodes if n["type"].startswith("SD35WB_") and "color" in n] == [], f.name

    # a workflow saved while earlier releases painted pack nodes follows the theme again once loaded;
    # a colour the user picked stays
    old = dict(saved)
    old["nodes"] = [dict(n, color=OLD_COLOUR) if n["type"] == "SD35WB_SLGSampler" else
                    dict(n, color="#335533") if n["type"] == "SD35WB_SD35Loader" else n for n in saved["nodes"]]
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", old)
    again = page.evaluate("() => JSON.parse(JSON.stringify(window.app.graph.serialize()))")
    colours = {n["type"]: n.get("color") for n in again["nodes"]}
    assert colours["SD35WB_SLGSampler"] is None and colours["SD35WB_SD35Loader"] == "#335533", colours


# The colour litegraph paints at a point of the body of node `id` (left margin, beside the widgets).
BODY_PIXEL = """(id) => {
  const c = window.app.canvas, n = window.app.graph.getNodeById(id);
  c.draw(true, true);
  const [x, y] = c.ds.convertOffsetToCanvas([n.pos[0] + 5, n.pos[1] + n.size[1] / 2]);
  const dpr = window.devicePixelRatio || 1;
  return Array.from(c.canvas.getContext('2d').getImageData(Math.round(x * dpr), Math.round(y * dpr), 1, 1).data);
}"""


def test_a_light_theme_draws_pack_nodes_like_core_nodes(page):
    _wait_for_extensions(page, "sd35wb.core")
    _fresh_graph(page)
    page.evaluate("async () => { await window.app.extensionManager.setting.set('Comfy.ColorPalette', 'light'); }")
    page.wait_for_function("() => window.app.extensionManager.setting.get('Comfy.ColorPalette') === 'light'")
    ours = page.evaluate(ADD, ["SD35WB_SLGSampler", 50, 80])
    core = page.evaluate(ADD, ["KSampler", 600, 80])
    page.wait_for_timeout(300)
    ours_px, core_px = page.evaluate(BODY_PIXEL, ours), page.evaluate(BODY_PIXEL, core)
    assert ours_px == core_px, f"pack node body {ours_px} vs core node body {core_px} under the light theme"
    assert sum(core_px[:3]) > 3 * 150, f"the light theme's node body is light, not {core_px}"
    page.evaluate("async () => { await window.app.extensionManager.setting.set('Comfy.ColorPalette', 'dark'); }")


LINKER = """([dir, run]) => {
  const g = window.app.graph;
  const link = window.LiteGraph.createNode("SD35WB_SimpleTunerLink");
  link.pos = [420, 60];
  g.add(link);
  link.widgets.find(w => w.name === "output_dir").value = dir;
  link.widgets.find(w => w.name === "run").value = run;
  window.__link = link;
  return link.id;
}"""

# Feed the linker's `input` from node type `src` (its first output), as a user drags a link onto the
# widget; the widget keeps its old value, which must not be what runs.
FEED = """([src, input, value]) => {
  const g = window.app.graph, link = window.__link;
  const s = window.LiteGraph.createNode(src);
  s.pos = [40, 60];
  g.add(s);
  const w = s.widgets?.find(w => w.name === "value");
  if (w && value !== null) w.value = value;
  const slot = link.inputs.findIndex(i => i.name === input || i.widget?.name === input);
  if (slot < 0) throw new Error("no input socket for " + input + ": " + JSON.stringify(link.inputs.map(i => i.name)));
  s.connect(0, link, slot);
  return link.inputs[slot].link != null;
}"""

SYNC = """async () => {
  const b = window.__link.widgets.find(w => w.name === "Sync now");
  window.__link.sd35wbLastSync = undefined;
  b.callback(b, window.app.canvas, window.__link);
  for (let i = 0; i < 300 && window.__link.sd35wbLastSync === undefined; i++) await new Promise(r => setTimeout(r, 100));
  return window.__link.sd35wbLastSync;
}"""


def _posts(page):
    calls = []
    page.on("request", lambda r: calls.append(r.post_data) if ROUTE in r.url else None)
    return calls


def test_sync_reads_a_converted_widget_from_its_primitive_not_the_stale_widget(page, training_root):
    stf.fake_checkpoint(training_root / "primitive-run", 500)
    _wait_for_extensions(page, "sd35wb.simpletuner")
    _fresh_graph(page)
    calls = _posts(page)
    page.evaluate(LINKER, ["stale-dir-that-does-not-exist", "primitive-run"])
    assert page.evaluate(FEED, ["PrimitiveString", "output_dir", "primitive-run"])
    result = page.evaluate(SYNC)
    assert result["ok"], result
    assert len(calls) == 1 and json.loads(calls[0])["output_dir"] == "primitive-run", calls
    assert result["exposed"]["diffusion_models"] == ["primitive-run/checkpoint-500.safetensors"], result


def test_sync_posts_nothing_when_a_converted_widget_is_known_only_at_run_time(page):
    _wait_for_extensions(page, "sd35wb.simpletuner")
    _fresh_graph(page)
    calls = _posts(page)
    page.evaluate(LINKER, ["stale-dir-that-does-not-exist", "x"])
    # a computed string (core's StringConcatenate): its value exists only once the graph runs
    assert page.evaluate(FEED, ["StringConcatenate", "output_dir", None])
    page.watch.expect(r"^error toast: .*output_dir comes from .*known only when the graph runs")
    page.watch.expect(r"^console error: \[sd35wb\] SimpleTuner sync: nothing posted")
    result = page.evaluate(SYNC)
    assert not result["ok"] and "output_dir comes from" in result["error"], result
    page.wait_for_function("() => document.body.innerText.includes('known only when the graph runs')", timeout=10_000)
    assert calls == [], "a stale widget value was posted"


SUCCESS_SHOWN = """(run) => [...document.querySelectorAll(
  '.p-toast-message-success, li[data-toast-kind="success"], .comfy-modal, .p-dialog')]
  .some(el => el.offsetParent !== null && (el.innerText || '').includes(run))"""


def test_a_successful_sync_is_shown_to_the_user(page, training_root):
    stf.fake_checkpoint(training_root / "shown-run", 500)
    _wait_for_extensions(page, "sd35wb.simpletuner")
    _fresh_graph(page)
    page.evaluate(LINKER, ["shown-run", "shown-run"])
    result = page.evaluate(SYNC)
    assert result["ok"] and result["shown"] == "toast", result
    page.wait_for_function(SUCCESS_SHOWN, arg='SimpleTuner run "shown-run"', timeout=10_000)

    # A frontend without the toast service (before 1.3) still shows it: the frontend's own dialog.
    page.evaluate("""() => { const em = window.app.extensionManager; window.__em = em;
        window.app.extensionManager = new Proxy(em, {get: (t, k) => k === 'toast' ? undefined : t[k]}); }""")
    try:
        result = page.evaluate(SYNC)
    finally:
        page.evaluate("() => { window.app.extensionManager = window.__em; }")
    assert result["ok"] and result["shown"] == "dialog", result
    page.wait_for_function("""() => [...document.querySelectorAll('.sd35wb-notice-success')]
        .some(el => el.offsetParent !== null && el.innerText.includes('shown-run') && el.innerText.includes('linked'))""",
                           timeout=10_000)


WIDGETS = """(id) => {
  const n = window.app.graph.getNodeById(id);
  window.app.canvas.draw(true, true);
  return Object.fromEntries(n.widgets.filter(w => w.name !== "control_after_generate")
    .map(w => [w.name, {label: w.label ?? w.name, disabled: !!w.disabled}]));
}"""


def _plain(widgets: dict) -> bool:
    """No widget greyed out or relabelled (frontends label widgets with their names)."""
    return all(not w["disabled"] and w["label"] == k for k, w in widgets.items())

CONNECT = """([a, out, b, input]) => {
  const g = window.app.graph, A = g.getNodeById(a), B = g.getNodeById(b);
  A.connect(A.outputs.findIndex(o => o.name === out), B, B.inputs.findIndex(i => i.name === input));
}"""

SET = """([id, name, value]) => {
  const w = window.app.graph.getNodeById(id).widgets.find(w => w.name === name);
  w.value = value;
  w.callback?.(value);
}"""


def test_settings_connected_greys_out_the_widgets_it_overrides(page, server):
    _wait_for_extensions(page, "sd35wb.overrides", "sd35wb.slg_presets")
    table = server.get_json("/sd35wb/overrides")["nodes"]["SD35WB_SLGSampler"]
    by_settings = next(r for r in table if r["by"] == "settings" and "values" in r["when"]
                       and "sampling_from_settings" in r["when"]["values"])["inputs"]
    assert set(by_settings) >= {"steps", "cfg", "sampler_name", "scheduler"}, by_settings
    _fresh_graph(page)
    loader = page.evaluate(ADD, ["SD35WB_SD35Loader", 40, 60])
    sampler = page.evaluate(ADD, ["SD35WB_SLGSampler", 520, 60])
    page.evaluate(SET, [sampler, "preset", "custom"])
    before = page.evaluate(WIDGETS, sampler)
    assert _plain(before), before

    page.evaluate(CONNECT, [loader, "settings", sampler, "settings"])
    on = page.evaluate(WIDGETS, sampler)
    greyed = {k for k, w in on.items() if w["disabled"]}
    assert greyed == set(by_settings), on
    assert all(on[k]["label"] == f"{k} (from settings)" for k in by_settings), on

    # "from settings" as the preset: the SLG fields come from settings too
    page.evaluate(SET, [sampler, "preset", "from settings"])
    assert {k for k, w in page.evaluate(WIDGETS, sampler).items() if w["disabled"]} == \
        set(by_settings) | {"layers", "scale", "start", "end", "gating"}

    # the user turns sampling_from_settings off: the widgets run again and look it
    page.evaluate(SET, [sampler, "preset", "custom"])
    page.evaluate(SET, [sampler, "sampling_from_settings", False])
    off = page.evaluate(WIDGETS, sampler)
    assert _plain(off), off

    # a named preset relabels the SLG fields (it fills them, and an edit makes the preset "custom")
    page.evaluate(SET, [sampler, "preset", "ComfyUI core defaults"])
    named = page.evaluate(WIDGETS, sampler)
    assert named["scale"] == {"label": "scale (from preset)", "disabled": False}, named

    # nothing of this is saved into the workflow
    saved = page.evaluate("() => JSON.stringify(window.app.graph.serialize())")
    assert "from settings)" not in saved and "from preset)" not in saved

    # unplugging settings gives the widgets back
    page.evaluate(SET, [sampler, "sampling_from_settings", True])
    page.evaluate("(id) => window.app.graph.getNodeById(id).disconnectInput(window.app.graph.getNodeById(id)"
                  ".inputs.findIndex(i => i.name === 'settings'))", sampler)
    gone = page.evaluate(WIDGETS, sampler)
    assert _plain({k: w for k, w in gone.items() if k in by_settings}) and not any(w["disabled"] for w in gone.values()), gone


def test_a_sweeps_axes_grey_out_the_widgets_they_sweep(page, server):
    """The same table drives every node it names: the checkpoint sweep's `axes` text replaces the
    sampler widgets it names, and only those."""
    _wait_for_extensions(page, "sd35wb.overrides")
    rule = next(r for r in server.get_json("/sd35wb/overrides")["nodes"]["SD35WB_CheckpointSweep"]
                if r["when"].get("named_in") == "axes")
    _fresh_graph(page)
    sweep = page.evaluate(ADD, ["SD35WB_CheckpointSweep", 40, 60])
    page.evaluate(SET, [sweep, "axes", "cfg=3.5,4.5; # steps=10,20\n sampler_name = euler,dpmpp_2m"])
    swept = {k for k, w in page.evaluate(WIDGETS, sweep).items() if w["disabled"] and w["label"] == f"{k} ({rule['label']})"}
    assert swept == {"cfg", "sampler_name"} <= set(rule["inputs"]), swept  # the commented-out steps axis is not one
    page.evaluate(SET, [sweep, "axes", ""])
    assert not [k for k, w in page.evaluate(WIDGETS, sweep).items() if k in rule["inputs"] and w["disabled"]]
