// `npm test`, first step: compiles src/ into a temporary directory with the pinned tsc and fails
// when the checked-in dist/ differs (the Rust demo embeds dist/index.js, so it must not go stale).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(join(root, "package.json"));
let tsc;
try {
  tsc = require.resolve("typescript/bin/tsc");
} catch {
  console.error("check-dist: typescript is not installed; run `npm ci` in clients/js first");
  process.exit(1);
}
const out = mkdtempSync(join(tmpdir(), "cloakroom-client-dist-"));
try {
  execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.json"), "--outDir", out], {
    cwd: root,
    stdio: "inherit",
  });
  const list = (dir) => (existsSync(dir) ? readdirSync(dir).sort() : []);
  const fresh = list(out);
  const checkedIn = list(join(root, "dist"));
  const problems = [];
  for (const f of new Set([...fresh, ...checkedIn])) {
    if (!fresh.includes(f)) problems.push(`dist/${f} is not built from src/ (remove it)`);
    else if (!checkedIn.includes(f)) problems.push(`dist/${f} is missing`);
    else if (!readFileSync(join(out, f)).equals(readFileSync(join(root, "dist", f)))) {
      problems.push(`dist/${f} differs from what src/ compiles to`);
    }
  }
  if (problems.length > 0) {
    console.error(`check-dist: dist/ is stale:\n  ${problems.join("\n  ")}\nrun \`npm run build\` in clients/js and commit dist/`);
    process.exit(1);
  }
  console.log(`check-dist: dist/ matches src/ (${fresh.join(", ")})`);
} finally {
  rmSync(out, { recursive: true, force: true });
}
