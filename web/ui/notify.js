/** Messages in the corner of the window: short-lived toasts (errors, warnings, confirmations) and notices that stay until dismissed. */

let area = null;
const DISMISSED_KEY = "loom.dismissedNotices";

function toastArea() {
  if (!area) {
    area = document.createElement("div");
    area.className = "toasts";
    document.body.appendChild(area);
  }
  return area;
}

export function notify(message, level = "info", timeout = 4000) {
  const container = toastArea();
  const toast = document.createElement("div");
  toast.className = `toast ${level}`;
  toast.textContent = message;
  container.appendChild(toast);
  setTimeout(() => toast.remove(), level === "error" ? timeout * 2 : timeout);
  if (level === "error") console.warn(message);
}

function dismissedNotices() {
  try {
    const ids = JSON.parse(localStorage.getItem(DISMISSED_KEY) || "[]");
    return Array.isArray(ids) ? ids : [];
  } catch {
    return [];
  }
}

/**
 * A message that stays until the user closes it; once closed, the notice with that `id` is not shown
 * again in this browser. Returns the element, or null when it was dismissed before.
 */
export function notice(id, message, level = "info") {
  if (dismissedNotices().includes(id)) return null;
  const toast = document.createElement("div");
  toast.className = `toast notice ${level}`;
  toast.dataset.notice = id;
  const text = document.createElement("span");
  text.textContent = message;
  const close = document.createElement("button");
  close.className = "notice-close";
  close.title = "Dismiss";
  close.textContent = "\u00d7";
  close.addEventListener("click", () => {
    toast.remove();
    localStorage.setItem(DISMISSED_KEY, JSON.stringify([...new Set([...dismissedNotices(), id])]));
  });
  toast.append(text, close);
  toastArea().appendChild(toast);
  return toast;
}
