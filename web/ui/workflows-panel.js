/**
 * The Workflows panel of the side panel (W): the workflows saved on the server (`workflows/` in the user
 * folder, through ComfyUI's user-data API), searched by name; a click opens one in a tab. Save / Save as
 * for the tab in front; rename, duplicate and delete for each saved one.
 */

import { element } from "./dom.js";

/** An inline name field; resolves to the typed name (Enter / OK) or null (Escape / Cancel). */
function nameField(container, value, label) {
  return new Promise((resolve) => {
    const input = element("input", { type: "text", className: "workflow-name-input", value, placeholder: "name" });
    const done = (result) => { row.remove(); resolve(result); };
    const ok = element("button", { textContent: label, className: "workflow-name-ok", onclick: () => done(input.value.trim() || null) });
    const cancel = element("button", { textContent: "Cancel", onclick: () => done(null) });
    input.addEventListener("keydown", (event) => {
      event.stopPropagation();
      if (event.key === "Enter") done(input.value.trim() || null);
      else if (event.key === "Escape") done(null);
    });
    const row = element("div", { className: "workflow-name-row" }, [input, ok, cancel]);
    container.replaceChildren(row);
    input.focus();
    input.select();
  });
}

export class WorkflowsPanel {
  constructor(editor, sidebar) {
    this.editor = editor;
    this.sidebar = sidebar;
    this.workspace = editor.workspace;
    this.query = "";
    this.workspace.addEventListener("change", () => { if (this.visible) this.#markOpen(); });
  }

  get visible() {
    return this.sidebar.open && this.sidebar.tab === "workflows";
  }

  notifyError(what, error) {
    this.editor.notify(`${what} failed: ${error.message}`, "error");
  }

  /** Ask for a name in the panel and save the tab in front under it (asking before replacing a file). */
  async saveAs() {
    if (!this.visible) await this.sidebar.show("workflows");
    const slot = this.sidebar.body.querySelector(".workflow-prompt");
    const name = await nameField(slot, this.workspace.active.path ? this.workspace.active.name : "", "Save");
    if (!name) return null;
    try {
      return await this.workspace.saveAs(name);
    } catch (error) {
      if (error.status !== 409) { this.notifyError("Saving", error); return null; }
      if (!window.confirm(`${name} exists. Replace it?`)) return null;
      try { return await this.workspace.saveAs(name, { overwrite: true }); } catch (e) { this.notifyError("Saving", e); return null; }
    } finally {
      this.sidebar.refresh();
    }
  }

  /** Ctrl+S: save the tab in front where it was saved, or ask for a name. */
  async save() {
    try {
      if (await this.workspace.save()) {
        this.editor.notify(`Saved ${this.workspace.active.name}`);
        if (this.visible) this.sidebar.refresh();
        return this.workspace.active.path;
      }
    } catch (error) {
      this.notifyError("Saving", error);
      return null;
    }
    return this.saveAs();
  }

  #markOpen() {
    for (const row of this.sidebar.body.querySelectorAll(".workflow-item")) {
      row.classList.toggle("open", Boolean(this.workspace.tabOfPath(row.dataset.path)));
      row.classList.toggle("active", this.workspace.active?.path === row.dataset.path);
    }
  }

  async render() {
    const files = await this.workspace.list();
    const prompt = element("div", { className: "workflow-prompt" });
    const search = element("input", { type: "search", className: "workflow-search", placeholder: "Search workflows",
      value: this.query });
    const list = element("ul", { className: "workflow-list" });
    const empty = element("p", { className: "muted workflow-empty" });
    const filter = () => {
      this.query = search.value;
      const words = this.query.toLowerCase().split(/\s+/).filter(Boolean);
      let shown = 0;
      for (const row of list.children) {
        const match = words.every((w) => row.dataset.name.toLowerCase().includes(w));
        row.hidden = !match;
        if (match) shown++;
      }
      empty.hidden = shown > 0;
      empty.textContent = files.length ? "No workflow matches." : "No saved workflows yet: Save as… keeps the tab in front here.";
    };
    search.addEventListener("input", filter);
    search.addEventListener("keydown", (event) => event.stopPropagation());
    for (const file of files) list.append(this.#row(file, prompt));
    const content = element("div", { className: "workflows-panel" }, [
      element("div", { className: "sidebar-actions" }, [
        element("button", { textContent: "Save", className: "workflow-save", title: "Save the tab in front (Ctrl+S)",
          onclick: () => this.save() }),
        element("button", { textContent: "Save as…", className: "workflow-save-as", onclick: () => this.saveAs() }),
        element("button", { textContent: "Templates", className: "workflow-templates",
          onclick: () => this.editor.showTemplates?.() }),
      ]),
      prompt, search, list, empty,
    ]);
    filter();
    return content;
  }

  #row(file, prompt) {
    const ws = this.workspace;
    const act = (label, action, handler) => element("button", { textContent: label, className: "workflow-action",
      dataset: { action }, title: `${label} ${file.name}`,
      onclick: async (event) => {
        event.stopPropagation();
        try {
          if ((await handler()) === false) return; // nothing changed (yet)
        } catch (error) {
          this.notifyError(label, error);
        }
        this.sidebar.refresh();
      } });
    let armed = null;
    const remove = act("Delete", "delete", async () => {
      if (armed === null) { // a second click confirms
        remove.textContent = "Confirm";
        armed = setTimeout(() => { armed = null; remove.textContent = "Delete"; }, 3000);
        return false;
      }
      clearTimeout(armed);
      await ws.remove(file.path);
      this.editor.notify(`Deleted ${file.name}`);
    });
    const classes = ["workflow-item", ws.tabOfPath(file.path) ? "open" : "", ws.active?.path === file.path ? "active" : ""];
    return element("li", { className: classes.filter(Boolean).join(" "), dataset: { path: file.path, name: file.name }, title: `Open ${file.path}`,
      onclick: () => ws.openSaved(file.path).catch((error) => this.notifyError("Opening", error)) }, [
      element("span", { className: "workflow-label", textContent: file.name }),
      element("span", { className: "workflow-actions" }, [
        act("Rename", "rename", async () => {
          const name = await nameField(prompt, file.name, "Rename");
          if (!name) return false;
          await ws.rename(file.path, name);
        }),
        act("Duplicate", "duplicate", async () => { await ws.duplicate(file.path); }),
        remove,
      ]),
    ]);
  }
}
