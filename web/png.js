/**
 * Reads the text chunks of a PNG in the browser: `workflow` (UI JSON) and `prompt` (API JSON) as
 * saved images carry them (tEXt, iTXt, and compressed zTXt/iTXt).
 */

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** `{ keyword: text }` of every text chunk; throws when the bytes are not a PNG. */
export async function readPngText(buffer) {
  const bytes = new Uint8Array(buffer);
  if (!SIGNATURE.every((b, i) => bytes[i] === b)) throw new Error("not a PNG file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  const chunks = {};
  let offset = 8;
  while (offset + 8 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = latin1.decode(bytes.subarray(offset + 4, offset + 8));
    const data = bytes.subarray(offset + 8, offset + 8 + length);
    offset += 12 + length;
    if (type === "IEND") break;
    if (type !== "tEXt" && type !== "iTXt" && type !== "zTXt") continue;
    const zero = data.indexOf(0);
    if (zero < 0) continue;
    const keyword = latin1.decode(data.subarray(0, zero));
    if (type === "tEXt") {
      chunks[keyword] = latin1.decode(data.subarray(zero + 1));
    } else if (type === "zTXt") {
      chunks[keyword] = latin1.decode(await inflate(data.subarray(zero + 2)));
    } else {
      const compressed = data[zero + 1] === 1;
      const languageEnd = data.indexOf(0, zero + 3);
      const translatedEnd = data.indexOf(0, languageEnd + 1);
      const text = data.subarray(translatedEnd + 1);
      chunks[keyword] = utf8.decode(compressed ? await inflate(text) : text);
    }
  }
  return chunks;
}

/** The workflow (preferred) or API prompt embedded in a PNG: `{ workflow?, prompt? }` parsed. */
export async function readPngWorkflow(buffer) {
  const chunks = await readPngText(buffer);
  const parse = (text) => { try { return text ? JSON.parse(text) : null; } catch { return null; } };
  return { workflow: parse(chunks.workflow), prompt: parse(chunks.prompt) };
}
