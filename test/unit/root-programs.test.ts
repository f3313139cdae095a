// Programs of a --root tree: vmhook looks programs up under the root (a test
// tree brings fake ones), and runs them as whoever runs vmhook. Run as root
// on a tree another user can write (sudo vmhook bundle --root ~/copy), that
// would be their code run as root: root runs a tree's program only when root
// alone can write it and every directory on the way to it.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { importModulePlugin } from "../../lib/custom-plugins/module.ts";
import { RootedHost } from "../../lib/host.ts";

const USER = 1000;

/** A directory holding a tree whose /usr/bin/systemctl leaves `ran` at the tree's top when it runs. */
function treeWithSystemctl(): { parent: string; root: string; ran: string } {
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-tree-"));
  const root = path.join(parent, "copy");
  fs.mkdirSync(path.join(root, "usr/bin"), { recursive: true, mode: 0o755 });
  fs.writeFileSync(path.join(root, "usr/bin/systemctl"), `#!/bin/sh\ntouch ${root}/ran\n`, { mode: 0o755 });
  return { parent, root, ran: path.join(root, "ran") };
}

/** Moves the tree's systemctl into `dir` and leaves a symlink to it in its place. */
function linkSystemctl(tree: { root: string }, dir: string): void {
  const target = path.join(dir, "systemctl");
  fs.renameSync(path.join(tree.root, "usr/bin/systemctl"), target);
  fs.symlinkSync(target, path.join(tree.root, "usr/bin/systemctl"));
}

function refusedBy(tree: { root: string; ran: string }, fix: string): void {
  const host = new RootedHost(tree.root);
  const result = host.exec("systemctl", ["daemon-reload"], { timeoutMs: 5000 });
  assert.is(result.status, null);
  assert.match(result.error ?? "", `systemctl: ${tree.root}/usr/bin/systemctl of the --root tree not run:`);
  assert.match(result.error ?? "", fix);
  assert.not.ok(fs.existsSync(tree.ran), "the program did not run");
}

test("as root, a --root tree's program that root alone can write runs (the tests' own trees)", () => {
  const tree = treeWithSystemctl();
  try {
    const result = new RootedHost(tree.root).exec("systemctl", [], { timeoutMs: 5000 });
    assert.equal([result.status, result.error], [0, undefined]);
    assert.ok(fs.existsSync(tree.ran));
  } finally {
    fs.rmSync(tree.parent, { recursive: true, force: true });
  }
});

test("as root, a --root tree's program in a directory another user owns is not run, naming the program, the directory and the fix", () => {
  const tree = treeWithSystemctl();
  try {
    fs.chownSync(path.join(tree.root, "usr/bin"), USER, USER);
    refusedBy(tree, `${tree.root}/usr/bin is owned by uid ${USER}, not root; vmhook runs a --root tree's programs as root, so run chown root:root ${tree.root}/usr/bin`);
  } finally {
    fs.rmSync(tree.parent, { recursive: true, force: true });
  }
});

test("as root, a --root tree's program that is a symlink to the host's own (the net tests' /usr/sbin/nft) runs when the link's directories and its target are root's alone", () => {
  const tree = treeWithSystemctl();
  try {
    linkSystemctl(tree, tree.parent);
    const result = new RootedHost(tree.root).exec("systemctl", [], { timeoutMs: 5000 });
    assert.equal([result.status, result.error], [0, undefined]);
    assert.ok(fs.existsSync(tree.ran));
  } finally {
    fs.rmSync(tree.parent, { recursive: true, force: true });
  }
});

test("as root, a --root tree's symlink in a directory another user owns is not run (they could point it elsewhere)", () => {
  const tree = treeWithSystemctl();
  try {
    linkSystemctl(tree, tree.parent);
    fs.chownSync(path.join(tree.root, "usr/bin"), USER, USER);
    refusedBy(tree, `${tree.root}/usr/bin is owned by uid ${USER}, not root`);
  } finally {
    fs.rmSync(tree.parent, { recursive: true, force: true });
  }
});

test("as root, a --root tree's program that group or others can write is not run", () => {
  const tree = treeWithSystemctl();
  try {
    fs.chmodSync(path.join(tree.root, "usr/bin/systemctl"), 0o775);
    refusedBy(tree, `${tree.root}/usr/bin/systemctl has mode 0775: group or others can write it, and vmhook runs a --root tree's programs as root; run chmod go-w ${tree.root}/usr/bin/systemctl`);
  } finally {
    fs.rmSync(tree.parent, { recursive: true, force: true });
  }
});

test("as root, a --root tree in a user's home (its top or a directory above it the user's) runs none of its programs, also without waiting for them", async () => {
  for (const owned of ["copy", "."]) {
    const tree = treeWithSystemctl();
    try {
      fs.chownSync(path.join(tree.parent, owned), USER, USER);
      refusedBy(tree, `${path.join(tree.parent, owned)} is owned by uid ${USER}, not root`);
      const result = await new RootedHost(tree.root).execAsync("systemctl", [], { timeoutMs: 5000 });
      assert.match(result.error ?? "", "of the --root tree not run");
      assert.not.ok(fs.existsSync(tree.ran));
    } finally {
      fs.rmSync(tree.parent, { recursive: true, force: true });
    }
  }
});

