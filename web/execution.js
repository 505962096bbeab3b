/**
 * Running the graph: queue the prompt (converted by the server), then follow the WebSocket events on
 * the nodes — running node highlighted with its step bar and latent preview, cached nodes marked,
 * validation and execution errors put on the node and input at fault, output images shown.
 */
import { ApiError } from "./api.js";
import { applyControlsAfterQueue } from "./widgets/control.js";
import { fitNodeSize } from "./canvas/layout.js";

export class Execution extends EventTarget {
  constructor(api, graph, canvas, notify) {
    super();
    this.api = api;
    this.graph = graph;
    this.canvas = canvas;
    this.notify = notify;
    this.promptId = null;
    this.runningNode = null;
    this.queueRemaining = 0;
    this.lastResult = null;
    const on = (type, handler) => api.addEventListener(type, (event) => handler.call(this, event.detail));
    on("status", this.#status);
    on("execution_start", this.#start);
    on("execution_cached", this.#cached);
    on("executing", this.#executing);
    on("progress", this.#progress);
    on("executed", this.#executed);
    on("execution_success", this.#finished);
    on("execution_error", this.#failed);
    on("execution_interrupted", this.#interrupted);
    on("preview", this.#preview);
  }

  #node(id) {
    return id == null ? null : this.graph.getNode(String(id).split(":")[0]);
  }

  #mine(data) {
    return !data?.prompt_id || !this.promptId || data.prompt_id === this.promptId;
  }

  /** Forget errors and marks of the last run (images stay until replaced). */
  clearRunState() {
    for (const node of this.graph.nodes) {
      const runtime = node.runtime;
      delete runtime.error;
      delete runtime.errorInputs;
      delete runtime.cached;
      delete runtime.running;
      delete runtime.progress;
      delete runtime.preview;
    }
    this.canvas.setDirty();
  }

  /**
   * Convert and queue the current workflow. Returns the server's reply, or null when the prompt was
   * refused (errors are then shown on the nodes).
   */
  async queue(workflow, { front = false } = {}) {
    this.clearRunState();
    let prompt;
    try {
      let warnings;
      ({ prompt, warnings } = await this.api.convert(workflow));
      for (const warning of new Set(warnings)) this.notify(warning, "warn");
    } catch (error) {
      // problems that name their node are put on it, like validation errors
      const problems = (error.body?.problems || []).filter((p) => p && typeof p === "object" && p.node_id != null);
      this.showNodeErrors(Object.fromEntries(problems.map((p) => [p.node_id, { errors: [{ message: p.message }] }])));
      this.notify(`Could not convert the workflow: ${error.message}`, "error");
      this.dispatchEvent(new CustomEvent("refused", { detail: error.body }));
      return null;
    }
    try {
      const result = await this.api.queuePrompt(prompt, workflow, { front });
      this.lastResult = result;
      this.promptId = result.prompt_id;
      if (result.node_errors && Object.keys(result.node_errors).length) this.showNodeErrors(result.node_errors);
      applyControlsAfterQueue(this.graph);
      this.dispatchEvent(new CustomEvent("queued", { detail: result }));
      return result;
    } catch (error) {
      if (error instanceof ApiError && error.body && typeof error.body === "object") {
        this.lastResult = error.body;
        const nodeErrors = error.body.node_errors || {};
        this.showNodeErrors(nodeErrors);
        const top = error.body.error;
        const text = typeof top === "object" ? [top.message, top.details].filter(Boolean).join(": ") : top;
        this.notify(`Prompt refused: ${text || error.message}`, "error");
      } else {
        this.notify(`Could not queue: ${error.message}`, "error");
      }
      this.dispatchEvent(new CustomEvent("refused", { detail: error.body }));
      return null;
    }
  }

  /** Mark nodes and inputs named in `node_errors` (the shape /prompt returns). */
  showNodeErrors(nodeErrors) {
    for (const [id, entry] of Object.entries(nodeErrors)) {
      const node = this.#node(id);
      if (!node) continue;
      const errors = entry.errors || [];
      node.runtime.error = {
        message: errors.map((e) => [e.message, e.details].filter(Boolean).join(": ")).join("\n") || "invalid",
        errors,
      };
      node.runtime.errorInputs = new Set(errors.map((e) => e.extra_info?.input_name).filter(Boolean));
    }
    this.canvas.setDirty();
  }

  #status(data) {
    this.queueRemaining = data?.status?.exec_info?.queue_remaining ?? 0;
    this.dispatchEvent(new CustomEvent("status", { detail: { queueRemaining: this.queueRemaining } }));
  }

  #start(data) {
    if (data?.prompt_id) this.promptId = data.prompt_id;
  }

  #cached(data) {
    if (!this.#mine(data)) return;
    for (const id of data.nodes || []) {
      const node = this.#node(id);
      if (node) node.runtime.cached = true;
    }
    this.canvas.setDirty();
  }

  #setRunning(node) {
    if (this.runningNode && this.runningNode !== node) {
      delete this.runningNode.runtime.running;
      delete this.runningNode.runtime.progress;
      delete this.runningNode.runtime.preview;
    }
    this.runningNode = node;
    if (node) node.runtime.running = true;
    this.canvas.setDirty();
  }

  #executing(data) {
    if (!this.#mine(data)) return;
    this.#setRunning(this.#node(data?.node));
    if (data?.node == null) this.dispatchEvent(new CustomEvent("idle"));
  }

  #progress(data) {
    const node = this.#node(data?.node) || this.runningNode;
    if (!node) return;
    node.runtime.progress = { value: data.value, max: data.max };
    this.canvas.setDirty();
  }

  #executed(data) {
    if (!this.#mine(data)) return;
    const node = this.#node(data?.display_node ?? data?.node);
    const output = data?.output;
    if (!node || !output || typeof output !== "object") return;
    const load = (ref) => {
      const img = new Image();
      img.onload = () => { fitNodeSize(node); this.canvas.setDirty(); };
      img.src = this.api.viewUrl(ref);
      return img;
    };
    // ImageCompare: {a_images, b_images} -> the before/after slider (a before, b after, as ComfyUI)
    if (Array.isArray(output.a_images) || Array.isArray(output.b_images)) {
      const a = output.a_images?.[0];
      const b = output.b_images?.[0];
      node.runtime.compare = { a: a ? load(a) : null, b: b ? load(b) : null, position: node.runtime.compare?.position ?? 0.5,
        refs: { a: output.a_images || [], b: output.b_images || [] } };
      fitNodeSize(node);
    }
    // PreviewAny and other text previews: {text: [...]}
    if (output.text !== undefined) {
      const text = Array.isArray(output.text) ? output.text : [output.text];
      node.runtime.text = text.map((t) => (typeof t === "string" ? t : JSON.stringify(t))).join("\n");
      fitNodeSize(node);
      this.canvas.setDirty();
    }
    const images = output.images;
    if (!Array.isArray(images)) {
      if (output.a_images || output.b_images || output.text !== undefined) {
        this.dispatchEvent(new CustomEvent("executed", { detail: { node, images: [] } }));
      }
      return;
    }
    node.runtime.imageRefs = images;
    node.runtime.images = images.map(load);
    // SaveAnimatedWEBP/PNG: {images, animated: [true]} -> the frames play in the node
    const animated = Array.isArray(output.animated) ? output.animated.some(Boolean) : Boolean(output.animated);
    delete node.runtime.animations;
    if (animated) this.#animate(node, images);
    fitNodeSize(node);
    this.dispatchEvent(new CustomEvent("executed", { detail: { node, images } }));
  }

  /** Decode the frames of animated images (WebCodecs' ImageDecoder); without it the first frame shows. */
  async #animate(node, refs) {
    if (typeof ImageDecoder === "undefined") return;
    const animations = [];
    node.runtime.animations = animations;
    for (const ref of refs) {
      try {
        const response = await fetch(this.api.viewUrl(ref));
        const type = response.headers.get("content-type")?.split(";")[0] || "image/webp";
        if (!(await ImageDecoder.isTypeSupported(type))) return;
        const decoder = new ImageDecoder({ data: await response.arrayBuffer(), type });
        await decoder.tracks.ready;
        await decoder.completed; // the frame count is known once all the data is in
        const count = decoder.tracks.selectedTrack?.frameCount || 1;
        const frames = [];
        for (let index = 0; index < count; index++) {
          const { image } = await decoder.decode({ frameIndex: index });
          frames.push({ bitmap: await createImageBitmap(image), duration: Math.max(20, (image.duration || 100000) / 1000) });
          image.close();
        }
        decoder.close();
        if (node.runtime.animations !== animations) { frames.forEach((f) => f.bitmap.close?.()); return; }
        animations.push({ frames, total: frames.reduce((sum, f) => sum + f.duration, 0), start: performance.now() });
        this.canvas.setDirty();
      } catch (error) {
        console.warn("could not decode the animation:", error);
      }
    }
  }

  #finished(data) {
    if (!this.#mine(data)) return;
    this.#setRunning(null);
  }

  #failed(data) {
    if (!this.#mine(data)) return;
    this.#setRunning(null);
    const node = this.#node(data.node_id);
    const message = `${data.exception_type || "Error"}: ${data.exception_message || ""}`.trim();
    if (node) node.runtime.error = { message, execution: data };
    this.notify(`${data.node_type || "Node"} #${data.node_id} failed — ${message}`, "error");
    this.canvas.setDirty();
  }

  #interrupted(data) {
    if (!this.#mine(data)) return;
    this.#setRunning(null);
    this.notify("Interrupted", "info");
  }

  async #preview({ blob, nodeId }) {
    const node = this.#node(nodeId) || this.runningNode;
    if (!node) return;
    const bitmap = await createImageBitmap(blob);
    node.runtime.preview?.close?.();
    node.runtime.preview = bitmap;
    fitNodeSize(node);
    this.canvas.setDirty();
  }
}
