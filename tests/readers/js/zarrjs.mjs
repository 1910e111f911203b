// Read one array of a Zarr v2 directory with zarr.js (npm `zarr`) and print it as JSON.
// zarr.js has no file-system store, so this gives it a minimal read-only one over node:fs.
// Usage (from the directory holding node_modules): node --input-type=module - STORE ARRAY < zarrjs.mjs
// Prints {"reader", "dtype", "shape", "fill_value", "values"} or {"reader", "error"}.
import * as fs from "node:fs";
import * as path from "node:path";
import { KeyError, openArray } from "zarr";

const [storeDir, arrayPath] = process.argv.slice(2);
const version = JSON.parse(
  fs.readFileSync(path.join("node_modules", "zarr", "package.json"), "utf8"),
).version;
const reader = `zarr.js ${version}`;

class FileStore {
  constructor(root) { this.root = root; }
  async getItem(key) {
    try {
      const buf = await fs.promises.readFile(path.join(this.root, key));
      return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
    } catch (err) {
      if (err.code === "ENOENT") throw new KeyError(key);
      throw err;
    }
  }
  async containsItem(key) {
    return fs.promises.access(path.join(this.root, key)).then(() => true, () => false);
  }
  async keys() { return []; }
  async setItem() { throw new Error("read-only store"); }
  async deleteItem() { throw new Error("read-only store"); }
}

try {
  const arr = await openArray({ store: new FileStore(storeDir), path: arrayPath, mode: "r" });
  const raw = await arr.getRaw(null);
  const values = Array.from(raw.data, (v) => (typeof v === "bigint" ? Number(v) : v));
  process.stdout.write(JSON.stringify({
    reader, dtype: arr.dtype, shape: raw.shape, fill_value: arr.fillValue, values,
  }));
} catch (err) {
  process.stdout.write(JSON.stringify({ reader, error: `${err?.name ?? "Error"}: ${err?.message ?? err}` }));
}
