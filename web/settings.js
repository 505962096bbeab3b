/**
 * Editor settings, kept on the server (`GET /settings`, `POST /settings/{id}`) so they follow the user
 * across browsers. Unknown ids written by other frontends are left alone.
 */
export class Settings extends EventTarget {
  constructor(api, specs) {
    super();
    this.api = api;
    this.defaults = new Map(specs.map((s) => [s.id, s.default]));
    this.values = {};
  }

  async load() {
    this.values = await this.api.getSettings();
  }

  get(id) {
    return id in this.values ? this.values[id] : this.defaults.get(id);
  }

  /** Change a setting now and store it on the server; listeners get a `change` event with `{ id, value }`. */
  set(id, value) {
    this.values[id] = value;
    this.dispatchEvent(new CustomEvent("change", { detail: { id, value } }));
    return this.api.setSetting(id, value).catch((error) => console.warn(`could not store setting ${id}:`, error));
  }
}
