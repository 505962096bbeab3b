/**
 * Workflow tabs: several open workflows, each with its own graph, undo history and unsaved marker, and
 * saving them on the server through ComfyUI's user-data API (`workflows/<name>.json` in the user folder).
 *
 * The editor has one Graph and one canvas; the tab in front owns them. A tab sent to the back keeps its
 * workflow as JSON (view included) and its History; brought back, the JSON is loaded again with the
 * History kept, so undo goes on where it stopped. A tab is unsaved when its graph as last recorded by
 * its History differs from the one last saved (or opened). The open tabs are kept in localStorage and
 * come back on reload.
 */
import { History } from "./graph/history.js";
import { element } from "./ui/dom.js";

const TABS_KEY = "loom.tabs";
const SINGLE_KEY = "loom.workflow"; // what the editor kept before it had tabs
export const WORKFLOWS_DIR = "workflows";
const UNTITLED = "Unsaved Workflow";

/** "workflows/sub/My flow.json" -> "My flow". */
export function nameOfPath(path) {
  return path.split("/").pop().replace(/\.json$/i, "");
}

/** A name typed by the user -> the user-data path it is saved at. */
export function pathOfName(name) {
  const clean = name.trim().replace(/\\/g, "/").replace(/^\/+/, "");
  return `${WORKFLOWS_DIR}/${/\.json$/i.test(clean) ? clean : `${clean}.json`}`;
}

export class Workspace extends EventTarget {
  constructor(editor) {
    super();
    this.editor = editor;
    this.api = editor.api;
    this.tabs = [];
    this.active = null;
    this.nextId = 1;
    this.bar = element("div", { className: "workflow-tabs", role: "tablist" });
    const toolbar = document.querySelector(".toolbar");
    toolbar?.insertBefore(this.bar, toolbar.querySelector(".spacer"));
    editor.workspace = this;
  }

  // ---------------------------------------------------------------- tabs

