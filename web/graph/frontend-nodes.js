/**
 * Nodes that exist only in the editor and are resolved by the server's workflow conversion: Reroute
 * (a pass-through point on a link) and PrimitiveNode (one value feeding widget inputs of other nodes).
 * They are kept as saved objects (the node definitions from the server do not list them), written the
 * way ComfyUI writes them.
 */
import { GraphNode } from "./model.js";

/** A new Reroute with its centre at graph point `at`, typed for links of `type`. */
export function createReroute(at, type = "*") {
  const node = new GraphNode("Reroute", null);
  node.configure({
    id: -1, type: "Reroute", pos: [at[0] - 37, at[1] - 13], size: [75, 26], flags: {}, order: 0, mode: 0,
    inputs: [{ name: "", type: "*", link: null }],
    outputs: [{ name: "", type, links: null }],
    properties: { showOutputText: false, horizontal: false },
  });
  node.container = "reroute";
  return node;
}

/**
 * A new PrimitiveNode at `at` whose output takes the type of the widget input it will feed; its value
 * widget is kept in `widgets_values` the way ComfyUI saves it (value, then control_after_generate).
 */
export function createPrimitive(at, input, value) {
  const node = new GraphNode("PrimitiveNode", null);
  const values = input.type === "INT" ? [value, "fixed"] : [value];
  node.configure({
    id: -1, type: "PrimitiveNode", pos: [at[0], at[1]], size: [210, 82], flags: {}, order: 0, mode: 0,
    outputs: [{ name: input.type === "COMBO" ? "COMBO" : input.type, type: input.type, links: null,
      widget: { name: input.widget?.name ?? input.name } }],
    title: input.widget?.name ?? input.name,
    properties: { "Run widget replace on values": false },
    widgets_values: values,
  });
  node.container = "primitive";
  return node;
}
