// Programs of a --root tree: vmhook looks programs up under the root (a test
// tree brings fake ones), and runs them as whoever runs vmhook. Run as root
// on a tree another user can write (sudo vmhook bundle --root ~/copy), that
// would be their code run as root: root runs a tree's program only when root
// alone can write it and every directory on the way to it.
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
