/**
 * The Nodes panel of the side panel: every node type as a tree of its categories (`image/mask/...`), with
 * the description `/object_info` gives as each entry's tooltip; search by name, type or category (matching
 * entries shown, their categories opened). A click adds the node in the middle of the view; dragging one onto
 * the canvas adds it where it is dropped.
 */
import { element } from "./dom.js";
import { addFromLibrary, installLibraryDrop, makeDraggable, viewCentre } from "./library-drop.js";

export class NodeLibrary {
  constructor(editor, sidebar) {
    this.editor = editor;
    this.sidebar = sidebar;
    this.query = "";
    this.open = new Set();
    installLibraryDrop(editor);
  }

  /** `{ name, children: Map, defs: [] }` from the definitions' categories. */
  tree() {
    const root = { name: "", path: "", children: new Map(), defs: [] };
    for (const def of this.editor.defs.all()) {
      if (def.deprecated) continue;
      let branch = root;
      for (const part of (def.category || "other").split("/").filter(Boolean)) {
        if (!branch.children.has(part)) {
          branch.children.set(part, { name: part, path: branch.path ? `${branch.path}/${part}` : part, children: new Map(), defs: [] });
        }
        branch = branch.children.get(part);
      }
      branch.defs.push(def);
    }
    return root;
  }

  add(type, pos = null) {
    return addFromLibrary(this.editor, { type }, pos || viewCentre(this.editor));
  }

  render() {
    const search = element("input", { type: "search", className: "library-search node-search", placeholder: "Search nodes",
      value: this.query });
    const root = this.tree();
    const branches = [...root.children.values()].sort((a, b) => a.name.localeCompare(b.name)).map((b) => this.#branch(b));
    const leaves = root.defs.map((def) => this.#leaf(def));
    const empty = element("p", { className: "library-empty", textContent: "No node matches." });
    const body = element("div", { className: "node-tree" }, [...branches, ...(leaves.length ? [element("ul", {}, leaves)] : [])]);
    const filter = () => {
      this.query = search.value;
      const words = this.query.toLowerCase().split(/\s+/).filter(Boolean);
      const visit = (details) => {
        let count = 0;
        for (const child of details.querySelectorAll(":scope > ul > li.library-item")) {
          const match = words.every((w) => child.dataset.search.includes(w));
          child.hidden = !match;
          if (match) count++;
        }
        for (const sub of details.querySelectorAll(":scope > details")) count += visit(sub);
        details.hidden = count === 0;
        if (words.length) details.open = count > 0;
        else details.open = this.open.has(details.dataset.path);
        return count;
      };
      const shown = [...body.querySelectorAll(":scope > details")].reduce((sum, d) => sum + visit(d), 0);
      empty.hidden = shown > 0;
    };
    search.addEventListener("input", filter);
    search.addEventListener("keydown", (event) => event.stopPropagation());
    filter();
    return element("div", { className: "library node-library" }, [search, body, empty]);
  }

  #branch(branch) {
    const children = [...branch.children.values()].sort((a, b) => a.name.localeCompare(b.name)).map((b) => this.#branch(b));
    const defs = branch.defs.sort((a, b) => a.displayName.localeCompare(b.displayName)).map((def) => this.#leaf(def));
    const details = element("details", { className: "node-category", dataset: { path: branch.path } }, [
      element("summary", {}, [branch.name, element("span", { className: "count", textContent: String(this.#count(branch)) })]),
      ...children,
      element("ul", {}, defs),
    ]);
    details.addEventListener("toggle", (event) => {
      if (event.target !== details || this.query.trim()) return;
      if (details.open) this.open.add(branch.path);
      else this.open.delete(branch.path);
    });
    return details;
  }

  #count(branch) {
    let count = branch.defs.length;
    for (const child of branch.children.values()) count += this.#count(child);
    return count;
  }

  #leaf(def) {
    const tooltip = [def.displayName !== def.type ? `${def.displayName} (${def.type})` : def.type, def.description]
      .filter(Boolean).join("\n");
    const row = element("li", { className: "library-item node-item", title: tooltip,
      dataset: { type: def.type, search: def.searchText }, onclick: () => this.add(def.type) }, [
      element("span", { className: "name", textContent: def.displayName }),
    ]);
    makeDraggable(row, { type: def.type });
    return row;
  }
}
