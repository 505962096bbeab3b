/**
 * ComfyUI's V3 dynamic inputs on a node, kept the way ComfyUI's frontend keeps them so that saved
 * workflows and queued prompts use the same input names:
 *
 * - COMFY_AUTOGROW_V3: a row of sockets `group.slot` (`images.image0`, `values.a`, ...). A node starts
 *   with `min + 1` copies; linking the last one adds the next (up to `max`); unlinking one moves the
 *   links below it up a place and drops the empty copies at the end, keeping one free one after the last
 *   linked copy and never going under `min + 1`.
 * - COMFY_MATCHTYPE_V3: inputs of one template take what they all can take; an output of that
 *   template has the type linked into them (links it can no longer feed are removed). Unlinked, the
 *   output offers what the template allows.
 * - COMFY_DYNAMICCOMBO_V3: a combo whose chosen option brings its own inputs, named `combo.input`,
 *   inserted right after the combo (widgets) and after the combo's input or the last socket (sockets).
 *   Switching options swaps them; values typed for an option come back when it is chosen again. An
 *   option may hold a dynamic combo itself (SaveImageAdvanced's `format.save_mode`, whose option brings
 *   `format.save_mode.fps`): its option's widgets follow it, and they go when the outer option goes.
 *
 * Links point at input slots by index, so whenever inputs are inserted or removed the links into the
 * node are renumbered (`setInputs`).
 */
import { createWidget } from "./model.js";
import { isValidConnection } from "./types.js";

/** Replace a node's input list and point every link into it at its new slot. */
export function setInputs(graph, node, inputs) {
  node.inputs = inputs;
  inputs.forEach((input, slot) => {
    const link = input.link != null && graph ? graph.links.get(input.link) : null;
    if (link) link.target_slot = slot;
  });
}

/** A fresh input object for a socket spec of a node definition. */
export function socketInput(socket) {
  const input = { name: socket.name, type: socket.type, link: null };
  if (socket.label) input.label = socket.label;
  return input;
}

// ------------------------------------------------------------------ autogrow

function autogrowGroupOf(node, input) {
  if (!input || !node.def) return null;
  const dot = input.name.lastIndexOf(".");
  if (dot < 0) return null;
  const group = input.name.slice(0, dot);
  return node.def.autogrow[group] ? group : null;
}

function ordinalOf(node, group, name) {
  const rest = name.slice(group.length + 1);
  const entry = node.def.autogrow[group];
  if (entry.names) {
    const index = entry.names.indexOf(rest);
    return index < 0 ? null : index;
  }
  const match = rest.match(/\d+$/);
  return match ? Number(match[0]) : null;
}

function groupInputs(node, group) {
  return node.inputs.filter((input) => input.name.startsWith(group + ".") && input.name.lastIndexOf(".") === group.length);
}

/** Add the copies of `ordinal` after the group's last input (when missing and under `max`). */
function addOrdinal(graph, node, group, ordinal) {
  const fresh = node.def.autogrowSockets(group, ordinal).filter((s) => !node.inputs.some((i) => i.name === s.name));
  if (!fresh.length) return false;
  const inputs = node.inputs.slice();
  let last = -1;
  inputs.forEach((input, index) => { if (autogrowGroupOf(node, input) === group) last = index; });
  inputs.splice(last < 0 ? inputs.length : last + 1, 0, ...fresh.map(socketInput));
  setInputs(graph, node, inputs);
  return true;
}

/** After a link into `slot`: when it is the group's last copy, add the next one. */
export function autogrowConnected(graph, node, slot) {
  const input = node.inputs[slot];
  const group = autogrowGroupOf(node, input);
  if (!group) return false;
  const ordinal = ordinalOf(node, group, input.name);
  const members = groupInputs(node, group);
  const lastOrdinal = members.length ? ordinalOf(node, group, members[members.length - 1].name) : null;
  if (ordinal == null || ordinal !== lastOrdinal) return false;
  return addOrdinal(graph, node, group, ordinal + 1);
}

