/**
 * Node geometry in graph units: where the title, slots, widgets and image area of a node are.
 *
 * A node's `pos` is the top-left of its body; the title bar sits above it (litegraph's convention,
 * which saved workflows rely on). Renderer, pointer handling and the test hook all ask this module,
 * so they always agree on where things are.
 */

import { CONVERTED_WIDGET } from "../graph/model.js";
export const TITLE_HEIGHT = 30;
export const SLOT_HEIGHT = 20;
export const WIDGET_HEIGHT = 20;
export const WIDGET_GAP = 4;
export const WIDGET_MARGIN = 15;
export const MULTILINE_MIN_HEIGHT = 60;
export const IMAGE_MIN_HEIGHT = 140;
export const MIN_NODE_WIDTH = 150;
export const RESIZE_HANDLE = 12;
export const TITLE_FONT = "14px Arial, sans-serif";
export const SLOT_FONT = "12px Arial, sans-serif";
export const WIDGET_FONT = "12px Arial, sans-serif";

const measureContext = (typeof OffscreenCanvas !== "undefined"
  ? new OffscreenCanvas(1, 1) : document.createElement("canvas")).getContext("2d");
const widthCache = new Map();

/** Text width in pixels for a font, cached (measuring is the hot spot of canvas editors). */
export function textWidth(text, font) {
  const key = font + "\u0000" + text;
  let width = widthCache.get(key);
  if (width === undefined) {
    if (widthCache.size > 20000) widthCache.clear();
    measureContext.font = font;
    width = measureContext.measureText(text).width;
    widthCache.set(key, width);
  }
  return width;
}

/** `text` cut with an ellipsis so that it fits in `maxWidth`. */
export function fitText(text, font, maxWidth) {
  text = String(text);
  if (maxWidth <= 0) return "";
  if (textWidth(text, font) <= maxWidth) return text;
  let low = 0;
  let high = text.length;
  while (low < high) {
    const mid = (low + high + 1) >> 1;
    if (textWidth(text.slice(0, mid) + "…", font) <= maxWidth) low = mid;
    else high = mid - 1;
  }
  return text.slice(0, low) + "…";
}

/** Inputs drawn as slots, with their index in `node.inputs` (unlinked widget sockets are not drawn). */
export function visibleInputs(node) {
  const shown = [];
  node.inputs.forEach((input, index) => {
    if (input[CONVERTED_WIDGET] || !(input.widget && input.link == null && node.widget(input.widget.name))) {
      shown.push({ input, index });
    }
  });
  return shown;
}

/** Widgets drawn in the body (those replaced by a linked socket are hidden). */
export function visibleWidgets(node) {
  return node.widgets.filter((w) => w.kind !== "imagecompare" && !node.isWidgetLinked(w)
    && !node.inputs.some((i) => i[CONVERTED_WIDGET] && i.widget?.name === w.name));
}

function hasImageArea(node) {
  const r = node.runtime;
  return Boolean(r.images?.length || r.preview || r.inputImage || r.compare || r.text != null
    || node.widgets.some((w) => w.kind === "imagecompare"));
}

function slotRows(node) {
  return Math.max(visibleInputs(node).length, node.outputs.length);
}

/** Smallest size that shows every slot and widget. */
export function minimumSize(node) {
  const inputs = visibleInputs(node);
  let width = textWidth(node.title, TITLE_FONT) + 60;
  const rows = slotRows(node);
  for (let row = 0; row < rows; row++) {
    const left = inputs[row] ? textWidth(inputs[row].input.label || inputs[row].input.name, SLOT_FONT) : 0;
    const output = node.outputs[row];
    const right = output ? textWidth(output.label || output.name, SLOT_FONT) : 0;
    width = Math.max(width, left + right + 60);
  }
  const widgets = visibleWidgets(node);
  let height = rows * SLOT_HEIGHT + 8;
  for (const widget of widgets) {
    width = Math.max(width, widgetMinWidth(widget));
    height += (widget.kind === "multiline" ? MULTILINE_MIN_HEIGHT : WIDGET_HEIGHT) + WIDGET_GAP;
  }
  if (hasImageArea(node)) height += IMAGE_MIN_HEIGHT;
  return [Math.max(MIN_NODE_WIDTH, Math.ceil(width)), Math.max(Math.ceil(height), 26)];
}

