/**
 * The view onto the graph: a scale and an offset, as litegraph stores them in `extra.ds`.
 *
 *     screen = (graph + offset) * scale
 */

// lower than litegraph's 0.1 so that fit-to-view shows all of a graph of thousands of nodes
export const MIN_SCALE = 0.02;
export const MAX_SCALE = 10;

export class Viewport {
  constructor() {
    this.scale = 1;
    this.offset = [0, 0];
  }

  toGraph(sx, sy) {
    return [sx / this.scale - this.offset[0], sy / this.scale - this.offset[1]];
  }

  toScreen(gx, gy) {
    return [(gx + this.offset[0]) * this.scale, (gy + this.offset[1]) * this.scale];
  }

  /** Visible graph rectangle `[x, y, w, h]` for a canvas of `width` x `height` CSS pixels. */
  visibleRect(width, height) {
    return [-this.offset[0], -this.offset[1], width / this.scale, height / this.scale];
  }

  panBy(dxScreen, dyScreen) {
    this.offset[0] += dxScreen / this.scale;
    this.offset[1] += dyScreen / this.scale;
  }

  /** Zoom by `factor`, keeping the graph point under the screen point (sx, sy) where it is. */
  zoomAt(factor, sx, sy) {
    const scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, this.scale * factor));
    const [gx, gy] = this.toGraph(sx, sy);
    this.scale = scale;
    this.offset[0] = sx / scale - gx;
    this.offset[1] = sy / scale - gy;
  }

  /** Show the graph rectangle `[x, y, w, h]` centred in the canvas, with a margin. */
  fit(bounds, width, height, margin = 40) {
    const [x, y, w, h] = bounds;
    if (w <= 0 || h <= 0) return;
    const scale = Math.min((width - 2 * margin) / w, (height - 2 * margin) / h);
    this.scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, Math.min(scale, 1.5)));
    this.offset[0] = (width / this.scale - w) / 2 - x;
    this.offset[1] = (height / this.scale - h) / 2 - y;
  }

  serialize() {
    return { scale: this.scale, offset: this.offset.slice() };
  }

  restore(ds) {
    if (!ds) return false;
    const offset = Array.isArray(ds.offset) ? ds.offset : ds.offset && [ds.offset[0], ds.offset[1]];
    if (!Number.isFinite(ds.scale) || !offset) return false;
    this.scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, ds.scale));
    this.offset = [Number(offset[0]) || 0, Number(offset[1]) || 0];
    return true;
  }
}
