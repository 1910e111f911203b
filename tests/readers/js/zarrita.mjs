// Read one array of a Zarr directory with zarrita.js (v2 or v3) and print it as JSON.
// Usage (from the directory holding node_modules): node --input-type=module - STORE ARRAY < zarrita.mjs
// Prints {"reader", "dtype", "shape", "fill_value", "values"} or {"reader", "error"}.
import * as fs from "node:fs";
import * as path from "node:path";
import FileSystemStore from "@zarrita/storage/fs";
import * as zarr from "zarrita";

const [storeDir, arrayPath] = process.argv.slice(2);
const pkg = (name) =>
  JSON.parse(fs.readFileSync(path.join("node_modules", name, "package.json"), "utf8")).version;
const reader = `zarrita ${pkg("zarrita")}`;

try {
  const store = new FileSystemStore(storeDir);
  const arr = await zarr.open(zarr.root(store).resolve(arrayPath), { kind: "array" });
  const chunk = await zarr.get(arr);
  const values = Array.from(chunk.data, (v) => (typeof v === "bigint" ? Number(v) : v));
  process.stdout.write(JSON.stringify({
    reader, dtype: arr.dtype, shape: chunk.shape, fill_value: arr.fillValue, values,
  }));
} catch (err) {
  process.stdout.write(JSON.stringify({ reader, error: `${err?.name ?? "Error"}: ${err?.message ?? err}` }));
}
