/**
 * The editor: ties the graph, the canvas, the server and the UI together and holds the commands that need
 * more than the graph (add, delete, duplicate, paste, queue, subgraphs, workflows, menus, widget editors).
 * Graph edits themselves are methods of graph/model.js, each emitting one typed change; pointer gestures
 * live in canvas/gestures/, key bindings in ui/keymap.js, file open/save/upload in ui/files.js.
 */
import { GraphCanvas } from "./canvas/canvas.js";
import { Interaction } from "./canvas/interaction.js";
import { firstCompatibleSlot } from "./canvas/gestures/link-drag.js";
import { fitNodeSize, minimumSize, widgetRect, IMAGE_MIN_HEIGHT } from "./canvas/layout.js";
import { Graph, MODE_ALWAYS } from "./graph/model.js";
import { applyDynamicCombo } from "./graph/dynamic.js";
import { History } from "./graph/history.js";
import { copyPayload, pastePayload, readClipboard, writeClipboard } from "./graph/clipboard.js";
import { alignNodes, distributeNodes } from "./graph/arrange.js";
import { groupAround } from "./graph/groups.js";
import { Minimap } from "./canvas/minimap.js";
import { enterSubgraph, writeBack } from "./graph/subgraphs.js";
import { createPrimitive, createReroute } from "./graph/frontend-nodes.js";
import { Settings } from "./settings.js";
import { SETTINGS, Sidebar } from "./ui/sidebar.js";
import { NODE_COLORS } from "./graph/types.js";
import { DEFAULT_WORKFLOW } from "./graph/default-workflow.js";
import { graphFromPrompt } from "./graph/from-api.js";
import { Execution } from "./execution.js";
import { saveFile } from "./ui/files.js";
import { NodeSearch } from "./ui/search.js";
import { closeMenus, showMenu } from "./ui/menus.js";
import { showCanvasMenu, showGroupMenu, showLinkMenu, showNodeMenu, showSlotMenu } from "./ui/editor-menus.js";
import { closeOverlay, editText } from "./ui/overlays.js";
import { notify } from "./ui/notify.js";

const STORAGE_KEY = "loom.workflow";
const AUTOSAVE_DELAY_MS = 300;

function isApiPrompt(data) {
  const values = Object.values(data || {});
  return values.length > 0 && values.every((v) => v && typeof v === "object" && "class_type" in v);
}

export class Editor {
  constructor({ api, defs, canvasElement }) {
    this.api = api;
    this.defs = defs;
    this.graph = new Graph(defs);
    this.canvas = new GraphCanvas(canvasElement, this.graph);
    this.interaction = new Interaction(this.canvas, this);
    this.search = new NodeSearch(defs);
    this.execution = new Execution(api, this.graph, this.canvas, (m, l) => this.notify(m, l));
    this.autosaveTimer = null;
    this.subgraphStack = []; // entries of the subgraphs opened, outermost first
    this.settings = new Settings(api, SETTINGS);
    const stage = canvasElement.parentElement;
    this.minimap = new Minimap(this.canvas, stage);
    this.minimap.onViewChanged = () => this.viewChanged();
    this.canvas.afterDraw = () => this.minimap.draw();
    this.sidebar = new Sidebar(this);
    this.settings.addEventListener("change", () => this.applySettings());
    this.history = new History(this.graph, (data) => this.restoreSnapshot(data), () => this.interaction.drag !== null);
    // the canvas redraws on every change itself; here: autosave (and with it the tabs' unsaved marker)
    // and the undo history of the tab in front
    this.graph.onChange((change) => {
      if (change.type !== "clear") this.scheduleAutosave();
      if (change.type !== "load") this.history.schedule();
    });
  }

  notify(message, level = "info") {
    notify(message, level);
  }

  /** Settings take effect (after loading them from the server, and on every change). */
  applySettings() {
    this.minimap.setVisible(Boolean(this.settings.get("Loom.Minimap.Visible")));
    this.zoomSpeed = Number(this.settings.get("Loom.Canvas.ZoomSpeed")) || 1;
  }

