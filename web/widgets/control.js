/**
 * `control_after_generate`: after a prompt is queued, each control widget changes the value of the
 * widget it follows (a seed, or a combo): fixed, increment, decrement or randomize. Applying it after
 * queueing keeps the seed that ran in the saved image, while the widget shows the next one. A combo's
 * `control_filter_list` (text, or a /regex/) limits the options stepped through.
 */
import { normalizeNumber } from "../graph/model.js";

const RANDOM_MAX = 2 ** 50; // ComfyUI clamps random seeds here so they stay exact in JSON numbers

function randomNumber(widget) {
  const { min = 0, step = 1 } = widget.options;
  const max = Math.min(widget.options.max ?? RANDOM_MAX, RANDOM_MAX);
  const steps = Math.floor((max - min) / step);
  return min + Math.floor(Math.random() * (steps + 1)) * step;
}

/** The next value of `target` under control `mode`; the value itself when nothing changes. */
function filtered(values, filter) {
  if (!filter) return values;
  const regex = /^\/(.*)\/([a-z]*)$/.exec(filter);
  let test;
  try {
    test = regex ? ((re) => (v) => re.test(v))(new RegExp(regex[1], regex[2])) : (v) => v.includes(filter);
  } catch {
    return values;
  }
  const kept = values.filter((v) => test(String(v)));
  return kept.length ? kept : values;
}

export function nextControlledValue(target, mode, filter = "") {
  if (target.kind === "combo") {
    const values = filtered(target.options.values || [], filter);
    if (!values.length) return target.value;
    const index = Math.max(0, values.indexOf(target.value));
    if (mode === "increment") return values[Math.min(values.length - 1, index + 1)];
    if (mode === "decrement") return values[Math.max(0, index - 1)];
    if (mode === "randomize") return values[Math.floor(Math.random() * values.length)];
    return target.value;
  }
  const step = target.options.step ?? 1;
  const value = Number(target.value) || 0;
  if (mode === "increment") return normalizeNumber(target, value + step);
  if (mode === "decrement") return normalizeNumber(target, value - step);
  if (mode === "randomize") return normalizeNumber(target, randomNumber(target));
  return target.value; // "fixed", a legacy `true`, or anything unknown
}

/** Apply every control widget of the graph; returns the number of values changed. */
export function applyControlsAfterQueue(graph) {
  let changed = 0;
  const ids = [];
  for (const node of graph.nodes) {
    if (node.mode === 2 || node.mode === 4) continue;
    for (const control of node.widgets) {
      if (control.kind !== "control") continue;
      const target = node.widget(control.target);
      if (!target || node.isWidgetLinked(target)) continue;
      const filter = node.widgets.find((w) => w.name === "control_filter_list" && w.target === target.name);
      const next = nextControlledValue(target, control.value, filter?.value || "");
      if (next !== target.value) {
        target.value = next;
        changed++;
        ids.push(node.id);
      }
    }
  }
  if (changed) graph.emit({ type: "widgets", ids });
  return changed;
}
