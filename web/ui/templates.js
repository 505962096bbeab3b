/**
 * The Templates dialog: the example workflows the server ships (`GET /api/workflows/templates`), each with
 * a picture it made with the demo model and a one-line description; a click opens one in a new tab.
 * Shown from the toolbar, and once on a first visit (no open tabs, nothing saved on the server).
 */

import { element } from "./dom.js";

const SEEN_KEY = "loom.templates.seen";

export function closeTemplates() {
  document.querySelector(".templates-backdrop")?.remove();
}

/** Show the dialog; resolves to the tab opened, or null when it was closed without choosing. */
export async function showTemplates(editor) {
  closeTemplates();
  localStorage.setItem(SEEN_KEY, "1");
  let templates;
  try {
    templates = await editor.api.templates();
  } catch (error) {
    editor.notify(`Could not list the templates: ${error.message}`, "error");
    return null;
  }
  return new Promise((resolve) => {
    const close = (result) => { backdrop.remove(); resolve(result); };
    const card = (template) => {
      const picture = template.thumbnail
        ? element("img", { className: "template-thumb", src: template.thumbnail, alt: template.title, loading: "lazy" })
        : element("div", { className: "template-thumb placeholder", textContent: "needs your model" });
      const needs = template.builtin_model ? "runs with the built-in demo model" : `needs ${template.models.join(", ")}`;
      return element("button", { className: "template-card", dataset: { name: template.name }, title: `Open ${template.title}`,
        onclick: async () => {
          try {
            const data = await editor.api.template(template.name);
            close(editor.workspace.open(data, { name: template.title, fit: true }));
          } catch (error) {
            editor.notify(`Could not open ${template.title}: ${error.message}`, "error");
          }
        } }, [
        picture,
        element("span", { className: "template-title", textContent: template.title }),
        element("span", { className: "template-description", textContent: template.description }),
        element("span", { className: "template-models muted", textContent: needs }),
      ]);
    };
    const dialog = element("div", { className: "templates-dialog", role: "dialog", tabIndex: -1, ariaLabel: "Templates" }, [
      element("header", {}, [
        element("h2", { textContent: "Start from a template" }),
        element("button", { className: "templates-close", textContent: "×", title: "Close (Escape)", onclick: () => close(null) }),
      ]),
      element("div", { className: "template-grid" }, templates.map(card)),
    ]);
    const backdrop = element("div", { className: "templates-backdrop" }, [dialog]);
    backdrop.addEventListener("click", (event) => { if (event.target === backdrop) close(null); });
    backdrop.addEventListener("keydown", (event) => {
      event.stopPropagation(); // the canvas's shortcuts do not apply behind the dialog
      if (event.key === "Escape") close(null);
    });
    document.body.appendChild(backdrop);
    dialog.focus();
  });
}

/** First visit: no tab came back and no workflow is saved on the server. */
export async function isFirstRun(editor, restored) {
  if (restored || localStorage.getItem(SEEN_KEY)) return false;
  try {
    return (await editor.workspace.list()).length === 0;
  } catch {
    return false;
  }
}
