/**
 * The mask editor: a full-window editor over the image a LoadImage node shows. Brush and eraser (size,
 * hardness, opacity), fill / clear / invert, zoom (wheel) and pan (middle button, or Space + drag), undo /
 * redo. Save uploads the mask as ComfyUI's mask editor does: `POST /upload/mask` with a PNG whose alpha is
 * the inverse of the painted mask (transparent = masked), `original_ref` naming the source image, into
 * `input/clipspace/`; the server puts that alpha on the source image. The node then selects
 * `clipspace/<name> [input]`, so it shows the masked image and LoadImage's MASK output carries the mask.
 *
 * The mask is kept at the image's own resolution in a canvas whose alpha is the mask (0 = not masked).
 */

import { element } from "./dom.js";

const HISTORY_LIMIT = 40;
const HISTORY_BYTES = 256 * 1024 * 1024; // undo snapshots of a big image: fewer, not more memory
const MASK_RGB = [255, 40, 90]; // the colour the mask is shown in (only its alpha is saved)

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`could not load ${url}`));
    img.src = url;
  });
}

/** `"sub/x.png [input]"` -> `{ filename: "x.png", subfolder: "sub", type: "input" }`. */
export function imageRef(value) {
  let text = String(value);
  let type = "input";
  const annotated = / \[(input|output|temp)\]$/.exec(text);
  if (annotated) { type = annotated[1]; text = text.slice(0, annotated.index); }
  const slash = text.lastIndexOf("/");
  return { filename: text.slice(slash + 1), subfolder: slash > 0 ? text.slice(0, slash) : "", type };
}

/** The editing state: mask pixels, tools, history. Separate from the DOM so tests can drive it. */
class MaskEditor {
  constructor(editor, node, widget, image, maskAlpha) {
    this.editor = editor;
    this.node = node;
    this.widget = widget;
    this.ref = imageRef(widget.value);
    this.width = image.naturalWidth;
    this.height = image.naturalHeight;
    this.tool = "brush";
    this.brush = { size: Math.max(4, Math.round(Math.min(this.width, this.height) / 12)), hardness: 0.8, opacity: 1 };
    this.view = { scale: 1, x: 0, y: 0 };
    this.undoStack = [];
    this.redoStack = [];
    this.#build(image);
    this.ctx = this.mask.getContext("2d", { willReadFrequently: true });
    if (maskAlpha) this.#putAlpha(maskAlpha);
    this.#fit();
  }

