/** Resize: drag a node's bottom-right corner (not below its minimum size), or a group's. */
import { minimumSize } from "../layout.js";

export function startNodeResize({ canvas }, node, start) {
  canvas.select(node, canvas.selected.has(node));
  const size = node.size.slice();
  let moved = false;
  return {
    move({ point }) {
      const [minW, minH] = minimumSize(node);
      node.size = [Math.max(minW, size[0] + point[0] - start[0]), Math.max(minH, size[1] + point[1] - start[1])];
      moved = true;
      canvas.setDirty();
    },
    up() {
      if (moved) canvas.graph.resizeNode(node, node.size);
    },
  };
}

export function startGroupResize({ canvas }, group, start) {
  const size = group.bounding.slice(2, 4);
  let moved = false;
  return {
    move({ point }) {
      moved = true;
      group.bounding[2] = Math.max(80, size[0] + point[0] - start[0]);
      group.bounding[3] = Math.max(60, size[1] + point[1] - start[1]);
      canvas.setDirty();
    },
    up() {
      if (moved) canvas.graph.updateGroup(group, "bounding", () => {});
    },
  };
}
