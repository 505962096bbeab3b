/**
 * The minimap: every node as a small rectangle, the visible part of the graph as a frame; clicking or
 * dragging on it moves the view there. Redrawn after each main frame, from node positions only.
 */
import { nodeBounds } from "./layout.js";

const WIDTH = 220;
const HEIGHT = 150;
const MARGIN = 8;

export class Minimap {
  constructor(canvas, container) {
    this.canvas = canvas;
    this.element = document.createElement("canvas");
    this.element.className = "minimap";
    this.element.width = WIDTH * (window.devicePixelRatio || 1);
    this.element.height = HEIGHT * (window.devicePixelRatio || 1);
    container.appendChild(this.element);
    this.transform = null;
    const moveView = (event) => {
      if (!this.transform) return;
      const rect = this.element.getBoundingClientRect();
      const { scale, x0, y0 } = this.transform;
      const gx = (event.clientX - rect.left - MARGIN) / scale + x0;
      const gy = (event.clientY - rect.top - MARGIN) / scale + y0;
      const view = canvas.viewport;
      view.offset = [canvas.width / view.scale / 2 - gx, canvas.height / view.scale / 2 - gy];
      canvas.setDirty();
    };
    this.element.addEventListener("pointerdown", (event) => {
      this.element.setPointerCapture(event.pointerId);
      this.dragging = true;
      moveView(event);
    });
    this.element.addEventListener("pointermove", (event) => { if (this.dragging) moveView(event); });
    this.element.addEventListener("pointerup", () => { this.dragging = false; this.onViewChanged?.(); });
  }

  get visible() {
    return !this.element.hidden;
  }

  setVisible(visible) {
    this.element.hidden = !visible;
    if (visible) this.canvas.setDirty();
  }

  draw() {
    if (this.element.hidden) return;
    const ctx = this.element.getContext("2d");
    const ratio = window.devicePixelRatio || 1;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, WIDTH, HEIGHT);
    ctx.fillStyle = "rgba(20,20,20,0.85)";
    ctx.fillRect(0, 0, WIDTH, HEIGHT);
    const { graph, viewport } = this.canvas;
    const view = viewport.visibleRect(this.canvas.width, this.canvas.height);
    const bounds = this.canvas.boundsOf() || view;
    const x0 = Math.min(bounds[0], view[0]);
    const y0 = Math.min(bounds[1], view[1]);
    const x1 = Math.max(bounds[0] + bounds[2], view[0] + view[2]);
    const y1 = Math.max(bounds[1] + bounds[3], view[1] + view[3]);
    const scale = Math.min((WIDTH - 2 * MARGIN) / (x1 - x0 || 1), (HEIGHT - 2 * MARGIN) / (y1 - y0 || 1));
    this.transform = { scale, x0, y0 };
    const sx = (x) => MARGIN + (x - x0) * scale;
    const sy = (y) => MARGIN + (y - y0) * scale;
    ctx.fillStyle = "#3f789e";
    ctx.globalAlpha = 0.25;
    for (const group of graph.groups) {
      const b = group.bounding;
      if (Array.isArray(b)) ctx.fillRect(sx(b[0]), sy(b[1]), b[2] * scale, b[3] * scale);
    }
    ctx.globalAlpha = 1;
    ctx.fillStyle = "#888";
    for (const node of graph.nodes) {
      const [x, y, w, h] = nodeBounds(node);
      ctx.fillRect(sx(x), sy(y), Math.max(1, w * scale), Math.max(1, h * scale));
    }
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 1;
    ctx.strokeRect(sx(view[0]), sy(view[1]), view[2] * scale, view[3] * scale);
  }
}