  #build(image) {
    const tools = [["brush", "Brush"], ["eraser", "Eraser"]].map(([id, label]) => element("button", {
      textContent: label, className: `mask-tool${id === this.tool ? " active" : ""}`, dataset: { tool: id },
      title: `${label} (${id === "brush" ? "B" : "E"})`, onclick: () => this.setTool(id) }));
    const slider = (name, label, min, max, step) => {
      const input = element("input", { type: "range", min, max, step, value: this.brush[name], className: `mask-${name}` });
      const shown = element("span", { className: "mask-value", textContent: String(this.brush[name]) });
      input.addEventListener("input", () => { this.brush[name] = Number(input.value); shown.textContent = input.value; this.#cursor(); });
      return element("label", { className: "mask-slider" }, [element("span", { textContent: label }), input, shown]);
    };
    const button = (label, cls, handler, title = "") => element("button", { textContent: label, className: cls, title, onclick: handler });
    this.image = element("canvas", { className: "mask-image", width: this.width, height: this.height });
    this.image.getContext("2d").drawImage(image, 0, 0);
    this.mask = element("canvas", { className: "mask-layer", width: this.width, height: this.height });
    this.layer = element("div", { className: "mask-layers" }, [this.image, this.mask]);
    this.brushCursor = element("div", { className: "mask-cursor" });
    this.stage = element("div", { className: "mask-stage", tabIndex: 0 }, [this.layer, this.brushCursor]);
    this.saveButton = button("Save", "mask-save primary", () => this.save());
    this.root = element("div", { className: "mask-editor", role: "dialog", ariaLabel: "Mask editor" }, [
      element("header", { className: "mask-toolbar" }, [
        element("span", { className: "mask-title", textContent: `Mask: ${this.ref.filename} (${this.width}×${this.height})` }),
        ...tools,
        slider("size", "Size", 1, 500, 1),
        slider("hardness", "Hardness", 0, 1, 0.05),
        slider("opacity", "Opacity", 0.05, 1, 0.05),
        button("Fill", "mask-fill", () => this.fill(), "Mask the whole image"),
        button("Clear", "mask-clear", () => this.clear(), "Remove the mask"),
        button("Invert", "mask-invert", () => this.invert(), "Swap masked and unmasked"),
        button("Undo", "mask-undo", () => this.undo(), "Ctrl+Z"),
        button("Redo", "mask-redo", () => this.redo(), "Ctrl+Y"),
        button("Fit", "mask-fit", () => this.#fit(), "Fit the image in the window"),
        element("span", { className: "spacer" }),
        button("Cancel", "mask-cancel", () => this.close(null), "Escape"),
        this.saveButton,
      ]),
      this.stage,
    ]);
    this.#wire();
  }

  #wire() {
    const stage = this.stage;
    let stroke = null;
    let pan = null;
    let space = false;
    stage.addEventListener("pointerdown", (event) => {
      stage.focus();
      stage.setPointerCapture(event.pointerId);
      if (event.button === 1 || space || (event.button === 0 && event.altKey)) {
        pan = { x: event.clientX, y: event.clientY };
        return;
      }
      if (event.button !== 0) return;
      this.#remember();
      stroke = this.imagePoint(event.clientX, event.clientY);
      this.dab(...stroke);
    });
    stage.addEventListener("pointermove", (event) => {
      this.#cursor(event.clientX, event.clientY);
      if (pan) {
        this.view.x += event.clientX - pan.x;
        this.view.y += event.clientY - pan.y;
        pan = { x: event.clientX, y: event.clientY };
        this.#applyView();
      } else if (stroke) {
        const next = this.imagePoint(event.clientX, event.clientY);
        this.line(stroke, next);
        stroke = next;
      }
    });
    const end = () => { stroke = null; pan = null; };
    stage.addEventListener("pointerup", end);
    stage.addEventListener("pointercancel", end);
    stage.addEventListener("pointerleave", () => { this.brushCursor.hidden = true; });
    stage.addEventListener("wheel", (event) => {
      event.preventDefault();
      const factor = Math.exp(-event.deltaY * 0.0015);
      this.zoomAt(event.clientX, event.clientY, factor);
      this.#cursor(event.clientX, event.clientY);
    }, { passive: false });
    stage.addEventListener("contextmenu", (event) => event.preventDefault());
    this.root.addEventListener("keydown", (event) => {
      if (event.target instanceof HTMLInputElement && event.target.type !== "range") return;
      event.stopPropagation(); // the canvas's shortcuts do not apply behind the editor
      const key = event.key.toLowerCase();
      if (key === " ") { space = true; event.preventDefault(); }
      else if (key === "escape") this.close(null);
      else if ((event.ctrlKey || event.metaKey) && key === "z") { event.preventDefault(); if (event.shiftKey) this.redo(); else this.undo(); }
      else if ((event.ctrlKey || event.metaKey) && key === "y") { event.preventDefault(); this.redo(); }
      else if ((event.ctrlKey || event.metaKey) && key === "s") { event.preventDefault(); this.save(); }
      else if (key === "b") this.setTool("brush");
      else if (key === "e") this.setTool("eraser");
      else if (key === "[") this.#setSize(this.brush.size - Math.max(1, Math.round(this.brush.size / 10)));
      else if (key === "]") this.#setSize(this.brush.size + Math.max(1, Math.round(this.brush.size / 10)));
    });
    this.root.addEventListener("keyup", (event) => { if (event.key === " ") space = false; event.stopPropagation(); });
    this.resize = () => this.#fit();
    window.addEventListener("resize", this.resize);
  }

  // ---- view

  /** Client point -> image pixel coordinates. */
  imagePoint(cx, cy) {
    const rect = this.stage.getBoundingClientRect();
    return [(cx - rect.left - this.view.x) / this.view.scale, (cy - rect.top - this.view.y) / this.view.scale];
  }

  /** Image pixel -> client point (tests drive the mouse with it). */
  clientPoint(ix, iy) {
    const rect = this.stage.getBoundingClientRect();
    return [rect.left + this.view.x + ix * this.view.scale, rect.top + this.view.y + iy * this.view.scale];
  }

  zoomAt(cx, cy, factor) {
    const rect = this.stage.getBoundingClientRect();
    const scale = Math.min(64, Math.max(0.05, this.view.scale * factor));
    const [ix, iy] = this.imagePoint(cx, cy);
    this.view.scale = scale;
    this.view.x = cx - rect.left - ix * scale;
    this.view.y = cy - rect.top - iy * scale;
    this.#applyView();
  }

  #fit() {
    const rect = this.stage.getBoundingClientRect();
    const width = rect.width || window.innerWidth;
    const height = rect.height || window.innerHeight - 50;
    const scale = Math.min((width - 40) / this.width, (height - 40) / this.height);
    this.view = { scale: Math.max(0.05, scale), x: 0, y: 0 };
    this.view.x = (width - this.width * this.view.scale) / 2;
    this.view.y = (height - this.height * this.view.scale) / 2;
    this.#applyView();
  }

