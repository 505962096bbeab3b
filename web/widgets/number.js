/**
 * Number and slider widgets (INT and FLOAT inputs).
 *
 * Number: the arrows step by `step`, dragging sideways scrubs one step per pixel, a click in the middle
 * opens a text field. Slider: the bar shows the value between min and max; dragging sets it.
 */
import { normalizeNumber } from "../graph/model.js";
import { drawArrows, drawBox, drawLabelValue, zoneOf, WIDGET_TEXT } from "./base.js";

const CLICK_SLOP = 3;

export function formatNumber(widget, value = widget.value) {
  if (typeof value !== "number") return String(value);
  if (widget.options.integer) return String(Math.round(value));
  const round = typeof widget.options.round === "number" && widget.options.round > 0 ? widget.options.round : null;
  const step = round ?? widget.options.step ?? 0.01;
  const decimals = Math.min(6, Math.max(String(step).split(".")[1]?.length ?? 0, 1));
  return value.toFixed(decimals);
}

export const numberWidget = {
  draw(ctx, widget, rect, look) {
    drawBox(ctx, rect, look);
    if (look.lowDetail) return;
    if (!look.disabled) drawArrows(ctx, rect);
    drawLabelValue(ctx, rect, widget.label || widget.name, formatNumber(widget), look);
  },

  pointerDown({ widget, node, rect, x, editor }) {
    const startX = x;
    const startValue = Number(widget.value) || 0;
    const zone = zoneOf(x, rect);
    let dragged = false;
    return {
      move({ x: nowX }) {
        const dx = nowX - startX;
        if (!dragged && Math.abs(dx) < CLICK_SLOP) return;
        dragged = true;
        const step = widget.options.step ?? 1;
        editor.setWidgetValue(node, widget, normalizeNumber(widget, startValue + Math.round(dx) * step));
      },
      up() {
        if (dragged) return;
        const step = widget.options.step ?? 1;
        if (zone === "left") editor.setWidgetValue(node, widget, normalizeNumber(widget, startValue - step));
        else if (zone === "right") editor.setWidgetValue(node, widget, normalizeNumber(widget, startValue + step));
        else {
          editor.promptValue(rect, formatNumber(widget), { numeric: true }).then((text) => {
            if (text === null || text.trim() === "") return;
            const number = Number(text);
            if (Number.isFinite(number)) editor.setWidgetValue(node, widget, normalizeNumber(widget, number));
          });
        }
      },
    };
  },
};

export const sliderWidget = {
  draw(ctx, widget, rect, look) {
    const [x, y, w, h] = rect;
    drawBox(ctx, rect, look, 4);
    const { min = 0, max = 1 } = widget.options;
    const fraction = max > min ? Math.min(1, Math.max(0, (Number(widget.value) - min) / (max - min))) : 0;
    ctx.fillStyle = look.disabled ? "#444" : "#567";
    ctx.fillRect(x + 1, y + 1, (w - 2) * fraction, h - 2);
    if (look.lowDetail) return;
    ctx.fillStyle = WIDGET_TEXT;
    drawLabelValue(ctx, rect, widget.label || widget.name, formatNumber(widget), look, 10);
  },

  pointerDown({ widget, node, rect, x, editor }) {
    const set = (px) => {
      const [rx, , w] = rect;
      const { min = 0, max = 1 } = widget.options;
      const fraction = Math.min(1, Math.max(0, (px - rx) / w));
      editor.setWidgetValue(node, widget, normalizeNumber(widget, min + fraction * (max - min)));
    };
    set(x);
    return { move: ({ x: nowX }) => set(nowX), up() {} };
  },
};
