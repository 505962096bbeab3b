/**
 * The one DOM builder the panels and dialogs share: `element(tag, props, children)`.
 * `props.dataset` fills data-* attributes, `on<event>` props become listeners, anything else is set
 * as a property; children are nodes or strings.
 */
export function element(tag, props = {}, children = []) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el[key] = value;
  }
  for (const child of children) el.append(child);
  return el;
}