  #applyView() {
    const { x, y, scale } = this.view;
    this.layer.style.transform = `translate(${x}px, ${y}px) scale(${scale})`;
    this.layer.style.imageRendering = scale > 2 ? "pixelated" : "auto";
  }

  #cursor(cx, cy) {
    const c = this.brushCursor;
    if (cx !== undefined) this.lastClient = [cx, cy];
    if (!this.lastClient) return;
    const rect = this.stage.getBoundingClientRect();
    const diameter = this.brush.size * this.view.scale;
    Object.assign(c.style, { width: `${diameter}px`, height: `${diameter}px`,
      left: `${this.lastClient[0] - rect.left - diameter / 2}px`, top: `${this.lastClient[1] - rect.top - diameter / 2}px` });
    c.hidden = false;
  }

  // ---- tools

  setTool(tool) {
    this.tool = tool;
    for (const b of this.root.querySelectorAll(".mask-tool")) b.classList.toggle("active", b.dataset.tool === tool);
  }

  #setSize(size) {
    this.brush.size = Math.max(1, Math.min(500, size));
    const input = this.root.querySelector(".mask-size");
    input.value = this.brush.size;
    input.nextSibling.textContent = String(this.brush.size);
    this.#cursor();
  }

  /** One round dab of the brush (or the eraser) centred on image point (x, y). */
  dab(x, y) {
    const ctx = this.ctx;
    const radius = this.brush.size / 2;
    const [r, g, b] = MASK_RGB;
    const alpha = this.brush.opacity;
    ctx.save();
    ctx.globalCompositeOperation = this.tool === "eraser" ? "destination-out" : "source-over";
    if (this.brush.hardness >= 1) {
      ctx.fillStyle = `rgba(${r}, ${g}, ${b}, ${alpha})`;
    } else {
      const gradient = ctx.createRadialGradient(x, y, radius * this.brush.hardness, x, y, radius);
      gradient.addColorStop(0, `rgba(${r}, ${g}, ${b}, ${alpha})`);
      gradient.addColorStop(1, `rgba(${r}, ${g}, ${b}, 0)`);
      ctx.fillStyle = gradient;
    }
    ctx.beginPath();
    ctx.arc(x, y, radius, 0, Math.PI * 2);
    ctx.fill();
    ctx.restore();
  }

  /** Dabs from `a` to `b`, a quarter of the radius apart. */
  line(a, b) {
    const distance = Math.hypot(b[0] - a[0], b[1] - a[1]);
    const spacing = Math.max(0.5, this.brush.size / 8);
    const steps = Math.max(1, Math.ceil(distance / spacing));
    for (let i = 1; i <= steps; i++) this.dab(a[0] + (b[0] - a[0]) * (i / steps), a[1] + (b[1] - a[1]) * (i / steps));
  }

  fill() {
    this.#remember();
    const [r, g, b] = MASK_RGB;
    this.ctx.save();
    this.ctx.globalCompositeOperation = "copy";
    this.ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
    this.ctx.fillRect(0, 0, this.width, this.height);
    this.ctx.restore();
  }

  clear() {
    this.#remember();
    this.ctx.clearRect(0, 0, this.width, this.height);
  }

  invert() {
    this.#remember();
    const alpha = this.alpha();
    for (let i = 0; i < alpha.length; i++) alpha[i] = 255 - alpha[i];
    this.#putAlpha(alpha);
  }

  /** The mask as one byte per pixel (0 = not masked, 255 = masked). */
  alpha() {
    const data = this.ctx.getImageData(0, 0, this.width, this.height).data;
    const alpha = new Uint8ClampedArray(this.width * this.height);
    for (let i = 0; i < alpha.length; i++) alpha[i] = data[i * 4 + 3];
    return alpha;
  }

  #putAlpha(alpha) {
    const image = this.ctx.createImageData(this.width, this.height);
    const [r, g, b] = MASK_RGB;
    const data = image.data;
    for (let i = 0, j = 0; i < alpha.length; i++, j += 4) {
      data[j] = r; data[j + 1] = g; data[j + 2] = b; data[j + 3] = alpha[i];
    }
    this.ctx.putImageData(image, 0, 0);
  }

  // ---- history

  #remember() {
    this.undoStack.push(this.ctx.getImageData(0, 0, this.width, this.height));
    const limit = Math.max(4, Math.min(HISTORY_LIMIT, Math.floor(HISTORY_BYTES / (4 * this.width * this.height))));
    while (this.undoStack.length > limit) this.undoStack.shift();
    this.redoStack = [];
  }

  undo() {
    const state = this.undoStack.pop();
    if (!state) return false;
    this.redoStack.push(this.ctx.getImageData(0, 0, this.width, this.height));
    this.ctx.putImageData(state, 0, 0);
    return true;
  }

  redo() {
    const state = this.redoStack.pop();
    if (!state) return false;
    this.undoStack.push(this.ctx.getImageData(0, 0, this.width, this.height));
    this.ctx.putImageData(state, 0, 0);
    return true;
  }

  // ---- saving

  /** The PNG `/upload/mask` takes: black, alpha 255 where not masked and 0 where fully masked. */
  maskBlob() {
    const canvas = element("canvas", { width: this.width, height: this.height });
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(this.width, this.height);
    const alpha = this.alpha();
    for (let i = 0; i < alpha.length; i++) image.data[i * 4 + 3] = 255 - alpha[i];
    ctx.putImageData(image, 0, 0);
    return new Promise((resolve, reject) => canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("could not encode the mask"))), "image/png"));
  }

  /**
   * POST /upload/mask. A shipped example image (shown from the examples, not in input/) is first uploaded
   * into input/ by /upload/image, so the server has an original to put the mask on.
   */
  async #upload(blob, filename) {
    const api = this.editor.api;
    try {
      return await api.uploadMask(blob, filename, this.ref);
    } catch (error) {
      if (error.status !== 404 || this.ref.type !== "input" || this.ref.subfolder) throw error;
      const response = await fetch(api.viewUrl(this.ref));
      if (!response.ok) throw error;
      const copy = await api.uploadImage(new File([await response.blob()], this.ref.filename, { type: response.headers.get("content-type") || "image/png" }));
      this.ref = { filename: copy.name, subfolder: copy.subfolder || "", type: copy.type || "input" };
      return api.uploadMask(blob, filename, this.ref);
    }
  }

  async save() {
    if (this.saving) return null;
    this.saving = true;
    this.saveButton.disabled = true;
    this.saveButton.textContent = "Saving…";
    try {
      const result = await this.#upload(await this.maskBlob(), `clipspace-mask-${Math.round(performance.now())}.png`);
      const value = `${result.subfolder ? `${result.subfolder}/` : ""}${result.name} [${result.type || "input"}]`;
      if (!this.widget.options.values.includes(value)) this.widget.options.values.push(value);
      this.editor.setWidgetValue(this.node, this.widget, value);
      this.editor.notify(`Saved the mask: ${value}`);
      this.close(value);
      return value;
    } catch (error) {
      this.editor.notify(`Saving the mask failed: ${error.message}`, "error");
      this.saving = false;
      this.saveButton.disabled = false;
      this.saveButton.textContent = "Save";
      return null;
    }
  }

  close(result) {
    window.removeEventListener("resize", this.resize);
    this.root.remove();
    if (current === this) current = null;
    this.editor.canvas.element.focus();
    this.resolve?.(result);
  }
}

