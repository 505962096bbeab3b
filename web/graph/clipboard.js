/**
 * Copy and paste of nodes, within a tab and across tabs.
 *
 * The copied selection is kept as JSON in localStorage (shared by every tab of the editor, so a copy in
 * one tab pastes in another) and, where the browser allows, also put on the system clipboard. It holds
 * the nodes as saved in a workflow and the links into them: links among the copied nodes always come
 * back on paste; links from nodes outside the selection come back only with Ctrl+Shift+V.
 */

export const CLIPBOARD_KEY = "loom.clipboard";
const CLIPBOARD_MARK = "loom-nodes";

/** The clipboard payload for `nodes` of `graph`. */
export function copyPayload(graph, nodes) {
  const ids = new Set(nodes.map((n) => n.id));
  const links = [];
  for (const node of nodes) {
    node.inputs.forEach((_, slot) => {
      const link = graph.inputLink(node, slot);
      if (link) links.push({ ...link, internal: ids.has(link.origin_id) });
    });
  }
  return { kind: CLIPBOARD_MARK, nodes: nodes.map((n) => n.serialize()), links };
}

export function writeClipboard(payload) {
  const text = JSON.stringify(payload);
  localStorage.setItem(CLIPBOARD_KEY, text);
  navigator.clipboard?.writeText(text).catch(() => {}); // refused without focus or permission: localStorage suffices
}

export function readClipboard() {
  try {
    const data = JSON.parse(localStorage.getItem(CLIPBOARD_KEY) || "null");
    return data?.kind === CLIPBOARD_MARK && Array.isArray(data.nodes) ? data : null;
  } catch {
    return null;
  }
}

/**
 * Add copies of the payload's nodes with their top-left corner at `at` (graph units); returns them.
 * `keepInputLinks` also reconnects links from nodes outside the copy that still exist in `graph`.
 */
export function pastePayload(graph, payload, at, { keepInputLinks = false, prepare = () => {} } = {}) {
  const x0 = Math.min(...payload.nodes.map((n) => n.pos?.[0] ?? 0));
  const y0 = Math.min(...payload.nodes.map((n) => n.pos?.[1] ?? 0));
  return graph.edit((nodes) => ({ type: "add-nodes", nodes }), () => {
    const copies = new Map();
    for (const data of payload.nodes) {
      if (!graph.defs.get(data.type)) continue; // types this server lacks cannot be instantiated
      const copy = graph.createNode(data.type);
      copy.configure({ ...data, inputs: data.inputs?.map((i) => ({ ...i, link: null })),
        outputs: data.outputs?.map((o) => ({ ...o, links: null })) });
      copy.id = -1;
      copy.pos = [at[0] + (data.pos?.[0] ?? 0) - x0, at[1] + (data.pos?.[1] ?? 0) - y0];
      graph.addNode(copy, false);
      prepare(copy);
      copies.set(data.id, copy);
    }
    for (const link of payload.links || []) {
      const target = copies.get(link.target_id);
      if (!target) continue;
      const origin = link.internal ? copies.get(link.origin_id) : keepInputLinks ? graph.getNode(link.origin_id) : null;
      if (origin) graph.connect(origin, link.origin_slot, target, link.target_slot, false);
    }
    return [...copies.values()];
  });
}
