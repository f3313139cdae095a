// install.sh builds dist/vmhook again when a source of it is newer than the
// binary: one it leaves out would have `./install.sh` after a `git pull`
// install the old binary.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const SCRIPT = fs.readFileSync(path.join(REPO, "install.sh"), "utf8");
/** install.sh's SOURCES and needs_build, as it has them. */
const NEEDS_BUILD = SCRIPT.slice(SCRIPT.indexOf("SOURCES=("), SCRIPT.indexOf("\n}\n", SCRIPT.indexOf("needs_build()")) + 3);

/** Whether install.sh's needs_build says a build is due in `dir`, where dist/vmhook is older than `newer`. */
function needsBuildAfter(newer: string | undefined): boolean {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-install-sh-"));
  try {
    fs.mkdirSync(path.join(dir, "dist"));
    fs.writeFileSync(path.join(dir, "dist/vmhook"), "", { mode: 0o755 });
    fs.utimesSync(path.join(dir, "dist/vmhook"), new Date(2000, 0, 1), new Date(2000, 0, 1));
    if (newer) {
      fs.mkdirSync(path.dirname(path.join(dir, newer)), { recursive: true });
      fs.writeFileSync(path.join(dir, newer), "");
    }
    const run = spawnSync("bash", ["-c", `set -euo pipefail\n${NEEDS_BUILD}\nif needs_build; then echo yes; else echo no; fi`], { cwd: dir, encoding: "utf8" });
    assert.is(run.status, 0, run.stderr);
    return run.stdout.trim() === "yes";
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test("install.sh rebuilds when the build script (packaging/build.ts, what npm run build runs) is newer than dist/vmhook", () => {
  const build = JSON.parse(fs.readFileSync(path.join(REPO, "package.json"), "utf8")).scripts.build as string;
  const scripts = build.split(/\s+/).filter((word) => /\.(ts|js|mjs)$/.test(word) && fs.existsSync(path.join(REPO, word)));
  assert.equal(scripts, ["packaging/build.ts"]);
  for (const file of [...scripts, "hooks/qemu.ts", "lib/host.ts", "package-lock.json"]) assert.ok(needsBuildAfter(file), file);
  assert.not.ok(needsBuildAfter(undefined), "nothing newer: no build");
});

test.run();
