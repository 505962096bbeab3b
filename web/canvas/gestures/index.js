/**
 * Pointer gestures on the canvas: what one press does until the pointer is released. Each gesture lives
 * in its own module and keeps one contract: `start...(ctx, ...)` (ctx: the Interaction, with `canvas`
 * and `editor`) returns `{ move(at, event), up(at, event) }`, or null when the press did all it does;
 * `at` is `{ screen, point }`: canvas pixels and graph units. `startGesture` picks the one for a press.
 */
import { groupHandleAt } from "../../graph/groups.js";
import { widgetImpl } from "../../widgets/index.js";
import { hitsMaskButton } from "../mask-button.js";
import { startBoxSelect } from "./box-select.js";
import { startGroupMove } from "./group-drag.js";
import { startLinkDrag, startLinkMenu } from "./link-drag.js";
import { startNodeDrag } from "./node-drag.js";
import { startPan } from "./pan.js";
import { startGroupResize, startNodeResize } from "./resize.js";

/** The gesture a pointer press at `at` starts (by what lies under it), or null. */
export function startGesture(ctx, event, at) {
  const { canvas, editor } = ctx;
  const { screen, point } = at;
  if (event.button === 1 || ctx.spaceDown) return startPan(ctx, screen);
  const slot = canvas.slotAt(...point);
  if (slot) return startLinkDrag(ctx, slot, point);
  const node = canvas.nodeAt(...point);
  const modified = event.ctrlKey || event.shiftKey || event.metaKey;
  if (!node) {
    const link = canvas.viewport.scale >= 0.5 && canvas.linkCenterAt(...point);
    if (link) return startLinkMenu(ctx, link);
    const handle = groupHandleAt(canvas.graph.groups, ...point);
    if (handle && !modified) {
      return handle.part === "resize" ? startGroupResize(ctx, handle.group, point) : startGroupMove(ctx, handle.group, point);
    }
    return modified ? startBoxSelect(ctx, point, event) : startPan(ctx, screen, { clickClears: true });
  }
  canvas.graph.bringToFront(node);
  const { part, widget } = canvas.partAt(node, ...point);
  if (part === "collapse") { editor.toggleCollapse(node); return null; }
  if (event.button === 0 && editor.openMaskEditor && hitsMaskButton(node, ...point)) { editor.openMaskEditor(node); return null; }
  if (part === "resize" && !node.flags.pinned) return startNodeResize(ctx, node, point);
  if (part === "widget" && node.mode !== 2 && !event.shiftKey) return startWidget(ctx, node, widget, point, event);
  return startNodeDrag(ctx, node, point, event);
}

/** A press on a widget: the widget's own handler (widgets/*.js) gets the move and the release. */
function startWidget({ canvas, editor }, node, widget, point, event) {
  canvas.select(node, canvas.selected.has(node) && canvas.selected.size > 1);
  const rect = editor.widgetRect(node, widget);
  const handler = widgetImpl(widget).pointerDown({ widget, node, rect, x: point[0], y: point[1], editor, event });
  if (!handler) return null;
  return {
    move: ({ point: [x, y] }, moveEvent) => handler.move?.({ x, y, event: moveEvent }),
    up: ({ point: [x, y] }, upEvent) => handler.up?.({ x, y, event: upEvent }),
  };
}
