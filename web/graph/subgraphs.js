/**
 * Editing inside subgraphs (ComfyUI's `definitions.subgraphs`): opening an instance shows the
 * definition's nodes as the graph; closing writes them back into the definition, in the same schema.
 *
 * The links that cross the subgraph's border run from its input node (id -10) or to its output node
 * (id -20), which are no nodes of the editor's graph: they are set aside on entry and written back on
 * exit for the inner nodes that still exist. Nested definitions may sit inside their parent definition
 * (`definition.definitions`) or flat at the top level; both are read and written where they were.
 */
const INPUT_NODE = -10;
const OUTPUT_NODE = -20;

function clone(value) {
  return JSON.parse(JSON.stringify(value));
}

const isBoundary = (link) => link.origin_id === INPUT_NODE || link.target_id === OUTPUT_NODE;

function asObject(link) {
  if (!Array.isArray(link)) return link;
  const [id, origin_id, origin_slot, target_id, target_slot, type] = link;
  return { id, origin_id, origin_slot, target_id, target_slot, type };
}

/** The definition a node instance stands for, looked up in a saved (or serialised) graph's definitions. */
export function findDefinition(graphData, type) {
  return graphData.definitions?.subgraphs?.find((s) => s.id === type) || null;
}

/**
 * Enter the subgraph of type `type` from the graph saved as `parent`. Returns `{ workflow, entry }`:
 * the workflow to load as the graph, and the stack entry that `writeBack` needs.
 */
export function enterSubgraph(parent, type) {
  const definition = findDefinition(parent, type);
  if (!definition) throw new Error(`no subgraph definition ${type}`);
  const own = Boolean(definition.definitions?.subgraphs);
  const links = (definition.links || []).map(asObject);
  const boundary = links.filter(isBoundary);
  const maxLink = Math.max(0, ...links.map((l) => Number(l.id) || 0));
  const workflow = {
    last_node_id: definition.state?.lastNodeId ?? 0,
    last_link_id: Math.max(definition.state?.lastLinkId ?? 0, maxLink),
    nodes: clone(definition.nodes || []),
    links: clone(links.filter((l) => !isBoundary(l))),
    groups: clone(definition.groups || []),
    config: clone(definition.config || {}),
    extra: clone(definition.extra || {}),
    definitions: clone(own ? definition.definitions : parent.definitions),
    version: 0.4,
  };
  return { workflow, entry: { parent: clone(parent), type, own, boundary, name: definition.name || "Subgraph" } };
}

/** The parent graph (saved form) with the edited inner graph `inner` written back into its definition. */
export function writeBack(entry, inner) {
  const parent = clone(entry.parent);
  if (!entry.own && inner.definitions) parent.definitions = clone(inner.definitions);
  const definition = findDefinition(parent, entry.type);
  const nodes = clone(inner.nodes);
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const kept = entry.boundary.filter((l) => (l.origin_id === INPUT_NODE
    ? byId.get(l.target_id)?.inputs?.[l.target_slot] : byId.get(l.origin_id)?.outputs?.[l.origin_slot]));
  for (const link of kept) {
    if (link.origin_id === INPUT_NODE) byId.get(link.target_id).inputs[link.target_slot].link = link.id;
    else {
      const output = byId.get(link.origin_id).outputs[link.origin_slot];
      output.links = [...(output.links || []), link.id];
    }
  }
  const keptIds = new Set(kept.map((l) => l.id));
  definition.nodes = nodes;
  definition.links = [...inner.links.map(asObject), ...kept].sort((a, b) => a.id - b.id);
  definition.groups = clone(inner.groups || []);
  definition.state = { ...(definition.state || {}), lastNodeId: inner.last_node_id,
    lastLinkId: Math.max(inner.last_link_id, ...kept.map((l) => l.id)) };
  if (entry.own) definition.definitions = clone(inner.definitions);
  for (const slot of [...(definition.inputs || []), ...(definition.outputs || [])]) {
    if (Array.isArray(slot.linkIds)) slot.linkIds = slot.linkIds.filter((id) => keptIds.has(id));
  }
  return parent;
}
