/**
 * The keymap: one table that both answers key presses on the canvas and fills the Shortcuts panel.
 *
 * A binding is a key combo in ComfyUI's form (`{ key, ctrl, alt, shift }`, `key` as `KeyboardEvent.key`,
 * Ctrl standing for Cmd on macOS too) and the command it runs. A combo matches when the key (letters in
 * either case, or its physical key) and Ctrl and Alt are as written; Shift must match too, except for a symbol key such as `+`,
 * where Shift is how the key is typed. Rows with `hint` and no `keys` are pointer gestures, shown only.
 * `when` makes a binding apply only while it is true; a command returning `false` leaves the key to the
 * browser (no `preventDefault`).
 */
import { MODE_BYPASS, MODE_NEVER } from "../graph/model.js";
import { openFileDialog } from "./files.js";

const zoomBy = (editor, factor) => {
  const canvas = editor.canvas;
  canvas.viewport.zoomAt(factor, canvas.width / 2, canvas.height / 2);
  canvas.setDirty();
  editor.viewChanged();
};

const selectAll = (editor) => {
  editor.canvas.selected = new Set(editor.graph.nodes);
  editor.canvas.setDirty();
};

const escape = (editor) => {
  const canvas = editor.canvas;
  editor.closePopups();
  if (editor.subgraphStack.length && !canvas.dragLink) { editor.closeSubgraph(); return false; }
  canvas.dragLink = null;
  canvas.setDirty();
  return false;
};

const hasPanel = (name) => (editor) => editor.sidebar.panels.has(name);

/** The editor's key bindings (ComfyUI's defaults where it has one) and its pointer gestures, in panel order. */
export const KEYMAP = [
  { keys: [{ key: "Enter", ctrl: true }], label: "Queue the workflow", run: (e) => { e.queue(); } },
  { keys: [{ key: "Enter", ctrl: true, shift: true }], label: "Queue at the front", run: (e) => { e.queue({ front: true }); } },
  { keys: [{ key: "Enter", ctrl: true, alt: true }], label: "Interrupt the running prompt", run: (e) => { e.interrupt(); } },
  { keys: [{ key: "s", ctrl: true }], label: "Save the workflow on the server (Workflows panel)", run: (e) => { e.saveWorkflow(); } },
  { keys: [{ key: "o", ctrl: true }], label: "Open a workflow file", run: (e) => openFileDialog(e) },
  { keys: [{ key: "z", ctrl: true }], label: "Undo", run: (e) => e.undo() },
  { keys: [{ key: "y", ctrl: true }, { key: "z", ctrl: true, shift: true }], label: "Redo", run: (e) => e.redo() },
  { keys: [{ key: "c", ctrl: true }], label: "Copy the selection (also across tabs)", run: (e) => e.copySelection() },
  { keys: [{ key: "v", ctrl: true }], label: "Paste the copied nodes at the pointer", run: (e) => { e.paste(); } },
  { keys: [{ key: "v", ctrl: true, shift: true }], label: "Paste keeping input links", run: (e) => { e.paste({ keepInputLinks: true }); } },
  { keys: [{ key: "a", ctrl: true }], label: "Select all nodes", run: selectAll },
  { keys: [{ key: "Delete" }, { key: "Backspace" }], label: "Delete the selection",
    run: (e) => (e.canvas.selected.size ? e.deleteSelection() : false) },
  { keys: [{ key: "d", ctrl: true }], hint: "Alt+drag", label: "Duplicate the selection", run: (e) => e.duplicateSelection() },
  { keys: [{ key: "g", ctrl: true }], label: "Group the selected nodes", run: (e) => { e.groupSelection(); } },
  { keys: [{ key: "b", ctrl: true }], label: "Bypass the selection (toggle)", run: (e) => e.toggleSelectionMode(MODE_BYPASS) },
  { keys: [{ key: "m", ctrl: true }], label: "Mute the selection (toggle)", run: (e) => e.toggleSelectionMode(MODE_NEVER) },
  { keys: [{ key: "c", alt: true }], label: "Collapse the selection (toggle)",
    run: (e) => { for (const node of e.canvas.selected) e.toggleCollapse(node); } },
  { keys: [{ key: "p" }], label: "Pin the selection: no moving or resizing (toggle)", run: (e) => e.togglePinSelection() },
  { keys: [{ key: "." }], label: "Fit the view to the selection or the graph", run: (e) => { e.canvas.fitView(); e.viewChanged(); } },
  { keys: [{ key: "=", alt: true }, { key: "+", alt: true }], label: "Zoom in", run: (e) => zoomBy(e, 1.2) },
  { keys: [{ key: "-", alt: true }], label: "Zoom out", run: (e) => zoomBy(e, 1 / 1.2) },
  { keys: [{ key: "m", alt: true, shift: true }], label: "Show or hide the minimap", run: (e) => e.toggleMinimap() },
  { keys: [{ key: "q" }], label: "Show or hide the queue and history panel", run: (e) => { e.toggleSidebar("queue"); } },
  { keys: [{ key: "w" }], label: "Show or hide the saved workflows", run: (e) => { e.toggleSidebar("workflows"); } },
  { keys: [{ key: "m" }], label: "Show or hide the model library", when: hasPanel("models"), run: (e) => { e.toggleSidebar("models"); } },
  { keys: [{ key: "n" }], label: "Show or hide the node library", when: hasPanel("nodes"), run: (e) => { e.toggleSidebar("nodes"); } },
  { hint: "Space+drag, drag empty canvas", label: "Pan" },
  { hint: "Wheel, pinch", label: "Zoom to the cursor" },
  { hint: "Ctrl/Shift+drag", label: "Rubber-band selection" },
  { hint: "Double-click canvas", label: "Search and add a node" },
  { keys: [{ key: "Escape" }], label: "Close menus and search (and leave an open subgraph)", run: escape },
];

const isSymbol = (key) => key.length === 1 && key.toLowerCase() === key.toUpperCase() && key !== " ";

/** Whether a key event is the combo (see the module's note on Shift). */
export function comboMatches(combo, event) {
  const letter = /^[a-z]$/i.test(combo.key) && event.code === `Key${combo.key.toUpperCase()}`; // Alt+letter on macOS
  if (event.key.toLowerCase() !== combo.key.toLowerCase() && !letter) return false;
  if (Boolean(event.ctrlKey || event.metaKey) !== Boolean(combo.ctrl) || event.altKey !== Boolean(combo.alt)) return false;
  return isSymbol(combo.key) || event.shiftKey === Boolean(combo.shift);
}

/** A combo as the panel writes it: `Ctrl+Shift+Enter`, `Alt+C`. */
export function comboText({ key, ctrl, alt, shift }) {
  const name = key.length === 1 ? key.toUpperCase() : key;
  return [ctrl && "Ctrl", alt && "Alt", shift && "Shift", name].filter(Boolean).join("+");
}

/** The Shortcuts panel's rows: `[keys, what they do]`. */
export function shortcutRows(keymap = KEYMAP) {
  return keymap.map((row) => [[...(row.keys || []).map(comboText), row.hint].filter(Boolean).join(", "), row.label]);
}

/** Run the first binding of `event`; true when one ran (the event then had its default prevented). */
export function dispatchKey(editor, event, keymap = KEYMAP) {
  for (const row of keymap) {
    if (!row.run || !row.keys?.some((combo) => comboMatches(combo, event))) continue;
    if (row.when && !row.when(editor)) continue;
    if (row.run(editor, event) !== false) event.preventDefault();
    return true;
  }
  return false;
}