  #history() {
    const editor = this.editor;
    return new History(editor.graph, (data) => editor.restoreSnapshot(data), () => editor.interaction.drag !== null);
  }

  #newTab({ name, path = null, data = null, modified = false }) {
    const tab = { id: this.nextId++, name: name || this.#untitledName(), path, data, history: this.#history(),
      saved: undefined, restoredModified: modified };
    tab.history.onRecord = () => { if (tab === this.active) this.render(); };
    return tab;
  }

  #untitledName() {
    const taken = new Set(this.tabs.map((t) => t.name));
    if (!taken.has(UNTITLED)) return UNTITLED;
    let n = 2;
    while (taken.has(`${UNTITLED} (${n})`)) n++;
    return `${UNTITLED} (${n})`;
  }

  isModified(tab) {
    if (tab.saved === undefined) return tab.restoredModified; // restored, not yet brought to the front
    return tab.saved === null || tab.history.current !== tab.saved;
  }

  /** The tab in front keeps its workflow (and leaves any open subgraph) before another one comes. */
  #stash() {
    const tab = this.active;
    if (!tab) return;
    const editor = this.editor;
    while (editor.closeSubgraph()) { /* the whole workflow, not the inside of a subgraph */ }
    tab.history.flush();
    tab.data = editor.serializeWorkflow();
  }

  /** Bring `tab` to the front: its graph in the editor, its history the editor's. */
  #show(tab, { fit = false } = {}) {
    const editor = this.editor;
    this.active = tab;
    editor.history = tab.history;
    const known = tab.history.current !== null;
    try {
      editor.loadWorkflow(tab.data, { fit, keepHistory: known });
    } catch (error) {
      editor.notify(`Could not open ${tab.name}: ${error.message}`, "error");
      editor.clearWorkflow();
      tab.history.reset();
    }
    if (tab.saved === undefined) tab.saved = tab.restoredModified ? null : tab.history.current;
    this.render();
    this.persist();
    this.dispatchEvent(new CustomEvent("change"));
  }

  select(tab) {
    if (!tab || tab === this.active) return;
    this.#stash();
    this.#show(tab);
  }

  /** Open `data` (a UI workflow or API prompt) in a new tab in front; `path` when it is a saved file. */
  open(data, { name = null, path = null, modified = false, fit = false } = {}) {
    this.#stash();
    const tab = this.#newTab({ name: name || (path ? nameOfPath(path) : null), path, data, modified });
    const index = this.active ? this.tabs.indexOf(this.active) + 1 : this.tabs.length;
    this.tabs.splice(index, 0, tab);
    this.#show(tab, { fit });
    return tab;
  }

  /** A new tab with the default workflow. */
  async newTab() {
    return this.open(await this.editor.defaultWorkflowData(), { fit: true });
  }

  /** Close a tab (asking first when it has unsaved changes); the last one closed leaves a new default tab. */
  async close(tab, { force = false } = {}) {
    if (!force && this.isModified(tab) && !window.confirm(`${tab.name} has unsaved changes. Close it anyway?`)) return false;
    const index = this.tabs.indexOf(tab);
    if (index < 0) return false;
    this.tabs.splice(index, 1);
    if (tab === this.active) {
      this.active = null;
      const next = this.tabs[Math.min(index, this.tabs.length - 1)];
      if (next) this.#show(next);
      else await this.newTab();
    } else {
      this.render();
      this.persist();
    }
    return true;
  }

  tabOfPath(path) {
    return this.tabs.find((t) => t.path === path) || null;
  }

  // ---------------------------------------------------------------- kept across reloads

  persist() {
    if (!this.active) return;
    const tabs = this.tabs.map((tab) => ({ name: tab.name, path: tab.path, modified: this.isModified(tab),
      data: tab === this.active ? this.editor.serializeWorkflow() : tab.data }));
    try {
      localStorage.setItem(TABS_KEY, JSON.stringify({ active: this.tabs.indexOf(this.active), tabs }));
    } catch (error) {
      console.warn("could not keep the open workflows in localStorage:", error);
    }
  }

  /** Reopen the tabs of the last visit (or the single workflow kept before tabs); false when none. */
  restore() {
    let kept = null;
    try {
      kept = JSON.parse(localStorage.getItem(TABS_KEY) || "null");
      if (!kept?.tabs?.length) {
        const single = JSON.parse(localStorage.getItem(SINGLE_KEY) || "null");
        kept = single ? { active: 0, tabs: [{ name: null, path: null, modified: false, data: single }] } : null;
      }
    } catch {
      kept = null;
    }
    const entries = (kept?.tabs || []).filter((t) => t && t.data && typeof t.data === "object");
    if (!entries.length) return false;
    for (const entry of entries) {
      const path = typeof entry.path === "string" ? entry.path : null;
      this.tabs.push(this.#newTab({ name: entry.name || (path ? nameOfPath(path) : null), path, data: entry.data,
        modified: Boolean(entry.modified) }));
    }
    const active = Number.isInteger(kept.active) && this.tabs[kept.active] ? this.tabs[kept.active] : this.tabs[0];
    this.#show(active);
    return true;
  }

  // ---------------------------------------------------------------- saving on the server

  /** The saved workflows: `[{ path, name, size, modified }]`, newest first. */
  async list() {
    const files = await this.api.listUserData(WORKFLOWS_DIR);
    return files.filter((f) => /\.json$/i.test(f.path))
      .map((f) => ({ ...f, path: `${WORKFLOWS_DIR}/${f.path}`, name: f.path.replace(/\.json$/i, "") }))
      .sort((a, b) => b.modified - a.modified || a.name.localeCompare(b.name));
  }

  /** Save the tab in front (Ctrl+S); a tab never saved needs a name first: false then. */
  async save(tab = this.active) {
    if (!tab.path) return false;
    await this.#write(tab, tab.path, { overwrite: true });
    return true;
  }

  /** Save the tab in front under `name`; a taken name needs `overwrite`, else the ApiError (409) is thrown. */
  async saveAs(name, { overwrite = false, tab = this.active } = {}) {
    const path = pathOfName(name);
    await this.#write(tab, path, { overwrite });
    tab.path = path;
    tab.name = nameOfPath(path);
    this.render();
    this.persist();
    return path;
  }

  async #write(tab, path, { overwrite }) {
    let data = tab.data;
    if (tab === this.active) {
      tab.history.commit();
      data = this.editor.serializeWorkflow();
    }
    await this.api.saveUserData(path, data, { overwrite });
    if (tab === this.active) tab.saved = tab.history.current;
    else { tab.saved = undefined; tab.restoredModified = false; }
    this.render();
    this.persist();
    this.dispatchEvent(new CustomEvent("saved", { detail: { path } }));
  }

  /** Open a saved workflow (brings its tab to the front when it is open already). */
  async openSaved(path) {
    const open = this.tabOfPath(path);
    if (open) { this.select(open); return open; }
    const data = await this.api.getUserData(path);
    return this.open(data, { path });
  }

  async rename(path, newName) {
    const dest = pathOfName(newName);
    if (dest === path) return path;
    await this.api.moveUserData(path, dest, { overwrite: false });
    const tab = this.tabOfPath(path);
    if (tab) { tab.path = dest; tab.name = nameOfPath(dest); this.render(); this.persist(); }
    return dest;
  }

  /** Delete a saved workflow; an open tab of it stays, unsaved. */
  async remove(path) {
    await this.api.deleteUserData(path);
    const tab = this.tabOfPath(path);
    if (tab) {
      tab.path = null;
      if (tab === this.active) tab.saved = null;
      else { tab.saved = undefined; tab.restoredModified = true; }
      this.render();
      this.persist();
    }
  }

  /** A copy of a saved workflow beside it ("name copy", "name copy 2", ...); the copy's path. */
  async duplicate(path) {
    const data = await this.api.getUserData(path);
    const base = path.replace(/\.json$/i, "");
    for (let n = 1; n < 100; n++) {
      const dest = `${base} copy${n > 1 ? ` ${n}` : ""}.json`;
      try {
        await this.api.saveUserData(dest, data, { overwrite: false });
        return dest;
      } catch (error) {
        if (error.status !== 409) throw error;
      }
    }
    throw new Error("too many copies");
  }

  // ---------------------------------------------------------------- the tab bar

  render() {
    const tabs = this.tabs.map((tab) => {
      const modified = this.isModified(tab);
      const classes = ["workflow-tab", tab === this.active ? "active" : "", modified ? "modified" : ""].filter(Boolean);
      return element("div", { className: classes.join(" "), role: "tab", title: tab.path || `${tab.name} (not saved on the server)`,
        dataset: { tabId: String(tab.id), path: tab.path || "" },
        onclick: () => this.select(tab),
        onauxclick: (event) => { if (event.button === 1) this.close(tab); } }, [
        element("span", { className: "tab-name", textContent: tab.name }),
        element("span", { className: "tab-marker", textContent: modified ? "•" : "", title: modified ? "unsaved changes" : "" }),
        element("button", { className: "tab-close", textContent: "×", title: "Close",
          onclick: (event) => { event.stopPropagation(); this.close(tab); } }),
      ]);
    });
    tabs.push(element("button", { className: "tab-new", textContent: "+", title: "New workflow tab",
      onclick: () => this.newTab() }));
    this.bar.replaceChildren(...tabs);
  }
}
