/**
 * Node drag: a press on a node selects it (Shift/Ctrl: adds it, or takes it out of the selection) and
 * dragging moves the selected nodes that are not pinned; with Alt, copies of them. A single node
 * dropped onto a link's centre is spliced into it; a plain click on one of several selected nodes
 * selects just it.
 */
import { nodeBounds } from "../layout.js";
import { CLICK_SLOP } from "./slop.js";

/** A node without links dropped with a link's centre under it is spliced into that link. */
function dropOnLink(canvas, node) {
  if (node.inputs.some((i) => i.link != null) || node.outputs.some((o) => o.links?.length)) return false;
  const [x, y, w, h] = nodeBounds(node);
  for (const link of canvas.graph.links.values()) {
    const center = canvas.linkCenter(link);
    if (center && center[0] >= x && center[0] <= x + w && center[1] >= y && center[1] <= y + h) {
      return canvas.graph.spliceIntoLink(node, link);
    }
  }
  return false;
}

export function startNodeDrag({ canvas, editor }, node, start, event) {
  const modified = event.shiftKey || event.ctrlKey || event.metaKey;
  if (modified) {
    if (canvas.selected.has(node)) { canvas.deselect(node); return null; }
    canvas.select(node, true);
  } else if (!canvas.selected.has(node)) {
    canvas.select(node, false);
  }
  let nodes = [...canvas.selected].filter((n) => !n.flags.pinned); // pinned nodes stay put
  if (event.altKey) {
    nodes = editor.duplicateNodes(nodes, [0, 0]);
    canvas.selected = new Set(nodes);
  }
  const origins = nodes.map((n) => n.pos.slice());
  const plainClick = !(modified || event.altKey);
  let delta = null; // set once the pointer has moved past the click slop
  canvas.setDirty();
  return {
    move({ point }) {
      const dx = point[0] - start[0];
      const dy = point[1] - start[1];
      if (!delta && Math.hypot(dx, dy) * canvas.viewport.scale < CLICK_SLOP) return;
      delta = [dx, dy];
      nodes.forEach((n, i) => { n.pos = [origins[i][0] + dx, origins[i][1] + dy]; });
      canvas.setDirty();
    },
    up() {
      if (delta && nodes.length === 1) dropOnLink(canvas, nodes[0]);
      if (delta) canvas.graph.moveNodes(nodes, delta, origins);
      else if (plainClick && canvas.selected.size > 1) canvas.select(node); // click one of many: just it
    },
  };
}
