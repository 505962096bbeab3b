/**
 * Adding nodes from the side panel's libraries: a click adds the node in the middle of the view, a drag
 * (HTML drag and drop carrying `{ type, widget?, value? }` as `application/x-loom-node`) adds it where it
 * is dropped on the canvas. With `widget` and `value`, that widget of the new node is set (a loader's file); dropped
 * on a node of that type already there, the file is selected in it instead.
 */
export const NODE_DRAG_TYPE = "application/x-loom-node";

/** Make `el` draggable with `payload`. */
export function makeDraggable(el, payload) {
  el.draggable = true;
  el.addEventListener("dragstart", (event) => {
    event.dataTransfer.setData(NODE_DRAG_TYPE, JSON.stringify(payload));
    event.dataTransfer.setData("text/plain", payload.value ?? payload.type);
    event.dataTransfer.effectAllowed = "copy";
  });
}

/** Add the node `payload` names with its title bar at graph point `pos`; returns it (null for an unknown type). */
export function addFromLibrary(editor, payload, pos) {
  if (!editor.defs.get(payload.type)) {
    editor.notify(`${payload.type} is not a node this server has`, "error");
    return null;
  }
  editor.history?.commit?.();
  return editor.graph.edit((node) => ({ type: "add-node", node }), () => {
    const node = editor.addNode(payload.type, pos);
    if (payload.widget) setFile(editor, node, payload);
    return node;
  });
}

/** Select `payload.value` in the node's `payload.widget` (added to the options when the list is older). */
function setFile(editor, node, payload) {
  const widget = node.widget(payload.widget);
  if (!widget) return;
  const values = widget.options?.values;
  if (Array.isArray(values) && !values.includes(payload.value)) values.push(payload.value);
  editor.setWidgetValue(node, widget, payload.value);
}

/** The graph point in the middle of the visible canvas (offset a little for each node added there). */
export function viewCentre(editor) {
  const canvas = editor.canvas;
  const rect = canvas.element.getBoundingClientRect();
  const [x, y] = canvas.viewport.toGraph(rect.width / 2, rect.height / 2);
  return [x - 100, y - 60];
}

/** Accept library drops on the canvas (once per editor). */
export function installLibraryDrop(editor) {
  if (editor.libraryDropInstalled) return;
  editor.libraryDropInstalled = true;
  const el = editor.canvas.element;
  el.addEventListener("dragover", (event) => {
    if (event.dataTransfer?.types?.includes(NODE_DRAG_TYPE)) {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    }
  });
  el.addEventListener("drop", (event) => {
    const text = event.dataTransfer?.getData(NODE_DRAG_TYPE);
    if (!text) return; // files: app.js opens them
    event.preventDefault();
    event.stopPropagation();
    let payload;
    try { payload = JSON.parse(text); } catch { return; }
    const rect = el.getBoundingClientRect();
    const [gx, gy] = editor.canvas.viewport.toGraph(event.clientX - rect.left, event.clientY - rect.top);
    // a model file dropped on a loader node of its kind selects that file there
    const target = payload.widget ? editor.canvas.nodeAt(gx, gy) : null;
    if (target && target.type === payload.type && target.widget(payload.widget)) {
      setFile(editor, target, payload);
      return;
    }
    addFromLibrary(editor, payload, [gx, gy]);
  });
}
