"""Browser tier: choosing an SLG preset in the real frontend fills the SLG widgets."""

import pytest

ADD_NODE = """(type) => {
  const LG = window.LiteGraph;
  const node = LG.createNode(type);
  window.app.graph.add(node);
  window.__slgNode = node;
  return node.widgets.map(w => w.name);
}"""

PICK = """(name) => {
  const node = window.__slgNode;
  const w = node.widgets.find(w => w.name === "preset");
  w.value = name;
  w.callback(name);
}"""

FIELDS = """() => Object.fromEntries(window.__slgNode.widgets
  .filter(w => ["preset", "layers", "scale", "start", "end", "gating"].includes(w.name))
  .map(w => [w.name, w.value]))"""


@pytest.mark.parametrize("node_type", ["SD35WB_SLGSampler", "SD35WB_SLGGuider"])
def test_choosing_a_preset_fills_the_fields(page, node_type):
    page.wait_for_function("() => window.app.extensions.some(e => e.name === 'sd35wb.slg_presets')", timeout=30_000)
    names = page.evaluate(ADD_NODE, node_type)
    assert {"preset", "layers", "scale", "start", "end", "gating"} <= set(names)

    page.evaluate(PICK, "ComfyUI core defaults")
    page.wait_for_function("() => window.__slgNode.widgets.find(w => w.name === 'gating').value === 'sigma'",
                           timeout=10_000)
    assert page.evaluate(FIELDS) == {"preset": "ComfyUI core defaults", "layers": "7, 8, 9", "scale": 3.0,
                                     "start": 0.01, "end": 0.15, "gating": "sigma"}

    page.evaluate(PICK, "SD3.5 Medium (Stability reference)")
    page.wait_for_function("() => window.__slgNode.widgets.find(w => w.name === 'gating').value === 'steps'",
                           timeout=10_000)
    assert page.evaluate(FIELDS) == {"preset": "SD3.5 Medium (Stability reference)", "layers": "7, 8, 9",
                                     "scale": 2.5, "start": 0.01, "end": 0.2, "gating": "steps"}

    page.evaluate(PICK, "off")
    page.wait_for_function("() => window.__slgNode.widgets.find(w => w.name === 'scale').value === 0", timeout=10_000)
    assert page.evaluate(FIELDS)["layers"] == ""

    # "custom" leaves the fields as they are
    page.evaluate(PICK, "ComfyUI core defaults")
    page.wait_for_function("() => window.__slgNode.widgets.find(w => w.name === 'scale').value === 3", timeout=10_000)
    page.evaluate(PICK, "custom")
    assert page.evaluate(FIELDS) == {"preset": "custom", "layers": "7, 8, 9", "scale": 3.0, "start": 0.01,
                                     "end": 0.15, "gating": "sigma"}

    # editing a field by hand makes the preset "custom", so the edit is what runs
    page.evaluate(PICK, "SD3.5 Medium (Stability reference)")
    page.wait_for_function("() => window.__slgNode.widgets.find(w => w.name === 'scale').value === 2.5",
                           timeout=10_000)
    page.evaluate("""() => { const w = window.__slgNode.widgets.find(w => w.name === 'scale');
                             w.value = 1.5; w.callback(1.5); }""")
    assert page.evaluate(FIELDS)["preset"] == "custom"
    assert not [e for e in page.js_errors if "sd35wb" in e or "slg" in e.lower()], page.js_errors
