/**
 * The browser tests' hook: `window.loom`, the graph's state and geometry in client coordinates so tests
 * can drive the mouse. Not part of the editor: app.js imports this module only when the page was opened
 * with `?test-hook` in its address (tests/browser/conftest.py, bench/canvas.py).
 */
import { inputSlotPos, nodeBounds, outputSlotPos, widgetRect } from "../canvas/layout.js";
import { currentMaskEditor } from "../ui/mask-editor.js";
import { maskButtonRect } from "../canvas/mask-button.js";

/** The test hook: graph state and geometry in client coordinates, so tests can drive the mouse. */
export function installTestHook(editor) {
  const { graph, canvas } = editor;
  const node = (id) => {
    const found = graph.getNode(id);
    if (!found) throw new Error(`no node ${id}`);
    return found;
  };
  const slotIndex = (n, list, which) => (typeof which === "number" ? which : list.findIndex((s) => s.name === which));
  const summary = (n) => ({
    id: n.id, type: n.type, title: n.title, pos: n.pos.slice(), size: n.size.slice(), mode: n.mode,
    collapsed: Boolean(n.flags.collapsed), selected: canvas.selected.has(n),
    widgets: Object.fromEntries(n.widgets.map((w) => [w.name, w.value])),
    inputs: n.inputs.map((i) => ({ name: i.name, type: i.type, link: i.link, label: i.label })),
    outputs: n.outputs.map((o) => ({ name: o.name, type: o.type, links: o.links ? o.links.slice() : [] })),
  });
  window.loom = {
    ready: true,
    editor,
    graph,
    canvas,
    defs: editor.defs,
    nodes: () => graph.nodes.map(summary),
    node: (id) => summary(node(id)),
    links: () => [...graph.links.values()].map((l) => ({ ...l })),
    serialize: () => editor.serializeWorkflow(),
    load: (data) => editor.loadWorkflow(data),
    newWorkflow: () => editor.newWorkflow(),
    workspace: editor.workspace,
    /** The open tabs: `[{ name, path, active, modified }]`. */
    tabs: () => editor.workspace.tabs.map((t) => ({ id: t.id, name: t.name, path: t.path,
      active: t === editor.workspace.active, modified: editor.workspace.isModified(t) })),
    clear: () => editor.clearWorkflow(),
    queue: () => editor.queue(),
    nextFrame: () => canvas.nextFrame(),
    frames: () => canvas.frames,
    viewport: () => ({ scale: canvas.viewport.scale, offset: canvas.viewport.offset.slice() }),
    toClient: (gx, gy) => canvas.clientPoint(gx, gy),
    toGraph: (cx, cy) => {
      const rect = canvas.element.getBoundingClientRect();
      return canvas.viewport.toGraph(cx - rect.left, cy - rect.top);
    },
    /** Client point in the node's title bar (clear of the collapse dot). */
    titlePoint: (id) => {
      const n = node(id);
      const [x, y, w] = nodeBounds(n);
      return canvas.clientPoint(x + Math.min(w - 10, 60), y + 15);
    },
    collapsePoint: (id) => { const n = node(id); return canvas.clientPoint(n.pos[0] + 15, n.pos[1] - 15); },
    resizePoint: (id) => { const n = node(id); return canvas.clientPoint(n.pos[0] + n.size[0] - 4, n.pos[1] + n.size[1] - 4); },
    bodyPoint: (id) => { const n = node(id); return canvas.clientPoint(n.pos[0] + n.size[0] / 2, n.pos[1] + n.size[1] - 6); },
    slotPoint: (id, kind, which) => {
      const n = node(id);
      const isOutput = kind === "output";
      const index = slotIndex(n, isOutput ? n.outputs : n.inputs, which);
      if (index < 0) throw new Error(`node ${id} has no ${kind} ${which}`);
      return canvas.clientPoint(...(isOutput ? outputSlotPos(n, index) : inputSlotPos(n, index)));
    },
    /** Client point on a widget: where = "middle" | "left" (decrement arrow) | "right" (increment arrow). */
    widgetPoint: (id, name, where = "middle") => {
      const n = node(id);
      const widget = n.widget(name);
      if (!widget) throw new Error(`node ${id} has no widget ${name}`);
      const [x, y, w, h] = widgetRect(n, widget);
      const gx = where === "left" ? x + 8 : where === "right" ? x + w - 8 : x + w / 2;
      return canvas.clientPoint(gx, y + Math.min(h / 2, 10));
    },
    nodeState: (id) => {
      const n = node(id);
      const r = n.runtime;
      return {
        running: Boolean(r.running), cached: Boolean(r.cached), progress: r.progress || null,
        error: r.error?.message || null, errorInputs: [...(r.errorInputs || [])],
        images: (r.images || []).map((img) => ({ src: img.src, loaded: img.complete && img.naturalWidth > 0,
          width: img.naturalWidth, height: img.naturalHeight })),
        inputImage: r.inputImage ? { src: r.inputImage.src, loaded: r.inputImage.complete && r.inputImage.naturalWidth > 0 } : null,
        compare: r.compare ? { position: r.compare.position, refs: r.compare.refs,
          loaded: [r.compare.a, r.compare.b].filter(Boolean).every((img) => img.complete && img.naturalWidth > 0) } : null,
        text: r.text ?? null,
        animationFrames: (r.animations || []).map((a) => a.frames.length),
      };
    },
    /** A client point over empty canvas (no node there), scanning from the bottom-right. */
    emptyPoint: () => {
      const rect = canvas.element.getBoundingClientRect();
      for (let y = rect.height - 20; y > 20; y -= 20) {
        for (let x = rect.width - 20; x > 20; x -= 20) {
          const [gx, gy] = canvas.viewport.toGraph(x, y);
          const covered = document.elementFromPoint(rect.left + x, rect.top + y) !== canvas.element;
          if (!covered && !canvas.nodeAt(gx, gy) && !canvas.slotAt(gx, gy)) return [rect.left + x, rect.top + y];
        }
      }
      return null;
    },
    lastQueueResult: () => editor.execution.lastResult,
    subgraphPath: () => editor.subgraphPath,
    /** The open mask editor (its state and `clientPoint(ix, iy)`), or null. */
    maskEditor: () => currentMaskEditor(),
    /** Graph rectangle of the mask button on a LoadImage preview, or null. */
    maskButtonRect: (id) => maskButtonRect(node(id)),
    /** `{ done, total, node, type, value, max, fraction }` of a prompt queued from this page, or null. */
    promptProgress: (promptId) => editor.queueProgress.state(promptId),
    renderStats: () => ({ ...canvas.renderer.stats, frames: canvas.frames }),
    /** The server's notices on screen (their ids), once they are known; undefined before. */
    get notices() { return editor.notices; },
  };
}
