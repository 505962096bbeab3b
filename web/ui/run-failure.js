/**
 * A failed prompt's History entry, clicked: the node that failed is selected, framed in the view and marked
 * with the error (type and message), in the graph in front when it holds that node, else in the workflow
 * of that run (loaded from the entry).
 */
export function failedNodeError(entry) {
  const messages = Array.isArray(entry?.status?.messages) ? entry.status.messages : [];
  return messages.filter((m) => Array.isArray(m) && m[0] === "execution_error" && m[1] && typeof m[1] === "object")
    .pop()?.[1] || null;
}

export function showFailedNode(editor, entry) {
  const error = failedNodeError(entry);
  if (!error || error.node_id == null) {
    editor.notify("This run did not fail on a node", "warn");
    return null;
  }
  const id = String(error.node_id).split(":")[0];
  const type = error.node_type || entry.prompt?.[2]?.[error.node_id]?.class_type || null;
  let node = editor.graph.getNode(id);
  if (!node || (type && node.type !== type && !String(error.node_id).includes(":"))) {
    const workflow = entry.prompt?.[3]?.extra_pnginfo?.workflow;
    if (workflow) {
      editor.loadWorkflow(workflow);
      node = editor.graph.getNode(id);
    }
  }
  if (!node) {
    editor.notify(`Node ${id}${type ? ` (${type})` : ""} is not in this workflow`, "warn");
    return null;
  }
  node.runtime.error = { message: `${error.exception_type || "Error"}: ${error.exception_message || ""}`.trim(), execution: error };
  editor.canvas.select(node);
  editor.canvas.fitView();
  editor.viewChanged();
  return node;
}
