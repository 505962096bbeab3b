/**
 * Text widgets (STRING inputs). A single-line one opens a text field on click; a multiline one draws
 * its wrapped text on the canvas and puts a real `<textarea>` over itself only while it is edited
 * (a textarea per node, kept on screen, is what makes big graphs slow in other editors).
 */
import { WIDGET_FONT, fitText, textWidth } from "../canvas/layout.js";
import { drawBox, drawLabelValue, WIDGET_TEXT } from "./base.js";

export const textWidget = {
  draw(ctx, widget, rect, look) {
    drawBox(ctx, rect, look);
    drawLabelValue(ctx, rect, widget.label || widget.name, String(widget.value ?? ""), look);
  },

  pointerDown({ widget, node, rect, editor }) {
    return {
      move() {},
      up() {
        editor.promptValue(rect, String(widget.value ?? ""), {}).then((text) => {
          if (text !== null) editor.setWidgetValue(node, widget, text);
        });
      },
    };
  },
};

const LINE_HEIGHT = 15;
const wrapCache = new Map();

/** Lines of `text` wrapped to `width` (cached: prompts are long and drawn every frame they are visible). */
function wrap(text, width) {
  const key = width + "\u0000" + text;
  let lines = wrapCache.get(key);
  if (lines) return lines;
  lines = [];
  for (const paragraph of String(text).split("\n")) {
    let line = "";
    for (const word of paragraph.split(/(\s+)/)) {
      const candidate = line + word;
      if (line && textWidth(candidate, WIDGET_FONT) > width) {
        lines.push(line.trimEnd());
        line = word.trimStart();
      } else {
        line = candidate;
      }
    }
    lines.push(line);
  }
  if (wrapCache.size > 500) wrapCache.clear();
  wrapCache.set(key, lines);
  return lines;
}

export const multilineWidget = {
  draw(ctx, widget, rect, look) {
    const [x, y, w, h] = rect;
    drawBox(ctx, rect, look, 6);
    if (look.lowDetail || look.editing) return;
    const text = String(widget.value ?? "");
    ctx.save();
    ctx.beginPath();
    ctx.rect(x + 2, y + 2, w - 4, h - 4);
    ctx.clip();
    ctx.font = WIDGET_FONT;
    ctx.textBaseline = "top";
    ctx.textAlign = "left";
    if (!text) {
      ctx.fillStyle = "#777";
      ctx.fillText(fitText(widget.options.placeholder || widget.name, WIDGET_FONT, w - 16), x + 8, y + 6);
    } else {
      ctx.fillStyle = look.disabled ? "#888" : WIDGET_TEXT;
      const lines = wrap(text, w - 16);
      const visible = Math.max(1, Math.floor((h - 8) / LINE_HEIGHT));
      lines.slice(0, visible).forEach((line, i) => ctx.fillText(line, x + 8, y + 6 + i * LINE_HEIGHT));
    }
    ctx.restore();
  },

  pointerDown({ widget, node, editor }) {
    return { move() {}, up: () => editor.editMultiline(node, widget) };
  },
};
