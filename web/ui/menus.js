/**
 * Context menus: a list of items, nested submenus opening to the side, and an optional filter field
 * (used by combo widgets with long option lists).
 *
 * An item is `{ label, action?, submenu?: items | () => items, disabled?, checked? }` or `null` for
 * a separator.
 */

let openMenus = [];

export function closeMenus() {
  for (const menu of openMenus) menu.remove();
  openMenus = [];
}

export function menusOpen() {
  return openMenus.length > 0;
}

function place(menu, x, y) {
  document.body.appendChild(menu);
  const { width, height } = menu.getBoundingClientRect();
  menu.style.left = `${Math.max(0, Math.min(x, window.innerWidth - width - 4))}px`;
  menu.style.top = `${Math.max(0, Math.min(y, window.innerHeight - height - 4))}px`;
}

/** Open a menu at client (x, y). `options.filter` adds a filter field; `level` is for submenus. */
export function showMenu(items, x, y, options = {}) {
  const level = options.level ?? 0;
  for (const menu of openMenus.splice(level)) menu.remove();
  const menu = document.createElement("div");
  menu.className = "context-menu";
  if (options.title) {
    const title = document.createElement("div");
    title.className = "menu-title";
    title.textContent = options.title;
    menu.appendChild(title);
  }
  let filterInput = null;
  if (options.filter) {
    filterInput = document.createElement("input");
    filterInput.className = "menu-filter";
    filterInput.placeholder = "Filter…";
    filterInput.spellcheck = false;
    menu.appendChild(filterInput);
  }
  const list = document.createElement("div");
  list.className = "menu-items";
  menu.appendChild(list);
  const entries = [];
  for (const item of items) {
    if (!item) {
      const separator = document.createElement("div");
      separator.className = "menu-separator";
      list.appendChild(separator);
      continue;
    }
    const entry = document.createElement("div");
    entry.className = "menu-item" + (item.disabled ? " disabled" : "") + (item.submenu ? " has-submenu" : "")
      + (item.checked ? " checked" : "");
    entry.textContent = item.label;
    entry.dataset.label = item.label;
    entry.addEventListener("pointerenter", () => {
      if (item.submenu && !item.disabled) {
        const rect = entry.getBoundingClientRect();
        const sub = typeof item.submenu === "function" ? item.submenu() : item.submenu;
        showMenu(sub, rect.right - 2, rect.top, { level: level + 1 });
      } else {
        for (const child of openMenus.splice(level + 1)) child.remove();
      }
    });
    // "click", not "pointerup": the release of the right button that opened a menu near the window
    // edge lands on the menu and must not choose the item under it
    entry.addEventListener("click", (e) => {
      e.stopPropagation();
      if (item.disabled || item.submenu) return;
      closeMenus();
      item.action?.();
    });
    list.appendChild(entry);
    entries.push({ entry, item });
  }
  menu.addEventListener("pointerdown", (e) => e.stopPropagation());
  place(menu, x, y);
  openMenus.push(menu);
  if (filterInput) {
    let active = -1;
    const visible = () => entries.filter(({ entry }) => entry.style.display !== "none");
    const highlight = () => visible().forEach(({ entry }, i) => entry.classList.toggle("active", i === active));
    filterInput.addEventListener("input", () => {
      const text = filterInput.value.toLowerCase();
      for (const { entry, item } of entries) entry.style.display = item.label.toLowerCase().includes(text) ? "" : "none";
      active = visible().length ? 0 : -1;
      highlight();
    });
    filterInput.addEventListener("keydown", (e) => {
      const shown = visible();
      if (e.key === "ArrowDown") active = Math.min(shown.length - 1, active + 1);
      else if (e.key === "ArrowUp") active = Math.max(0, active - 1);
      else if (e.key === "Enter") {
        const chosen = shown[Math.max(active, 0)];
        if (chosen) { closeMenus(); chosen.item.action?.(); }
      } else if (e.key === "Escape") closeMenus();
      highlight();
      e.stopPropagation();
    });
    filterInput.focus();
  }
  return menu;
}

document.addEventListener("pointerdown", () => closeMenus());
