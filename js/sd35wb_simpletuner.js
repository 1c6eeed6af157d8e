// SD3.5 Workbench: "Sync now" on the SimpleTuner Checkpoint Linker. Links the run through
// POST /sd35wb/simpletuner/sync (output dirs under SD35WB_TRAINING_ROOTS only), then refreshes every
// model list in the graph so new checkpoints can be picked at once.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE = "SD35WB_SimpleTunerLink";
const ROUTE = "/sd35wb/simpletuner/sync";

function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

function notify(severity, summary, detail) {
  const toast = app.extensionManager?.toast;
  if (toast?.add) toast.add({ severity, summary, detail, life: severity === "error" ? 8000 : 4000 });
  else if (severity === "error") console.error(`[sd35wb] ${summary}: ${detail}`);
}

export async function syncNow(node) {
  const include = ["full", "ema", "lora", "final"].filter((k) => widgetValue(node, k) !== false);
  const body = { output_dir: widgetValue(node, "output_dir") ?? "", run: widgetValue(node, "run") || null, include };
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
    notify("error", "SimpleTuner sync failed", String(e));
    node.sd35wbLastSync = { ok: false, error: String(e) };
    return node.sd35wbLastSync;
  }
  await app.refreshComboInNodes();
  const exposed = Object.values(result.exposed ?? {}).flat().length;
  notify("success", `SimpleTuner run "${result.run}"`,
    `${result.linked.length} linked, ${result.pruned.length} pruned, ${result.skipped.length} skipped; ${exposed} models listed`);
  node.sd35wbLastSync = { ok: true, ...result };
  return node.sd35wbLastSync;
}

app.registerExtension({
  name: "sd35wb.simpletuner",
  nodeCreated(node) {
    if (node.comfyClass !== NODE) return;
    const button = node.addWidget("button", "Sync now", null, () => syncNow(node));
    button.serialize = false;
  },
});
