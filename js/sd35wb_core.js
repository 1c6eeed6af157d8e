// SD3.5 Workbench: core frontend extension. Confirms the pack's server side is reachable.
// Pack nodes get no colour of their own: a colour set here is saved into every user workflow and
// ignores light themes; the frontend's node-source badge already names the pack.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { notify } from "./sd35wb_ui.js";

const PREFIX = "SD35WB_";
// The colour the first releases of this file painted on every pack node; cleared when a workflow
// loads, so workflows saved then follow the theme again (any other colour is the user's and stays).
const OLD_COLOUR = "#2a3a4a";

app.registerExtension({
  name: "sd35wb.core",
  async setup() {
    try {
      const res = await api.fetchApi("/sd35wb/info");
      window.sd35wb = { info: res.ok ? await res.json() : null, notify };
    } catch (e) {
      window.sd35wb = { info: null, error: String(e), notify };
    }
  },
  loadedGraphNode(node) {
    if (node.comfyClass?.startsWith(PREFIX) && node.color === OLD_COLOUR && node.bgcolor === undefined) {
      node.color = undefined; // an accessor on newer litegraph: delete would not reach it
    }
  },
});
