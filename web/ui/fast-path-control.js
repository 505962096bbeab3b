/**
 * The run-precision choice beside the Queue button, saved with the workflow as `extra.loom.fast` (what the
 * server reads from the workflow a prompt carries; docs/configuration.md "The fast path"):
 * "Server default" leaves the key out, "Exact" is ComfyUI's images bit for bit, "Fast" the bfloat16 copy of
 * the diffusion model on CPUs that compute bfloat16 natively. Inside an open subgraph it is read-only: the
 * setting belongs to the whole workflow.
 */
import { element } from "./dom.js";

const CHOICES = [["default", "Server default", null], ["exact", "Exact", false], ["fast", "Fast", true]];
const TITLE = "Precision of this workflow's runs, saved with it (extra.loom.fast). Exact: ComfyUI's images, bit for "
  + "bit. Fast: bfloat16 weights where the CPU computes bfloat16 natively; visually identical, not bit-identical. "
  + "Server default: what loom serve --fast says.";

export class FastPathControl {
  constructor(editor) {
    this.editor = editor;
    this.select = element("select", { id: "run-precision", className: "run-precision", title: TITLE },
      CHOICES.map(([value, label]) => element("option", { value, textContent: label })));
    this.select.addEventListener("keydown", (event) => event.stopPropagation());
    this.select.addEventListener("change", () => {
      const choice = CHOICES.find(([value]) => value === this.select.value);
      if (choice && !this.editor.subgraphStack.length) this.editor.graph.setFastPath(choice[2]);
    });
    document.getElementById("queue-mode")?.after(this.select);
    editor.graph.onChange((change) => {
      if (change.type === "load" || change.type === "clear" || change.type === "workflow") this.refresh();
    });
    this.refresh();
  }

  /** Show the workflow's setting (kept as it was while a subgraph is open: its inside has none of its own). */
  refresh() {
    const inside = this.editor.subgraphStack.length > 0;
    this.select.disabled = inside;
    if (inside) return;
    const setting = this.editor.graph.fastPath;
    this.select.value = CHOICES.find(([, , fast]) => fast === setting)[0];
  }
}
