/**
 * Undo/redo as a stack of graph snapshots.
 *
 * After every edit the graph is serialised (without the view, so panning and zooming are not undoable)
 * and, when it differs from the last snapshot, pushed. Edits made during one pointer gesture (a widget
 * scrub, a node drag, a link pulled off one input onto another) become one step: the snapshot is taken
 * once the gesture ends. Undo and redo hand a snapshot back to `restore`.
 */

const DEFAULT_LIMIT = 100;
const MAX_KEPT_CHARS = 40_000_000; // about 80 MB of snapshots: big graphs keep fewer steps

/**
 * The graph as a comparable snapshot string, view excluded. Nodes are sorted by id: bringing a node to
 * the front by clicking it changes the drawing order only, which is no edit.
 */
function snapshotOf(graph) {
  const data = graph.serialize();
  if (data.extra) delete data.extra.ds;
  data.nodes.sort((a, b) => (a.id > b.id ? 1 : a.id < b.id ? -1 : 0));
  return JSON.stringify(data);
}

export class History {
  /**
   * @param {object} graph the Graph being edited
   * @param {(data: object) => void} restore puts a snapshot back into the editor
   * @param {() => boolean} gestureActive true while a pointer gesture is still editing
   */
  constructor(graph, restore, gestureActive = () => false, limit = DEFAULT_LIMIT) {
    this.graph = graph;
    this.restore = restore;
    this.gestureActive = gestureActive;
    this.limit = limit;
    this.undoStack = [];
    this.redoStack = [];
    this.current = null;
    this.pending = false;
    this.changed = false;
    this.onRecord = null; // called whenever `current` (the graph as last recorded) changes
  }

  /** Forget all steps and take the graph as it is now as the starting point (after loading a workflow). */
  reset() {
    this.pending = false;
    this.changed = false;
    this.undoStack = [];
    this.redoStack = [];
    this.current = snapshotOf(this.graph);
    this.onRecord?.();
  }

  /**
   * Note that the graph changed; the snapshot is taken once the current event handler has run (a
   * microtask, so two quick key presses stay two steps) and any pointer gesture has ended.
   */
  schedule() {
    this.changed = true;
    if (this.pending) return;
    this.pending = true;
    queueMicrotask(() => {
      if (!this.pending) return;
      this.pending = false;
      if (!this.gestureActive()) this.commit();
    });
  }

  /** A gesture ended: record its edits, if it made any (a pan makes none and costs no snapshot). */
  flush() {
    if (this.changed) this.commit();
  }

  /** Record the graph as a step if it differs from the last one. */
  commit() {
    this.pending = false;
    this.changed = false;
    const snapshot = snapshotOf(this.graph);
    if (this.current === null) { this.current = snapshot; this.onRecord?.(); return; }
    if (snapshot === this.current) return;
    this.undoStack.push(this.current);
    let kept = this.undoStack.reduce((sum, step) => sum + step.length, 0);
    while (this.undoStack.length > 1 && (this.undoStack.length > this.limit || kept > MAX_KEPT_CHARS)) {
      kept -= this.undoStack.shift().length;
    }
    this.redoStack = [];
    this.current = snapshot;
    this.onRecord?.();
  }

  get canUndo() {
    return this.undoStack.length > 0;
  }

  get canRedo() {
    return this.redoStack.length > 0;
  }

  undo() {
    this.commit(); // an edit not yet recorded becomes a step first, so undo takes back exactly it
    if (!this.undoStack.length) return false;
    this.redoStack.push(this.current);
    this.#apply(this.undoStack.pop());
    return true;
  }

  redo() {
    this.commit();
    if (!this.redoStack.length) return false;
    this.undoStack.push(this.current);
    this.#apply(this.redoStack.pop());
    return true;
  }

  #apply(snapshot) {
    this.current = snapshot;
    this.restore(JSON.parse(snapshot));
    this.pending = false; // the restore itself is no new step
    this.changed = false;
    this.onRecord?.();
  }
}
