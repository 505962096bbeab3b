/**
 * The image upload button of LoadImage: a click picks a file, uploads it to the server's input
 * folder and selects it in the node's image combo; the node then shows the image.
 */
import { WIDGET_FONT } from "../canvas/layout.js";
import { drawBox, WIDGET_TEXT } from "./base.js";
import { chooseUpload } from "../ui/files.js";

export const uploadWidget = {
  draw(ctx, widget, rect, look) {
    const [x, y, w, h] = rect;
    drawBox(ctx, rect, look, 4);
    if (look.lowDetail) return;
    ctx.font = WIDGET_FONT;
    ctx.textBaseline = "middle";
    ctx.textAlign = "center";
    ctx.fillStyle = WIDGET_TEXT;
    ctx.fillText(widget.runtimeLabel || "choose file to upload", x + w / 2, y + h / 2 + 1);
  },

  pointerDown({ widget, node, editor }) {
    return { move() {}, up: () => chooseUpload(editor, node) };
  },
};