  /** Alt+Shift+M: show or hide the minimap (a setting, so it is remembered). */
  toggleMinimap() {
    this.settings.set("Loom.Minimap.Visible", !this.minimap.visible);
  }

  toggleSidebar(tab) {
    return this.sidebar.toggle(tab);
  }

  // ---------------------------------------------------------------- workflows

  /** The UI workflow as saved: the graph plus the current view in `extra.ds`. */
  serializeWorkflow() {
    this.graph.extra.ds = this.canvas.viewport.serialize();
    let data = this.graph.serialize();
    // inside a subgraph: the whole workflow, with the open definitions written back
    for (let i = this.subgraphStack.length - 1; i >= 0; i--) data = writeBack(this.subgraphStack[i], data);
    return data;
  }

  // ---------------------------------------------------------------- subgraphs

  /** Show the inside of a subgraph instance as the graph (double-click on its body, or its menu). */
  openSubgraph(node) {
    this.history.commit();
    this.graph.extra.ds = this.canvas.viewport.serialize();
    const { workflow, entry } = enterSubgraph(this.graph.serialize(), node.type);
    this.subgraphStack.push(entry);
    this.loadWorkflow(workflow, { fit: true, keepStack: true });
    this.#showSubgraphPath();
  }

  /** Back to the graph around the open subgraph (Escape), with the edits written into its definition. */
  closeSubgraph() {
    const entry = this.subgraphStack.pop();
    if (!entry) return false;
    const parent = writeBack(entry, this.graph.serialize());
    this.loadWorkflow(parent, { keepStack: true });
    this.#showSubgraphPath();
    return true;
  }

  get subgraphPath() {
    return this.subgraphStack.map((e) => e.name);
  }

