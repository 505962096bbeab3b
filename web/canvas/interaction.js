/**
 * Pointer, wheel and key handling on the canvas: pan, zoom to the cursor, select (click, shift-click,
 * ctrl/shift rubber band), move, resize, collapse, link dragging (type-checked, detach by dragging an
 * input's link away, release on empty space to search for a compatible node), widget input, menus.
 *
 * `editor` (app.js) supplies the actions that need more than the canvas: search, menus, widget
 * editors, node creation.
 */
import { isValidConnection } from "../graph/types.js";
import { groupHandleAt, nodesInGroup } from "../graph/groups.js";
import { imageArea, nodeBounds, minimumSize, visibleInputs } from "./layout.js";
import { widgetImpl } from "../widgets/index.js";
import { hitsMaskButton } from "./mask-button.js";
import { dispatchKey } from "../ui/keymap.js";

const CLICK_SLOP = 4;

function isTyping(target) {
  return target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable);
}

/** The first slot of `node` that a link of the drag can attach to. */
export function firstCompatibleSlot(node, type, wantInput) {
  if (wantInput) {
    const free = visibleInputs(node).find(({ input }) => input.link == null && isValidConnection(type, input.type));
    const any = visibleInputs(node).find(({ input }) => isValidConnection(type, input.type));
    return (free || any)?.index ?? -1;
  }
  return node.outputs.findIndex((output) => isValidConnection(output.type, type));
}

