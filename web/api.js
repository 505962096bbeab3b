/**
 * The client of the server's HTTP and WebSocket API (ComfyUI's routes, under `/api/`).
 *
 * WebSocket messages are re-dispatched as DOM events named after their type (`executing`,
 * `progress`, ...) with the message data as `event.detail`; binary preview frames become `preview`
 * events with `{ blob, nodeId }`.
 */

const PREVIEW_IMAGE = 1;
const PREVIEW_IMAGE_WITH_METADATA = 4;

function newClientId() {
  return (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2)).replace(/-/g, "");
}

export class ApiError extends Error {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export class Api extends EventTarget {
  constructor(base = "") {
    super();
    this.base = base;
    this.clientId = sessionStorage.getItem("loom.clientId") || newClientId();
    sessionStorage.setItem("loom.clientId", this.clientId);
    this.socket = null;
    this.connected = false;
  }

  url(path) {
    return `${this.base}/api${path}`;
  }

  async request(path, options = {}) {
    const response = await fetch(this.url(path), options);
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = text; }
    if (!response.ok) {
      const error = body?.error;
      const message = (error?.message && [error.message, error.details].filter(Boolean).join(": "))
        || error || body?.message || `${response.status} ${response.statusText}`;
      throw new ApiError(typeof message === "string" ? message : JSON.stringify(message), response.status, body);
    }
    return body;
  }