  #showSubgraphPath() {
    let bar = document.getElementById("subgraph-path");
    if (!bar) {
      bar = document.createElement("div");
      bar.id = "subgraph-path";
      bar.className = "subgraph-path";
      this.canvas.element.parentElement.appendChild(bar);
    }
    bar.hidden = !this.subgraphStack.length;
    bar.replaceChildren();
    const root = document.createElement("button");
    root.textContent = "Workflow";
    root.addEventListener("click", () => { while (this.closeSubgraph()) { /* up one level at a time */ } });
    bar.append(root, ...this.subgraphPath.map((name) => Object.assign(document.createElement("span"), { textContent: ` › ${name}` })));
    bar.append(Object.assign(document.createElement("span"), { className: "muted", textContent: "  (Escape to leave)" }));
  }

  /**
   * Load a UI workflow (0.4 or schema 1) or an API prompt. `keepHistory`: the undo steps stay (a workflow
   * tab coming back to the front, see workspace.js); otherwise the loaded graph starts a new history.
   */
  loadWorkflow(data, { fit = false, keepStack = false, keepHistory = false } = {}) {
    if (!keepStack && this.subgraphStack.length) {
      this.subgraphStack = [];
      this.#showSubgraphPath();
    }
    closeOverlay(false);
    closeMenus();
    this.search.close();
    this.canvas.clearSelection();
    if (typeof data === "string") data = JSON.parse(data);
    let warnings;
    if (data && Array.isArray(data.nodes)) {
      warnings = this.graph.configure(data);
      const restored = this.canvas.viewport.restore(data.extra?.ds);
      fit = fit || !restored;
    } else if (isApiPrompt(data?.prompt ?? data)) {
      warnings = graphFromPrompt(this.graph, data.prompt ?? data);
      fit = true;
    } else {
      throw new Error("this file holds neither a workflow nor an API prompt");
    }
    for (const node of this.graph.nodes) {
      fitNodeSize(node);
      this.refreshInputPreview(node);
    }
    if (fit) this.canvas.fitView();
    for (const warning of warnings) this.notify(warning, "warn");
    this.canvas.setDirty();
    if (!keepHistory) this.history.reset();
    this.saveToStorage();
    return warnings;
  }

  /** Put an undo/redo snapshot back, keeping the view, the selection and what nodes show from runs. */
  restoreSnapshot(data) {
    closeOverlay(false);
    closeMenus();
    const runtimes = new Map(this.graph.nodes.map((n) => [n.id, n.runtime]));
    const selectedIds = new Set([...this.canvas.selected].map((n) => n.id));
    this.graph.configure(data);
    for (const node of this.graph.nodes) {
      if (runtimes.has(node.id)) node.runtime = runtimes.get(node.id);
      if (node.widgets.some((w) => w.kind === "upload")) this.refreshInputPreview(node);
    }
    this.canvas.selected = new Set(this.graph.nodes.filter((n) => selectedIds.has(n.id)));
    this.canvas.setDirty();
  }

  undo() {
    if (!this.history.undo()) this.notify("Nothing to undo");
  }

  redo() {
    if (!this.history.redo()) this.notify("Nothing to redo");
  }

  /** A pointer gesture ended: its edits become one undo step. */
  gestureEnded() {
    this.history.flush();
  }

  async newWorkflow() {
    this.loadWorkflow(await this.defaultWorkflowData(), { fit: true });
  }

  /** The default text-to-image graph (the server's, else the built-in one) with a checkpoint the server has. */
  async defaultWorkflowData() {
    const fromServer = await this.api.defaultWorkflow();
    const workflow = fromServer && Array.isArray(fromServer.nodes) ? fromServer : structuredClone(DEFAULT_WORKFLOW);
    // the default's checkpoint name is a placeholder: pick the first checkpoint the server has
    const loader = workflow.nodes.find((n) => n.type === "CheckpointLoaderSimple");
    const options = this.defs.get("CheckpointLoaderSimple")?.widgets[0]?.options.values || [];
    if (loader && options.length && !options.includes(loader.widgets_values?.[0])) loader.widgets_values = [options[0]];
    return workflow;
  }

  clearWorkflow() {
    this.graph.clear();
    this.canvas.clearSelection();
    this.saveToStorage();
  }

  scheduleAutosave() {
    clearTimeout(this.autosaveTimer);
    this.autosaveTimer = setTimeout(() => this.saveToStorage(), AUTOSAVE_DELAY_MS);
  }

  saveToStorage() {
    clearTimeout(this.autosaveTimer);
    if (this.workspace) { this.workspace.persist(); return; } // every open tab, see workspace.js
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify(this.serializeWorkflow()));
    } catch (error) {
      console.warn("could not keep the workflow in localStorage:", error);
    }
  }

  /** Load the workflow kept from the last visit; false when there is none. */
  restoreFromStorage() {
    const text = localStorage.getItem(STORAGE_KEY);
    if (!text) return false;
    try {
      this.loadWorkflow(JSON.parse(text));
      return true;
    } catch (error) {
      this.notify(`The last workflow could not be restored: ${error.message}`, "warn");
      return false;
    }
  }

  viewChanged() {
    this.scheduleAutosave();
  }

  /** Ctrl+S: save on the server (the Workflows panel, when there is one), else download the JSON. */
  saveWorkflow() {
    return this.workflowsPanel ? this.workflowsPanel.save() : saveFile(this);
  }

  // ---------------------------------------------------------------- running

  /** Queue the workflow; `front` puts it before everything already waiting (Ctrl+Shift+Enter). */
  async queue({ front = false } = {}) {
    return this.execution.queue(this.serializeWorkflow(), { front });
  }

  interrupt() {
    return this.api.interrupt().catch((error) => this.notify(`Interrupt failed: ${error.message}`, "error"));
  }

  // ---------------------------------------------------------------- nodes

  /** Create a node of `type` with its title bar at graph point `pos`. */
  addNode(type, pos) {
    const node = this.graph.createNode(type);
    node.pos = [pos[0], pos[1] + 30];
    node.size = minimumSize(node);
    if (node.widgets.some((w) => w.kind === "multiline")) {
      node.size = [Math.max(node.size[0], 400), Math.max(node.size[1], 180)];
    }
    if (node.def.outputNode && node.inputs.some((i) => i.type === "IMAGE" || i.type === "MASK" || i.type === "*")) {
      node.size = [Math.max(node.size[0], 300), node.size[1] + IMAGE_MIN_HEIGHT + 120];
    }
    if (node.widgets.some((w) => w.kind === "imagecompare")) {
      node.size = [Math.max(node.size[0], 400), Math.max(node.size[1], 350)]; // ComfyUI's size for the slider
    }
    this.graph.addNode(node);
    this.refreshInputPreview(node);
    this.canvas.select(node);
    return node;
  }

  deleteSelection() {
    for (const node of [...this.canvas.selected]) this.graph.removeNode(node);
    this.canvas.clearSelection();
  }

  /** Copies of `nodes` (with the links among them) moved by `offset`; returns the copies. */
  duplicateNodes(nodes, offset = [30, 30]) {
    const graph = this.graph;
    return graph.edit((added) => ({ type: "add-nodes", nodes: added }), () => {
      const copies = new Map();
      for (const node of nodes) {
        const data = node.serialize();
        const copy = graph.createNode(node.type);
        copy.configure({ ...data, id: -1, inputs: data.inputs?.map((i) => ({ ...i, link: null })),
          outputs: data.outputs?.map((o) => ({ ...o, links: null })) });
        copy.id = -1;
        copy.pos = [node.pos[0] + offset[0], node.pos[1] + offset[1]];
        graph.addNode(copy);
        this.refreshInputPreview(copy);
        copies.set(node, copy);
      }
      for (const [node, copy] of copies) {
        node.inputs.forEach((input, slot) => {
          const link = graph.inputLink(node, slot);
          const origin = link && graph.getNode(link.origin_id);
          if (origin && copies.has(origin)) graph.connect(copies.get(origin), link.origin_slot, copy, slot);
        });
      }
      return [...copies.values()];
    });
  }

  duplicateSelection() {
    const copies = this.duplicateNodes([...this.canvas.selected].filter((n) => !n.missing));
    this.canvas.selected = new Set(copies);
    this.canvas.setDirty();
  }

  // ---------------------------------------------------------------- clipboard and arrangement

  copySelection() {
    const nodes = [...this.canvas.selected];
    if (!nodes.length) return false;
    writeClipboard(copyPayload(this.graph, nodes));
    return true;
  }

  /** Paste the copied nodes at the pointer; `keepInputLinks` (Ctrl+Shift+V) also keeps links into them. */
  paste({ keepInputLinks = false, at = null } = {}) {
    const payload = readClipboard();
    if (!payload) { this.notify("Nothing to paste"); return []; }
    const point = at || this.canvas.viewport.toGraph(...this.interaction.lastPointer);
    const copies = pastePayload(this.graph, payload, point, { keepInputLinks, prepare: (n) => this.refreshInputPreview(n) });
    this.canvas.selected = new Set(copies);
    this.canvas.setDirty();
    return copies;
  }

  alignSelection(edge) {
    this.graph.arrangeNodes([...this.canvas.selected], `align-${edge}`, (nodes) => alignNodes(nodes, edge));
  }

  distributeSelection(axis) {
    this.graph.arrangeNodes([...this.canvas.selected], `distribute-${axis}`, (nodes) => distributeNodes(nodes, axis));
  }

  /** Ctrl+B / Ctrl+M: set the selection to bypass (or mute), or back to always when all already are. */
  toggleSelectionMode(mode) {
    const nodes = [...this.canvas.selected];
    if (!nodes.length) return;
    const next = nodes.every((n) => n.mode === mode) ? MODE_ALWAYS : mode;
    this.graph.updateNodes(nodes, "mode", (node) => { node.mode = next; });
  }

  // ---------------------------------------------------------------- links: reroutes, inserting nodes

  linkMenu(link, event) {
    showLinkMenu(this, link, event);
  }

  /** Put a Reroute at the link's centre: origin -> reroute -> target. */
  addRerouteOnLink(link) {
    const graph = this.graph;
    const origin = graph.getNode(link.origin_id);
    const target = graph.getNode(link.target_id);
    return graph.edit((reroute) => ({ type: "splice", node: reroute, link }), () => {
      const reroute = graph.addNode(createReroute(this.canvas.linkCenter(link), link.type));
      const { origin_slot: outSlot, target_slot: inSlot } = link;
      graph.connect(origin, outSlot, reroute, 0);
      graph.connect(reroute, 0, target, inSlot);
      return reroute;
    });
  }

  // ---------------------------------------------------------------- widgets as inputs, primitives

  /** A PrimitiveNode left of `node` feeding the widget (converted to an input first when needed). */
  addPrimitiveFor(node, widget) {
    const graph = this.graph;
    return graph.edit((primitive) => ({ type: "add-node", node: primitive }), () => {
      graph.convertWidgetToInput(node, widget);
      const index = node.inputs.findIndex((i) => i.widget?.name === widget.name);
      const input = node.inputs[index];
      const primitive = graph.addNode(createPrimitive([node.pos[0] - 260, node.pos[1] + 20 * index], input, widget.value));
      graph.connect(primitive, 0, node, index);
      return primitive;
    });
  }

  // ---------------------------------------------------------------- groups

  /** Ctrl+G: a new group around the selected nodes. */
  groupSelection() {
    const nodes = [...this.canvas.selected];
    if (!nodes.length) return null;
    const id = Math.max(0, ...this.graph.groups.map((g) => Number(g.id) || 0)) + 1;
    return this.graph.addGroup(groupAround(nodes, id));
  }

  editGroupTitle(group) {
    const [x, y, w] = group.bounding;
    const size = group.font_size || 24;
    const [cx, cy] = this.canvas.clientPoint(x + 4, y + 4);
    const scale = this.canvas.viewport.scale;
    editText([cx, cy, Math.max(120, w - 8) * scale, size * 1.2 * scale], group.title || "", { fontSize: size * scale })
      .then((text) => {
        if (text !== null) this.graph.updateGroup(group, "title", (g) => { g.title = text; });
      });
  }

  setGroupColor(group, color) {
    this.graph.updateGroup(group, "color", (g) => { g.color = color; });
  }

  removeGroup(group) {
    this.graph.removeGroup(group);
  }

  groupMenu(group, event) {
    showGroupMenu(this, group, event);
  }

  /** P: pin the selection (pinned nodes cannot be moved or resized), or unpin it when all are pinned. */
  togglePinSelection() {
    const nodes = [...this.canvas.selected];
    if (!nodes.length) return;
    const pin = !nodes.every((n) => n.flags.pinned);
    this.graph.updateNodes(nodes, "pinned", (node) => {
      if (pin) node.flags.pinned = true;
      else delete node.flags.pinned;
    });
  }

  toggleCollapse(node) {
    this.graph.updateNodes([node], "collapsed", () => {
      node.flags.collapsed = !node.flags.collapsed;
      if (!node.flags.collapsed) delete node.flags.collapsed;
    });
  }

  editTitle(node) {
    const [x, y] = this.canvas.clientPoint(node.pos[0] + 26, node.pos[1] - 27);
    const scale = this.canvas.viewport.scale;
    const width = (node.flags.collapsed ? 200 : node.size[0] - 30) * scale;
    editText([x, y, width, 24 * scale], node.title, { fontSize: 14 * scale }).then((text) => {
      if (text !== null) this.graph.updateNodes([node], "title", () => { node.title = text.trim() || node.defaultTitle; });
    });
  }

  setMode(node, mode) {
    this.graph.updateNodes([node], "mode", () => { node.mode = mode; });
  }

  setColor(node, preset) {
    const colors = preset ? NODE_COLORS[preset] : null;
    this.graph.updateNodes([node], "color", () => {
      node.color = colors?.color;
      node.bgcolor = colors?.bgcolor;
    });
  }

  // ---------------------------------------------------------------- search

  async openSearch(graphPoint, screenPoint) {
    const rect = this.canvas.element.getBoundingClientRect();
    const def = await this.search.open(rect.left + screenPoint[0], rect.top + screenPoint[1]);
    if (def) this.addNode(def.type, graphPoint);
  }

  /** After a link is dropped on empty space: search nodes that can take it, add one and connect. */
  async searchForLink(drag, graphPoint, screenPoint) {
    const rect = this.canvas.element.getBoundingClientRect();
    const filter = { type: drag.type, wantInput: drag.fromOutput };
    const def = await this.search.open(rect.left + screenPoint[0], rect.top + screenPoint[1], filter);
    if (!def) return;
    const node = this.addNode(def.type, drag.fromOutput ? graphPoint : [graphPoint[0] - 200, graphPoint[1]]);
    const slot = firstCompatibleSlot(node, drag.type, drag.fromOutput);
    if (slot < 0) return;
    if (drag.fromOutput) this.graph.connect(drag.node, drag.slot, node, slot);
    else this.graph.connect(node, slot, drag.node, drag.slot);
  }

  /** Commit a text field or textarea that is open over the canvas. */
  commitEditing() {
    closeOverlay(true);
  }

  closePopups() {
    closeMenus();
    this.search.close();
  }

  // ---------------------------------------------------------------- menus (contents in ui/editor-menus.js)

  canvasMenu(graphPoint, event) {
    showCanvasMenu(this, graphPoint, event);
  }

  nodeMenu(node, event) {
    showNodeMenu(this, node, event);
  }

  slotMenu(slot, event) {
    showSlotMenu(this, slot, event);
  }

  // ---------------------------------------------------------------- widgets (called by widgets/*.js)

  widgetRect(node, widget) {
    return widgetRect(node, widget);
  }

  setWidgetValue(node, widget, value) {
    if (widget.value === value) return;
    this.graph.setWidget(node, widget, value, () => {
      if (widget.dynamic) {
        // the option's own inputs replace the previous option's; the node fits them
        applyDynamicCombo(this.graph, node, widget);
        const [width, height] = minimumSize(node);
        node.size = [Math.max(node.size[0], width), height];
      }
      if (node.runtime.errorInputs?.delete(widget.name) && !node.runtime.errorInputs.size) delete node.runtime.error;
      if (node.widgets.some((w) => w.kind === "upload" && w.target === widget.name)) this.refreshInputPreview(node);
    });
  }

  #clientRect([x, y, w, h]) {
    const [cx, cy] = this.canvas.clientPoint(x, y);
    const scale = this.canvas.viewport.scale;
    return [cx, cy, w * scale, h * scale];
  }

  /** A text field over a graph rectangle; resolves to the typed text or null. */
  promptValue(rect, value, options = {}) {
    return editText(this.#clientRect(rect), value, { ...options, fontSize: 12 * this.canvas.viewport.scale });
  }

  /** The option menu of a combo (with a filter field); resolves to the chosen value. */
  chooseOption(rect, values, current) {
    const [x, y, , h] = this.#clientRect(rect);
    return new Promise((resolve) => {
      showMenu(values.map((value) => ({ label: String(value), checked: value === current, action: () => resolve(value) })),
        x, y + h, { filter: true });
    });
  }

  editMultiline(node, widget) {
    const rect = this.#clientRect(widgetRect(node, widget));
    this.canvas.editingWidget = widget;
    this.canvas.setDirty();
    editText(rect, String(widget.value ?? ""), { multiline: true, fontSize: 12 * this.canvas.viewport.scale })
      .then((text) => {
        this.canvas.editingWidget = null;
        if (text !== null) this.setWidgetValue(node, widget, text);
        this.canvas.setDirty();
      });
  }

  /** For nodes with an image upload (LoadImage): show the selected input image in the node. */
  refreshInputPreview(node) {
    const upload = node.widgets.find((w) => w.kind === "upload");
    const value = upload && node.widget(upload.target)?.value;
    if (!value) { delete node.runtime.inputImage; return; }
    const text = String(value).replace(/ \[(input|output|temp)\]$/, "");
    const slash = text.lastIndexOf("/");
    const img = new Image();
    img.onload = () => {
      if (node.runtime.inputImage !== img) return;
      fitNodeSize(node);
      this.canvas.setDirty();
    };
    img.onerror = () => { if (node.runtime.inputImage === img) delete node.runtime.inputImage; };
    img.src = this.api.viewUrl({ filename: text.slice(slash + 1), subfolder: slash > 0 ? text.slice(0, slash) : "", type: "input" });
    node.runtime.inputImage = img;
  }
}
