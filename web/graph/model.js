/**
 * The graph being edited: nodes, links, and their serialisation in ComfyUI's UI workflow format.
 *
 * Saving writes litegraph's version 0.4 (`last_node_id`, `last_link_id`, `nodes[]`, `links[]` as
 * `[id, origin_id, origin_slot, target_id, target_slot, type]`, `groups`, `config`, `extra.ds`,
 * `version`). Loading also reads schema version 1 (link objects, `state`). Keys the editor does not
 * understand are kept and written back, and nodes of unknown types are kept verbatim, so a shared
 * workflow survives a load/save round trip.
 */
import { isValidConnection } from "./types.js";
import {
  applyDynamicCombo, autogrowConnected, autogrowDisconnected, ensureAutogrow, socketInput, updateMatchTypes,
} from "./dynamic.js";

const NODE_KEYS = new Set(["id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "title",
  "properties", "widgets_values", "color", "bgcolor"]);
const GRAPH_KEYS = new Set(["last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version",
  "state"]);

export const MODE_ALWAYS = 0;
export const MODE_NEVER = 2;
export const MODE_BYPASS = 4;

function vec2(value, fallback) {
  if (Array.isArray(value)) return [Number(value[0]) || 0, Number(value[1]) || 0];
  if (value && typeof value === "object" && "0" in value) return [Number(value[0]) || 0, Number(value[1]) || 0];
  return fallback.slice();
}

function clone(value) {
  return value === undefined ? undefined : JSON.parse(JSON.stringify(value));
}

function decimalsOf(step) {
  const text = String(step);
  if (text.includes("e-")) return Number(text.split("e-")[1]);
  return text.includes(".") ? text.split(".")[1].length : 0;
}

/**
 * Marks an input made by "convert widget to input" in this session: its socket shows even while
 * unlinked (a symbol key, so it is never written to the saved JSON).
 */
export const CONVERTED_WIDGET = Symbol("converted widget input");

/** Node types that live only in the editor (never sent to the server), by the badge they get. */
const FRONTEND_NODE_TYPES = { Reroute: "reroute", PrimitiveNode: "primitive", Note: "note", MarkdownNote: "note" };

const EMPTY_LINKS = Symbol("empty links form");

/** Remember whether a saved output wrote "no links" as `[]` or `null`, to write it back the same way. */
function rememberEmptyLinks(output, savedLinks) {
  if (Array.isArray(savedLinks)) output[EMPTY_LINKS] = true;
  return output;
}

function emptyLinks(output) {
  return output[EMPTY_LINKS] ? [] : null;
}

/** A widget instance on a node: its spec from the node definition plus the current value. */
export function createWidget(spec) {
  const widget = {
    name: spec.name, kind: spec.kind, inputType: spec.inputType, target: spec.target,
    options: { ...spec.options }, value: clone(spec.default), tooltip: spec.tooltip,
  };
  if (spec.label) widget.label = spec.label;
  if (spec.saved === false) widget.saved = false; // kept out of widgets_values (ComfyUI's image compare)
  if (spec.dynamic) Object.assign(widget, { dynamic: true, choices: spec.choices }); // its option brings more inputs
  if (widget.kind === "combo" || widget.kind === "control") widget.options.values = (spec.options.values || []).slice();
  return widget;
}

/** A number widget's value snapped to its step/round and clamped to min/max. */
export function normalizeNumber(widget, value) {
  let number = Number(value);
  if (!Number.isFinite(number)) return widget.value;
  const { min, max, integer } = widget.options;
  if (integer) {
    number = Math.round(number);
  } else {
    const round = typeof widget.options.round === "number" && widget.options.round > 0
      ? widget.options.round : null;
    const decimals = round ? decimalsOf(round) : Math.max(decimalsOf(widget.options.step ?? 0.01), 2);
    if (round) number = Math.round(number / round) * round;
    number = Number(number.toFixed(decimals));
  }
  if (typeof min === "number" && number < min) number = min;
  if (typeof max === "number" && number > max) number = max;
  return number;
}

