/**
 * The canvas element and what is shown on it: viewport, selection, hit-testing, and the redraw loop.
 *
 * Nothing is drawn while nothing changes: `setDirty()` schedules one `requestAnimationFrame`, and
 * every edit, pointer move that changes something, or loaded image calls it.
 */
import { Viewport } from "./viewport.js";
import { Renderer } from "./renderer.js";
import {
  RESIZE_HANDLE, TITLE_HEIGHT, inputSlotPos, nodeBounds, nodeLayout, outputSlotPos, visibleInputs,
} from "./layout.js";

const SLOT_HIT_RADIUS = 11;

export class GraphCanvas {
  constructor(element, graph) {
    this.element = element;
    this.ctx = element.getContext("2d");
    this.graph = graph;
    this.viewport = new Viewport();
    this.renderer = new Renderer(this);
    this.selected = new Set();
    this.dragLink = null;
    this.rubberBand = null;
    this.editingWidget = null;
    this.frames = 0;
    this.afterDraw = null; // e.g. the minimap, drawn after each frame
    this.width = 0;
    this.height = 0;
    this.scheduled = false;
    this.frameWaiters = [];
    graph.onChange(() => this.setDirty()); // every edit is redrawn
    this.resize();
    new ResizeObserver(() => this.resize()).observe(element);
  }

  resize() {
    const rect = this.element.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    this.width = Math.max(1, rect.width);
    this.height = Math.max(1, rect.height);
    this.element.width = Math.round(this.width * ratio);
    this.element.height = Math.round(this.height * ratio);
    this.setDirty();
  }

  /** Ask for one redraw on the next animation frame (many calls coalesce into one frame). */
  setDirty() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => this.#frame());
  }

  #frame() {
    this.scheduled = false;
    const ratio = window.devicePixelRatio || 1;
    this.ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    this.renderer.draw(this.ctx, this.width, this.height);
    this.afterDraw?.();
    this.frames++;
    const waiters = this.frameWaiters;
    this.frameWaiters = [];
    for (const resolve of waiters) resolve(this.frames);
  }

  /** Resolves after the next drawn frame (or the next animation frame when nothing is dirty). */
  nextFrame() {
    return new Promise((resolve) => {
      if (this.scheduled) this.frameWaiters.push(resolve);
      else requestAnimationFrame(() => requestAnimationFrame(() => resolve(this.frames)));
    });
  }

  /** Canvas-local CSS pixel position of a pointer event. */
  eventPoint(event) {
    const rect = this.element.getBoundingClientRect();
    return [event.clientX - rect.left, event.clientY - rect.top];
  }

  /** Page (client) coordinates of a graph point, for overlays and tests. */
  clientPoint(gx, gy) {
    const rect = this.element.getBoundingClientRect();
    const [sx, sy] = this.viewport.toScreen(gx, gy);
    return [rect.left + sx, rect.top + sy];
  }

  /** The topmost node under a graph point. */
  nodeAt(gx, gy) {
    const nodes = this.graph.nodes;
    for (let i = nodes.length - 1; i >= 0; i--) {
      const [x, y, w, h] = nodeBounds(nodes[i]);
      if (gx >= x - 4 && gx <= x + w + 4 && gy >= y && gy <= y + h) return nodes[i];
    }
    return null;
  }

  /** The slot under a graph point: `{ node, slot, isOutput }` or null. */
  slotAt(gx, gy) {
    const nodes = this.graph.nodes;
    const r2 = (SLOT_HIT_RADIUS / Math.min(1, this.viewport.scale)) ** 2;
    for (let i = nodes.length - 1; i >= 0; i--) {
      const node = nodes[i];
      const [x, y, w, h] = nodeBounds(node);
      if (gx < x - 15 || gx > x + w + 15 || gy < y - 5 || gy > y + h + 5) continue;
      if (node.flags.collapsed) continue;
      for (const { index } of visibleInputs(node)) {
        const [sx, sy] = inputSlotPos(node, index);
        if ((gx - sx) ** 2 + (gy - sy) ** 2 <= r2 || (gx >= x && gx < x + 60 && Math.abs(gy - sy) < 9 && gx - sx < 50)) {
          return { node, slot: index, isOutput: false };
        }
      }
      for (let index = 0; index < node.outputs.length; index++) {
        const [sx, sy] = outputSlotPos(node, index);
        if ((gx - sx) ** 2 + (gy - sy) ** 2 <= r2 || (gx <= x + w && gx > x + w - 60 && Math.abs(gy - sy) < 9 && sx - gx < 50)) {
          return { node, slot: index, isOutput: true };
        }
      }
    }
    return null;
  }

  /** The link whose centre marker is under a graph point, or null. */
  linkCenterAt(gx, gy, radius = 9) {
    const r2 = (radius / Math.min(1, this.viewport.scale)) ** 2;
    for (const link of this.graph.links.values()) {
      const center = this.linkCenter(link);
      if (center && (gx - center[0]) ** 2 + (gy - center[1]) ** 2 <= r2) return link;
    }
    return null;
  }

  /** Midpoint of a link's spline (its control points are symmetric, so it is the chord's midpoint). */
  linkCenter(link) {
    const origin = this.graph.getNode(link.origin_id);
    const target = this.graph.getNode(link.target_id);
    if (!origin || !target) return null;
    const a = outputSlotPos(origin, link.origin_slot);
    const b = inputSlotPos(target, link.target_slot);
    return [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2];
  }

  /** Which part of `node` a graph point is on: "collapse", "title", "resize", a widget, or "body". */
  partAt(node, gx, gy) {
    const [x, y] = node.pos;
    if (gy < y) {
      if ((gx - (x + 15)) ** 2 + (gy - (y - TITLE_HEIGHT / 2)) ** 2 <= 81) return { part: "collapse" };
      return { part: "title" };
    }
    if (node.flags.collapsed) return { part: "title" };
    if (gx > x + node.size[0] - RESIZE_HANDLE && gy > y + node.size[1] - RESIZE_HANDLE) return { part: "resize" };
    for (const placed of nodeLayout(node).widgets) {
      const top = y + placed.y;
      if (gy >= top && gy <= top + placed.height && gx >= x + 10 && gx <= x + node.size[0] - 10) {
        return { part: "widget", widget: placed.widget };
      }
    }
    return { part: "body" };
  }

  select(node, additive = false) {
    if (!additive) this.selected.clear();
    if (node) this.selected.add(node);
    this.setDirty();
  }

  deselect(node) {
    this.selected.delete(node);
    this.setDirty();
  }

  clearSelection() {
    this.selected.clear();
    this.setDirty();
  }

  /** Graph rectangle around all nodes (or the given ones). */
  boundsOf(nodes = this.graph.nodes) {
    if (!nodes.length) return null;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const node of nodes) {
      const [x, y, w, h] = nodeBounds(node);
      x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
    }
    return [x0, y0, x1 - x0, y1 - y0];
  }

  /** Fit the selection, or every node when nothing is selected, into the view. */
  fitView() {
    const nodes = this.selected.size ? [...this.selected] : this.graph.nodes;
    const bounds = this.boundsOf(nodes);
    if (bounds) this.viewport.fit(bounds, this.width, this.height);
    this.setDirty();
  }
}
