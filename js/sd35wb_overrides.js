// SD3.5 Workbench: widgets another input overrides are shown as such. With `settings` connected (and
// sampling_from_settings on) the SLG sampler's steps / cfg / sampler / scheduler do not run, a named SLG
// preset replaces the layer fields, a sweep's axes replace the widgets they name, and so on: those
// widgets are greyed out (litegraph's disabled look: no value drawn, no edits) and relabelled with why.
//
// Which input overrides which comes from ONE table in Python (sd35wb/overrides.py), served by
// GET /sd35wb/overrides; the nodes' reports read the same table, so the editor and the report agree.
// Rules driven by the SLG preset only relabel: sd35wb_slg_presets.js writes the preset's values into
// those fields (so what they show is what runs), and editing one switches the preset to "custom".
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { inputLink, inputValue } from "./sd35wb_ui.js";

let table = null; // node id -> rules

async function loadTable() {
  try {
    const res = await api.fetchApi("/sd35wb/overrides");
    table = res.ok ? (await res.json()).nodes ?? {} : {};
  } catch {
    table = {};
  }
}

function same(a, b) {
  if (typeof a === "number" && typeof b === "number") return Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));
  return a === b;
}

function text(node, name) {
  const v = inputValue(node, name);
  return v.known && typeof v.value === "string" ? v.value.trim() : null;
}

// The axis names in a sweep's axes text ("cfg=3.5,4.5; steps=28,40"), as sd35wb.overrides.axis_names reads it.
function axisNames(s) {
  return (s ?? "").split(/[;\n]/).map((p) => p.trim()).filter((p) => p && !p.startsWith("#") && p.includes("="))
    .map((p) => p.split("=", 1)[0].trim());
}

// The inputs a rule affects on this node now, or [] when its conditions do not all hold. A condition on
// a widget whose value the editor cannot know (converted to an input, fed by a non-primitive) is not met.
export function affected(node, rule) {
  const w = rule.when ?? {};
  if (!(w.connected ?? []).every((n) => inputLink(node, n))) return [];
  if ((w.disconnected ?? []).some((n) => inputLink(node, n))) return [];
  for (const [name, allowed] of Object.entries(w.values ?? {})) {
    const v = inputValue(node, name);
    if (!v.known || !allowed.some((a) => same(v.value, a))) return [];
  }
  if (!(w.nonempty ?? []).every((n) => text(node, n))) return [];
  if (!(w.empty ?? []).every((n) => text(node, n) === "")) return [];
  if (w.named_in) {
    const axes = text(node, w.named_in);
    if (axes === null) return [];
    const named = axisNames(axes);
    return rule.inputs.filter((i) => named.includes(i));
  }
  return rule.inputs;
}

// Apply the table to one node; returns {widget name: label} of what is marked now (also kept on the
// node as sd35wbOverridden). Widgets only: a socket's label is saved into the workflow.
export function refresh(node) {
  const rules = table?.[node.comfyClass];
  if (!rules) return null;
  const marks = {};
  for (const rule of rules) {
    for (const name of affected(node, rule)) {
      marks[name] ??= { label: rule.label, grey: rule.by !== "preset" };
    }
  }
  let changed = false;
  for (const w of node.widgets ?? []) {
    const mark = marks[w.name];
    if (mark && !w.sd35wbBase) w.sd35wbBase = { label: w.label, disabled: w.disabled };
    if (!w.sd35wbBase) continue;
    const base = w.sd35wbBase;
    const label = mark ? `${base.label ?? w.name} (${mark.label})` : base.label;
    const disabled = mark?.grey ? true : base.disabled;
    if (w.label !== label || w.disabled !== disabled) {
      w.label = label;
      w.disabled = disabled;
      changed = true;
    }
    if (!mark) {
      if (base.label === undefined) delete w.label;
      if (base.disabled === undefined) delete w.disabled;
      delete w.sd35wbBase;
    }
  }
  node.sd35wbOverridden = Object.fromEntries(Object.entries(marks).map(([k, m]) => [k, m.label]));
  if (changed) node.setDirtyCanvas?.(true, true);
  return node.sd35wbOverridden;
}

app.registerExtension({
  name: "sd35wb.overrides",
  async setup() {
    await loadTable();
    // Nodes mark themselves on their next draw; reading app.graph here would be too early on some
    // frontends (1.49 logs "graph accessed before initialization").
    app.canvas?.setDirty?.(true, true);
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name?.startsWith("SD35WB_")) return;
    // Every draw re-reads the node (values set by a preset, a loaded workflow or a link all count);
    // refresh() only touches widgets whose state changed, so a frame costs a few comparisons.
    const draw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (...args) {
      refresh(this);
      return draw?.apply(this, args);
    };
    const connections = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function (...args) {
      const r = connections?.apply(this, args);
      refresh(this);
      return r;
    };
  },
});