/** After the link into `slot` was removed: close the gap and drop the spare copies at the end. */
export function autogrowDisconnected(graph, node, slot, name) {
  const input = node.inputs[slot];
  const group = autogrowGroupOf(node, input);
  if (!group || input.name !== name) return false;
  const entry = node.def.autogrow[group];
  const ordinal = ordinalOf(node, group, input.name);
  if (ordinal == null || ordinal + 1 < entry.min) return false;
  const stride = entry.specs.length;
  if (slot + stride >= node.inputs.length) return false;
  const members = groupInputs(node, group);
  if (members.length % stride !== 0) return false;
  const links = members.map((m) => m.link);
  for (let column = 0; column < stride; column++) {
    for (let k = ordinal * stride + column; k + stride < members.length; k += stride) {
      links[k] = links[k + stride];
      links[k + stride] = null;
    }
  }
  members.forEach((member, k) => { member.link = links[k] ?? null; });
  const checks = members.slice(entry.min * stride);
  let i;
  for (i = checks.length - stride; i >= 0; i -= stride) {
    if (checks.slice(i, i + stride).some((m) => m.link != null)) break;
  }
  const remove = new Set(checks.slice(i + stride * 2));
  setInputs(graph, node, node.inputs.filter((m) => !remove.has(m)));
  return true;
}

/**
 * After loading: each group has its first `min + 1` copies and one free copy after the last linked
 * one (the copies are inserted after the group's last input, so saved link slots stay valid).
 */
export function ensureAutogrow(graph, node) {
  if (!node.def) return;
  for (const group of Object.keys(node.def.autogrow)) {
    const entry = node.def.autogrow[group];
    for (let ordinal = 0; ordinal === 0 || ordinal < entry.min + 1; ordinal++) addOrdinal(graph, node, group, ordinal);
    let lastLinked = -1;
    for (const input of groupInputs(node, group)) {
      const ordinal = ordinalOf(node, group, input.name);
      if (input.link != null && ordinal != null) lastLinked = Math.max(lastLinked, ordinal);
    }
    if (lastLinked >= 0) addOrdinal(graph, node, group, lastLinked + 1);
  }
}

// ------------------------------------------------------------------ match type

/** ComfyUI's common type: `*` matches anything, comma lists intersect; undefined when nothing is shared. */
export function commonType(...types) {
  const concrete = types.filter((t) => t !== "*" && t !== "" && t != null);
  if (!concrete.length) return "*";
  const lists = concrete.map((t) => [...new Set(String(t).split(","))]);
  const shared = lists[0].filter((t) => lists.every((list) => list.includes(t)));
  return shared.length ? shared.join(",") : undefined;
}

function originType(graph, input) {
  const link = input.link != null ? graph.links.get(input.link) : null;
  const origin = link && graph.getNode(link.origin_id);
  return origin?.outputs[link.origin_slot]?.type ?? "*";
}

/**
 * Retype the MatchType inputs and outputs of `node` from what is linked into them; links out that no
 * longer fit are removed and the nodes they fed are retyped in turn.
 */
export function updateMatchTypes(graph, node, seen = new Set()) {
  const def = node.def;
  if (!def || !Object.keys(def.matchInputs).length || seen.has(node)) return;
  seen.add(node);
  const templates = new Set(Object.values(def.matchInputs).map((m) => m.template));
  for (const template of templates) {
    const members = node.inputs.filter((i) => def.matchInputs[i.name]?.template === template);
    const linked = members.map((input) => originType(graph, input));
    members.forEach((input, k) => {
      const others = linked.filter((_, j) => j !== k);
      input.type = commonType(...others, def.matchInputs[input.name].allowed) ?? def.matchInputs[input.name].allowed;
    });
    let outputType = commonType(...linked);
    if (outputType === undefined) continue;
    if (outputType === "*") outputType = def.matchTemplateTypes(template);
    node.outputs.forEach((output, slot) => {
      if (def.outputs[slot]?.matchType !== template || output.type === outputType) return;
      output.type = outputType;
      for (const id of (output.links || []).slice()) {
        const link = graph.links.get(id);
        const target = link && graph.getNode(link.target_id);
        const input = target?.inputs[link.target_slot];
        if (!input) continue;
        if (!isValidConnection(outputType, input.type)) graph.removeLink(id, false);
        else link.type = outputType;
        updateMatchTypes(graph, target, seen);
      }
    });
  }
}

