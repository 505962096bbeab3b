/**
 * DOM editors placed over the canvas for the moment a value is typed: a one-line field (numbers,
 * text, node titles) and a textarea for multiline prompts. Only one exists at a time.
 */

let current = null;

export function closeOverlay(commit = true) {
  if (!current) return;
  const { element, finish } = current;
  current = null;
  element.remove();
  finish(commit);
}

/**
 * Put an editor over the client rectangle `[x, y, w, h]`; resolves to the new text, or null when
 * cancelled (Escape). Enter commits a one-line field; blur commits both.
 */
export function editText(clientRect, value, { multiline = false, fontSize = 12, numeric = false } = {}) {
  closeOverlay(true);
  return new Promise((resolve) => {
    const element = document.createElement(multiline ? "textarea" : "input");
    element.className = multiline ? "overlay-textarea" : "overlay-input";
    if (!multiline) element.type = "text";
    if (numeric) element.inputMode = "decimal";
    element.spellcheck = false;
    element.value = value;
    const [x, y, w, h] = clientRect;
    Object.assign(element.style, {
      left: `${x}px`, top: `${y}px`, width: `${w}px`, height: `${h}px`, fontSize: `${fontSize}px`,
    });
    document.body.appendChild(element);
    const finish = (commit) => resolve(commit ? element.value : null);
    current = { element, finish };
    element.addEventListener("keydown", (event) => {
      event.stopPropagation();
      if (event.key === "Escape") { event.preventDefault(); closeOverlay(false); }
      else if (event.key === "Enter" && (!multiline || event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        closeOverlay(true);
      }
    });
    element.addEventListener("blur", () => { if (current?.element === element) closeOverlay(true); });
    element.addEventListener("pointerdown", (event) => event.stopPropagation());
    element.focus();
    if (multiline) element.setSelectionRange(element.value.length, element.value.length);
    else element.select();
  });
}