test("as root, a --root tree below a user's directory (sudo vmhook bundle --root ~/copy): the message says to move the tree, never to chown the user's home to root", () => {
  const tree = treeWithSystemctl();
  try {
    fs.chownSync(tree.parent, USER, USER);
    refusedBy(tree, `${tree.parent} is owned by uid ${USER}, not root; vmhook runs a --root tree's programs as root, so move ${tree.root} to a directory only root can write, such as /srv (${tree.parent} holds it)`);
    assert.not.match(new RootedHost(tree.root).exec("systemctl", [], { timeoutMs: 5000 }).error ?? "", "chown");
  } finally {
    fs.rmSync(tree.parent, { recursive: true, force: true });
  }
});

test("as root, a JavaScript plugin of a --root tree a user owns is not loaded (its top-level code would run as root)", async () => {
  const tree = treeWithSystemctl();
  try {
    const plugin = "/etc/vmhook/plugins.d/notes.mjs";
    fs.mkdirSync(path.join(tree.root, "etc/vmhook/plugins.d"), { recursive: true });
    fs.writeFileSync(path.join(tree.root, plugin), `import * as fs from "node:fs";\nfs.writeFileSync(${JSON.stringify(tree.ran)}, "");\nexport default { name: "notes", parse() {}, undo() {} };\n`, { mode: 0o644 });
    fs.chownSync(tree.root, USER, USER);
    const loading = importModulePlugin(new RootedHost(tree.root), { name: "notes", path: plugin, kind: "module" });
    await loading.then(
      () => assert.unreachable("loaded"),
      (error: Error) => assert.is(error.message, `plugin notes: not loading ${tree.root}${plugin} of the --root tree: ${tree.root} is owned by uid ${USER}, not root; vmhook loads a --root tree's plugins as root, so run chown root:root ${tree.root}`),
    );
    assert.not.ok(fs.existsSync(tree.ran), "its code did not run");
  } finally {
    fs.rmSync(tree.parent, { recursive: true, force: true });
  }
});

/** bindfs (.ci/run installs it): a FUSE mount that shows a user's directory as root's, mode 0755, as any user's own FUSE daemon may. */
const BINDFS = ["/usr/bin/bindfs", "/bin/bindfs"].find((file) => fs.existsSync(file));

/**
 * What `check` (an ES module run by this Bun, with `env`) prints while
 * `source` is mounted at `mountpoint` by bindfs -u 0 -g 0 -p 0755: in a
 * mount and pid namespace of its own, so that the mount and its daemon end
 * with the check, whatever becomes of it.
 */
function withRootClaimingFuse(source: string, mountpoint: string, check: string, env: Record<string, string> = {}): string {
  const script = `${BINDFS} -u 0 -g 0 -p 0755 "$1" "$2" && exec "$3" -e "$4"`;
  const args = ["--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "sh", "-c", script, "sh", source, mountpoint, process.execPath, check];
  const run = spawnSync("unshare", args, { encoding: "utf8", timeout: 30_000, env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env } });
  assert.is(run.status, 0, run.stderr);
  return run.stdout;
}

const imported = (file: string) => JSON.stringify(path.resolve(file));

(BINDFS ? test : test.skip)("as root, a --root tree on a FUSE mount that says root owns it (bindfs -u 0 of a user's copy) is not run: the file system, not the owner, is refused", () => {
  const tree = treeWithSystemctl();
  const mounted = path.join(tree.parent, "mounted");
  try {
    fs.mkdirSync(mounted, { mode: 0o755 });
    for (const each of ["copy", "copy/usr", "copy/usr/bin", "copy/usr/bin/systemctl"]) fs.chownSync(path.join(tree.parent, each), USER, USER);
    const check = `import * as fs from "node:fs";
import { RootedHost } from ${imported("lib/host.ts")};
const result = new RootedHost(${JSON.stringify(mounted)}).exec("systemctl", [], { timeoutMs: 5000 });
console.log(JSON.stringify({ owner: fs.statSync(${JSON.stringify(`${mounted}/usr/bin`)}).uid, status: result.status, error: result.error }));`;
    const result = JSON.parse(withRootClaimingFuse(tree.root, mounted, check));
    assert.is(result.owner, 0, "stat says root owns the user's copy");
    assert.is(result.status, null);
    assert.match(result.error, `systemctl: ${mounted}/usr/bin/systemctl of the --root tree not run: ${mounted} is on a file system of type fuse: the owner and mode stat shows there are its daemon's word (any user may run one), not this kernel's`);
    assert.not.ok(fs.existsSync(tree.ran), "the program did not run");
  } finally {
    fs.rmSync(tree.parent, { recursive: true, force: true });
  }
});

