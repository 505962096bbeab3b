/**
 * Builds an editable graph from an API prompt (`{id: {class_type, inputs}}`), for files and images
 * that carry only the prompt: nodes get their widget values by input name and are laid out in
 * columns by depth.
 */
import { GraphNode } from "./model.js";
import { applyDynamicCombo } from "./dynamic.js";
import { fitNodeSize } from "../canvas/layout.js";

const COLUMN_GAP = 80;
const ROW_GAP = 60;

export function graphFromPrompt(graph, prompt) {
  graph.clear(false);
  const warnings = [];
  const entries = Object.entries(prompt).filter(([, n]) => n && typeof n === "object" && n.class_type);
  const nodes = new Map();
  for (const [id, data] of entries) {
    const def = graph.defs.get(data.class_type);
    if (!def) { warnings.push(`unknown node type ${data.class_type} (node ${id}) skipped`); continue; }
    const node = new GraphNode(data.class_type, def);
    node.id = /^\d+$/.test(id) ? Number(id) : ++graph.last_node_id;
    if (data._meta?.title && data._meta.title !== def.displayName) node.title = data._meta.title;
    // one widget at a time: a dynamic combo's value brings its option's widgets right after it
    const inputs = data.inputs || {};
    for (let i = 0; i < node.widgets.length; i++) {
      const widget = node.widgets[i];
      const value = Object.hasOwn(inputs, widget.name) ? inputs[widget.name] : undefined;
      if (value === undefined || Array.isArray(value)) continue;
      widget.value = value?.__value__ ?? value;
      if (widget.dynamic) applyDynamicCombo(null, node, widget);
    }
    fitNodeSize(node);
    graph.addNode(node, false);
    nodes.set(id, node);
  }
  const depth = new Map();
  const depthOf = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    let d = 0;
    for (const value of Object.values(prompt[id]?.inputs || {})) {
      if (Array.isArray(value) && nodes.has(String(value[0]))) d = Math.max(d, depthOf(String(value[0]), seen) + 1);
    }
    depth.set(id, d);
    return d;
  };
  for (const [id, data] of entries) {
    const target = nodes.get(id);
    if (!target) continue;
    for (const [name, value] of Object.entries(data.inputs || {})) {
      if (!Array.isArray(value) || value.length !== 2) continue;
      const origin = nodes.get(String(value[0]));
      const slot = target.inputs.findIndex((input) => input.name === name);
      if (!origin || slot < 0 || !graph.connect(origin, Number(value[1]), target, slot, false)) {
        warnings.push(`link into ${data.class_type}.${name} could not be restored`);
      }
    }
  }
  const columns = new Map();
  for (const [id, node] of nodes) {
    const d = depthOf(id);
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(node);
  }
  let x = 0;
  for (const d of [...columns.keys()].sort((a, b) => a - b)) {
    let y = 0;
    let width = 0;
    for (const node of columns.get(d)) {
      node.pos = [x, y + 30];
      y += node.size[1] + 30 + ROW_GAP;
      width = Math.max(width, node.size[0]);
    }
    x += width + COLUMN_GAP;
  }
  graph.emit({ type: "load" });
  return warnings;
}
