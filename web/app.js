/**
 * Start-up: fetch the node definitions, build the editor and its workflow tabs, reopen the last visit's tabs
 * (or open the default workflow; the Templates dialog on a first visit), wire the toolbar, file drops and the
 * WebSocket; with `?test-hook` in the address (the browser tests' fixture) also install `window.loom`.
 */
import { Api } from "./api.js";
import { Editor } from "./editor.js";
import { NodeDefs } from "./graph/definitions.js";
import { notice, notify } from "./ui/notify.js";
import { exportApi, openFile, openFileDialog, saveFile } from "./ui/files.js";
import { Workspace } from "./workspace.js";
import { WorkflowsPanel } from "./ui/workflows-panel.js";
import { isFirstRun, showTemplates } from "./ui/templates.js";
import { openMaskEditor } from "./ui/mask-editor.js";
import { QueueControls } from "./ui/queue-controls.js";
import { FastPathControl } from "./ui/fast-path-control.js";
import { QueueProgress } from "./ui/queue-progress.js";
import { showFailedNode } from "./ui/run-failure.js";
import { ModelLibrary } from "./ui/model-library.js";
import { NodeLibrary } from "./ui/node-library.js";

function wireToolbar(editor) {
  const on = (id, handler) => document.getElementById(id)?.addEventListener("click", handler);
  on("btn-queue", () => editor.queue());
  on("btn-interrupt", () => editor.interrupt());
  on("btn-new", () => editor.workspace.newTab());
  on("btn-templates", () => editor.showTemplates());
  on("btn-workflows", () => editor.toggleSidebar("workflows"));
  on("btn-open", () => openFileDialog(editor));
  on("btn-save", () => saveFile(editor));
  on("btn-export-api", () => exportApi(editor));
  on("btn-fit", () => { editor.canvas.fitView(); editor.viewChanged(); });
  on("btn-panel", () => editor.toggleSidebar());
  const queueLabel = document.getElementById("queue-size");
  editor.execution.addEventListener("status", (e) => {
    if (queueLabel) queueLabel.textContent = e.detail.queueRemaining ? `${e.detail.queueRemaining} queued` : "idle";
  });
  const dot = document.getElementById("connection");
  editor.api.addEventListener("connected", () => dot?.classList.add("online"));
  editor.api.addEventListener("disconnected", () => dot?.classList.remove("online"));
}

function wireDrop(editor) {
  window.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer?.files?.[0];
    if (file) openFile(editor, file, [event.clientX, event.clientY]);
  });
}

/** The page was opened for the browser tests (`?test-hook`): `window.loom` (web/testing/hook.js) is installed. */
const TEST_HOOK = new URLSearchParams(window.location.search).has("test-hook");

/** `window.loom` from web/testing/hook.js; an installed Loom has no such file (the wheel leaves it out), and
 * the editor runs on without it. */
async function installTestHook(editor) {
  try {
    (await import("./testing/hook.js")).installTestHook(editor);
  } catch (error) {
    console.warn("?test-hook: web/testing/hook.js cannot be loaded (an installed Loom does not ship it)", error);
  }
}

async function start() {
  const api = new Api();
  let objectInfo;
  try {
    objectInfo = await api.objectInfo();
  } catch (error) {
    document.body.classList.add("failed");
    notify(`Could not load node definitions from the server: ${error.message}`, "error", 60000);
    return;
  }
  const editor = new Editor({ api, defs: new NodeDefs(objectInfo), canvasElement: document.getElementById("graph") });
  const workspace = new Workspace(editor);
  editor.workflowsPanel = new WorkflowsPanel(editor, editor.sidebar);
  editor.sidebar.addPanel("workflows", "Workflows", () => editor.workflowsPanel.render(), { first: true });
  editor.showTemplates = () => showTemplates(editor);
  editor.openMaskEditor = (node) => openMaskEditor(editor, node);
  editor.queueControls = new QueueControls(editor);
  editor.fastPathControl = new FastPathControl(editor);
  editor.queueProgress = new QueueProgress(editor);
  editor.sidebar.onFailureClick = (entry) => showFailedNode(editor, entry);
  editor.modelLibrary = new ModelLibrary(editor, editor.sidebar);
  editor.sidebar.addPanel("models", "Models", () => editor.modelLibrary.render());
  editor.nodeLibrary = new NodeLibrary(editor, editor.sidebar);
  editor.sidebar.addPanel("nodes", "Nodes", () => editor.nodeLibrary.render());
  wireToolbar(editor);
  wireDrop(editor);
  await editor.settings.load();
  editor.applySettings();
  const restored = workspace.restore();
  if (!restored) workspace.open(await editor.defaultWorkflowData(), { fit: true });
  window.addEventListener("pagehide", () => editor.saveToStorage());
  api.connect();
  if (TEST_HOOK) await installTestHook(editor);
  editor.canvas.setDirty();
  // the server's notices (e.g. where checkpoints go), each shown until dismissed; `editor.notices` lists
  // the ones on screen once they are known
  const shown = [];
  for (const { id, level, text } of await api.notices()) if (notice(id, text, level)) shown.push(id);
  editor.notices = shown;
  if (await isFirstRun(editor, restored)) editor.showTemplates();
}

start();
