/**
 * Draws the graph onto the canvas: grid, links (splines, batched by colour), nodes with their slots,
 * widgets, progress and images, then what is being dragged. Only what intersects the view is drawn,
 * and below `LOW_DETAIL_SCALE` nodes become plain boxes with straight links and no text.
 */
import {
  TITLE_HEIGHT, SLOT_FONT, TITLE_FONT, WIDGET_FONT, collapsedWidth, fitText, imageArea, inputSlotPos, nodeBounds,
  nodeLayout, outputSlotPos, visibleInputs, widgetRect,
} from "./layout.js";
import { isValidConnection, typeColor } from "../graph/types.js";
import { widgetImpl } from "../widgets/index.js";
import { BitmapCache } from "./bitmaps.js";
import { drawMaskButton } from "./mask-button.js";

export const LOW_DETAIL_SCALE = 0.55;

const BACKGROUND = "#1e1e1e";
const GRID = "#232323";
const GRID_MAJOR = "#292929";
const NODE_TITLE_BG = "#333";
const NODE_BODY_BG = "#353535";
const NODE_TITLE_TEXT = "#999";
const SLOT_LABEL = "#AAA";
const ERROR = "#FF4444";
const RUNNING = "#39D353";
const CACHED = "#5B8DD6";

function intersects(a, b) {
  return a[0] <= b[0] + b[2] && a[0] + a[2] >= b[0] && a[1] <= b[1] + b[3] && a[1] + a[3] >= b[1];
}

export class Renderer {
  constructor(view) {
    this.view = view; // the GraphCanvas: graph, viewport, selection, drag state
    this.visibleNodes = [];
    this.bitmaps = new BitmapCache(() => this.view.setDirty());
    this.stats = { nodes: 0, links: 0, ms: 0 };
  }

  draw(ctx, width, height) {
    const started = performance.now();
    const { viewport } = this.view;
    const lowDetail = viewport.scale < LOW_DETAIL_SCALE;
    ctx.save();
    ctx.fillStyle = BACKGROUND;
    ctx.fillRect(0, 0, width, height);
    ctx.scale(viewport.scale, viewport.scale);
    ctx.translate(viewport.offset[0], viewport.offset[1]);
    const visible = viewport.visibleRect(width, height);
    this.#drawGrid(ctx, visible);
    this.#drawGroups(ctx, visible, lowDetail);
    this.visibleNodes = this.view.graph.nodes.filter((node) => intersects(nodeBounds(node), visible));
    this.#drawLinks(ctx, visible, lowDetail);
    for (const node of this.visibleNodes) this.#drawNode(ctx, node, lowDetail);
    if (!lowDetail) {
      for (const node of this.visibleNodes) {
        if (node.runtime.error?.message) this.#drawErrorBubble(ctx, node, ...nodeBounds(node));
      }
    }
    this.#drawDragLink(ctx);
    this.#drawRubberBand(ctx);
    ctx.restore();
    this.stats = { nodes: this.visibleNodes.length, links: this.stats.links, lowDetail, ms: performance.now() - started,
      bitmapsMade: this.bitmaps.made, bitmapHits: this.bitmaps.hits };
  }

