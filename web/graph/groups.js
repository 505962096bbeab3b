/**
 * Groups: titled, coloured rectangles behind nodes, saved in the workflow's `groups` list as litegraph
 * writes them (`{ id, title, bounding: [x, y, w, h], color, font_size, flags }`). Moving a group moves
 * the nodes inside it; the bottom-right corner resizes it.
 */
import { nodeBounds } from "../canvas/layout.js";

/** The colours ComfyUI offers for groups (its node colour presets, brightened). */
export const GROUP_COLORS = {
  red: "#b06634", brown: "#8a4f30", green: "#8A8", blue: "#88A", pale_blue: "#3f789e", cyan: "#8AA",
  purple: "#a1309b", yellow: "#b58b2a",
};
export const DEFAULT_GROUP_COLOR = GROUP_COLORS.pale_blue;
const PADDING = 10;
const CORNER = 12;

export function titleHeight(group) {
  return (group.font_size || 24) * 1.4;
}

/** A new group around `nodes` (their title bars included), with room for its own title. */
export function groupAround(nodes, id, title = "Group") {
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const node of nodes) {
    const [x, y, w, h] = nodeBounds(node);
    x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
  }
  const group = { id, title, bounding: [0, 0, 0, 0], color: DEFAULT_GROUP_COLOR, font_size: 24, flags: {} };
  const top = titleHeight(group) + PADDING;
  group.bounding = [x0 - PADDING, y0 - top, x1 - x0 + 2 * PADDING, y1 - y0 + top + PADDING];
  return group;
}

/** The topmost group whose title bar or resize corner is under a graph point: `{ group, part }` or null. */
export function groupHandleAt(groups, gx, gy) {
  for (let i = groups.length - 1; i >= 0; i--) {
    const group = groups[i];
    const b = group.bounding;
    if (!Array.isArray(b) || b.length < 4) continue;
    const [x, y, w, h] = b;
    if (gx < x || gx > x + w || gy < y || gy > y + h) continue;
    if (gx > x + w - CORNER && gy > y + h - CORNER) return { group, part: "resize" };
    if (gy <= y + titleHeight(group)) return { group, part: "title" };
  }
  return null;
}

/** Nodes lying entirely inside the group. */
export function nodesInGroup(group, nodes) {
  const [gx, gy, gw, gh] = group.bounding;
  return nodes.filter((node) => {
    const [x, y, w, h] = nodeBounds(node);
    return x >= gx && y >= gy && x + w <= gx + gw && y + h <= gy + gh;
  });
}
