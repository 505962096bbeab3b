/** The toggle widget (BOOLEAN inputs): a click flips it; `label_on`/`label_off` name the states. */
import { WIDGET_FONT } from "../canvas/layout.js";
import { drawBox, WIDGET_LABEL, WIDGET_TEXT } from "./base.js";

export const toggleWidget = {
  draw(ctx, widget, rect, look) {
    const [x, y, w, h] = rect;
    drawBox(ctx, rect, look);
    const on = Boolean(widget.value);
    ctx.fillStyle = on ? "#89A" : "#333";
    ctx.beginPath();
    ctx.arc(x + w - 14, y + h / 2, h * 0.32, 0, Math.PI * 2);
    ctx.fill();
    if (look.lowDetail) return;
    ctx.font = WIDGET_FONT;
    ctx.textBaseline = "middle";
    ctx.textAlign = "left";
    ctx.fillStyle = WIDGET_LABEL;
    ctx.fillText(widget.label || widget.name, x + 20, y + h / 2 + 1);
    ctx.textAlign = "right";
    ctx.fillStyle = on ? WIDGET_TEXT : "#888";
    const text = on ? widget.options.label_on ?? "true" : widget.options.label_off ?? "false";
    ctx.fillText(text, x + w - 28, y + h / 2 + 1);
  },

  pointerDown({ widget, node, editor }) {
    return { move() {}, up: () => editor.setWidgetValue(node, widget, !widget.value) };
  },
};
