/**
 * The controls beside the Queue button: the batch count (N prompts, one after another, each widget's
 * control_after_generate applied after each, so a seed set to increment runs s, s+1, s+2) and the queue mode:
 * "Queue" queues on demand, "Queue (instant)" queues the batch again whenever the server's queue empties,
 * until the mode is switched back, a prompt is refused or one fails.
 */
import { element } from "./dom.js";

const MODES = [["queue", "Queue"], ["instant", "Queue (instant)"]];
const MAX_BATCH = 100;

export class QueueControls {
  constructor(editor) {
    this.editor = editor;
    this.armed = false; // instant mode keeps queueing once the user queued in it
    this.recheck = false;
    this.busy = false;
    this.lastBatch = [];
    this.mode = element("select", { id: "queue-mode", className: "queue-mode", title: "Queue mode" },
      MODES.map(([value, label]) => element("option", { value, textContent: label })));
    this.count = element("input", { id: "batch-count", className: "batch-count", type: "number", min: 1, max: MAX_BATCH,
      step: 1, value: 1, title: "Batch count: how many prompts one Queue click sends" });
    this.mode.addEventListener("change", () => { if (this.mode.value !== "instant") this.armed = false; });
    for (const control of [this.mode, this.count]) control.addEventListener("keydown", (event) => event.stopPropagation());
    const button = document.getElementById("btn-queue");
    button?.before(this.count, this.mode);
    const single = editor.queue.bind(editor);
    this.single = single;
    editor.queue = (options) => this.queue(options);
    editor.execution.addEventListener("status", (event) => this.#status(event.detail.queueRemaining));
    editor.execution.addEventListener("refused", () => this.#disarm("the prompt was refused"));
    editor.api.addEventListener("execution_error", () => this.#disarm("a prompt failed"));
  }

  get batchCount() {
    const value = Math.round(Number(this.count.value));
    return Number.isFinite(value) ? Math.min(MAX_BATCH, Math.max(1, value)) : 1;
  }

  set batchCount(value) {
    this.count.value = String(value);
  }

  get instant() {
    return this.mode.value === "instant";
  }

  setMode(mode) {
    this.mode.value = mode;
    this.mode.dispatchEvent(new Event("change"));
  }

  /**
   * Queue `count` prompts (the batch count by default). Resolves to the server's reply for the last one queued
   * (null when the first was refused); every reply is in `lastBatch`.
   */
  async queue({ front = false, count = this.batchCount } = {}) {
    this.busy = true;
    const results = [];
    try {
      for (let i = 0; i < count; i++) {
        const result = await this.single({ front });
        if (!result) break;
        results.push(result);
      }
    } finally {
      this.busy = false;
    }
    this.lastBatch = results;
    if (this.instant && results.length) this.armed = true;
    if (this.recheck) this.#recheck();
    return results.length ? results[results.length - 1] : null;
  }

  #status(remaining) {
    if (!this.instant || remaining !== 0) return;
    // the queue emptied while prompts were being sent (the first send arms instant mode only when its POST
    // returns, and a fast prompt can end before that): look again once the sending is done
    if (this.busy) this.recheck = true;
    else if (this.armed) this.queue();
  }

  /** A fast prompt can finish before its POST returns: re-queue if the server's queue is empty now. */
  async #recheck() {
    this.recheck = false;
    if (!this.instant || !this.armed) return;
    try {
      const queue = await this.editor.api.getQueue();
      if (!queue.queue_running.length && !queue.queue_pending.length && !this.busy && this.armed) this.queue();
    } catch (error) {
      this.#disarm(error.message);
    }
  }

  #disarm(why) {
    if (!this.armed) return;
    this.armed = false;
    this.editor.notify(`Queue (instant) stopped: ${why}`, "warn");
  }
}
