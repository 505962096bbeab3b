/**
 * Link drag: from an output, or from an empty input, a new link follows the pointer (type-checked
 * against the slot under it); pressing an input that has a link takes that link off and drags it from
 * its output. Released on a slot or a node, it connects (the node's first compatible slot); on empty
 * canvas it opens the node search for a node that takes it (a link taken off an input just stays
 * removed). A press on a link's centre marker opens the link's menu on release.
 */
import { isValidConnection } from "../../graph/types.js";
import { visibleInputs } from "../layout.js";

/** The first slot of `node` that a link of the drag can attach to. */
export function firstCompatibleSlot(node, type, wantInput) {
  if (wantInput) {
    const free = visibleInputs(node).find(({ input }) => input.link == null && isValidConnection(type, input.type));
    const any = visibleInputs(node).find(({ input }) => isValidConnection(type, input.type));
    return (free || any)?.index ?? -1;
  }
  return node.outputs.findIndex((output) => isValidConnection(output.type, type));
}

export function startLinkDrag(ctx, { node, slot, isOutput }, point) {
  const { canvas } = ctx;
  const graph = canvas.graph;
  let from = { node, slot, fromOutput: isOutput, detached: false };
  const link = !isOutput && graph.inputLink(node, slot);
  if (link) {
    graph.removeLink(link.id);
    from = { node: graph.getNode(link.origin_id), slot: link.origin_slot, fromOutput: true, detached: true };
  }
  const type = from.fromOutput ? from.node.outputs[from.slot].type : from.node.inputs[from.slot].type;
  canvas.dragLink = { ...from, type, pos: point };
  canvas.setDirty();
  return {
    move({ point: at }) {
      const drag = canvas.dragLink;
      if (!drag) return; // Escape dropped it
      drag.pos = at;
      const hover = canvas.slotAt(...at);
      drag.hover = hover && hover.isOutput !== drag.fromOutput && hover.node !== drag.node ? hover : null;
      canvas.setDirty();
    },
    up({ point: at, screen }) {
      const drag = canvas.dragLink;
      canvas.dragLink = null;
      canvas.setDirty();
      if (drag) dropLink(ctx, drag, at, screen);
    },
  };
}

function dropLink({ canvas, editor }, drag, point, screen) {
  const graph = canvas.graph;
  const slot = canvas.slotAt(...point);
  let target = null;
  if (slot && slot.isOutput !== drag.fromOutput && slot.node !== drag.node) {
    target = slot;
  } else {
    const node = canvas.nodeAt(...point);
    if (node && node !== drag.node) {
      const index = firstCompatibleSlot(node, drag.type, drag.fromOutput);
      if (index < 0) {
        editor.notify(`${node.title} has no ${drag.fromOutput ? "input" : "output"} that takes ${drag.type}`, "warn");
        return;
      }
      target = { node, slot: index };
    }
  }
  if (target) {
    const link = drag.fromOutput
      ? graph.connect(drag.node, drag.slot, target.node, target.slot)
      : graph.connect(target.node, target.slot, drag.node, drag.slot);
    if (!link) {
      const input = drag.fromOutput ? target.node.inputs[target.slot] : drag.node.inputs[drag.slot];
      const output = drag.fromOutput ? drag.node.outputs[drag.slot] : target.node.outputs[target.slot];
      editor.notify(`cannot connect ${output?.type} to ${input?.name} (${input?.type})`, "warn");
    }
    return;
  }
  if (drag.detached) return; // a link dragged off an input and dropped on nothing stays removed
  editor.searchForLink(drag, point, screen);
}

/** A press on a link's centre marker: its menu opens on release (a press closes open menus). */
export function startLinkMenu({ editor }, link) {
  return { move() {}, up(at, event) { editor.linkMenu(link, event); } };
}