/** One node on the canvas. Runtime state (progress, errors, images) lives in `runtime`, never saved. */
export class GraphNode {
  constructor(type, def) {
    this.id = -1;
    this.type = type;
    this.def = def;
    this.title = def ? def.displayName : type;
    this.pos = [0, 0];
    this.size = [0, 0];
    this.flags = {};
    this.order = 0;
    this.mode = MODE_ALWAYS;
    this.properties = { "Node name for S&R": type };
    this.color = undefined;
    this.bgcolor = undefined;
    this.inputs = def ? def.sockets.map(socketInput) : [];
    this.outputs = def ? def.outputs.map((o) => ({ name: o.name, type: o.type, links: null })) : [];
    this.widgets = def ? def.widgets.map(createWidget) : [];
    for (const widget of this.widgets.slice()) if (widget.dynamic) applyDynamicCombo(null, this, widget);
    this.extraFields = {};
    this.keepEmpty = { inputs: false, outputs: false, widgets_values: true };
    this.raw = null; // the saved object of a node whose type the server does not know
    this.runtime = {};
  }

  /** The widgets whose values `widgets_values` holds, in order. */
  savedWidgets() {
    return this.widgets.filter((w) => w.saved !== false);
  }

  get missing() {
    return !this.def;
  }

  get defaultTitle() {
    return this.def ? this.def.displayName : this.type;
  }

  widget(name) {
    return this.widgets.find((w) => w.name === name) || null;
  }

  /** The widget whose socket an input stands for (a widget converted to an input), if any. */
  widgetOfInput(input) {
    return input.widget?.name ? this.widget(input.widget.name) : null;
  }

  /** True when the widget's value comes from a link instead (a converted widget). */
  isWidgetLinked(widget) {
    return this.inputs.some((i) => i.widget?.name === widget.name && i.link != null);
  }

  serialize() {
    if (this.raw) {
      const data = { ...clone(this.raw), id: this.id, pos: this.pos.slice(), size: this.size.slice(),
        flags: clone(this.flags), mode: this.mode, order: this.order, ...this.#serializeSlots() };
      if (this.title !== this.rawTitle) data.title = this.title;
      return data;
    }
    const data = {
      id: this.id, type: this.type, pos: this.pos.slice(), size: this.size.slice(), flags: clone(this.flags),
      order: this.order, mode: this.mode, ...this.#serializeSlots(),
    };
    if (this.title !== this.defaultTitle) data.title = this.title;
    data.properties = clone(this.properties);
    if (this.widgets.length || this.keepEmpty.widgets_values) data.widgets_values = this.savedWidgets().map((w) => clone(w.value));
    if (this.color !== undefined) data.color = this.color;
    if (this.bgcolor !== undefined) data.bgcolor = this.bgcolor;
    return { ...data, ...clone(this.extraFields) };
  }

  #serializeSlots() {
    const slots = {};
    if (this.inputs.length || this.keepEmpty.inputs) {
      slots.inputs = this.inputs.map((input) => ({ ...input, link: input.link ?? null }));
    }
    if (this.outputs.length || this.keepEmpty.outputs) {
      slots.outputs = this.outputs.map((output, i) => {
        const out = { ...output, links: output.links?.length ? output.links.slice() : emptyLinks(output) };
        if (out.links) out.slot_index = i;
        return out;
      });
    }
    return slots;
  }

