// SD3.5 Workbench: SLG presets. Picking a preset on the SLG guider / sampler fills the layers,
// scale, start, end and gating widgets with the preset's values (served by /sd35wb/slg/presets
// from the pack's one table, sd35wb/presets.py), so what the user sees is what runs. "custom" and
// "from settings" leave the fields alone; editing a field by hand switches the preset to "custom"
// (otherwise the preset would silently win over the edit).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODES = new Set(["SD35WB_SLGGuider", "SD35WB_SLGSampler"]);
const FIELDS = ["layers", "scale", "start", "end", "gating"];

let presets = null;
let loading = null;

function loadPresets() {
  loading ??= api
    .fetchApi("/sd35wb/slg/presets")
    .then((r) => (r.ok ? r.json() : { presets: {} }))
    .then((d) => (presets = d.presets || {}))
    .catch(() => (presets = {}));
  return loading;
}

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function applyPreset(node, name) {
  const p = presets?.[name];
  if (!p) return false; // "custom", "from settings"
  node.sd35wbApplyingPreset = true;
  try {
    for (const f of FIELDS) {
      const w = widget(node, f);
      if (w && f in p) w.value = p[f];
    }
  } finally {
    node.sd35wbApplyingPreset = false;
  }
  node.setDirtyCanvas?.(true, true);
  return true;
}

app.registerExtension({
  name: "sd35wb.slg_presets",
  async setup() {
    await loadPresets();
  },
  nodeCreated(node) {
    if (!NODES.has(node.comfyClass)) return;
    const preset = widget(node, "preset");
    if (!preset) return;
    const presetCallback = preset.callback;
    preset.callback = function (value, ...rest) {
      const r = presetCallback?.apply(this, [value, ...rest]);
      const name = value ?? preset.value;
      if (presets) applyPreset(node, name);
      else loadPresets().then(() => applyPreset(node, name));
      return r;
    };
    for (const f of FIELDS) {
      const w = widget(node, f);
      if (!w) continue;
      const fieldCallback = w.callback;
      w.callback = function (...args) {
        const r = fieldCallback?.apply(this, args);
        if (!node.sd35wbApplyingPreset && preset.value !== "custom") preset.value = "custom";
        return r;
      };
    }
  },
});
