/**
 * Drawing shared by the widgets: the rounded box, the step arrows, and label/value text.
 *
 * Every widget module exports `{ draw(ctx, widget, rect, look), pointerDown(context) }`.
 * `rect` is `[x, y, w, h]` in graph units; `look` says `{ lowDetail, disabled }`.
 * `pointerDown` gets `{ widget, node, rect, x, y, editor, event }` (x, y in graph units) and may return a
 * drag handler `{ move(context), up(context) }`.
 */
import { WIDGET_FONT, fitText, textWidth } from "../canvas/layout.js";

export const WIDGET_BG = "#222";
export const WIDGET_OUTLINE = "#666";
export const WIDGET_LABEL = "#999";
export const WIDGET_TEXT = "#DDD";
export const ARROW_ZONE = 16;

export function drawBox(ctx, [x, y, w, h], look, radius = h / 2) {
  ctx.fillStyle = WIDGET_BG;
  ctx.strokeStyle = WIDGET_OUTLINE;
  ctx.lineWidth = 1;
  ctx.beginPath();
  if (look.lowDetail) ctx.rect(x, y, w, h);
  else ctx.roundRect(x, y, w, h, radius);
  ctx.fill();
  if (!look.lowDetail) ctx.stroke();
}

export function drawArrows(ctx, [x, y, w, h]) {
  ctx.fillStyle = WIDGET_TEXT;
  const mid = y + h / 2;
  ctx.beginPath();
  ctx.moveTo(x + 12, mid - 5);
  ctx.lineTo(x + 6, mid);
  ctx.lineTo(x + 12, mid + 5);
  ctx.moveTo(x + w - 12, mid - 5);
  ctx.lineTo(x + w - 6, mid);
  ctx.lineTo(x + w - 12, mid + 5);
  ctx.fill();
}

/** Label on the left, value on the right, both cut to fit between `pad` margins. */
export function drawLabelValue(ctx, [x, y, w, h], label, value, look, pad = 20) {
  if (look.lowDetail) return;
  ctx.font = WIDGET_FONT;
  ctx.textBaseline = "middle";
  const mid = y + h / 2 + 1;
  const valueText = fitText(value, WIDGET_FONT, Math.max(20, w - 2 * pad - Math.min(textWidth(label, WIDGET_FONT), w / 2) - 8));
  const labelText = fitText(label, WIDGET_FONT, w - 2 * pad - textWidth(valueText, WIDGET_FONT) - 8);
  ctx.textAlign = "left";
  ctx.fillStyle = look.disabled ? "#666" : WIDGET_LABEL;
  ctx.fillText(labelText, x + pad, mid);
  ctx.textAlign = "right";
  ctx.fillStyle = look.disabled ? "#777" : WIDGET_TEXT;
  ctx.fillText(valueText, x + w - pad, mid);
}

/** Which part of a widget box a local x falls on: "left" arrow, "right" arrow or the "middle". */
export function zoneOf(x, [rx, , w]) {
  if (x < rx + ARROW_ZONE + 4) return "left";
  if (x > rx + w - ARROW_ZONE - 4) return "right";
  return "middle";
}
