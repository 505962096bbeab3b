/**
 * The side panel: queue (running and pending prompts, cancel one, clear), history (thumbnails; a click
 * loads the workflow that made the images), gallery (every output image, a click shows it full size),
 * the keyboard shortcuts table and the settings (kept on the server through `/settings`).
 */
import { element } from "./dom.js";
import { shortcutRows } from "./keymap.js";

const TABS = [["queue", "Queue"], ["history", "History"], ["gallery", "Gallery"], ["shortcuts", "Shortcuts"],
  ["settings", "Settings"]];

/** Settings the editor understands: id, label, kind, default. */
export const SETTINGS = [
  { id: "Loom.Minimap.Visible", label: "Show the minimap", kind: "boolean", default: true },
  { id: "Loom.Canvas.ZoomSpeed", label: "Wheel zoom speed", kind: "number", default: 1, min: 0.2, max: 3, step: 0.1 },
];

/** Output images of a history entry, in node order. */
function imagesOf(entry) {
  const images = [];
  for (const output of Object.values(entry.outputs || {})) {
    for (const image of output.images || []) if (image?.filename) images.push(image);
  }
  return images;
}

/**
 * Why a history entry did not finish: its last `execution_error` (or `execution_interrupted`) status
 * message, as one line: `node 7 (KSampler "Base pass"): the message`. Null for a run that succeeded.
 */
export function failureText(entry) {
  const messages = Array.isArray(entry?.status?.messages) ? entry.status.messages : [];
  const last = (type) => messages.filter((m) => Array.isArray(m) && m[0] === type && m[1] && typeof m[1] === "object").pop()?.[1];
  const error = last("execution_error");
  const interrupted = !error && entry?.status?.status_str !== "success" ? last("execution_interrupted") : null;
  const data = error || interrupted;
  if (!data) return null;
  let where = "";
  if (data.node_id != null) {
    const title = entry.prompt?.[2]?.[data.node_id]?._meta?.title;
    const type = data.node_type || entry.prompt?.[2]?.[data.node_id]?.class_type || "";
    const name = [type, title && title !== type ? `"${title}"` : ""].filter(Boolean).join(" ");
    where = `node ${data.node_id}${name ? ` (${name})` : ""}`;
  }
  const message = error ? String(data.exception_message ?? "").trim() || data.exception_type || "failed" : "interrupted";
  return where ? `${where}: ${message}` : message;
}

export class Sidebar {
  constructor(editor) {
    this.editor = editor;
    this.api = editor.api;
    this.tab = "queue";
    this.root = element("aside", { className: "sidebar", hidden: true });
    this.tabs = element("nav", { className: "sidebar-tabs" }, TABS.map(([id, label]) =>
      element("button", { textContent: label, dataset: { tab: id }, onclick: () => this.show(id) })));
    this.panels = new Map(); // panels other modules add: id -> { render, live }
    this.body = element("div", { className: "sidebar-body" });
    this.root.append(this.tabs, this.body);
    document.querySelector(".stage").appendChild(this.root);
    editor.execution.addEventListener("status", () => this.refreshSoon());
    for (const type of ["execution_start", "execution_success", "execution_error", "execution_interrupted"]) {
      this.api.addEventListener(type, () => this.refreshSoon());
    }
  }

  /**
   * Add a panel: a tab button and `render()` (resolving to its element). `live` panels are redrawn when
   * prompts start and finish, like the queue.
   */
  addPanel(id, label, render, { live = false, first = false } = {}) {
    this.panels.set(id, { render, live });
    const button = element("button", { textContent: label, dataset: { tab: id }, onclick: () => this.show(id) });
    if (first) this.tabs.prepend(button);
    else this.tabs.append(button);
  }

  get open() {
    return !this.root.hidden;
  }

  toggle(tab = this.tab) {
    if (this.open && tab === this.tab) this.close();
    else this.show(tab);
  }

  close() {
    this.root.hidden = true;
  }

  show(tab) {
    this.tab = tab;
    this.root.hidden = false;
    for (const button of this.tabs.children) button.classList.toggle("active", button.dataset.tab === tab);
    return this.refresh();
  }

  refreshSoon() {
    if (!this.open || this.timer || this.panels.get(this.tab)?.live === false) return;
    this.timer = setTimeout(() => { this.timer = null; this.refresh(); }, 150);
  }

  async refresh() {
    const tab = this.tab;
    let content;
    try {
      content = await this.#render(tab);
    } catch (error) {
      content = element("p", { className: "sidebar-error", textContent: `Could not load: ${error.message}` });
    }
    if (tab !== this.tab) return;
    this.body.replaceChildren(content);
  }

