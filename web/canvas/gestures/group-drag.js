/** Group drag: dragging a group's title bar moves the group and the nodes inside it. */
import { nodesInGroup } from "../../graph/groups.js";

export function startGroupMove({ canvas }, group, start) {
  const graph = canvas.graph;
  const nodes = nodesInGroup(group, graph.nodes);
  const origin = group.bounding.slice(0, 2);
  const origins = nodes.map((n) => n.pos.slice());
  let delta = null;
  return {
    move({ point }) {
      delta = [point[0] - start[0], point[1] - start[1]];
      group.bounding[0] = origin[0] + delta[0];
      group.bounding[1] = origin[1] + delta[1];
      nodes.forEach((n, i) => { n.pos = [origins[i][0] + delta[0], origins[i][1] + delta[1]]; });
      canvas.setDirty();
    },
    up() {
      if (!delta) return;
      graph.edit({ type: "move", ids: nodes.map((n) => n.id), delta, group }, () => graph.moveNodes(nodes, delta, origins));
    },
  };
}