let current = null;

/** The open mask editor (tests reach its state through `loom.maskEditor()`), or null. */
export function currentMaskEditor() {
  return current;
}

/**
 * Open the editor on the image `node` shows (its upload widget's target combo); resolves to the new widget
 * value after Save, or null when cancelled.
 */
export async function openMaskEditor(editor, node) {
  const upload = node.widgets.find((w) => w.kind === "upload");
  const widget = upload && node.widget(upload.target);
  if (!widget?.value) {
    editor.notify("Choose or upload an image first, then paint its mask", "warn");
    return null;
  }
  current?.close(null);
  const ref = imageRef(widget.value);
  const url = (channel) => `${editor.api.viewUrl(ref)}&channel=${channel}`;
  let image;
  let alpha = null;
  try {
    // the colours, and the mask already in the file's alpha (transparent = masked), as ComfyUI's editor reads them
    const [rgb, a] = await Promise.all([loadImage(url("rgb")), loadImage(url("a"))]);
    image = rgb;
    const canvas = element("canvas", { width: a.naturalWidth, height: a.naturalHeight });
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(a, 0, 0);
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    alpha = new Uint8ClampedArray(canvas.width * canvas.height);
    let any = false;
    for (let i = 0; i < alpha.length; i++) { alpha[i] = 255 - data[i * 4 + 3]; any ||= alpha[i] > 0; }
    if (!any || a.naturalWidth !== rgb.naturalWidth || a.naturalHeight !== rgb.naturalHeight) alpha = null;
  } catch (error) {
    editor.notify(`Could not open ${ref.filename} in the mask editor: ${error.message}`, "error");
    return null;
  }
  const maskEditor = new MaskEditor(editor, node, widget, image, alpha);
  current = maskEditor;
  document.body.appendChild(maskEditor.root);
  maskEditor.resize();
  maskEditor.stage.focus();
  return new Promise((resolve) => { maskEditor.resolve = resolve; });
}
