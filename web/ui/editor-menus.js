/**
 * What the right-click menus offer: on the canvas (add a node by category, search, view and file
 * commands), on a node (title, collapse, colours, mode, size, clone, remove) and on a slot
 * (disconnect, add a compatible node).
 */
import { minimumSize } from "../canvas/layout.js";
import { NODE_COLORS } from "../graph/types.js";
import { GROUP_COLORS, nodesInGroup } from "../graph/groups.js";
import { showMenu } from "./menus.js";
import { exportApi, openFileDialog, saveFile } from "./files.js";

export function showCanvasMenu(editor, graphPoint, event) {
  const categories = () => {
    const tree = new Map();
    for (const def of editor.defs.all()) {
      if (def.deprecated) continue;
      const top = def.category.split("/")[0] || "other";
      if (!tree.has(top)) tree.set(top, []);
      tree.get(top).push(def);
    }
    return [...tree.keys()].sort().map((top) => ({
      label: top,
      submenu: () => categoryItems(editor, tree.get(top), top, graphPoint),
    }));
  };
  const screen = editor.canvas.eventPoint(event);
  showMenu([
    { label: "Undo", disabled: !editor.history.canUndo, action: () => editor.undo() },
    { label: "Redo", disabled: !editor.history.canRedo, action: () => editor.redo() },
    { label: "Paste", action: () => editor.paste({ at: graphPoint }) },
    null,
    { label: "Add Node", submenu: categories },
    { label: "Search…", action: () => editor.openSearch(graphPoint, screen) },
    null,
    { label: "Fit view", action: () => { editor.canvas.fitView(); editor.viewChanged(); } },
    { label: "Select all", action: () => { editor.canvas.selected = new Set(editor.graph.nodes); editor.canvas.setDirty(); } },
    null,
    { label: "New workflow", action: () => editor.newWorkflow() },
    { label: "Clear canvas", action: () => editor.clearWorkflow() },
    { label: "Open…", action: () => openFileDialog(editor) },
    { label: "Save", action: () => saveFile(editor) },
    { label: "Export (API)", action: () => exportApi(editor) },
  ], event.clientX, event.clientY);
}

