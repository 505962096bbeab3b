/**
 * The "mask" button drawn on the image preview of a node with an image upload (LoadImage): a click opens
 * the mask editor on the image the node shows. Geometry and drawing live here so the renderer and the
 * pointer handling agree on where it is.
 */
import { imageArea } from "./layout.js";

const SIZE = [44, 18];

/** Graph rectangle `[x, y, w, h]` of the button, or null when the node shows no input image. */
export function maskButtonRect(node) {
  if (node.flags.collapsed || !node.runtime.inputImage || node.runtime.images?.length) return null;
  if (!node.widgets.some((w) => w.kind === "upload")) return null;
  const [x, y, w, h] = imageArea(node);
  if (h < SIZE[1] + 8 || w < SIZE[0] + 8) return null;
  return [x + w - SIZE[0] - 4, y + 4, SIZE[0], SIZE[1]];
}

export function hitsMaskButton(node, gx, gy) {
  const rect = maskButtonRect(node);
  return Boolean(rect && gx >= rect[0] && gx <= rect[0] + rect[2] && gy >= rect[1] && gy <= rect[1] + rect[3]);
}

export function drawMaskButton(ctx, node, lowDetail) {
  const rect = maskButtonRect(node);
  if (!rect || lowDetail) return;
  const [x, y, w, h] = rect;
  ctx.beginPath();
  ctx.roundRect(x, y, w, h, 4);
  ctx.fillStyle = "rgba(20, 20, 20, 0.8)";
  ctx.fill();
  ctx.strokeStyle = "#777";
  ctx.lineWidth = 1;
  ctx.stroke();
  ctx.font = "11px Arial, sans-serif";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillStyle = "#eee";
  ctx.fillText("mask", x + w / 2, y + h / 2 + 1);
}