  #render(tab) {
    if (this.panels.has(tab)) return this.panels.get(tab).render();
    if (tab === "queue") return this.#queue();
    if (tab === "history") return this.#history(false);
    if (tab === "gallery") return this.#history(true);
    if (tab === "shortcuts") return this.#shortcuts();
    return this.#settings();
  }

  async #queue() {
    const queue = await this.api.getQueue();
    const row = (item, state) => {
      const [number, promptId] = item;
      const li = element("li", { className: `queue-item ${state}`, dataset: { promptId } }, [
        element("span", { className: "queue-state", textContent: state }),
        element("span", { className: "queue-label", textContent: `#${number} ${promptId.slice(0, 8)}` }),
        element("button", { textContent: state === "running" ? "Stop" : "Cancel", className: "queue-cancel",
          onclick: async () => { await this.api.cancelPrompt(promptId).catch((e) => this.editor.notify(e.message, "error")); this.refresh(); } }),
      ]);
      this.decorateQueueItem?.(li, item, state); // the prompt's progress (ui/queue-progress.js)
      return li;
    };
    const items = [...queue.queue_running.map((i) => row(i, "running")), ...queue.queue_pending.map((i) => row(i, "pending"))];
    return element("div", {}, [
      element("div", { className: "sidebar-actions" }, [
        element("button", { textContent: "Clear pending", className: "queue-clear",
          onclick: async () => { await this.api.clearQueue(); this.refresh(); } }),
      ]),
      items.length ? element("ul", { className: "queue-list" }, items) : element("p", { className: "muted", textContent: "Nothing queued." }),
    ]);
  }

  async #history(galleryOnly) {
    const history = await this.api.getHistory();
    const entries = Object.entries(history).reverse(); // newest first
    if (galleryOnly) {
      const images = entries.flatMap(([, entry]) => imagesOf(entry));
      if (!images.length) return element("p", { className: "muted", textContent: "No images yet." });
      return element("div", { className: "gallery" }, images.map((image, i) => element("img", {
        className: "thumb", src: this.api.viewUrl(image), loading: "lazy", title: image.filename,
        onclick: () => this.#lightbox(images, i),
      })));
    }
    if (!entries.length) return element("p", { className: "muted", textContent: "No history yet." });
    return element("div", {}, [
      element("div", { className: "sidebar-actions" }, [
        element("button", { textContent: "Clear history", onclick: async () => { await this.api.clearHistory(); this.refresh(); } }),
      ]),
      element("ul", { className: "history-list" }, entries.map(([promptId, entry]) => {
        const images = imagesOf(entry);
        const workflow = entry.prompt?.[3]?.extra_pnginfo?.workflow;
        const status = entry.status?.status_str || (entry.status?.completed ? "success" : "");
        const failure = failureText(entry);
        return element("li", { className: "history-item", dataset: { promptId }, title: workflow ? "Load this workflow" : "",
          onclick: () => {
            if (!workflow) { this.editor.notify("This prompt was queued without its workflow", "warn"); return; }
            this.editor.loadWorkflow(workflow);
            this.editor.notify("Loaded the workflow of this run");
          } }, [
          ...images.slice(0, 4).map((image) => element("img", { className: "thumb", src: this.api.viewUrl(image), loading: "lazy" })),
          element("span", { className: `history-label ${status}`, textContent: `${promptId.slice(0, 8)} ${status}` }),
          ...(failure ? [element("span", { className: `history-failure${this.onFailureClick ? " clickable" : ""}`,
            textContent: failure, title: this.onFailureClick ? "Show the node that failed" : "",
            onclick: (event) => { if (!this.onFailureClick) return; event.stopPropagation(); this.onFailureClick(entry); } })] : []),
        ]);
      })),
    ]);
  }

  /** The full-size view of one image; arrows step through the list, Escape or a click closes it. */
  #lightbox(images, index) {
    document.querySelector(".lightbox")?.remove();
    const img = element("img", { className: "lightbox-image" });
    const box = element("div", { className: "lightbox", tabIndex: 0 }, [img]);
    const show = (i) => { index = (i + images.length) % images.length; img.src = this.api.viewUrl(images[index]); };
    box.addEventListener("click", () => box.remove());
    box.addEventListener("keydown", (event) => {
      event.stopPropagation();
      if (event.key === "Escape") box.remove();
      else if (event.key === "ArrowRight") show(index + 1);
      else if (event.key === "ArrowLeft") show(index - 1);
    });
    show(index);
    document.body.appendChild(box);
    box.focus();
  }

  #shortcuts() {
    return element("table", { className: "shortcuts" }, shortcutRows().map(([keys, action]) =>
      element("tr", {}, [element("td", { className: "keys", textContent: keys }), element("td", { textContent: action })])));
  }

  #settings() {
    const settings = this.editor.settings;
    return element("div", { className: "settings" }, SETTINGS.map((spec) => {
      const value = settings.get(spec.id);
      const input = spec.kind === "boolean"
        ? element("input", { type: "checkbox", checked: Boolean(value) })
        : element("input", { type: "number", value, min: spec.min, max: spec.max, step: spec.step });
      input.dataset.setting = spec.id;
      input.addEventListener("change", () => {
        settings.set(spec.id, spec.kind === "boolean" ? input.checked : Number(input.value));
      });
      return element("label", { className: "setting" }, [element("span", { textContent: spec.label }), input]);
    }));
  }
}