  /** Apply a saved node object (its type must match this node's). */
  configure(data) {
    this.id = data.id;
    this.pos = vec2(data.pos, this.pos);
    this.size = vec2(data.size, this.size);
    this.flags = clone(data.flags) || {};
    this.order = data.order ?? 0;
    this.mode = data.mode ?? MODE_ALWAYS;
    if (data.title !== undefined) this.title = String(data.title);
    if (data.color !== undefined) this.color = data.color;
    if (data.bgcolor !== undefined) this.bgcolor = data.bgcolor;
    if (!this.def) {
      this.raw = clone(data);
      this.rawTitle = this.title;
      this.inputs = (data.inputs || []).map((i) => ({ ...clone(i), link: null }));
      this.outputs = (data.outputs || []).map((o) => rememberEmptyLinks({ ...clone(o), links: null }, o.links));
      return;
    }
    if (data.properties) this.properties = clone(data.properties);
    if (Array.isArray(data.inputs)) {
      // Saved inputs win (they carry labels, converted widgets, custom slots); links are rebuilt later.
      this.inputs = data.inputs.map((saved) => ({ ...clone(saved), link: null }));
      // sockets the node type gained since the file was saved are added after the saved ones
      for (const socket of this.def.sockets) {
        if (socket.autogrow) continue; // autogrow copies are completed after the links are back
        if (!this.inputs.some((input) => input.name === socket.name)) {
          this.inputs.push({ name: socket.name, type: socket.type, link: null });
        }
      }
      this.keepEmpty.inputs = true;
    }
    if (Array.isArray(data.outputs)) {
      this.outputs = data.outputs.map((saved, i) => {
        const fresh = this.def.outputs[i];
        const out = rememberEmptyLinks({ ...clone(saved), links: null }, saved.links);
        delete out.slot_index;
        if (!out.type && fresh) out.type = fresh.type;
        return out;
      });
      this.keepEmpty.outputs = true;
    }
    const values = data.widgets_values;
    this.keepEmpty.widgets_values = values !== undefined;
    // one widget at a time: a dynamic combo's value brings its option's widgets right after it
    let position = 0;
    for (let i = 0; i < this.widgets.length; i++) {
      const widget = this.widgets[i];
      if (Array.isArray(values) && widget.saved !== false) {
        if (position < values.length) widget.value = clone(values[position]);
        position++;
      } else if (values && typeof values === "object" && !Array.isArray(values) && widget.name in values) {
        widget.value = clone(values[widget.name]);
      }
      if (widget.dynamic) applyDynamicCombo(null, this, widget, { loading: true });
    }
    for (const [key, value] of Object.entries(data)) {
      if (!NODE_KEYS.has(key)) this.extraFields[key] = clone(value);
    }
  }
}

/**
 * One edit of the graph, as its listeners (the renderer, the undo history, autosave and with it the tabs'
 * unsaved marker) receive it. `type` says what changed:
 *
 * - `clear`, `load`: the whole graph was emptied or replaced (`configure`, an API prompt loaded);
 * - `add-node` `{ node }`, `add-nodes` `{ nodes }` (duplicated, pasted, spliced in), `remove-node` `{ id }`;
 * - `connect` `{ link }`, `disconnect` `{ ids }` (the links removed), `splice` `{ node, link }` (a node put
 *   into a link: a reroute on it, a node dropped on it);
 * - `move` `{ ids, delta, group }` (a drag; `group` when a group was dragged with its nodes), `arrange` `{ ids, how }` (align, distribute), `resize` `{ id, size }`;
 * - `widget` `{ node, name, value }`, `widgets` `{ ids }` (values stepped after a queue);
 * - `node` `{ ids, field }`: title, mode, color, pinned or collapsed changed;
 * - `convert` `{ node, name, toInput }`: a widget given a socket, or back;
 * - `add-group` / `remove-group` `{ group }`, `group` `{ group, field }`;
 * - `workflow` `{ field, value }`: a workflow-level setting in `extra` (`loom.fast`).
 *
 * @typedef {{ type: string, [detail: string]: any }} GraphChange
 */

/** The whole graph plus the workflow-level data around it. Every edit goes through a method that emits one change. */
export class Graph {
  #quiet = 0;

  constructor(defs) {
    this.defs = defs;
    this.listeners = new Set();
    this.clear(false);
  }

