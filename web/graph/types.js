/**
 * Slot types: which output may feed which input, and the colour each type is drawn in.
 *
 * The rule is the server's (loom.nodes.kernel.schema.types_compatible, ComfyUI's validate_node_input), so a
 * link drawn here is one the server accepts: `*` on either side matches anything; otherwise comma
 * lists (`"IMAGE,MASK"`) match when a member of one side equals a member of the other, letter case
 * counting; a COMBO input takes only a COMBO output. tests/fixtures/type_compat.json holds both sides
 * to it. An empty type is a socket not typed yet (a fresh reroute): it matches anything, as in litegraph.
 */

export function typeMembers(type) {
  return String(type ?? "").split(",").map((t) => t.trim()).filter(Boolean);
}

export function isWildcard(type) {
  return type === undefined || type === null || type === "" || type === "*" || type === 0;
}

/** True when an output of type `outputType` may be linked to an input of type `inputType`. */
export function isValidConnection(outputType, inputType) {
  if (isWildcard(outputType) || isWildcard(inputType)) return true;
  const outs = typeMembers(outputType);
  const ins = new Set(typeMembers(inputType));
  if (outs.includes("*") || ins.has("*")) return true;
  return outs.some((t) => ins.has(t));
}

/** Link and slot colours by type (the familiar dark palette). */
export const TYPE_COLORS = {
  MODEL: "#B39DDB",
  CLIP: "#FFD500",
  VAE: "#FF6E6E",
  CONDITIONING: "#FFA931",
  LATENT: "#FF9CF9",
  IMAGE: "#64B5F6",
  MASK: "#81C784",
  CONTROL_NET: "#6EE7B7",
  CLIP_VISION: "#A8DADC",
  CLIP_VISION_OUTPUT: "#AD7452",
  STYLE_MODEL: "#C2FFAE",
  NOISE: "#B0B0B0",
  GUIDER: "#66FFFF",
  SAMPLER: "#ECB4B4",
  SIGMAS: "#CDFFCD",
  INT: "#6FA8DC",
  FLOAT: "#93C47D",
  STRING: "#E6B8AF",
  BOOLEAN: "#F6B26B",
};

const FALLBACK_COLORS = ["#9FA8DA", "#80CBC4", "#FFCC80", "#CE93D8", "#A5D6A7", "#EF9A9A", "#90CAF9"];

/** The colour of a slot or link of `type`; unknown types get a stable colour from their name. */
export function typeColor(type) {
  if (isWildcard(type)) return "#AAAAAA";
  const key = String(type).toUpperCase();
  if (TYPE_COLORS[key]) return TYPE_COLORS[key];
  const first = typeMembers(key)[0];
  if (first && TYPE_COLORS[first]) return TYPE_COLORS[first];
  let hash = 0;
  for (const ch of key) hash = (hash * 31 + ch.charCodeAt(0)) | 0;
  return FALLBACK_COLORS[Math.abs(hash) % FALLBACK_COLORS.length];
}

/** Node colour presets offered in the node menu: title colour and body colour. */
export const NODE_COLORS = {
  red: { color: "#322", bgcolor: "#533" },
  brown: { color: "#332922", bgcolor: "#593930" },
  green: { color: "#232", bgcolor: "#353" },
  blue: { color: "#223", bgcolor: "#335" },
  pale_blue: { color: "#2a363b", bgcolor: "#3f5159" },
  cyan: { color: "#233", bgcolor: "#355" },
  purple: { color: "#323", bgcolor: "#535" },
  yellow: { color: "#432", bgcolor: "#653" },
  black: { color: "#222", bgcolor: "#000" },
};
