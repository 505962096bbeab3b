/**
 * The combo widget: a choice among options. Arrows step through them; a click in the middle opens
 * a menu with a filter field. The seed's `control_after_generate` widget is a combo too.
 */
import { drawArrows, drawBox, drawLabelValue, zoneOf } from "./base.js";

function displayValue(value) {
  return value === true ? "fixed" : String(value ?? "");
}

export const comboWidget = {
  draw(ctx, widget, rect, look) {
    drawBox(ctx, rect, look);
    if (look.lowDetail) return;
    if (!look.disabled) drawArrows(ctx, rect);
    drawLabelValue(ctx, rect, widget.label || widget.name, displayValue(widget.value), look);
  },

  pointerDown({ widget, node, rect, x, editor }) {
    const zone = zoneOf(x, rect);
    return {
      move() {},
      up() {
        const values = widget.options.values || [];
        if (zone !== "middle") {
          if (!values.length) return;
          const index = values.indexOf(widget.value);
          const next = zone === "left" ? Math.max(0, index - 1) : Math.min(values.length - 1, index + 1);
          editor.setWidgetValue(node, widget, values[index < 0 ? 0 : next]);
          return;
        }
        editor.chooseOption(rect, values, widget.value).then((value) => {
          if (value !== null && value !== undefined) editor.setWidgetValue(node, widget, value);
        });
      },
    };
  },
};