export class Interaction {
  constructor(canvas, editor) {
    this.canvas = canvas;
    this.editor = editor;
    this.drag = null;
    this.spaceDown = false;
    this.lastPointer = [0, 0];
    const el = canvas.element;
    el.addEventListener("pointerdown", (e) => this.#down(e));
    el.addEventListener("pointermove", (e) => this.#move(e));
    el.addEventListener("pointerup", (e) => this.#up(e));
    el.addEventListener("pointercancel", (e) => this.#up(e));
    el.addEventListener("dblclick", (e) => this.#doubleClick(e));
    el.addEventListener("contextmenu", (e) => this.#contextMenu(e));
    el.addEventListener("wheel", (e) => this.#wheel(e), { passive: false });
    window.addEventListener("keydown", (e) => this.#keyDown(e));
    window.addEventListener("keyup", (e) => { if (e.code === "Space") this.spaceDown = false; });
  }

  #graphPoint(event) {
    const [sx, sy] = this.canvas.eventPoint(event);
    return this.canvas.viewport.toGraph(sx, sy);
  }

  #down(event) {
    this.editor.closePopups();
    this.canvas.element.focus();
    const screen = this.canvas.eventPoint(event);
    const point = this.canvas.viewport.toGraph(...screen);
    this.lastPointer = screen;
    if (event.button === 2) return;
    this.canvas.element.setPointerCapture(event.pointerId);
    if (event.button === 1 || this.spaceDown) {
      this.drag = { kind: "pan", last: screen, moved: true };
      return;
    }
    const { canvas, editor } = this;
    const graph = canvas.graph;
    const slot = canvas.slotAt(...point);
    if (slot) {
      const { node, slot: index, isOutput } = slot;
      if (isOutput) {
        this.#startLink(node, index, true, point, false);
      } else {
        const link = graph.inputLink(node, index);
        if (link) {
          const origin = graph.getNode(link.origin_id);
          graph.removeLink(link.id);
          this.#startLink(origin, link.origin_slot, true, point, true);
        } else {
          this.#startLink(node, index, false, point, false);
        }
      }
      return;
    }
    const node = canvas.nodeAt(...point);
    const linkCenter = !node && canvas.viewport.scale >= 0.5 && canvas.linkCenterAt(...point);
    if (linkCenter) {
      this.drag = { kind: "link-center", link: linkCenter }; // its menu opens on release (pointerdown closes menus)
      return;
    }
    const handle = !node && groupHandleAt(graph.groups, ...point);
    if (handle && !(event.ctrlKey || event.shiftKey || event.metaKey)) {
      const { group, part } = handle;
      if (part === "resize") {
        this.drag = { kind: "group-resize", group, start: point, size: group.bounding.slice(2, 4), moved: false };
      } else {
        const nodes = nodesInGroup(group, graph.nodes);
        this.drag = { kind: "group-move", group, nodes, start: point, origin: group.bounding.slice(0, 2),
          origins: nodes.map((n) => n.pos.slice()), moved: false };
      }
      return;
    }
    if (!node) {
      if (event.ctrlKey || event.shiftKey || event.metaKey) {
        canvas.rubberBand = { from: point, to: point };
        this.drag = { kind: "band", additive: event.shiftKey || event.ctrlKey || event.metaKey, start: screen };
      } else {
        this.drag = { kind: "pan", last: screen, start: screen, moved: false };
      }
      return;
    }
    graph.bringToFront(node);
    const { part, widget } = canvas.partAt(node, ...point);
    if (part === "collapse") {
      editor.toggleCollapse(node);
      return;
    }
    if (event.button === 0 && editor.openMaskEditor && hitsMaskButton(node, ...point)) {
      editor.openMaskEditor(node);
      return;
    }
    if (part === "resize" && !node.flags.pinned) {
      canvas.select(node, canvas.selected.has(node));
      this.drag = { kind: "resize", node, start: point, size: node.size.slice(), moved: false };
      return;
    }
    if (part === "widget" && node.mode !== 2 && !event.shiftKey) {
      canvas.select(node, canvas.selected.has(node) && canvas.selected.size > 1);
      const rect = editor.widgetRect(node, widget);
      const handler = widgetImpl(widget).pointerDown({ widget, node, rect, x: point[0], y: point[1], editor, event });
      if (handler) this.drag = { kind: "widget", node, widget, rect, handler };
      return;
    }
    if (event.shiftKey || event.ctrlKey || event.metaKey) {
      if (canvas.selected.has(node)) { canvas.deselect(node); return; }
      canvas.select(node, true);
    } else if (!canvas.selected.has(node)) {
      canvas.select(node, false);
    }
    let moving = [...canvas.selected].filter((n) => !n.flags.pinned); // pinned nodes stay put
    if (event.altKey) {
      moving = editor.duplicateNodes(moving, [0, 0]);
      canvas.selected = new Set(moving);
    }
    this.drag = { kind: "move", node, nodes: moving, start: point, origins: moving.map((n) => n.pos.slice()), moved: false,
      plainClick: !(event.shiftKey || event.ctrlKey || event.metaKey || event.altKey) };
    canvas.setDirty();
  }

  /** The browser's own tooltip (the canvas `title`) for the slot, widget or node title under the pointer. */
  #showTooltip(point) {
    const canvas = this.canvas;
    let text = "";
    const slot = canvas.slotAt(...point);
    if (slot) {
      const item = slot.isOutput ? slot.node.outputs[slot.slot] : slot.node.inputs[slot.slot];
      const spec = slot.isOutput ? null : slot.node.def?.sockets.find((s) => s.name === item.name);
      text = [`${item.name} (${item.type})`, spec?.tooltip].filter(Boolean).join("\n");
    } else {
      const node = canvas.nodeAt(...point);
      if (node) {
        const { part, widget } = canvas.partAt(node, ...point);
        if (part === "widget") text = widget.tooltip || "";
        else if (part === "title") text = node.def?.description || "";
      }
    }
    if (canvas.element.title !== text) canvas.element.title = text;
  }

  #startLink(node, slot, fromOutput, point, detached) {
    const type = fromOutput ? node.outputs[slot].type : node.inputs[slot].type;
    this.canvas.dragLink = { node, slot, fromOutput, type, pos: point, detached };
    this.drag = { kind: "link" };
    this.canvas.setDirty();
  }

  #move(event) {
    const screen = this.canvas.eventPoint(event);
    this.lastPointer = screen;
    const drag = this.drag;
    if (!drag) {
      const point = this.canvas.viewport.toGraph(...screen);
      this.#showTooltip(point);
      this.#hoverCompare(point);
      return;
    }
    const canvas = this.canvas;
    const point = canvas.viewport.toGraph(...screen);
    switch (drag.kind) {
      case "pan": {
        canvas.viewport.panBy(screen[0] - drag.last[0], screen[1] - drag.last[1]);
        drag.last = screen;
        if (drag.start && Math.hypot(screen[0] - drag.start[0], screen[1] - drag.start[1]) > CLICK_SLOP) drag.moved = true;
        canvas.setDirty();
        break;
      }
      case "move": {
        const dx = point[0] - drag.start[0];
        const dy = point[1] - drag.start[1];
        if (!drag.moved && Math.hypot(dx, dy) * canvas.viewport.scale < CLICK_SLOP) return;
        drag.moved = true;
        drag.delta = [dx, dy];
        drag.nodes.forEach((node, i) => { node.pos = [drag.origins[i][0] + dx, drag.origins[i][1] + dy]; });
        canvas.setDirty();
        break;
      }
      case "group-move": {
        const dx = point[0] - drag.start[0];
        const dy = point[1] - drag.start[1];
        drag.moved = true;
        drag.delta = [dx, dy];
        drag.group.bounding[0] = drag.origin[0] + dx;
        drag.group.bounding[1] = drag.origin[1] + dy;
        drag.nodes.forEach((node, i) => { node.pos = [drag.origins[i][0] + dx, drag.origins[i][1] + dy]; });
        canvas.setDirty();
        break;
      }
      case "group-resize":
        drag.moved = true;
        drag.group.bounding[2] = Math.max(80, drag.size[0] + point[0] - drag.start[0]);
        drag.group.bounding[3] = Math.max(60, drag.size[1] + point[1] - drag.start[1]);
        canvas.setDirty();
        break;
      case "resize": {
        const [minW, minH] = minimumSize(drag.node);
        drag.node.size = [Math.max(minW, drag.size[0] + point[0] - drag.start[0]),
          Math.max(minH, drag.size[1] + point[1] - drag.start[1])];
        drag.moved = true;
        canvas.setDirty();
        break;
      }
      case "link": {
        const drag = canvas.dragLink;
        drag.pos = point;
        const slot = canvas.slotAt(...point);
        drag.hover = slot && slot.isOutput !== drag.fromOutput && slot.node !== drag.node ? slot : null;
        canvas.setDirty();
        break;
      }
      case "band":
        canvas.rubberBand.to = point;
        canvas.setDirty();
        break;
      case "widget":
        drag.handler.move?.({ x: point[0], y: point[1], event });
        break;
    }
  }

  /** Over an ImageCompare node's images the slider follows the pointer (as in ComfyUI). */
  #hoverCompare([x, y]) {
    const node = this.canvas.nodeAt(x, y);
    const compare = node?.runtime.compare;
    if (!compare || node.flags.collapsed) return;
    const [ax, ay, aw, ah] = imageArea(node);
    if (x < ax || x > ax + aw || y < ay || y > ay + ah) return;
    const base = compare.b?.naturalWidth ? compare.b : compare.a;
    let [left, width] = [ax, aw];
    if (base?.naturalWidth) {
      width = base.naturalWidth * Math.min(aw / base.naturalWidth, ah / base.naturalHeight);
      left = ax + (aw - width) / 2;
    }
    compare.position = Math.min(1, Math.max(0, (x - left) / width));
    this.canvas.setDirty();
  }

  #up(event) {
    const drag = this.drag;
    this.drag = null;
    if (!drag) return;
    const canvas = this.canvas;
    const graph = canvas.graph;
    const screen = this.canvas.eventPoint(event);
    const point = canvas.viewport.toGraph(...screen);
    switch (drag.kind) {
      case "pan":
        if (!drag.moved) canvas.clearSelection();
        else this.editor.viewChanged();
        break;
      case "move":
        if (drag.moved && drag.nodes.length === 1) this.editor.dropNodeOnLink(drag.nodes[0]);
        if (drag.moved) graph.moveNodes(drag.nodes, drag.delta, drag.origins);
        else if (drag.plainClick && canvas.selected.size > 1) canvas.select(drag.node); // click one of many: just it
        break;
      case "resize":
        if (drag.moved) graph.resizeNode(drag.node, drag.node.size);
        break;
      case "group-resize":
        if (drag.moved) graph.updateGroup(drag.group, "bounding", () => {});
        break;
      case "group-move":
        if (drag.moved) {
          graph.edit({ type: "move", ids: drag.nodes.map((n) => n.id), delta: drag.delta, group: drag.group },
            () => graph.moveNodes(drag.nodes, drag.delta, drag.origins));
        }
        break;
      case "link":
        this.#dropLink(point, screen);
        break;
      case "link-center":
        this.editor.linkMenu(drag.link, event);
        break;
      case "band": {
        const band = canvas.rubberBand;
        canvas.rubberBand = null;
        const x0 = Math.min(band.from[0], band.to[0]), x1 = Math.max(band.from[0], band.to[0]);
        const y0 = Math.min(band.from[1], band.to[1]), y1 = Math.max(band.from[1], band.to[1]);
        if (!drag.additive) canvas.selected.clear();
        for (const node of graph.nodes) {
          const [x, y, w, h] = nodeBounds(node);
          if (x < x1 && x + w > x0 && y < y1 && y + h > y0) canvas.selected.add(node);
        }
        canvas.setDirty();
        break;
      }
      case "widget":
        drag.handler.up?.({ x: point[0], y: point[1], event });
        break;
    }
    this.editor.gestureEnded();
  }

  #dropLink(point, screen) {
    const canvas = this.canvas;
    const graph = canvas.graph;
    const drag = canvas.dragLink;
    canvas.dragLink = null;
    canvas.setDirty();
    const slot = canvas.slotAt(...point);
    let target = null;
    if (slot && slot.isOutput !== drag.fromOutput && slot.node !== drag.node) {
      target = slot;
    } else {
      const node = canvas.nodeAt(...point);
      if (node && node !== drag.node) {
        const index = firstCompatibleSlot(node, drag.type, drag.fromOutput);
        if (index >= 0) target = { node, slot: index };
        else {
          this.editor.notify(`${node.title} has no ${drag.fromOutput ? "input" : "output"} that takes ${drag.type}`, "warn");
          return;
        }
      }
    }
    if (target) {
      const link = drag.fromOutput
        ? graph.connect(drag.node, drag.slot, target.node, target.slot)
        : graph.connect(target.node, target.slot, drag.node, drag.slot);
      if (!link) {
        const input = drag.fromOutput ? target.node.inputs[target.slot] : drag.node.inputs[drag.slot];
        const output = drag.fromOutput ? drag.node.outputs[drag.slot] : target.node.outputs[target.slot];
        this.editor.notify(`cannot connect ${output?.type} to ${input?.name} (${input?.type})`, "warn");
      }
      return;
    }
    if (drag.detached) return; // a link dragged off an input and dropped on nothing stays removed
    this.editor.searchForLink(drag, point, screen);
  }

