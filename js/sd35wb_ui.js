// SD3.5 Workbench: small helpers the pack's extensions share (no extension of its own; the frontend
// loads this file like the others, and it only exports).
import { app } from "../../scripts/app.js";

// Tell the user something: a toast where the frontend has them (extensionManager.toast); otherwise the
// frontend's own dialog (app.ui.dialog), so a success is never silent. Errors also go to the console.
// Returns where the message went.
export function notify(severity, summary, detail) {
  if (severity === "error") console.error(`[sd35wb] ${summary}: ${detail}`);
  const toast = app.extensionManager?.toast;
  if (toast?.add) {
    toast.add({ severity, summary, detail, life: severity === "error" ? 8000 : 4000 });
    return "toast";
  }
  const dialog = app.ui?.dialog;
  if (dialog?.show) {
    const line = (text, bold) => Object.assign(document.createElement("p"), { textContent: text, style: bold ? "font-weight:bold" : "" });
    const box = document.createElement("div");
    box.className = `sd35wb-notice sd35wb-notice-${severity}`;
    box.append(line(summary, true), line(detail ?? ""));
    dialog.show(box);
    return "dialog";
  }
  return "console";
}

export function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

// The link feeding input `name` of `node` (a widget converted to an input), or null.
export function inputLink(node, name) {
  const slot = node.inputs?.find((i) => i.name === name || i.widget?.name === name);
  if (slot?.link == null) return null;
  const g = node.graph ?? app.graph;
  return g.getLink?.(slot.link) ?? g.links?.get?.(slot.link) ?? g.links?.[slot.link] ?? null;
}

export function isConnected(node, name) {
  return inputLink(node, name) !== null;
}

// What input `name` of `node` will carry when the graph runs, as far as the editor can know it:
// {known: true, value} for the node's own widget, or for a link from a primitive (the frontend's
// Primitive node, core's PrimitiveString / PrimitiveBoolean / ... nodes), whose output is its widget;
// otherwise {known: false, from: "<title> (#id)"}: that value exists only once the graph runs.
export function inputValue(node, name) {
  const link = inputLink(node, name);
  if (!link) return { known: true, value: widget(node, name)?.value };
  const g = node.graph ?? app.graph;
  const src = g.getNodeById(link.origin_id);
  const primitive = src && (src.type === "PrimitiveNode" || /^Primitive/.test(src.comfyClass ?? ""));
  const w = primitive && (widget(src, "value") ?? src.widgets?.[0]);
  if (w) return { known: true, value: w.value };
  return { known: false, from: src ? `${src.title ?? src.type} (#${src.id})` : `link ${link.id}` };
}
