// SD3.5 Workbench: "Sync now" on the SimpleTuner Checkpoint Linker. Links the run through
// POST /sd35wb/simpletuner/sync (output dirs under SD35WB_TRAINING_ROOTS only), then refreshes every
// model list in the graph so new checkpoints can be picked at once.
//
// What it posts is what the node would run with: a widget converted to an input is read from the
// primitive feeding it; when the value only exists once the graph runs, the button refuses and says so
// instead of posting the widget's stale value.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { inputValue, notify } from "./sd35wb_ui.js";

const NODE = "SD35WB_SimpleTunerLink";
const ROUTE = "/sd35wb/simpletuner/sync";
// The checkpoint kinds are the node's boolean inputs (nodes/simpletuner.py, one per entry of
// sd35wb.simpletuner.CATEGORIES), read from the node definition the host serves.
let categories = null;

function refuse(node, summary, detail) {
  notify("error", summary, detail);
  node.sd35wbLastSync = { ok: false, error: detail };
  return node.sd35wbLastSync;
}

export async function syncNow(node) {
  const values = {};
  for (const name of ["output_dir", "run", ...categories]) {
    const v = inputValue(node, name);
    if (!v.known) {
      return refuse(node, "SimpleTuner sync: nothing posted",
        `${name} comes from ${v.from}, whose value is known only when the graph runs: queue the graph (the linker ` +
        `syncs when it runs) or type ${name} on the node`);
    }
    values[name] = v.value;
  }
  const include = categories.filter((k) => values[k] !== false);
  const body = { output_dir: values.output_dir ?? "", run: values.run || null, include };
  let result;
  try {
    const res = await api.fetchApi(ROUTE, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    result = await res.json();
    if (!res.ok) {
      notify("error", "SimpleTuner sync refused", result.error ?? `HTTP ${res.status}`);
      node.sd35wbLastSync = { ok: false, status: res.status, ...result };
      return node.sd35wbLastSync;
    }
  } catch (e) {
    return refuse(node, "SimpleTuner sync failed", String(e));
  }
  await app.refreshComboInNodes();
  const exposed = Object.values(result.exposed ?? {}).flat().length;
  const shown = notify("success", `SimpleTuner run "${result.run}"`,
    `${result.linked.length} linked, ${result.pruned.length} pruned, ${result.skipped.length} skipped; ${exposed} models listed`);
  node.sd35wbLastSync = { ok: true, shown, ...result };
  return node.sd35wbLastSync;
}

app.registerExtension({
  name: "sd35wb.simpletuner",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    const inputs = { ...nodeData.input?.required, ...nodeData.input?.optional };
    categories = Object.keys(inputs).filter((k) => inputs[k]?.[0] === "BOOLEAN");
  },
  nodeCreated(node) {
    if (node.comfyClass !== NODE) return;
    const button = node.addWidget("button", "Sync now", null, () => syncNow(node));
    button.serialize = false;
  },
});