  #drawGrid(ctx, [x, y, w, h]) {
    const scale = this.view.viewport.scale;
    const step = scale < 0.3 ? 100 : 20;
    if (scale < 0.15) return;
    ctx.lineWidth = 1 / scale;
    ctx.beginPath();
    const x0 = Math.floor(x / step) * step;
    const y0 = Math.floor(y / step) * step;
    for (let gx = x0; gx < x + w; gx += step) {
      if (gx % 100 === 0 && step === 20) continue;
      ctx.moveTo(gx, y);
      ctx.lineTo(gx, y + h);
    }
    for (let gy = y0; gy < y + h; gy += step) {
      if (gy % 100 === 0 && step === 20) continue;
      ctx.moveTo(x, gy);
      ctx.lineTo(x + w, gy);
    }
    ctx.strokeStyle = GRID;
    ctx.stroke();
    if (step !== 20) return;
    ctx.beginPath();
    for (let gx = Math.floor(x / 100) * 100; gx < x + w; gx += 100) { ctx.moveTo(gx, y); ctx.lineTo(gx, y + h); }
    for (let gy = Math.floor(y / 100) * 100; gy < y + h; gy += 100) { ctx.moveTo(x, gy); ctx.lineTo(x + w, gy); }
    ctx.strokeStyle = GRID_MAJOR;
    ctx.stroke();
  }

  /** Groups: a tinted rectangle with its title and a resize corner (editing in graph/groups.js). */
  #drawGroups(ctx, visible, lowDetail) {
    for (const group of this.view.graph.groups) {
      const bounding = group.bounding;
      if (!Array.isArray(bounding) || bounding.length < 4 || !intersects(bounding, visible)) continue;
      const [x, y, w, h] = bounding;
      const color = group.color || "#3f789e";
      const fontSize = group.font_size || 24;
      ctx.globalAlpha = 0.25;
      ctx.fillStyle = color;
      ctx.beginPath();
      if (lowDetail) ctx.rect(x, y, w, h);
      else ctx.roundRect(x, y, w, h, 6);
      ctx.fill();
      ctx.globalAlpha = 1;
      ctx.strokeStyle = color;
      ctx.lineWidth = 1;
      ctx.stroke();
      if (lowDetail) continue;
      ctx.font = `${fontSize}px Arial, sans-serif`;
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
      ctx.fillStyle = color;
      ctx.fillText(fitText(group.title || "", ctx.font, w - 16), x + 8, y + 6);
      ctx.beginPath(); // the resize corner
      ctx.moveTo(x + w - 2, y + h - 12);
      ctx.lineTo(x + w - 2, y + h - 2);
      ctx.lineTo(x + w - 12, y + h - 2);
      ctx.fill();
    }
  }

  #drawLinks(ctx, visible, lowDetail) {
    const { graph } = this.view;
    const byColor = new Map();
    let drawn = 0;
    for (const link of graph.links.values()) {
      const origin = graph.getNode(link.origin_id);
      const target = graph.getNode(link.target_id);
      if (!origin || !target) continue;
      const a = outputSlotPos(origin, link.origin_slot);
      const b = inputSlotPos(target, link.target_slot);
      const bend = Math.max(30, Math.abs(b[0] - a[0]) * 0.5);
      const box = [Math.min(a[0], b[0]) - 4, Math.min(a[1], b[1]) - 4, Math.abs(b[0] - a[0]) + bend + 8,
        Math.abs(b[1] - a[1]) + 8];
      box[0] -= bend / 2;
      if (!intersects(box, visible)) continue;
      const color = typeColor(link.type);
      let path = byColor.get(color);
      if (!path) byColor.set(color, (path = new Path2D()));
      path.moveTo(a[0], a[1]);
      if (lowDetail) path.lineTo(b[0], b[1]);
      else {
        path.bezierCurveTo(a[0] + bend, a[1], b[0] - bend, b[1], b[0], b[1]);
        const cx = (a[0] + b[0]) / 2, cy = (a[1] + b[1]) / 2; // the centre marker: click for the link menu
        path.moveTo(cx + 4, cy);
        path.arc(cx, cy, 4, 0, Math.PI * 2);
        path.moveTo(b[0], b[1]);
      }
      drawn++;
    }
    ctx.lineWidth = lowDetail ? 2 / Math.max(this.view.viewport.scale, 0.2) : 3;
    for (const [color, path] of byColor) {
      if (!lowDetail) {
        ctx.strokeStyle = "rgba(0,0,0,0.5)";
        ctx.lineWidth = 5;
        ctx.stroke(path);
        ctx.lineWidth = 3;
      }
      ctx.strokeStyle = color;
      ctx.stroke(path);
    }
    this.stats.links = drawn;
  }

  #drawNode(ctx, node, lowDetail) {
    const view = this.view;
    const selected = view.selected.has(node);
    const runtime = node.runtime;
    const [x, y, w, h] = nodeBounds(node);
    const collapsed = Boolean(node.flags.collapsed);
    const unknown = node.missing && !node.container;
    const titleColor = unknown ? "#622" : node.color || NODE_TITLE_BG;
    const bodyColor = unknown ? "#3a2222" : node.bgcolor || NODE_BODY_BG;
    ctx.save();
    if (node.mode === 2) ctx.globalAlpha = 0.45;
    if (lowDetail) {
      ctx.fillStyle = bodyColor;
      ctx.fillRect(x, y, w, h);
      ctx.fillStyle = titleColor;
      ctx.fillRect(x, y, w, TITLE_HEIGHT);
      if (node.mode === 4) { ctx.fillStyle = "rgba(160,60,200,0.4)"; ctx.fillRect(x, y, w, h); }
      const outline = this.#outlineColor(node, selected);
      if (outline) {
        ctx.strokeStyle = outline;
        ctx.lineWidth = 2 / this.view.viewport.scale;
        ctx.strokeRect(x, y, w, h);
      }
      ctx.restore();
      return;
    }
    // a cheap shadow (one offset fill; blurred canvas shadows are what make big graphs slow)
    ctx.beginPath();
    ctx.roundRect(x + 2, y + 3, w, h, 8);
    ctx.fillStyle = "rgba(0,0,0,0.35)";
    ctx.fill();
    // body and title bar
    ctx.beginPath();
    ctx.roundRect(x, y, w, h, 8);
    ctx.fillStyle = collapsed ? titleColor : bodyColor;
    ctx.fill();
    if (!collapsed) {
      ctx.beginPath();
      ctx.roundRect(x, y, w, TITLE_HEIGHT, [8, 8, 0, 0]);
      ctx.fillStyle = titleColor;
      ctx.fill();
    }
    if (node.mode === 4) {
      ctx.beginPath();
      ctx.roundRect(x, y, w, h, 8);
      ctx.fillStyle = "rgba(160,60,200,0.35)";
      ctx.fill();
    }
    // collapse dot, title, badges
    ctx.beginPath();
    ctx.arc(x + 15, y + TITLE_HEIGHT / 2, 5, 0, Math.PI * 2);
    ctx.fillStyle = runtime.running ? RUNNING : runtime.error ? ERROR : "#666";
    ctx.fill();
    ctx.font = TITLE_FONT;
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillStyle = selected ? "#FFF" : NODE_TITLE_TEXT;
    let badge = runtime.cached ? "cached" : "";
    if (node.missing) badge = node.container || "missing";
    const titleRoom = w - 40 - (badge ? 60 : 0);
    ctx.fillText(fitText(node.title, TITLE_FONT, titleRoom), x + 28, y + TITLE_HEIGHT / 2 + 1);
    if (badge && !collapsed) {
      ctx.font = "11px Arial, sans-serif";
      ctx.textAlign = "right";
      ctx.fillStyle = unknown ? ERROR : node.missing ? "#B39DDB" : CACHED;
      ctx.fillText(badge, x + w - 10, y + TITLE_HEIGHT / 2 + 1);
    }
    // progress bar along the bottom of the title
    if (runtime.progress && runtime.running && !collapsed) {
      const fraction = runtime.progress.max ? runtime.progress.value / runtime.progress.max : 0;
      ctx.fillStyle = RUNNING;
      ctx.fillRect(x + 1, y + TITLE_HEIGHT - 4, (w - 2) * Math.min(1, fraction), 4);
    }
    if (!collapsed) {
      this.#drawSlots(ctx, node);
      if (node.raw) this.#drawSavedValues(ctx, node);
      this.#drawWidgets(ctx, node);
      this.#drawImages(ctx, node);
      drawMaskButton(ctx, node, false);
      this.#drawResizeHandle(ctx, node);
    } else {
      this.#drawCollapsedSlots(ctx, node);
    }
    const outline = this.#outlineColor(node, selected);
    if (outline) {
      ctx.beginPath();
      ctx.roundRect(x - 3, y - 3, w + 6, h + 6, 10);
      ctx.strokeStyle = outline;
      ctx.lineWidth = runtime.running || runtime.error ? 3 : 2;
      ctx.stroke();
    }
    ctx.restore();
  }

  #outlineColor(node, selected) {
    const runtime = node.runtime;
    if (runtime.error) return ERROR;
    if (runtime.running) return RUNNING;
    if (selected) return "#FFF";
    if (runtime.cached) return CACHED;
    return null;
  }

  #slotState(node, type, isInput) {
    const drag = this.view.dragLink;
    if (!drag || drag.node === node) return "normal";
    const fromOutput = drag.fromOutput;
    if (isInput !== fromOutput) return "dim";
    const ok = fromOutput ? isValidConnection(drag.type, type) : isValidConnection(type, drag.type);
    return ok ? "target" : "dim";
  }

  #drawSlot(ctx, [cx, cy], type, connected, state, error) {
    const color = typeColor(type);
    ctx.beginPath();
    ctx.arc(cx, cy, state === "target" ? 6 : 4.5, 0, Math.PI * 2);
    ctx.globalAlpha *= state === "dim" ? 0.35 : 1;
    ctx.fillStyle = connected || state === "target" ? color : "#1b1b1b";
    ctx.fill();
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = error ? ERROR : color;
    ctx.stroke();
    if (state === "dim") ctx.globalAlpha /= 0.35;
  }

  #drawSlots(ctx, node) {
    const errorInputs = node.runtime.errorInputs || new Set();
    ctx.font = SLOT_FONT;
    ctx.textBaseline = "middle";
    for (const { input, index } of visibleInputs(node)) {
      const pos = inputSlotPos(node, index);
      const error = errorInputs.has(input.name);
      this.#drawSlot(ctx, pos, input.type, input.link != null, this.#slotState(node, input.type, true), error);
      ctx.textAlign = "left";
      ctx.fillStyle = error ? ERROR : SLOT_LABEL;
      ctx.fillText(fitText(input.label || input.name, SLOT_FONT, node.size[0] / 2 - 20), pos[0] + 12, pos[1] + 1);
    }
    node.outputs.forEach((output, index) => {
      const pos = outputSlotPos(node, index);
      this.#drawSlot(ctx, pos, output.type, Boolean(output.links?.length), this.#slotState(node, output.type, false));
      ctx.textAlign = "right";
      ctx.fillStyle = SLOT_LABEL;
      ctx.fillText(fitText(output.label || output.name, SLOT_FONT, node.size[0] / 2 - 20), pos[0] - 12, pos[1] + 1);
    });
  }

  /** A node the server does not define (a note, a primitive, a missing type): its saved values as text. */
  #drawSavedValues(ctx, node) {
    const values = node.raw.widgets_values;
    const list = Array.isArray(values) ? values : values && typeof values === "object" ? Object.values(values) : [];
    const texts = list.filter((v) => v !== null && typeof v !== "object").map(String);
    if (!texts.length) return;
    const rows = Math.max(visibleInputs(node).length, node.outputs.length);
    const top = node.pos[1] + rows * 20 + 10;
    const room = node.pos[1] + node.size[1] - top - 4;
    ctx.save();
    ctx.beginPath();
    ctx.rect(node.pos[0] + 6, top - 2, node.size[0] - 12, Math.max(0, room));
    ctx.clip();
    ctx.font = WIDGET_FONT;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillStyle = node.container === "note" ? "#DDD" : "#AAA";
    let y = top;
    for (const line of texts.join("\n").split("\n")) {
      if (y > top + room) break;
      ctx.fillText(fitText(line, WIDGET_FONT, node.size[0] - 20), node.pos[0] + 10, y);
      y += 15;
    }
    ctx.restore();
  }

  #drawCollapsedSlots(ctx, node) {
    const linkedIn = node.inputs.some((i) => i.link != null);
    const linkedOut = node.outputs.some((o) => o.links?.length);
    ctx.fillStyle = "#999";
    if (linkedIn) { ctx.beginPath(); ctx.arc(node.pos[0], node.pos[1] - TITLE_HEIGHT / 2, 4, 0, 7); ctx.fill(); }
    if (linkedOut) {
      ctx.beginPath();
      ctx.arc(node.pos[0] + collapsedWidth(node), node.pos[1] - TITLE_HEIGHT / 2, 4, 0, 7);
      ctx.fill();
    }
  }

  #drawWidgets(ctx, node) {
    const errorInputs = node.runtime.errorInputs || new Set();
    const editing = this.view.editingWidget;
    const layout = nodeLayout(node);
    for (const { widget } of layout.widgets) {
      const rect = widgetRect(node, widget);
      const look = { lowDetail: false, disabled: node.mode === 2, editing: editing === widget };
      widgetImpl(widget).draw(ctx, widget, rect, look);
      if (errorInputs.has(widget.name)) {
        ctx.beginPath();
        ctx.roundRect(rect[0] - 1, rect[1] - 1, rect[2] + 2, rect[3] + 2, widget.kind === "multiline" ? 6 : rect[3] / 2);
        ctx.strokeStyle = ERROR;
        ctx.lineWidth = 2;
        ctx.stroke();
      }
    }
    ctx.font = WIDGET_FONT;
  }

  #drawImages(ctx, node) {
    const runtime = node.runtime;
    if (runtime.compare || node.widgets.some((w) => w.kind === "imagecompare")) {
      this.#drawCompare(ctx, node);
      return;
    }
    if (runtime.text != null && !runtime.images?.length) {
      this.#drawText(ctx, node);
      return;
    }
    let images = runtime.running && runtime.preview ? [runtime.preview]
      : runtime.images?.length ? runtime.images : runtime.inputImage ? [runtime.inputImage] : [];
    if (runtime.animations?.length && !runtime.running) images = runtime.animations.map((a) => this.#currentFrame(a));
    const ready = images.filter((img) => img && (img.complete === undefined || img.complete) && img.width);
    if (!ready.length) return;
    const layout = nodeLayout(node);
    const caption = ready.length === 1 && !runtime.running;
    const area = [node.pos[0] + 8, node.pos[1] + layout.imageTop, node.size[0] - 16, layout.imageHeight - (caption ? 14 : 0)];
    if (area[3] < 10) return;
    const columns = Math.ceil(Math.sqrt(ready.length));
    const rows = Math.ceil(ready.length / columns);
    const cellW = area[2] / columns;
    const cellH = area[3] / rows;
    ready.forEach((img, i) => {
      const scale = Math.min(cellW / img.width, cellH / img.height);
      const w = img.width * scale;
      const h = img.height * scale;
      const cx = area[0] + (i % columns) * cellW + (cellW - w) / 2;
      const cy = area[1] + Math.floor(i / columns) * cellH + (cellH - h) / 2;
      const pixels = w * this.view.viewport.scale * (window.devicePixelRatio || 1);
      ctx.drawImage(this.bitmaps.source(img, pixels), cx, cy, w, h);
    });
    if (caption) {
      ctx.font = "11px Arial, sans-serif";
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillStyle = "#888";
      ctx.fillText(`${ready[0].width} × ${ready[0].height}`, area[0] + area[2] / 2, area[1] + area[3] + 8);
    }
  }

  /** The frame of an animation to show now; a redraw is asked for when the next one is due. */
  #currentFrame(animation) {
    const now = performance.now();
    let t = (now - animation.start) % animation.total;
    let frame = animation.frames[0];
    for (const f of animation.frames) {
      frame = f;
      if (t < f.duration) break;
      t -= f.duration;
    }
    if (animation.frames.length > 1 && !this.animationTimer) {
      this.animationTimer = setTimeout(() => { this.animationTimer = null; this.view.setDirty(); },
        Math.max(16, frame.duration - t));
    }
    return frame.bitmap;
  }

  /** ImageCompare: the after image (b) whole, the before image (a) left of the slider, and the slider line. */
  #drawCompare(ctx, node) {
    const compare = node.runtime.compare;
    const [x, y, w, h] = imageArea(node);
    if (h < 10) return;
    const ready = (img) => img && img.complete && img.naturalWidth > 0;
    const a = ready(compare?.a) ? compare.a : null;
    const b = ready(compare?.b) ? compare.b : null;
    if (!a && !b) {
      ctx.font = "12px Arial, sans-serif";
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillStyle = "#777";
      ctx.fillText(compare ? "Loading…" : "Run the workflow to compare image_a and image_b", x + w / 2, y + h / 2, w - 10);
      return;
    }
    const base = b || a;
    const scale = Math.min(w / base.naturalWidth, h / base.naturalHeight);
    const iw = base.naturalWidth * scale;
    const ih = base.naturalHeight * scale;
    const ix = x + (w - iw) / 2;
    const iy = y + (h - ih) / 2;
    const pixels = iw * this.view.viewport.scale * (window.devicePixelRatio || 1);
    if (b) ctx.drawImage(this.bitmaps.source(b, pixels), ix, iy, iw, ih);
    const split = ix + iw * Math.min(1, Math.max(0, compare.position ?? 0.5));
    if (a) {
      ctx.save();
      ctx.beginPath();
      ctx.rect(ix, iy, b ? split - ix : iw, ih);
      ctx.clip();
      ctx.drawImage(this.bitmaps.source(a, pixels), ix, iy, iw, ih);
      ctx.restore();
    }
    if (a && b) {
      ctx.fillStyle = "#FFF";
      ctx.fillRect(split - 1, iy, 2, ih);
    }
  }

  /** A text preview (PreviewAny): the lines that fit in the image area. */
  #drawText(ctx, node) {
    const [x, y, w, h] = imageArea(node);
    if (h < 10) return;
    ctx.save();
    ctx.fillStyle = "#222";
    ctx.beginPath();
    ctx.roundRect(x, y, w, h, 4);
    ctx.fill();
    ctx.clip();
    ctx.font = WIDGET_FONT;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillStyle = "#DDD";
    let line = y + 5;
    for (const text of String(node.runtime.text).split("\n")) {
      if (line > y + h) break;
      ctx.fillText(fitText(text, WIDGET_FONT, w - 10), x + 5, line);
      line += 15;
    }
    ctx.restore();
  }

  #drawResizeHandle(ctx, node) {
    const [x, y] = node.pos;
    const [w, h] = node.size;
    ctx.strokeStyle = "#555";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(x + w - 4, y + h - 11);
    ctx.lineTo(x + w - 11, y + h - 4);
    ctx.moveTo(x + w - 4, y + h - 7);
    ctx.lineTo(x + w - 7, y + h - 4);
    ctx.stroke();
  }

  #drawErrorBubble(ctx, node, x, y, w, h) {
    const bottom = y + h;
    const lines = String(node.runtime.error.message).split("\n").slice(0, 4);
    ctx.font = "12px Arial, sans-serif";
    const width = Math.max(w, ...lines.map((l) => Math.min(500, ctx.measureText(l).width + 20)));
    const height = lines.length * 16 + 10;
    ctx.beginPath();
    ctx.roundRect(x, bottom + 8, width, height, 6);
    ctx.fillStyle = "rgba(90,20,20,0.92)";
    ctx.fill();
    ctx.strokeStyle = ERROR;
    ctx.lineWidth = 1;
    ctx.stroke();
    ctx.fillStyle = "#FDD";
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    lines.forEach((line, i) => ctx.fillText(fitText(line, "12px Arial, sans-serif", width - 20), x + 10, bottom + 14 + i * 16));
  }

  #drawDragLink(ctx) {
    const drag = this.view.dragLink;
    if (!drag) return;
    if (drag.hover) {
      // ring around the slot the link would attach to: white when it fits, red when it does not
      const { node, slot, isOutput } = drag.hover;
      const type = isOutput ? node.outputs[slot].type : node.inputs[slot].type;
      const fits = drag.fromOutput ? isValidConnection(drag.type, type) : isValidConnection(type, drag.type);
      const [cx, cy] = isOutput ? outputSlotPos(node, slot) : inputSlotPos(node, slot);
      ctx.beginPath();
      ctx.arc(cx, cy, 9, 0, Math.PI * 2);
      ctx.strokeStyle = fits ? "#FFF" : ERROR;
      ctx.lineWidth = 2;
      ctx.stroke();
    }
    const start = drag.fromOutput ? outputSlotPos(drag.node, drag.slot) : inputSlotPos(drag.node, drag.slot);
    const end = drag.pos;
    const [a, b] = drag.fromOutput ? [start, end] : [end, start];
    const bend = Math.max(30, Math.abs(b[0] - a[0]) * 0.5);
    ctx.beginPath();
    ctx.moveTo(a[0], a[1]);
    ctx.bezierCurveTo(a[0] + bend, a[1], b[0] - bend, b[1], b[0], b[1]);
    ctx.strokeStyle = typeColor(drag.type);
    ctx.lineWidth = 3;
    ctx.stroke();
  }

  #drawRubberBand(ctx) {
    const band = this.view.rubberBand;
    if (!band) return;
    const x = Math.min(band.from[0], band.to[0]);
    const y = Math.min(band.from[1], band.to[1]);
    const w = Math.abs(band.to[0] - band.from[0]);
    const h = Math.abs(band.to[1] - band.from[1]);
    ctx.fillStyle = "rgba(120,160,255,0.08)";
    ctx.fillRect(x, y, w, h);
    ctx.strokeStyle = "#8AF";
    ctx.lineWidth = 1 / this.view.viewport.scale;
    ctx.setLineDash([5 / this.view.viewport.scale, 4 / this.view.viewport.scale]);
    ctx.strokeRect(x, y, w, h);
    ctx.setLineDash([]);
  }
}
