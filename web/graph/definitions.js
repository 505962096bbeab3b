/**
 * Node definitions: the server's `/object_info` entries turned into what the editor builds nodes from.
 *
 * Each input becomes either a socket (a slot that takes a link) or a widget drawn inside the node.
 * The widget order is the `widgets_values` order of saved workflows: required inputs then optional
 * ones (by `input_order` when the server sends it), with the synthetic widgets ComfyUI inserts —
 * `control_after_generate` right after a seed (plus `control_filter_list` after a combo), and the
 * upload button after the last widget of the group holding LoadImage's image combo.
 */

const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);

export const CONTROL_MODES = ["fixed", "increment", "decrement", "randomize"];
const LEGACY_SEED_NAMES = ["seed", "noise_seed"];

/** One node type, as the editor uses it. */
export class NodeDef {
  constructor(type, info) {
    this.type = type;
    this.info = info;
    this.displayName = info.display_name || info.name || type;
    this.category = info.category || "";
    this.description = info.description || "";
    this.outputNode = Boolean(info.output_node);
    this.deprecated = Boolean(info.deprecated);
    this.sockets = [];
    this.widgets = [];
    const inputs = info.input || {};
    for (const group of ["required", "optional"]) {
      const specs = inputs[group] || {};
      const order = info.input_order?.[group] || Object.keys(specs);
      this.uploadTarget = null;
      for (const name of order) {
        if (specs[name] !== undefined) this.#addInput(name, specs[name], group === "optional");
      }
      // the upload button follows the last widget of the group holding the image combo
      if (this.uploadTarget) {
        this.widgets.push({
          name: "upload", kind: "upload", inputType: "IMAGEUPLOAD", target: this.uploadTarget,
          options: { serialize: false }, default: "image",
        });
      }
    }
    delete this.uploadTarget;
    const names = info.output_name || [];
    this.outputs = (info.output || []).map((type, i) => ({
      name: names[i] || String(type),
      type: Array.isArray(type) ? "COMBO" : String(type),
      isList: Boolean(info.output_is_list?.[i]),
    }));
  }

  #addInput(name, spec, optional) {
    const [rawType, options = {}] = Array.isArray(spec) ? spec : [spec, {}];
    const isCombo = Array.isArray(rawType) || rawType === "COMBO";
    const type = isCombo ? "COMBO" : String(rawType);
    if (!WIDGET_TYPES.has(type) || options.forceInput) {
      this.sockets.push({ name, type, optional, tooltip: options.tooltip });
      return;
    }
    const widget = { name, inputType: type, optional, options: { ...options }, tooltip: options.tooltip };
    if (isCombo) {
      widget.kind = "combo";
      widget.options.values = Array.isArray(rawType) ? rawType.slice() : (options.options || []).slice();
      widget.default = options.default ?? widget.options.values[0] ?? "";
    } else if (type === "INT" || type === "FLOAT") {
      widget.kind = options.display === "slider" ? "slider" : "number";
      widget.options.integer = type === "INT";
      widget.options.step = options.step ?? (type === "INT" ? 1 : 0.1);
      widget.default = options.default ?? options.min ?? 0;
    } else if (type === "STRING") {
      widget.kind = options.multiline ? "multiline" : "text";
      widget.default = options.default ?? "";
    } else {
      widget.kind = "toggle";
      widget.default = options.default ?? false;
    }
    this.widgets.push(widget);
    // seeds get a control widget; old definitions do not ask for it, so the names count too
    const legacySeed = type === "INT" && LEGACY_SEED_NAMES.includes(name);
    if (options.control_after_generate || legacySeed) {
      const mode = typeof options.control_after_generate === "string" ? options.control_after_generate : "randomize";
      this.widgets.push({
        name: "control_after_generate", kind: "control", inputType: "COMBO", target: name,
        options: { values: CONTROL_MODES.slice(), serialize: false }, default: mode,
      });
      if (isCombo) {
        this.widgets.push({
          name: "control_filter_list", kind: "text", inputType: "STRING", target: name,
          options: { serialize: false }, default: "",
        });
      }
    }
    if (isCombo && options.image_upload) this.uploadTarget = name;
  }

  /** Text the node search matches against. */
  get searchText() {
    return [this.displayName, this.type, this.category].join(" ").toLowerCase();
  }

  /** Whether some input of this node accepts `type` (for search after dragging from an output). */
  acceptsType(type, isValid) {
    return this.sockets.some((s) => isValid(type, s.type));
  }

  /** Whether some output of this node can feed `type` (for search after dragging from an input). */
  producesType(type, isValid) {
    return this.outputs.some((o) => isValid(o.type, type));
  }
}

/** All node definitions the server offers, by type. */
export class NodeDefs {
  constructor(objectInfo = {}) {
    this.byType = new Map();
    for (const [type, info] of Object.entries(objectInfo)) {
      try {
        this.byType.set(type, new NodeDef(type, info));
      } catch (error) {
        console.warn(`node definition ${type} could not be read:`, error);
      }
    }
  }

  get(type) {
    return this.byType.get(type) || null;
  }

  all() {
    return [...this.byType.values()];
  }
}
