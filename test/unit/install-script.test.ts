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

/** install.sh's die and its --uninstall branch, as it has them. */
const UNINSTALL = SCRIPT.slice(SCRIPT.indexOf("die() {"), SCRIPT.indexOf("\n}\n", SCRIPT.indexOf("die() {")) + 3) + SCRIPT.slice(SCRIPT.indexOf('if [ "${1:-}" = "--uninstall" ]'), SCRIPT.indexOf("\nif needs_build"));

/**
 * What `install.sh --uninstall --force` runs, with its paths moved into a
 * temporary root that `place` fills: each candidate a script that says which
 * it is and what it was given.
 */
function uninstallRuns(place: (root: string) => void): { status: number | null; stdout: string; stderr: string } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-install-sh-"));
  try {
    for (const dir of ["etc/libvirt/hooks", "etc/vmhook", "usr/local/bin", "checkout"]) fs.mkdirSync(path.join(root, dir), { recursive: true });
    place(root);
    const branch = UNINSTALL.replaceAll("/etc/", `${root}/etc/`).replaceAll("/usr/local/", `${root}/usr/local/`);
    const run = spawnSync("bash", ["-c", `set -euo pipefail\n${branch}`, "install.sh", "--uninstall", "--force"], { cwd: path.join(root, "checkout"), encoding: "utf8" });
    return { status: run.status, stdout: run.stdout.trim(), stderr: run.stderr.trim() };
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

const script = (file: string, text: string) => {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `#!/bin/sh\n${text}\n`, { mode: 0o755 });
};
const vmhookHook = (root: string) => script(path.join(root, "etc/libvirt/hooks/qemu"), 'echo "the installed vmhook-binary-marker:c0ffee-1: $*"');
const adminsHook = (root: string) => script(path.join(root, "etc/libvirt/hooks/qemu"), 'echo "the admin\'s own hook: $*"');
const built = (root: string) => script(path.join(root, "checkout/dist/vmhook"), 'echo "dist/vmhook: $*"');

// An uninstall killed on the way removes the CLI link first, and puts the
// admin's hook back at /etc/libvirt/hooks/qemu: install.sh used to follow
// that link alone, so it then said "not installed" while vmhook's hook still
// ran, or ran the admin's hook with "uninstall --force".
test("install.sh --uninstall runs the installed hook (found by its marker, not by /usr/local/bin/vmhook), else dist/vmhook; never the admin's hook; a stopped uninstall without a binary to finish it is said, not called done", () => {
  assert.equal(uninstallRuns(vmhookHook), { status: 0, stdout: "the installed vmhook-binary-marker:c0ffee-1: uninstall --force", stderr: "" });
  assert.equal(uninstallRuns((root) => (vmhookHook(root), built(root))).stdout, "the installed vmhook-binary-marker:c0ffee-1: uninstall --force");
  const linkedToAdminsHook = (root: string) => (adminsHook(root), fs.symlinkSync(path.join(root, "etc/libvirt/hooks/qemu"), path.join(root, "usr/local/bin/vmhook")));
  assert.equal(uninstallRuns((root) => (linkedToAdminsHook(root), built(root))), { status: 0, stdout: "dist/vmhook: uninstall --force", stderr: "" });
  const stopped = uninstallRuns((root) => (linkedToAdminsHook(root), fs.writeFileSync(path.join(root, "etc/vmhook/install.json"), "{}\n")));
  assert.is(stopped.status, 1);
  assert.match(stopped.stderr, /^install\.sh: an uninstall stopped on the way left \S*\/etc\/vmhook\/install\.json, and no vmhook binary is here to finish it; run \.\/install\.sh to build and install, then \.\/install\.sh --uninstall$/);
  assert.equal(uninstallRuns(adminsHook), { status: 0, stdout: "", stderr: "install.sh: vmhook is not installed; nothing to do" });
});

test.run();