(BINDFS ? test : test.skip)("as root, a JavaScript plugin is not loaded while Bun's transpiler cache (HOME under sudo -E) is on a FUSE mount that says root owns it", () => {
  // Below /run, root's alone, as /home is.
  const parent = fs.mkdtempSync("/run/vmhook-fuse-home-");
  const [root, home, mounted, ran] = ["copy", "home", "mounted", "ran"].map((name) => path.join(parent, name)) as [string, string, string, string];
  try {
    const plugin = "/etc/vmhook/plugins.d/notes.mjs";
    fs.mkdirSync(path.join(root, "etc/vmhook/plugins.d"), { recursive: true });
    fs.writeFileSync(path.join(root, plugin), `import * as fs from "node:fs";\nfs.writeFileSync(${JSON.stringify(ran)}, "");\nexport default { name: "notes", parse() {}, undo() {} };\n`, { mode: 0o644 });
    for (const dir of [home, mounted]) fs.mkdirSync(dir, { mode: 0o755 });
    fs.chownSync(home, USER, USER);
    const check = `import { importModulePlugin } from ${imported("lib/custom-plugins/module.ts")};
import { RootedHost } from ${imported("lib/host.ts")};
const loading = importModulePlugin(new RootedHost(${JSON.stringify(root)}), { name: "notes", path: ${JSON.stringify(plugin)}, kind: "module" });
console.log(await loading.then(() => "loaded", (error) => error.message));`;
    const said = withRootClaimingFuse(home, mounted, check, { HOME: mounted });
    assert.match(said, `plugin notes: not loading ${plugin}: Bun, which runs vmhook, keeps the modules it transpiles in ${mounted}/.bun/install/cache/@t@ (from HOME=${mounted}), and ${mounted} is on a file system of type fuse`);
    assert.not.ok(fs.existsSync(ran), "its code did not run");
  } finally {
    fs.rmSync(parent, { recursive: true, force: true });
  }
});

/** A copy of a usr-merged host (Arch, Fedora 42): /usr/sbin is a symlink to bin, modprobe one to kmod; kmod leaves the name it was run by in `ran`. */
function mergedTree(): { parent: string; root: string; ran: string } {
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-tree-"));
  const root = path.join(parent, "copy");
  fs.mkdirSync(path.join(root, "usr/bin"), { recursive: true, mode: 0o755 });
  fs.symlinkSync("bin", path.join(root, "usr/sbin"));
  fs.symlinkSync("usr/bin", path.join(root, "bin"));
  fs.writeFileSync(path.join(root, "usr/bin/kmod"), `#!/bin/sh\nbasename "$0" > ${root}/ran\n`, { mode: 0o755 });
  fs.symlinkSync("kmod", path.join(root, "usr/bin/modprobe"));
  return { parent, root, ran: path.join(root, "ran") };
}

test("as root, a copy of a usr-merged host runs its programs through its own symlinks (usr/sbin -> bin, modprobe -> kmod), by the name they were asked by", () => {
  const tree = mergedTree();
  try {
    const result = new RootedHost(tree.root).exec("modprobe", ["vfio-pci"], { timeoutMs: 5000 });
    assert.equal([result.status, result.error], [0, undefined]);
    assert.is(fs.readFileSync(tree.ran, "utf8"), "modprobe\n");
  } finally {
    fs.rmSync(tree.parent, { recursive: true, force: true });
  }
});

test("as root, a --root tree's symlink to a program another user can write is not run, naming where it leads", () => {
  const tree = mergedTree();
  const elsewhere = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-user-"));
  try {
    fs.writeFileSync(path.join(elsewhere, "kmod"), `#!/bin/sh\ntouch ${tree.ran}\n`, { mode: 0o755 });
    fs.chownSync(path.join(elsewhere, "kmod"), USER, USER);
    fs.rmSync(path.join(tree.root, "usr/bin/modprobe"));
    fs.symlinkSync(path.join(elsewhere, "kmod"), path.join(tree.root, "usr/bin/modprobe"));
    const result = new RootedHost(tree.root).exec("modprobe", [], { timeoutMs: 5000 });
    assert.is(result.status, null);
    assert.match(result.error ?? "", `modprobe: ${tree.root}/usr/sbin/modprobe of the --root tree not run: ${elsewhere}/kmod is owned by uid ${USER}, not root`);
    assert.not.ok(fs.existsSync(tree.ran), "the program did not run");
  } finally {
    fs.rmSync(tree.parent, { recursive: true, force: true });
    fs.rmSync(elsewhere, { recursive: true, force: true });
  }
});

test("as root, a symlink another user owns in a sticky directory on the way (they may replace it) is not followed", () => {
  const tree = mergedTree();
  try {
    fs.chmodSync(path.join(tree.root, "usr"), 0o1777);
    fs.lchownSync(path.join(tree.root, "usr/sbin"), USER, USER);
    const result = new RootedHost(tree.root).exec("modprobe", [], { timeoutMs: 5000 });
    assert.is(result.status, null);
    assert.match(result.error ?? "", `${tree.root}/usr/sbin is a symlink owned by uid ${USER}, not root`);
    assert.not.ok(fs.existsSync(tree.ran), "the program did not run");
  } finally {
    fs.rmSync(tree.parent, { recursive: true, force: true });
  }
});

test.run();
