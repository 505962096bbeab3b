/** Box select: Ctrl/Shift+drag on empty canvas selects the nodes the rubber band touches (added to the selection). */
import { nodeBounds } from "../layout.js";

export function startBoxSelect({ canvas }, start, event) {
  const additive = event.shiftKey || event.ctrlKey || event.metaKey;
  canvas.rubberBand = { from: start, to: start };
  return {
    move({ point }) {
      canvas.rubberBand.to = point;
      canvas.setDirty();
    },
    up() {
      const band = canvas.rubberBand;
      canvas.rubberBand = null;
      const x0 = Math.min(band.from[0], band.to[0]), x1 = Math.max(band.from[0], band.to[0]);
      const y0 = Math.min(band.from[1], band.to[1]), y1 = Math.max(band.from[1], band.to[1]);
      if (!additive) canvas.selected.clear();
      for (const node of canvas.graph.nodes) {
        const [x, y, w, h] = nodeBounds(node);
        if (x < x1 && x + w > x0 && y < y1 && y + h > y0) canvas.selected.add(node);
      }
      canvas.setDirty();
    },
  };
}