  postJson(path, data) {
    return this.request(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });
  }

  objectInfo() {
    return this.request("/object_info");
  }

  /** The server's default workflow, or null when it offers none. */
  async defaultWorkflow() {
    try {
      return await this.request("/workflows/default");
    } catch {
      return null;
    }
  }

  /** What the server asks the editor to show once (`[{ id, level, text }]`); [] when it cannot say. */
  async notices() {
    try {
      const notices = await this.request("/notices");
      return Array.isArray(notices) ? notices : [];
    } catch {
      return [];
    }
  }

  /** UI workflow -> API prompt, converted by the server (the one implementation of the conversion). */
  async convert(workflow) {
    const result = await this.postJson("/workflow/convert", { workflow });
    return { prompt: result?.prompt ?? result, warnings: result?.warnings || [] };
  }

  /** Queue a prompt; resolves to `{ prompt_id, number, node_errors }`, throws ApiError (with body) on 400. */
  queuePrompt(prompt, workflow, { front = false } = {}) {
    const body = { prompt, client_id: this.clientId, extra_data: { extra_pnginfo: { workflow } } };
    if (front) body.front = true;
    return this.postJson("/prompt", body);
  }

  interrupt() {
    return this.postJson("/interrupt", {});
  }

  /** `{ queue_running, queue_pending }`, each a list of `[number, prompt_id, prompt, extra_data, outputs]`. */
  getQueue() {
    return this.request("/queue");
  }

  clearQueue() {
    return this.postJson("/queue", { clear: true });
  }

  /** Cancel one prompt: taken off the queue when pending, interrupted when running. */
  cancelPrompt(promptId) {
    return this.postJson(`/queue/${encodeURIComponent(promptId)}/cancel`, {});
  }

  /** Finished prompts, newest last: `{ prompt_id: { prompt, outputs, status } }`. */
  getHistory(maxItems = 64) {
    return this.request(`/history?max_items=${maxItems}`);
  }

  clearHistory() {
    return this.postJson("/history", { clear: true });
  }

  async getSettings() {
    try {
      return (await this.request("/settings")) || {};
    } catch {
      return {};
    }
  }

  setSetting(id, value) {
    return this.postJson(`/settings/${encodeURIComponent(id)}`, value);
  }

  // ---- ComfyUI's user-data API: files under the server's user folder, `path` like "workflows/a.json"

  #userdata(path, query = "") {
    return `/userdata/${encodeURIComponent(path)}${query}`;
  }

  /** `[{ path, size, modified, created }]` of the files under `dir` (sub-folders too); [] when it has none. */
  async listUserData(dir) {
    try {
      return await this.request(`/userdata?dir=${encodeURIComponent(dir)}&recurse=true&full_info=true`);
    } catch (error) {
      if (error.status === 404) return [];
      throw error;
    }
  }

  /** A user-data file parsed as JSON. */
  getUserData(path) {
    return this.request(this.#userdata(path));
  }

  /** Write a user-data file (JSON); `overwrite: false` fails with status 409 when the name is taken. */
  saveUserData(path, data, { overwrite = true } = {}) {
    return this.request(this.#userdata(path, `?overwrite=${overwrite}&full_info=true`), {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: typeof data === "string" ? data : JSON.stringify(data) });
  }

  deleteUserData(path) {
    return this.request(this.#userdata(path), { method: "DELETE" });
  }

  moveUserData(path, dest, { overwrite = false } = {}) {
    return this.request(`/userdata/${encodeURIComponent(path)}/move/${encodeURIComponent(dest)}?overwrite=${overwrite}&full_info=true`,
      { method: "POST" });
  }

  /** The example workflows shipped with the server: `[{ name, title, description, thumbnail, models }]`. */
  templates() {
    return this.request("/workflows/templates");
  }

  template(name) {
    return this.request(`/workflows/templates/${encodeURIComponent(name)}`);
  }

  async uploadImage(file, { overwrite = false } = {}) {
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("type", "input");
    if (overwrite) form.append("overwrite", "true");
    return this.request("/upload/image", { method: "POST", body: form });
  }

  /**
   * ComfyUI's mask upload: the PNG's alpha is the mask (transparent = masked); the server puts it on the image
   * `originalRef` names (`{ filename, subfolder, type }`) and saves the result in input/clipspace/.
   */
  uploadMask(blob, filename, originalRef) {
    const form = new FormData();
    form.append("image", blob, filename);
    form.append("original_ref", JSON.stringify(originalRef));
    form.append("type", "input");
    form.append("subfolder", "clipspace");
    return this.request("/upload/mask", { method: "POST", body: form });
  }

  viewUrl({ filename, subfolder = "", type = "output" }) {
    const query = new URLSearchParams({ filename, subfolder, type });
    return this.url(`/view?${query}`);
  }

  /** Open the WebSocket (reconnecting after a drop). */
  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${this.base}/ws?clientId=${this.clientId}`);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.connected = true;
      // latent_previews: Loom's opt-in to step previews (the server sends none to clients that do not ask)
      socket.send(JSON.stringify({ type: "feature_flags", data: { supports_preview_metadata: true, latent_previews: true } }));
      this.dispatchEvent(new CustomEvent("connected"));
    });
    socket.addEventListener("close", () => {
      const was = this.connected;
      this.connected = false;
      if (was) this.dispatchEvent(new CustomEvent("disconnected"));
      setTimeout(() => this.connect(), 1000);
    });
    socket.addEventListener("message", (event) => this.receive(event.data));
  }

  /** Handle one WebSocket message: JSON text, or a binary preview frame. */
  receive(data) {
    if (data instanceof ArrayBuffer) {
      const view = new DataView(data);
      const kind = view.getUint32(0);
      if (kind === PREVIEW_IMAGE) {
        const format = view.getUint32(4) === 2 ? "image/png" : "image/jpeg";
        this.dispatchEvent(new CustomEvent("preview", { detail: { blob: new Blob([data.slice(8)], { type: format }), nodeId: null } }));
      } else if (kind === PREVIEW_IMAGE_WITH_METADATA) {
        const length = view.getUint32(4);
        const meta = JSON.parse(new TextDecoder().decode(data.slice(8, 8 + length)));
        const blob = new Blob([data.slice(8 + length)], { type: meta.image_type || "image/jpeg" });
        this.dispatchEvent(new CustomEvent("preview", { detail: { blob, nodeId: meta.display_node_id ?? meta.node_id } }));
      }
      return;
    }
    let message;
    try { message = JSON.parse(data); } catch { return; }
    if (message?.type === "status" && message.data?.sid && message.data.sid !== this.clientId) {
      // a duplicated tab shares our session storage: the server gave it its own id, use that one
      this.clientId = message.data.sid;
      sessionStorage.setItem("loom.clientId", this.clientId);
    }
    if (message?.type) this.dispatchEvent(new CustomEvent(message.type, { detail: message.data }));
  }
}
