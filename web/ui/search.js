/**
 * The node search box: opened by double-clicking the canvas or by releasing a dragged link on empty
 * space (then only nodes with a compatible slot are offered). Matching is fuzzy over the display
 * name, the class name, the category and the slot types.
 */
import { isValidConnection } from "../graph/types.js";

const MAX_RESULTS = 60;

/** Score of `text` for `query`: higher is better, 0 means no match. */
export function fuzzyScore(query, text) {
  if (!query) return 1;
  const index = text.indexOf(query);
  if (index === 0) return 100 - text.length * 0.01;
  if (index > 0) return (/[\s/_]/.test(text[index - 1]) ? 80 : 60) - index * 0.1;
  // every character of the query in order (e.g. "ksa" -> "KSampler", "clte" -> "CLIPTextEncode")
  let position = 0;
  let gaps = 0;
  for (const ch of query) {
    const found = text.indexOf(ch, position);
    if (found < 0) return 0;
    gaps += found - position;
    position = found + 1;
  }
  return Math.max(1, 40 - gaps);
}

function scoreDef(def, words) {
  let total = 0;
  const name = def.displayName.toLowerCase();
  const type = def.type.toLowerCase();
  const category = def.category.toLowerCase();
  const types = [...def.sockets.map((s) => s.type), ...def.outputs.map((o) => o.type)].join(" ").toLowerCase();
  for (const word of words) {
    const best = Math.max(fuzzyScore(word, name) * 1.2, fuzzyScore(word, type) * 1.1,
      fuzzyScore(word, category) * 0.6, types.includes(word) ? 30 : 0);
    if (!best) return 0;
    total += best;
  }
  // nodes kept for testing or on their way out come after the everyday ones
  if (def.category.startsWith("_") || def.deprecated || def.info.experimental) total *= 0.5;
  return total;
}

/** Definitions matching `query` (and the optional link filter), best first. */
export function searchDefs(defs, query, filter = null) {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  const results = [];
  for (const def of defs.all()) {
    if (def.deprecated && !words.length) continue;
    if (filter) {
      const ok = filter.wantInput ? def.acceptsType(filter.type, isValidConnection)
        : def.producesType(filter.type, isValidConnection);
      if (!ok) continue;
    }
    const score = words.length ? scoreDef(def, words) : 1;
    if (score > 0) results.push({ def, score });
  }
  results.sort((a, b) => b.score - a.score || a.def.displayName.localeCompare(b.def.displayName));
  return results.slice(0, MAX_RESULTS).map((r) => r.def);
}

export class NodeSearch {
  constructor(defs) {
    this.defs = defs;
    this.box = null;
  }

  get isOpen() {
    return Boolean(this.box);
  }

  close() {
    if (!this.box) return;
    this.box.remove();
    this.box = null;
    this.resolve?.(null);
    this.resolve = null;
  }

  /** Show the box at client (x, y); resolves to the chosen definition or null. */
  open(x, y, filter = null) {
    this.close();
    return new Promise((resolve) => {
      this.resolve = resolve;
      const box = document.createElement("div");
      box.className = "search-box";
      box.innerHTML = `<input type="text" class="search-input" placeholder="Search nodes…" spellcheck="false">
        <div class="search-filter"></div><ul class="search-results"></ul>`;
      const input = box.querySelector("input");
      const list = box.querySelector("ul");
      if (filter) box.querySelector(".search-filter").textContent =
        `${filter.wantInput ? "input" : "output"}: ${filter.type}`;
      document.body.appendChild(box);
      box.style.left = `${Math.min(x, window.innerWidth - 420)}px`;
      box.style.top = `${Math.min(y, window.innerHeight - 360)}px`;
      this.box = box;
      let results = [];
      let active = 0;
      const choose = (def) => {
        const done = this.resolve;
        this.resolve = null;
        this.close();
        done?.(def);
      };
      const render = () => {
        results = searchDefs(this.defs, input.value, filter);
        active = Math.min(active, Math.max(0, results.length - 1));
        list.replaceChildren(...results.map((def, i) => {
          const item = document.createElement("li");
          item.dataset.type = def.type;
          item.className = i === active ? "active" : "";
          const label = document.createElement("span");
          label.className = "name";
          label.textContent = def.displayName;
          const category = document.createElement("span");
          category.className = "category";
          category.textContent = def.category;
          item.append(label, category);
          item.addEventListener("pointerdown", (e) => { e.preventDefault(); choose(def); });
          return item;
        }));
        list.children[active]?.scrollIntoView({ block: "nearest" });
      };
      input.addEventListener("input", () => { active = 0; render(); });
      input.addEventListener("keydown", (e) => {
        if (e.key === "ArrowDown") { active = Math.min(results.length - 1, active + 1); render(); e.preventDefault(); }
        else if (e.key === "ArrowUp") { active = Math.max(0, active - 1); render(); e.preventDefault(); }
        else if (e.key === "Enter") { if (results[active]) choose(results[active]); e.preventDefault(); }
        else if (e.key === "Escape") { this.close(); e.preventDefault(); }
        e.stopPropagation();
      });
      render();
      input.focus();
    });
  }
}
