/**
 * Pointer, wheel and key handling on the canvas. A press starts a gesture (gestures/: pan, node drag,
 * link drag, box select, resize, group drag, widget input) that gets the moves and the release; without
 * one the pointer shows tooltips and moves ImageCompare sliders. Double-click, the context menu and the
 * wheel are handled here; keys go to the keymap (ui/keymap.js).
 *
 * `editor` (editor.js) supplies the actions that need more than the canvas: search, menus, widget
 * editors, node creation.
 */
import { groupHandleAt } from "../graph/groups.js";
import { imageArea } from "./layout.js";
import { startGesture } from "./gestures/index.js";
import { dispatchKey } from "../ui/keymap.js";

function isTyping(target) {
  return target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable);
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
    this.lastPointer = screen;
    if (event.button === 2) return;
    this.canvas.element.setPointerCapture(event.pointerId);
    this.drag = startGesture(this, event, { screen, point: this.canvas.viewport.toGraph(...screen) });
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

  #move(event) {
    const screen = this.canvas.eventPoint(event);
    this.lastPointer = screen;
    const point = this.canvas.viewport.toGraph(...screen);
    if (this.drag) { this.drag.move({ screen, point }, event); return; }
    this.#showTooltip(point);
    this.#hoverCompare(point);
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
    const screen = this.canvas.eventPoint(event);
    drag.up({ screen, point: this.canvas.viewport.toGraph(...screen) }, event);
    this.editor.gestureEnded();
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
