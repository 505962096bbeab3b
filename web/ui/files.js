/**
 * Files in and out of the editor: the browser's file chooser, opening a dropped or chosen file (a
 * workflow or API prompt JSON, a PNG with an embedded workflow, or an image for the LoadImage node it
 * was dropped on), uploading an image to a node, and downloading the workflow (UI or API format).
 */
import { readPngWorkflow } from "../png.js";

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** Open the browser's file chooser (a hidden input kept in the page, so the choice cannot get lost). */
function pickFile(accept, onFile) {
  let input = document.getElementById("file-picker");
  if (!input) {
    input = document.createElement("input");
    input.type = "file";
    input.id = "file-picker";
    input.hidden = true;
    document.body.appendChild(input);
  }
  input.accept = accept;
  input.value = "";
  input.onchange = () => { if (input.files[0]) onFile(input.files[0]); };
  input.click();
}

/** Download the workflow as workflow.json. */
export function saveFile(editor) {
  download("workflow.json", JSON.stringify(editor.serializeWorkflow(), null, 2));
}

/** Download the workflow converted to an API prompt (the server converts it) as workflow_api.json. */
export async function exportApi(editor) {
  try {
    const { prompt } = await editor.api.convert(editor.serializeWorkflow());
    download("workflow_api.json", JSON.stringify(prompt, null, 2));
  } catch (error) {
    editor.notify(`Export failed: ${error.message}`, "error");
  }
}

/** Ctrl+O: choose a workflow JSON or PNG to open. */
export function openFileDialog(editor) {
  pickFile(".json,application/json,image/png", (file) => openFile(editor, file));
}

/** The LoadImage-like node (one with an upload widget) under a client point, or null. */
function loadImageNodeAt(editor, [cx, cy]) {
  const canvas = editor.canvas;
  const rect = canvas.element.getBoundingClientRect();
  const node = canvas.nodeAt(...canvas.viewport.toGraph(cx - rect.left, cy - rect.top));
  return node && node.widgets.some((w) => w.kind === "upload") ? node : null;
}

/** Open a dropped or chosen file: a workflow/prompt JSON, or a PNG with an embedded workflow. */
export async function openFile(editor, file, clientPoint = null) {
  try {
    const isPng = file.type === "image/png" || /\.png$/i.test(file.name);
    if (isPng || file.type.startsWith("image/")) {
      const target = clientPoint && loadImageNodeAt(editor, clientPoint);
      if (target) return await uploadToNode(editor, target, file);
      if (!isPng) throw new Error(`${file.name} is not a PNG; only PNG images carry workflows here`);
      const { workflow, prompt } = await readPngWorkflow(await file.arrayBuffer());
      if (workflow) return editor.loadWorkflow(workflow);
      if (prompt) return editor.loadWorkflow(prompt);
      throw new Error(`${file.name} has no workflow embedded`);
    }
    editor.loadWorkflow(JSON.parse(await file.text()));
  } catch (error) {
    editor.notify(`Could not open ${file.name}: ${error.message}`, "error");
  }
}

/** The upload button of a LoadImage node: choose an image and upload it to the node. */
export function chooseUpload(editor, node) {
  pickFile("image/png,image/jpeg,image/webp", (file) => uploadToNode(editor, node, file));
}

/** Upload an image to the server's input folder and select it in the node's image combo. */
export async function uploadToNode(editor, node, file) {
  const upload = node.widgets.find((w) => w.kind === "upload");
  const target = upload && node.widget(upload.target);
  if (!target) return;
  try {
    const result = await editor.api.uploadImage(file);
    const name = result.subfolder ? `${result.subfolder}/${result.name}` : result.name;
    if (!target.options.values.includes(name)) target.options.values.push(name);
    editor.setWidgetValue(node, target, name);
    editor.notify(`Uploaded ${name}`);
  } catch (error) {
    editor.notify(`Upload failed: ${error.message}`, "error");
  }
}
