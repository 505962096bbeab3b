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

/** ComfyUI's V3 dynamic input types (see graph/dynamic.js for how nodes grow and retype with them). */
export const AUTOGROW = "COMFY_AUTOGROW_V3";
export const MATCHTYPE = "COMFY_MATCHTYPE_V3";
export const DYNAMICCOMBO = "COMFY_DYNAMICCOMBO_V3";
const AUTOGROW_DEFAULT_MAX = 100;

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
    this.autogrow = {}; // group name -> { min, max, names, prefix, specs: [{ name, type, optional }] }
    this.matchInputs = {}; // input name -> { template, allowed }
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
    this.outputs = (info.output || []).map((type, i) => {
      const output = {
        name: names[i] || String(type),
        type: Array.isArray(type) ? "COMBO" : String(type),
        isList: Boolean(info.output_is_list?.[i]),
      };
      const template = info.output_matchtypes?.[i];
      if (output.type === MATCHTYPE && template != null) {
        output.matchType = String(template);
        output.type = this.matchTemplateTypes(output.matchType);
      }
      return output;
    });
  }

  /** What inputs of a MatchType template may take, together (an unlinked matched output's type). */
  matchTemplateTypes(template) {
    const types = new Set();
    for (const entry of Object.values(this.matchInputs)) {
      if (entry.template === template) for (const t of String(entry.allowed).split(",")) if (t.trim()) types.add(t.trim());
    }
    return types.size ? [...types].join(",") : "*";
  }

  /** Sockets of one autogrow ordinal: `images.image0` labelled `image0`, optional from `min` on. */
  autogrowSockets(group, ordinal) {
    const entry = this.autogrow[group];
    if (!entry || ordinal >= entry.max) return [];
    return entry.specs.map((spec) => {
      const base = entry.names ? entry.names[ordinal] : (entry.specs.length === 1 ? entry.prefix ?? "" : spec.name) + ordinal;
      return { name: `${group}.${base}`, label: String(base), type: spec.type, optional: spec.optional || ordinal >= entry.min,
        autogrow: group };
    });
  }

  #addAutogrow(name, options) {
    const template = options.template || {};
    const specs = [];
    for (const group of ["required", "optional"]) {
      for (const [key, spec] of Object.entries(template.input?.[group] || {})) {
        const [rawType] = Array.isArray(spec) ? spec : [spec];
        specs.push({ name: key, type: Array.isArray(rawType) ? "COMBO" : String(rawType), optional: group === "optional" });
      }
    }
    const names = Array.isArray(template.names) ? template.names.map(String) : null;
    const min = Number.isInteger(template.min) ? template.min : 1;
    const max = names ? names.length : Number.isInteger(template.max) ? template.max : AUTOGROW_DEFAULT_MAX;
    this.autogrow[name] = { min, max, names, prefix: template.prefix, specs };
    // ComfyUI's frontend starts with the required copies plus one free one
    for (let ordinal = 0; ordinal === 0 || ordinal < min + 1; ordinal++) this.sockets.push(...this.autogrowSockets(name, ordinal));
  }

  /**
   * A dynamic combo's widget; its `choices` hold, by option key, the sockets and widgets the option brings
   * (`combo.input`, labelled `input`). An option may hold a dynamic combo of its own (`format.save_mode`,
   * whose options bring `format.save_mode.fps`).
   */
  #addDynamicCombo(name, options, optional, into, label) {
    const choices = {};
    for (const option of options.options || []) {
      const collected = { sockets: [], widgets: [] };
      for (const group of ["required", "optional"]) {
        for (const [key, spec] of Object.entries(option.inputs?.[group] || {})) {
          this.#addInput(`${name}.${key}`, spec, group === "optional", collected, key);
        }
      }
      choices[String(option.key)] = collected;
    }
    const values = Object.keys(choices);
    const widget = {
      name, kind: "combo", inputType: "COMBO", optional, dynamic: true, choices, tooltip: options.tooltip,
      options: { values }, default: options.default ?? values[0] ?? "",
    };
    if (label) widget.label = label;
    into.widgets.push(widget);
  }

  #addInput(name, spec, optional, into = this, label = undefined) {
    const [rawType, options = {}] = Array.isArray(spec) ? spec : [spec, {}];
    const isCombo = Array.isArray(rawType) || rawType === "COMBO";
    const type = isCombo ? "COMBO" : String(rawType);
    if (type === AUTOGROW && into === this) { this.#addAutogrow(name, options); return; }
    if (type === DYNAMICCOMBO) { this.#addDynamicCombo(name, options, optional, into, label); return; }
    if (type === "IMAGECOMPARE") {
      // the before/after slider: drawn in the node's image area, kept out of widgets_values (as ComfyUI does)
      into.widgets.push({ name, kind: "imagecompare", inputType: type, optional, options: { ...options }, saved: false,
        default: null });
      return;
    }
    if (type === MATCHTYPE) {
      const template = options.template || {};
      const allowed = String(template.allowed_types ?? "*") || "*";
      this.matchInputs[name] = { template: String(template.template_id ?? name), allowed };
      into.sockets.push({ name, type: allowed, optional, tooltip: options.tooltip, ...(label ? { label } : {}) });
      return;
    }
    if (!WIDGET_TYPES.has(type) || options.forceInput) {
      into.sockets.push({ name, type, optional, tooltip: options.tooltip, ...(label ? { label } : {}) });
      return;
    }
    const widget = { name, inputType: type, optional, options: { ...options }, tooltip: options.tooltip };
    if (label) widget.label = label;
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
    into.widgets.push(widget);
    // seeds get a control widget; old definitions do not ask for it, so the names count too
    const legacySeed = type === "INT" && LEGACY_SEED_NAMES.includes(name);
    if (options.control_after_generate || legacySeed) {
      const mode = typeof options.control_after_generate === "string" ? options.control_after_generate : "randomize";
      into.widgets.push({
        name: "control_after_generate", kind: "control", inputType: "COMBO", target: name,
        options: { values: CONTROL_MODES.slice(), serialize: false }, default: mode,
      });
      if (isCombo) {
        into.widgets.push({
          name: "control_filter_list", kind: "text", inputType: "STRING", target: name,
          options: { serialize: false }, default: "",
        });
      }
    }
    if (isCombo && options.image_upload && into === this) this.uploadTarget = name;
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
