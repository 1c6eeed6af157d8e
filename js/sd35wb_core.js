// SD3.5 Workbench: core frontend extension. Confirms the pack's server side is reachable and
// tags the pack's nodes so users can tell them apart in a busy graph.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PREFIX = "SD35WB_";

app.registerExtension({
  name: "sd35wb.core",
  async setup() {
    try {
      const res = await api.fetchApi("/sd35wb/info");
      window.sd35wb = { info: res.ok ? await res.json() : null };
    } catch (e) {
      window.sd35wb = { info: null, error: String(e) };
    }
  },
  nodeCreated(node) {
    if (node.comfyClass?.startsWith(PREFIX)) node.color ??= "#2a3a4a";
  },
});
