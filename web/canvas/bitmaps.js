/**
 * Image previews drawn from cached bitmaps: each loaded image is decoded and scaled once, by
 * `createImageBitmap`, to about the size it is shown at (in device pixels, rounded up to a multiple of
 * 64 so small zoom changes reuse it). Frames then blit a ready bitmap instead of scaling the full image
 * every time; until the bitmap is ready the image itself is drawn.
 */
const QUANTUM = 64;

export class BitmapCache {
  constructor(onReady) {
    this.onReady = onReady; // called when a bitmap becomes ready (redraw)
    this.entries = new WeakMap();
    this.hits = 0;
    this.made = 0;
  }

  /** What to draw for `img` shown `width` device pixels wide: a cached bitmap or the image itself. */
  source(img, width) {
    if (typeof createImageBitmap !== "function" || !(img instanceof HTMLImageElement)) return img;
    const w = Math.min(img.naturalWidth, Math.ceil(width / QUANTUM) * QUANTUM);
    const h = Math.max(1, Math.round((w * img.naturalHeight) / img.naturalWidth));
    let entry = this.entries.get(img);
    if (!entry || (entry.width !== w && !entry.pending)) {
      const previous = entry?.bitmap || null;
      entry = { width: w, bitmap: previous, pending: true };
      this.entries.set(img, entry);
      createImageBitmap(img, { resizeWidth: w, resizeHeight: h, resizeQuality: "medium" })
        .then((bitmap) => {
          previous?.close?.();
          entry.bitmap = bitmap;
          entry.pending = false;
          this.made++;
          this.onReady();
        })
        .catch(() => { entry.pending = false; entry.failed = true; });
    }
    if (entry.bitmap && !entry.failed) {
      this.hits++;
      return entry.bitmap;
    }
    return img;
  }
}