function widgetMinWidth(widget) {
  if (widget.kind === "multiline") return 200;
  return textWidth(widget.name, WIDGET_FONT) + 90 + 2 * WIDGET_MARGIN;
}

/** Grow a node to its minimum size where it is smaller (never shrinks it). */
export function fitNodeSize(node) {
  const [w, h] = minimumSize(node);
  node.size[0] = Math.max(node.size[0], w);
  node.size[1] = Math.max(node.size[1], h);
}

/** Width of a collapsed node's title pill. */
export function collapsedWidth(node) {
  return Math.max(80, textWidth(node.title, TITLE_FONT) + 40);
}

/** `[x, y, w, h]` of the whole node (title included) in graph units. */
export function nodeBounds(node) {
  const [x, y] = node.pos;
  if (node.flags.collapsed) return [x, y - TITLE_HEIGHT, collapsedWidth(node), TITLE_HEIGHT];
  return [x, y - TITLE_HEIGHT, node.size[0], node.size[1] + TITLE_HEIGHT];
}

/** Where the widgets and the image area of a node go, as y offsets from `node.pos[1]`. */
export function nodeLayout(node) {
  const rows = slotRows(node);
  const widgets = visibleWidgets(node);
  let y = rows * SLOT_HEIGHT + 6;
  const fixed = widgets.reduce((sum, w) => sum + (w.kind === "multiline" ? 0 : WIDGET_HEIGHT + WIDGET_GAP), 0);
  const multiline = widgets.filter((w) => w.kind === "multiline").length;
  const imageReserve = hasImageArea(node) ? IMAGE_MIN_HEIGHT : 0;
  const spare = node.size[1] - y - fixed - imageReserve - 4;
  const multilineHeight = multiline
    ? Math.max(MULTILINE_MIN_HEIGHT, spare / multiline - WIDGET_GAP) : 0;
  const placed = [];
  for (const widget of widgets) {
    const height = widget.kind === "multiline" ? multilineHeight : WIDGET_HEIGHT;
    placed.push({ widget, y, height });
    y += height + WIDGET_GAP;
  }
  return { rows, widgets: placed, imageTop: y, imageHeight: Math.max(0, node.size[1] - y - 4) };
}

/** Graph rectangle `[x, y, w, h]` of a node's image area (previews, the compare slider, shown text). */
export function imageArea(node) {
  const layout = nodeLayout(node);
  return [node.pos[0] + 8, node.pos[1] + layout.imageTop, node.size[0] - 16, layout.imageHeight];
}

/** Graph position of the centre of input slot `slot` (an index into `node.inputs`). */
export function inputSlotPos(node, slot) {
  const [x, y] = node.pos;
  if (node.flags.collapsed) return [x, y - TITLE_HEIGHT / 2];
  const row = visibleInputs(node).findIndex((v) => v.index === slot);
  return [x + 10, y + (Math.max(row, 0) + 0.5) * SLOT_HEIGHT + 2];
}

/** Graph position of the centre of output slot `slot`. */
export function outputSlotPos(node, slot) {
  const [x, y] = node.pos;
  if (node.flags.collapsed) return [x + collapsedWidth(node), y - TITLE_HEIGHT / 2];
  return [x + node.size[0] - 10, y + (slot + 0.5) * SLOT_HEIGHT + 2];
}

/** Graph rectangle `[x, y, w, h]` of a widget. */
export function widgetRect(node, widget) {
  const placed = nodeLayout(node).widgets.find((p) => p.widget === widget);
  if (!placed) return null;
  return [node.pos[0] + WIDGET_MARGIN, node.pos[1] + placed.y, node.size[0] - 2 * WIDGET_MARGIN, placed.height];
}
