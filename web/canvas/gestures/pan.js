/**
 * Pan: drag empty canvas, or drag with the middle button or with Space held. A press on empty canvas
 * that does not move (`clickClears`) is a click there: it clears the selection.
 */
import { CLICK_SLOP } from "./slop.js";

export function startPan({ canvas, editor }, screen, { clickClears = false } = {}) {
  let last = screen;
  let moved = !clickClears;
  return {
    move({ screen: at }) {
      canvas.viewport.panBy(at[0] - last[0], at[1] - last[1]);
      last = at;
      if (!moved && Math.hypot(at[0] - screen[0], at[1] - screen[1]) > CLICK_SLOP) moved = true;
      canvas.setDirty();
    },
    up() {
      if (!moved) canvas.clearSelection();
      else editor.viewChanged();
    },
  };
}
