// `npm pack` ships the module, its types, the README and package.json: nothing else.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

test("npm pack holds only package.json, README.md and dist/", () => {
  // --ignore-scripts: no prepack build here (check-dist has compared dist/ with src/ already).
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], {
    cwd: root,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
  const files = JSON.parse(out)[0].files.map((f) => f.path).sort();
  assert.deepEqual(files, ["README.md", "dist/index.d.ts", "dist/index.js", "package.json"]);
});

test("package.json: an ES module with types, no runtime dependencies, typescript pinned exactly", () => {
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  assert.equal(pkg.name, "@cloakroom/client");
  assert.equal(pkg.type, "module");
  assert.equal(pkg.types, "./dist/index.d.ts");
  assert.deepEqual(pkg.exports["."], { types: "./dist/index.d.ts", default: "./dist/index.js" });
  assert.deepEqual(pkg.files, ["dist"]);
  assert.equal(pkg.dependencies, undefined, "no runtime dependencies");
  assert.deepEqual(Object.keys(pkg.devDependencies), ["typescript"]);
  assert.match(pkg.devDependencies.typescript, /^\d+\.\d+\.\d+$/, "an exact version");
  const lock = JSON.parse(readFileSync(join(root, "package-lock.json"), "utf8"));
  assert.equal(lock.packages["node_modules/typescript"].version, pkg.devDependencies.typescript);
});

test("the module imports nothing and uses no Web Storage", () => {
  const js = readFileSync(join(root, "dist/index.js"), "utf8");
  assert.doesNotMatch(js, /^\s*import\s/m, "no imports");
  assert.doesNotMatch(js, /localStorage|sessionStorage|indexedDB|document\.cookie/);
});