function categoryItems(editor, defs, prefix, graphPoint) {
  const sub = new Map();
  const leaves = [];
  for (const def of defs) {
    const rest = def.category.slice(prefix.length).replace(/^\//, "");
    if (!rest) leaves.push(def);
    else {
      const key = rest.split("/")[0];
      if (!sub.has(key)) sub.set(key, []);
      sub.get(key).push(def);
    }
  }
  return [
    ...[...sub.keys()].sort().map((key) => ({
      label: key, submenu: () => categoryItems(editor, sub.get(key), `${prefix}/${key}`, graphPoint),
    })),
    ...leaves.sort((a, b) => a.displayName.localeCompare(b.displayName))
      .map((def) => ({ label: def.displayName, action: () => editor.addNode(def.type, graphPoint) })),
  ];
}

export function showNodeMenu(editor, node, event) {
  const colors = [{ label: "No colour", action: () => editor.setColor(node, null) },
    ...Object.keys(NODE_COLORS).map((name) => ({ label: name.replace("_", " "), action: () => editor.setColor(node, name),
      checked: node.color === NODE_COLORS[name].color }))];
  const modes = [["Always", 0], ["Never (mute)", 2], ["Bypass", 4]]
    .map(([label, mode]) => ({ label, checked: node.mode === mode, action: () => editor.setMode(node, mode) }));
  const many = editor.canvas.selected.size;
  const arrange = [
    ...[["Left", "left"], ["Right", "right"], ["Top", "top"], ["Bottom", "bottom"], ["Centre (vertical line)", "center"],
      ["Middle (horizontal line)", "middle"]].map(([label, edge]) => ({ label: `Align ${label.toLowerCase()}`,
      action: () => editor.alignSelection(edge) })),
    null,
    { label: "Distribute horizontally", disabled: many < 3, action: () => editor.distributeSelection("horizontal") },
    { label: "Distribute vertically", disabled: many < 3, action: () => editor.distributeSelection("vertical") },
  ];
  showMenu([
    { label: "Title…", action: () => editor.editTitle(node) },
    ...(node.container === "subgraph" ? [{ label: "Open subgraph", action: () => editor.openSubgraph(node) }] : []),
    ...(many > 1 ? [{ label: "Arrange selected", submenu: arrange }] : []),
    { label: node.flags.collapsed ? "Expand" : "Collapse", action: () => editor.toggleCollapse(node) },
    { label: "Colours", submenu: colors },
    { label: "Mode", submenu: modes },
    ...widgetConversionItems(editor, node),
    ...(editor.openMaskEditor && node.widgets.some((w) => w.kind === "upload")
      ? [{ label: "Open in MaskEditor", action: () => editor.openMaskEditor(node) }] : []),
    { label: "Fit size to content", action: () => editor.graph.resizeNode(node, minimumSize(node)) },
    null,
    { label: node.flags.pinned ? "Unpin (P)" : "Pin (P)", action: () => editor.togglePinSelection() },
    { label: "Copy", action: () => editor.copySelection() },
    { label: "Group selected (Ctrl+G)", action: () => editor.groupSelection() },
    { label: "Clone", disabled: node.missing, action: () => editor.duplicateSelection() },
    { label: "Remove", action: () => editor.deleteSelection() },
  ], event.clientX, event.clientY, { title: node.type });
}

export function showSlotMenu(editor, { node, slot, isOutput }, event) {
  const items = [];
  const linked = isOutput ? node.outputs[slot].links?.length : node.inputs[slot].link != null;
  items.push({ label: "Disconnect", disabled: !linked,
    action: () => (isOutput ? editor.graph.disconnectOutput(node, slot) : editor.graph.disconnectInput(node, slot)) });
  const type = isOutput ? node.outputs[slot].type : node.inputs[slot].type;
  items.push({ label: "Add compatible node…", action: () => {
    const screen = editor.canvas.eventPoint(event);
    const point = editor.canvas.viewport.toGraph(...screen);
    editor.searchForLink({ node, slot, fromOutput: isOutput, type }, [point[0] + (isOutput ? 60 : -60), point[1]], screen);
  } });
  const name = isOutput ? node.outputs[slot].name : node.inputs[slot].name;
  showMenu(items, event.clientX, event.clientY, { title: `${name} (${type})` });
}

export function showGroupMenu(editor, group, event) {
  const colors = Object.entries(GROUP_COLORS).map(([name, color]) => ({ label: name.replace("_", " "),
    checked: group.color === color, action: () => editor.setGroupColor(group, color) }));
  showMenu([
    { label: "Edit title…", action: () => editor.editGroupTitle(group) },
    { label: "Colour", submenu: colors },
    { label: "Select nodes", action: () => {
      editor.canvas.selected = new Set(nodesInGroup(group, editor.graph.nodes));
      editor.canvas.setDirty();
    } },
    null,
    { label: "Remove group", action: () => editor.removeGroup(group) },
  ], event.clientX, event.clientY, { title: group.title || "Group" });
}

function widgetConversionItems(editor, node) {
  if (!node.widgets.length) return [];
  const converted = (widget) => node.inputs.some((i) => i.widget?.name === widget.name);
  const convertible = node.widgets.filter((w) => w.kind !== "upload" && w.kind !== "control");
  const toInput = convertible.filter((w) => !converted(w));
  const toWidget = convertible.filter(converted);
  const items = [];
  if (toInput.length) {
    items.push({ label: "Convert widget to input", submenu: toInput.map((w) => ({ label: w.name,
      action: () => editor.graph.convertWidgetToInput(node, w) })) });
    items.push({ label: "Add primitive for", submenu: toInput.map((w) => ({ label: w.name,
      action: () => editor.addPrimitiveFor(node, w) })) });
  }
  if (toWidget.length) {
    items.push({ label: "Convert input to widget", submenu: toWidget.map((w) => ({ label: w.name,
      action: () => editor.graph.convertInputToWidget(node, w) })) });
  }
  return items;
}

export function showLinkMenu(editor, link, event) {
  showMenu([
    { label: "Add reroute", action: () => editor.addRerouteOnLink(link) },
    { label: "Delete link", action: () => editor.graph.removeLink(link.id) },
  ], event.clientX, event.clientY, { title: link.type });
}
