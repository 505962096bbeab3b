/**
 * Alignment and distribution of selected nodes (node menu with more than one node selected).
 * Positions are title-bar-inclusive as drawn: a node's `pos` is the top-left of its body.
 */

/** Align `nodes` to the edge or centre line of the one furthest that way. */
export function alignNodes(nodes, edge) {
  if (nodes.length < 2) return;
  const left = Math.min(...nodes.map((n) => n.pos[0]));
  const right = Math.max(...nodes.map((n) => n.pos[0] + n.size[0]));
  const top = Math.min(...nodes.map((n) => n.pos[1]));
  const bottom = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
  for (const node of nodes) {
    if (edge === "left") node.pos[0] = left;
    else if (edge === "right") node.pos[0] = right - node.size[0];
    else if (edge === "top") node.pos[1] = top;
    else if (edge === "bottom") node.pos[1] = bottom - node.size[1];
    else if (edge === "center") node.pos[0] = (left + right) / 2 - node.size[0] / 2;
    else if (edge === "middle") node.pos[1] = (top + bottom) / 2 - node.size[1] / 2;
    else throw new Error(`unknown alignment ${edge}`);
  }
}

/** Space `nodes` evenly between the first and last along `axis` ("horizontal" or "vertical"). */
export function distributeNodes(nodes, axis) {
  if (nodes.length < 3) return;
  const i = axis === "horizontal" ? 0 : 1;
  const sorted = [...nodes].sort((a, b) => a.pos[i] - b.pos[i]);
  const first = sorted[0];
  const last = sorted[sorted.length - 1];
  const span = last.pos[i] + last.size[i] - first.pos[i];
  const occupied = sorted.reduce((sum, n) => sum + n.size[i], 0);
  const gap = (span - occupied) / (sorted.length - 1);
  let cursor = first.pos[i];
  for (const node of sorted) {
    node.pos[i] = cursor;
    cursor += node.size[i] + gap;
  }
}
