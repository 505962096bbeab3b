/**
 * Per-prompt progress for the Queue panel: from the WebSocket events of each prompt (cached nodes, the node
 * running, its sampler steps, nodes finished), how far it is: `done` of `total` nodes, and the running node's
 * step `value` of `max`. Rows of the panel get a line and a bar that follow the events live.
 */
export class QueueProgress {
  constructor(editor) {
    this.prompts = new Map(); // prompt id -> { done: Set, node, value, max, finished }
    this.totals = new Map(); // prompt id -> { total, types: { node id -> class_type } } from the queue listing
    const on = (type, handler) => editor.api.addEventListener(type, (event) => {
      const data = event.detail || {};
      if (data.prompt_id) { handler.call(this, this.#record(data.prompt_id), data); this.#update(data.prompt_id); }
    });
    on("execution_start", () => {});
    on("execution_cached", (p, data) => { for (const id of data.nodes || []) p.done.add(String(id)); });
    on("executing", (p, data) => {
      if (p.node != null) p.done.add(p.node);
      if (data.node == null) { p.finished = true; p.node = null; return; }
      p.node = String(data.node);
      p.value = 0;
      p.max = 0;
    });
    on("progress", (p, data) => { p.value = Number(data.value) || 0; p.max = Number(data.max) || 0; });
    on("executed", (p, data) => { if (data.node != null) p.done.add(String(data.node)); });
    for (const type of ["execution_success", "execution_error", "execution_interrupted"]) {
      on(type, (p) => { p.finished = true; p.node = null; });
    }
    editor.sidebar.decorateQueueItem = (li, item, state) => this.#decorate(li, item, state);
  }

  #record(promptId) {
    if (!this.prompts.has(promptId)) {
      this.prompts.set(promptId, { done: new Set(), node: null, value: 0, max: 0, finished: false });
      if (this.prompts.size > 200) this.prompts.delete(this.prompts.keys().next().value);
    }
    return this.prompts.get(promptId);
  }

  /** `{ done, total, node, type, value, max, fraction }` of a prompt, or null when nothing is known of it. */
  state(promptId) {
    const p = this.prompts.get(promptId);
    const known = this.totals.get(promptId);
    if (!p && !known) return null;
    const done = p ? p.done.size : 0;
    const total = Math.max(known?.total || 0, done);
    const step = p?.max ? p.value / p.max : 0;
    const fraction = total ? Math.min(1, (done + (p?.node != null ? step : 0)) / total) : 0;
    return { done, total, node: p?.node ?? null, type: p?.node != null ? known?.types[p.node] || null : null,
      value: p?.value || 0, max: p?.max || 0, fraction, finished: Boolean(p?.finished) };
  }

  #decorate(li, item, state) {
    const [, promptId, prompt] = item;
    if (prompt && typeof prompt === "object") {
      const types = Object.fromEntries(Object.entries(prompt).map(([id, n]) => [id, n?.class_type || ""]));
      this.totals.set(promptId, { total: Object.keys(prompt).length, types });
    }
    const bar = document.createElement("span");
    const line = document.createElement("span");
    line.className = "queue-progress-text";
    const box = document.createElement("span");
    box.className = "queue-progress";
    box.dataset.state = state;
    const track = document.createElement("div");
    track.className = "bar";
    track.append(bar);
    box.append(line, track);
    li.append(box);
    this.#update(promptId, box);
  }

  #update(promptId, box = document.querySelector(`.queue-item[data-prompt-id="${CSS.escape(promptId)}"] .queue-progress`)) {
    if (!box) return;
    const s = this.state(promptId);
    const [line, track] = box.children;
    if (!s || (!s.done && s.node == null && box.dataset.state === "pending")) {
      line.textContent = "waiting";
      track.firstChild.style.width = "0%";
      box.dataset.fraction = "0";
      return;
    }
    const step = s.node != null ? ` · ${s.type || "node"} #${s.node}${s.max ? ` step ${s.value}/${s.max}` : ""}` : "";
    line.textContent = `${s.done}/${s.total} nodes${step}`;
    track.firstChild.style.width = `${Math.round(s.fraction * 100)}%`;
    box.dataset.fraction = s.fraction.toFixed(3);
  }
}