// ------------------------------------------------------------------ dynamic combo

/**
 * Show the inputs of the option a dynamic combo holds, its own dynamic combos' options included
 * (`format` = avif brings `format.save_mode`, whose "animated" brings `format.save_mode.fps` right after
 * it). While a saved node is being read (`loading`), saved inputs are kept as they are (links point at
 * them by slot) and only missing sockets are added at the end.
 */
export function applyDynamicCombo(graph, node, widget, { loading = false } = {}) {
  if (!widget.choices) return;
  const prefix = widget.name + ".";
  const state = (node.dynamicState ||= {});
  // widgets: the old option's go (each combo they belong to keeps their values for coming back), the new
  // option's come in after the combo
  const widgets = [];
  for (const w of node.widgets) {
    if (w.name.startsWith(prefix)) rememberValue(state, w);
    else widgets.push(w);
  }
  for (const [name, stash] of Object.entries(state)) if (name.startsWith(prefix)) stash.active = undefined;
  const { widgets: added, sockets } = optionInputs(widget, state);
  widgets.splice(widgets.indexOf(widget) + 1, 0, ...added);
  node.widgets = widgets;
  // sockets
  if (loading) {
    const missing = sockets.filter((s) => !node.inputs.some((i) => i.name === s.name));
    if (missing.length) setInputs(graph, node, [...node.inputs, ...missing.map(socketInput)]);
    return;
  }
  const wanted = new Set([...sockets.map((s) => s.name), ...added.map((w) => w.name)]);
  const inputs = [];
  const reused = new Map();
  for (const input of node.inputs) {
    if (!input.name.startsWith(prefix)) { inputs.push(input); continue; }
    if (wanted.has(input.name) && !input.widget) { reused.set(input.name, input); continue; }
    if (input.widget && added.some((w) => w.name === input.widget.name)) { reused.set(input.name, input); continue; }
    if (input.link != null && graph) graph.removeLink(input.link, false, false);
  }
  const own = inputs.findIndex((i) => i.name === widget.name);
  const fresh = sockets.map((s) => reused.get(s.name) || socketInput(s));
  const widgetInputs = [...reused.values()].filter((i) => i.widget);
  inputs.splice(own < 0 ? inputs.length : own + 1, 0, ...fresh, ...widgetInputs);
  setInputs(graph, node, inputs);
}

/** Keep a leaving widget's value with every dynamic combo whose option it belongs to. */
function rememberValue(state, widget) {
  for (const [name, stash] of Object.entries(state)) {
    if (stash.active !== undefined && widget.name.startsWith(name + ".")) {
      (stash.values[stash.active] ||= {})[widget.name] = widget.value;
    }
  }
}

/** The widgets (in order, nested combos followed by their option's) and sockets of a combo's current option. */
function optionInputs(widget, state) {
  const option = widget.choices[widget.value] ? String(widget.value) : undefined;
  const stash = (state[widget.name] ||= { active: undefined, values: {} });
  stash.active = option;
  const widgets = [];
  const sockets = option ? widget.choices[option].sockets.slice() : [];
  for (const spec of option ? widget.choices[option].widgets : []) {
    const fresh = createWidget(spec);
    const remembered = stash.values[option]?.[fresh.name];
    if (remembered !== undefined) fresh.value = remembered;
    widgets.push(fresh);
    if (fresh.dynamic) {
      const inner = optionInputs(fresh, state);
      widgets.push(...inner.widgets);
      sockets.push(...inner.sockets);
    }
  }
  return { widgets, sockets };
}
