/**
 * The Models panel of the side panel: the model files of each folder (`GET /model_library/{folder}`) with
 * size and family (from the loaders' own detection, cached by the server per file fingerprint), searched by
 * name. A click adds the folder's loader node with that file selected, in the middle of the view; dragging a
 * file onto the canvas adds it where it is dropped. Refresh re-lists the folders and re-detects.
 */
import { element } from "./dom.js";
import { addFromLibrary, installLibraryDrop, makeDraggable, viewCentre } from "./library-drop.js";

/** Folder -> the loader nodes that take its files, first preferred (ComfyUI's model-to-node defaults). */
export const MODEL_LOADERS = {
  checkpoints: [["CheckpointLoaderSimple", "ckpt_name"]],
  loras: [["LoraLoader", "lora_name"], ["LoraLoaderModelOnly", "lora_name"]],
  vae: [["VAELoader", "vae_name"]],
  controlnet: [["ControlNetLoader", "control_net_name"]],
  diffusion_models: [["UNETLoader", "unet_name"]],
  clip: [["CLIPLoader", "clip_name"]],
  upscale_models: [["UpscaleModelLoader", "model_name"]],
  clip_vision: [["CLIPVisionLoader", "clip_name"]],
  style_models: [["StyleModelLoader", "style_model_name"]],
  gligen: [["GLIGENLoader", "gligen_name"]],
};

const FOLDER_LABELS = { clip: "text_encoders" };

export function formatSize(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(bytes) || 0;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return `${value >= 100 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

export class ModelLibrary {
  constructor(editor, sidebar) {
    this.editor = editor;
    this.sidebar = sidebar;
    this.query = "";
    this.open = new Set(["checkpoints"]);
    installLibraryDrop(editor);
  }

  /** The loader node for `folder` that this server has: `{ type, widget }` or null. */
  loaderFor(folder) {
    for (const [type, widget] of MODEL_LOADERS[folder] || []) {
      const def = this.editor.defs.get(type);
      if (def && def.widgets.some((w) => w.name === widget)) return { type, widget };
    }
    return null;
  }

  /** Add the loader of `folder` with `file` selected (at `pos`, else the middle of the view). */
  add(folder, file, pos = null) {
    const loader = this.loaderFor(folder);
    if (!loader) return null;
    return addFromLibrary(this.editor, { ...loader, value: file }, pos || viewCentre(this.editor));
  }

  async render({ refresh = false } = {}) {
    const api = this.editor.api;
    const counts = await api.request("/model_library");
    const listed = await Promise.all(counts.filter((c) => c.count > 0).map(async ({ folder }) =>
      api.request(`/model_library/${encodeURIComponent(folder)}${refresh ? "?refresh=1" : ""}`)));
    const search = element("input", { type: "search", className: "library-search model-search", placeholder: "Search models",
      value: this.query });
    const sections = listed.map(({ folder, files }) => this.#section(folder, files));
    const empty = element("p", { className: "library-empty", textContent: listed.length ? "No model matches."
      : "No model files yet: put them in models/checkpoints, models/loras, ... and press Refresh." });
    const filter = () => {
      this.query = search.value;
      const words = this.query.toLowerCase().split(/\s+/).filter(Boolean);
      let shown = 0;
      for (const section of sections) {
        let inSection = 0;
        for (const row of section.querySelectorAll(".library-item")) {
          const match = words.every((w) => row.dataset.search.includes(w));
          row.hidden = !match;
          if (match) inSection++;
        }
        section.hidden = inSection === 0;
        if (words.length && inSection) section.open = true;
        shown += inSection;
      }
      empty.hidden = shown > 0;
    };
    search.addEventListener("input", filter);
    search.addEventListener("keydown", (event) => event.stopPropagation());
    const refreshButton = element("button", { textContent: "Refresh", className: "model-refresh",
      title: "List the model folders again (and detect changed files)",
      onclick: async () => {
        const content = await this.render({ refresh: true });
        this.sidebar.body.replaceChildren(content);
      } });
    const content = element("div", { className: "library model-library" }, [
      element("div", { className: "sidebar-actions" }, [refreshButton]), search, ...sections, empty]);
    filter();
    return content;
  }

  #section(folder, files) {
    const loader = this.loaderFor(folder);
    const rows = files.map((file) => {
      const title = [file.name, `${formatSize(file.size)}`, file.family ? `family: ${file.family}` : "",
        file.detail, loader ? `click or drag: ${loader.type}` : "no loader node for this folder"].filter(Boolean).join("\n");
      const row = element("li", { className: `library-item model-item${loader ? "" : " no-loader"}`, title,
        dataset: { folder, name: file.name, family: file.family || "", search: `${file.name} ${file.family || ""}`.toLowerCase() },
        onclick: () => { if (loader) this.add(folder, file.name); } }, [
        element("span", { className: "name", textContent: file.name }),
        ...(file.family ? [element("span", { className: "family", textContent: file.family })] : []),
        element("span", { className: "size", textContent: formatSize(file.size) }),
      ]);
      if (loader) makeDraggable(row, { ...loader, value: file.name });
      return row;
    });
    const details = element("details", { className: "model-folder", open: this.open.has(folder), dataset: { folder } }, [
      element("summary", {}, [FOLDER_LABELS[folder] || folder, element("span", { className: "count", textContent: String(files.length) })]),
      element("ul", {}, rows),
    ]);
    details.addEventListener("toggle", () => { if (details.open) this.open.add(folder); else this.open.delete(folder); });
    return details;
  }
}