  #doubleClick(event) {
    const point = this.#graphPoint(event);
    const node = this.canvas.nodeAt(...point);
    const handle = !node && groupHandleAt(this.canvas.graph.groups, ...point);
    if (handle?.part === "title") { this.editor.editGroupTitle(handle.group); return; }
    if (!node) {
      this.editor.openSearch(point, this.canvas.eventPoint(event));
      return;
    }
    if (this.canvas.partAt(node, ...point).part === "title") this.editor.editTitle(node);
    else if (node.container === "subgraph") this.editor.openSubgraph(node);
  }

  #contextMenu(event) {
    event.preventDefault();
    const screen = this.canvas.eventPoint(event);
    const point = this.canvas.viewport.toGraph(...screen);
    const slot = this.canvas.slotAt(...point);
    if (slot) return this.editor.slotMenu(slot, event);
    const node = this.canvas.nodeAt(...point);
    if (node) {
      if (!this.canvas.selected.has(node)) this.canvas.select(node);
      return this.editor.nodeMenu(node, event);
    }
    const handle = groupHandleAt(this.canvas.graph.groups, ...point);
    if (handle) return this.editor.groupMenu(handle.group, event);
    this.editor.canvasMenu(point, event);
  }

  #wheel(event) {
    event.preventDefault();
    this.editor.commitEditing(); // a text field over the canvas would no longer sit on its widget
    const [sx, sy] = this.canvas.eventPoint(event);
    const speed = (event.ctrlKey ? 0.01 : 0.0015) * (this.editor.zoomSpeed || 1); // ctrl+wheel: a trackpad pinch
    const delta = event.deltaMode === 1 ? event.deltaY * 16 : event.deltaY;
    this.canvas.viewport.zoomAt(Math.exp(-delta * speed), sx, sy);
    this.canvas.setDirty();
    this.editor.viewChanged();
  }

  #keyDown(event) {
    if (isTyping(event.target)) return;
    if (event.code === "Space") { this.spaceDown = true; return; } // held: dragging pans
    dispatchKey(this.editor, event);
  }
}