  clear(notify = true) {
    this.nodes = [];
    this.nodeById = new Map();
    this.links = new Map();
    this.last_node_id = 0;
    this.last_link_id = 0;
    this.groups = [];
    this.config = {};
    this.extra = {};
    this.extraTop = {};
    this.version = 0.4;
    if (notify) this.emit({ type: "clear" });
  }

  /** Subscribe to edits; the listener gets each `GraphChange`. Returns an unsubscribe function. */
  onChange(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Hand `change` to every listener (not while a compound `edit` runs: it emits its own change once). */
  emit(change) {
    if (this.#quiet) return;
    for (const listener of this.listeners) listener(change);
  }

  /**
   * A compound edit: `apply()` runs with the changes of the edits inside it held back, then one change is
   * emitted: `change`, or `change(result)` when it is a function of what `apply` returned (none when that
   * gives null: the edit did not happen). Returns what `apply` returned.
   */
  edit(change, apply) {
    this.#quiet++;
    let result;
    try {
      result = apply();
    } finally {
      this.#quiet--;
    }
    const made = typeof change === "function" ? change(result) : change;
    if (made) this.emit(made);
    return result;
  }

  /** Move `nodes` by `delta` from `origins` (their positions before a drag; by default where they are). */
  moveNodes(nodes, delta, origins = nodes.map((n) => n.pos)) {
    nodes.forEach((node, i) => { node.pos = [origins[i][0] + delta[0], origins[i][1] + delta[1]]; });
    this.emit({ type: "move", ids: nodes.map((n) => n.id), delta: delta.slice() });
  }

  /** Lay `nodes` out with `arrange(nodes)` (aligning or distributing them); `how` names the layout. */
  arrangeNodes(nodes, how, arrange) {
    arrange(nodes);
    this.emit({ type: "arrange", ids: nodes.map((n) => n.id), how });
  }

  resizeNode(node, size) {
    node.size = size.slice();
    this.emit({ type: "resize", id: node.id, size: node.size.slice() });
  }

  /**
   * Set a widget's value; `adjust(node, widget)` runs after it and before the change is emitted (what the
   * editor does around a value: a dynamic combo's inputs, the node's size, its input preview).
   */
  setWidget(node, widget, value, adjust = null) {
    widget.value = value;
    adjust?.(node, widget);
    this.emit({ type: "widget", node, name: widget.name, value });
  }

  /** Change `field` (title, mode, color, pinned, collapsed) of `nodes` by `apply(node)` on each. */
  updateNodes(nodes, field, apply) {
    for (const node of nodes) apply(node);
    this.emit({ type: "node", ids: nodes.map((n) => n.id), field });
  }

  addGroup(group) {
    this.groups.push(group);
    this.emit({ type: "add-group", group });
    return group;
  }

  removeGroup(group) {
    this.groups = this.groups.filter((g) => g !== group);
    this.emit({ type: "remove-group", group });
  }

  /** Change `field` (title, color, bounding) of a group by `apply(group)`. */
  updateGroup(group, field, apply) {
    apply(group);
    this.emit({ type: "group", group, field });
  }

  /** The workflow's own fast-path setting, `extra.loom.fast`: true, false, or null (the server's). */
  get fastPath() {
    const value = this.extra.loom?.fast;
    return typeof value === "boolean" ? value : null;
  }

  /** Save `value` (true, false; null removes it) as the workflow's `extra.loom.fast`, as the server reads it. */
  setFastPath(value) {
    const loom = { ...(this.extra.loom && typeof this.extra.loom === "object" ? this.extra.loom : {}) };
    if (value === null) delete loom.fast;
    else loom.fast = Boolean(value);
    if (Object.keys(loom).length) this.extra.loom = loom;
    else delete this.extra.loom;
    this.emit({ type: "workflow", field: "loom.fast", value: this.fastPath });
  }

  getNode(id) {
    return this.nodeById.get(typeof id === "string" && /^\d+$/.test(id) ? Number(id) : id) || null;
  }

  createNode(type) {
    const def = this.defs.get(type);
    if (!def) throw new Error(`unknown node type ${type}`);
    return new GraphNode(type, def);
  }

  /** Add a node; it gets the next free id unless it already has one. */
  addNode(node, notify = true) {
    if (node.id === -1 || node.id === undefined || this.nodeById.has(node.id)) node.id = ++this.last_node_id;
    else if (typeof node.id === "number") this.last_node_id = Math.max(this.last_node_id, node.id);
    this.nodes.push(node);
    this.nodeById.set(node.id, node);
    if (notify) this.emit({ type: "add-node", node });
    return node;
  }

  removeNode(node) {
    for (const input of node.inputs) if (input.link != null) this.removeLink(input.link, false, false);
    for (let i = 0; i < node.outputs.length; i++) this.disconnectOutput(node, i, false);
    this.nodes = this.nodes.filter((n) => n !== node);
    this.nodeById.delete(node.id);
    this.emit({ type: "remove-node", id: node.id });
  }

  /** Move a node to the top of the drawing order. */
  bringToFront(node) {
    const index = this.nodes.indexOf(node);
    if (index >= 0 && index !== this.nodes.length - 1) {
      this.nodes.splice(index, 1);
      this.nodes.push(node);
    }
  }

  canConnect(origin, outSlot, target, inSlot) {
    const output = origin?.outputs[outSlot];
    const input = target?.inputs[inSlot];
    if (!output || !input || origin === target) return false;
    return isValidConnection(output.type, input.type);
  }

  /** Link an output to an input; an existing link into that input is replaced. Null when refused. */
  connect(origin, outSlot, target, inSlot, notify = true) {
    if (!this.canConnect(origin, outSlot, target, inSlot)) return null;
    if (this.#reaches(target, origin)) return null; // would make a cycle
    // a link replaced: no autogrow shrinking for the moment the input is empty
    if (target.inputs[inSlot].link != null) this.removeLink(target.inputs[inSlot].link, false, false);
    const output = origin.outputs[outSlot];
    const type = output.type === "*" ? target.inputs[inSlot].type : output.type;
    const link = { id: ++this.last_link_id, origin_id: origin.id, origin_slot: outSlot, target_id: target.id,
      target_slot: inSlot, type };
    this.links.set(link.id, link);
    target.inputs[inSlot].link = link.id;
    (output.links ||= []).push(link.id);
    if (target.def) {
      autogrowConnected(this, target, inSlot);
      updateMatchTypes(this, target);
    }
    if (notify) this.emit({ type: "connect", link });
    return link;
  }

  #reaches(from, to) {
    const seen = new Set();
    const stack = [from];
    while (stack.length) {
      const node = stack.pop();
      if (node === to) return true;
      if (seen.has(node.id)) continue;
      seen.add(node.id);
      for (const output of node.outputs) {
        for (const id of output.links || []) {
          const link = this.links.get(id);
          const next = link && this.getNode(link.target_id);
          if (next) stack.push(next);
        }
      }
    }
    return false;
  }

  /** Remove a link; `dynamic` false skips what dynamic inputs do after it (autogrow, match types). */
  removeLink(id, notify = true, dynamic = true) {
    const link = this.links.get(id);
    if (!link) return;
    this.links.delete(id);
    const target = this.getNode(link.target_id);
    const origin = this.getNode(link.origin_id);
    if (target?.inputs[link.target_slot]?.link === id) target.inputs[link.target_slot].link = null;
    const output = origin?.outputs[link.origin_slot];
    if (output?.links) {
      output.links = output.links.filter((l) => l !== id);
      if (!output.links.length) output.links = null;
    }
    if (dynamic && target?.def) {
      const input = target.inputs[link.target_slot];
      if (input) autogrowDisconnected(this, target, link.target_slot, input.name);
      updateMatchTypes(this, target);
    }
    if (notify) this.emit({ type: "disconnect", ids: [id] });
  }

  disconnectInput(node, slot, notify = true) {
    const id = node.inputs[slot]?.link;
    if (id != null) this.removeLink(id, notify);
  }

  disconnectOutput(node, slot, notify = true) {
    const ids = (node.outputs[slot]?.links || []).slice();
    for (const id of ids) this.removeLink(id, false);
    if (notify) this.emit({ type: "disconnect", ids });
  }

  /** Splice `node` into `link`: origin -> node (first input of the type) -> target (first output of it). */
  spliceIntoLink(node, link) {
    const inSlot = node.inputs.findIndex((i) => i.link == null && isValidConnection(link.type, i.type));
    const outSlot = node.outputs.findIndex((o) => isValidConnection(o.type, link.type));
    if (inSlot < 0 || outSlot < 0) return false;
    const origin = this.getNode(link.origin_id);
    const target = this.getNode(link.target_id);
    const targetSlot = link.target_slot;
    return this.edit((spliced) => spliced && { type: "splice", node, link }, () => {
      if (!this.connect(origin, link.origin_slot, node, inSlot)) return false;
      this.connect(node, outSlot, target, targetSlot);
      return true;
    });
  }

  /** Give a widget a socket (ComfyUI's "convert widget to input"); its value is kept for converting back. */
  convertWidgetToInput(node, widget) {
    if (node.inputs.some((i) => i.widget?.name === widget.name)) return;
    this.edit({ type: "convert", node, name: widget.name, toInput: true }, () => {
      node.inputs.push({ name: widget.name, type: widget.inputType === "COMBO" || widget.kind === "combo" ? "COMBO" : widget.inputType,
        widget: { name: widget.name }, link: null, [CONVERTED_WIDGET]: true });
    });
  }

  /** Take a converted widget's socket away again (its link with it); the widget shows its value. */
  convertInputToWidget(node, widget) {
    const index = node.inputs.findIndex((i) => i.widget?.name === widget.name);
    if (index < 0) return;
    this.edit({ type: "convert", node, name: widget.name, toInput: false }, () => {
      this.disconnectInput(node, index);
      // links point at input slots by index: renumber the ones after the removed input
      for (let i = index + 1; i < node.inputs.length; i++) {
        const link = this.inputLink(node, i);
        if (link) link.target_slot = i - 1;
      }
      node.inputs.splice(index, 1);
    });
  }

  /** The link feeding an input, if any. */
  inputLink(node, slot) {
    const id = node.inputs[slot]?.link;
    return id == null ? null : this.links.get(id) || null;
  }

  /** Topological order (litegraph's `order` field): sources first, ties by id. */
  computeOrder() {
    const indegree = new Map(this.nodes.map((n) => [n.id, 0]));
    for (const link of this.links.values()) {
      if (indegree.has(link.target_id)) indegree.set(link.target_id, indegree.get(link.target_id) + 1);
    }
    const ready = this.nodes.filter((n) => indegree.get(n.id) === 0).map((n) => n.id).sort((a, b) => a - b);
    let order = 0;
    const done = new Set();
    while (ready.length) {
      const id = ready.shift();
      const node = this.getNode(id);
      node.order = order++;
      done.add(id);
      const next = [];
      for (const output of node.outputs) {
        for (const linkId of output.links || []) {
          const link = this.links.get(linkId);
          if (!link || !indegree.has(link.target_id)) continue;
          indegree.set(link.target_id, indegree.get(link.target_id) - 1);
          if (indegree.get(link.target_id) === 0) next.push(link.target_id);
        }
      }
      ready.push(...next);
      ready.sort((a, b) => a - b);
    }
    for (const node of this.nodes) if (!done.has(node.id)) node.order = order++;
  }

  serialize() {
    this.computeOrder();
    const links = [...this.links.values()].sort((a, b) => a.id - b.id)
      .map((l) => [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot, l.type]);
    return {
      ...clone(this.extraTop),
      last_node_id: this.last_node_id,
      last_link_id: this.last_link_id,
      nodes: this.nodes.map((n) => n.serialize()),
      links,
      groups: clone(this.groups),
      config: clone(this.config),
      extra: clone(this.extra),
      version: 0.4,
    };
  }

  /**
   * Replace the graph with a saved workflow (0.4 or schema 1). Returns a list of warnings
   * (unknown node types, links that could not be restored).
   */
  configure(data) {
    if (!data || typeof data !== "object" || !Array.isArray(data.nodes)) {
      throw new Error("not a workflow: expected an object with a nodes array");
    }
    const warnings = [];
    this.clear(false);
    for (const [key, value] of Object.entries(data)) {
      if (!GRAPH_KEYS.has(key)) this.extraTop[key] = clone(value);
    }
    this.groups = clone(data.groups) || [];
    this.config = clone(data.config) || {};
    this.extra = clone(data.extra) || {};
    const missing = new Set();
    const subgraphs = new Map((data.definitions?.subgraphs || []).map((s) => [s.id, s]));
    const groupNodes = data.extra?.groupNodes || {};
    for (const saved of data.nodes) {
      const def = this.defs.get(saved.type);
      const node = new GraphNode(saved.type, def);
      node.configure(saved);
      if (!def) {
        // subgraph instances and legacy group nodes have no definition of their own: not reported missing
        const subgraph = subgraphs.get(saved.type);
        const groupName = String(saved.type).startsWith("workflow>") ? saved.type.slice("workflow>".length) : null;
        if (subgraph) {
          node.container = "subgraph";
          if (saved.title === undefined) node.title = node.rawTitle = subgraph.name || "Subgraph";
        } else if (groupName !== null && groupName in groupNodes) {
          node.container = "group node";
          if (saved.title === undefined) node.title = node.rawTitle = groupName;
        } else if (FRONTEND_NODE_TYPES[saved.type]) {
          node.container = FRONTEND_NODE_TYPES[saved.type];
        } else {
          missing.add(saved.type);
        }
      }
      if (typeof node.id === "string" && /^\d+$/.test(node.id)) node.id = Number(node.id);
      this.addNode(node, false);
    }
    if (missing.size) warnings.push(`unknown node types kept as they are: ${[...missing].join(", ")}`);
    const links = (data.links || []).map((l) => Array.isArray(l)
      ? { id: l[0], origin_id: l[1], origin_slot: Number(l[2]), target_id: l[3], target_slot: Number(l[4]), type: l[5] }
      : { id: l.id, origin_id: l.origin_id, origin_slot: Number(l.origin_slot), target_id: l.target_id,
          target_slot: Number(l.target_slot), type: l.type });
    let dropped = 0;
    for (const link of links) {
      const origin = this.getNode(link.origin_id);
      const target = this.getNode(link.target_id);
      const output = origin?.outputs[link.origin_slot];
      const input = target?.inputs[link.target_slot];
      if (!output || !input || input.link != null) { dropped++; continue; }
      this.links.set(link.id, link);
      input.link = link.id;
      (output.links ||= []).push(link.id);
    }
    if (dropped) warnings.push(`${dropped} link(s) pointed at missing nodes or slots and were dropped`);
    for (const node of this.nodes) ensureAutogrow(this, node);
    for (const node of this.nodes) updateMatchTypes(this, node);
    const state = data.state || {};
    const maxNode = Math.max(0, ...this.nodes.map((n) => (typeof n.id === "number" ? n.id : 0)));
    const maxLink = Math.max(0, ...[...this.links.keys()].map(Number).filter(Number.isFinite));
    this.last_node_id = Math.max(Number(data.last_node_id ?? state.lastNodeId) || 0, maxNode);
    this.last_link_id = Math.max(Number(data.last_link_id ?? state.lastLinkId) || 0, maxLink);
    this.emit({ type: "load" });
    return warnings;
  }
}
