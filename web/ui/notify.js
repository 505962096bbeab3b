/** Short messages in the corner of the window: errors, warnings and confirmations. */

let area = null;

export function notify(message, level = "info", timeout = 4000) {
  if (!area) {
    area = document.createElement("div");
    area.className = "toasts";
    document.body.appendChild(area);
  }
  const toast = document.createElement("div");
  toast.className = `toast ${level}`;
  toast.textContent = message;
  area.appendChild(toast);
  setTimeout(() => toast.remove(), level === "error" ? timeout * 2 : timeout);
  if (level === "error") console.warn(message);
}
