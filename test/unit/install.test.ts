// vmhook install / uninstall on a test root: the previous hook is kept (and
// still run from qemu.d/), reinstalling changes nothing, uninstall puts it
// back. The real-libvirt suite checks the same against libvirtd.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { install, reloadLibvirt, systemLibvirtDaemons, uninstall } from "../../lib/cli/install.ts";
import { LOGROTATE_CONFIG, LOGROTATE_TEXT } from "../../lib/cli/logrotate.ts";
import { FixableError } from "../../lib/errors.ts";
import { RootedHost } from "../../lib/host.ts";
import { runDoctor } from "../../lib/diagnostics/doctor.ts";
import { newJournal, writeJournal } from "../../lib/journal.ts";
import { ProcessKilled, SimHost } from "../helpers/simhost.ts";

const HOOK = "/etc/libvirt/hooks/qemu";
const SAVED = "/etc/libvirt/hooks/qemu.vmhook-saved";
const QEMU_D = "/etc/libvirt/hooks/qemu.d";
const LAUNCHER = `${QEMU_D}/vmhook-saved-qemu-hook`;
const PREVIOUS = "#!/bin/sh\n# the admin's own hook, finding its scripts from $(dirname $0)\n";

const roots: string[] = [];
test.after(() => roots.forEach((root) => fs.rmSync(root, { recursive: true, force: true })));

/** `host`: a SimHost, for a test whose lookups must fail. */
function setUp(host: RootedHost = new RootedHost(fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-install-")))) {
  roots.push(host.root);
  // logrotate is installed, as on Debian, Ubuntu and Fedora
  fs.mkdirSync(host.resolve("/etc/logrotate.d"), { recursive: true });
  // Only the marker string makes a file "vmhook" for install.
  const binary = path.join(host.root, "vmhook-build");
  fs.writeFileSync(binary, "ELF... vmhook-binary-marker:c0ffee-1 ...");
  const read = (hostPath: string) => fs.readFileSync(host.resolve(hostPath), "utf8");
  const exists = (hostPath: string) => host.stat(hostPath) !== undefined;
  /** A libvirtd that tells its version as the real one does; `undefined`: none installed. */
  const putLibvirt = (version: string | undefined) => {
    const daemon = host.resolve("/usr/sbin/libvirtd");
    fs.rmSync(daemon, { force: true });
    if (version === undefined) return;
    fs.mkdirSync(path.dirname(daemon), { recursive: true });
    fs.writeFileSync(daemon, `#!/bin/sh\necho "libvirtd (libvirt) ${version}"\n`, { mode: 0o755 });
    if (host instanceof SimHost) host.onExec("libvirtd", () => ({ stdout: `libvirtd (libvirt) ${version}\n` }));
  };
  /** The admin's own hook, on a libvirt that also runs qemu.d/ (6.5 and later). */
  const putPreviousHook = () => {
    fs.mkdirSync(host.resolve(path.dirname(HOOK)), { recursive: true });
    fs.writeFileSync(host.resolve(HOOK), PREVIOUS, { mode: 0o755 });
    putLibvirt("10.0.0");
  };
  return { host, binary, read, exists, putPreviousHook, putLibvirt };
}

/** A host that notes, in order, each file fsynced (by the path its descriptor names) and each rename. */
class SyncNotingHost extends RootedHost {
  readonly events: string[] = [];
  protected override flush(fd: number): void {
    this.events.push(`fsync ${fs.readlinkSync(`/proc/self/fd/${fd}`).slice(this.root.length)}`);
  }
  override rename(from: string, to: string): void {
    this.events.push(`rename ${from} to ${to}`);
    super.rename(from, to);
  }
}

// libvirt runs the hook at every VM start: an upgrade followed by a power
// loss must leave the old binary or the whole new one under its name, never
// an empty or short file (which install would then keep as "another
// program's hook", and every start would fail on).
test("install (and an upgrade over an earlier vmhook) puts the new binary on disk before it renames it over the hook", () => {
  const { host, binary } = setUp(new SyncNotingHost(fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-install-"))));
  const noting = host as SyncNotingHost;
  for (const build of ["ELF... vmhook-binary-marker:c0ffee-1 ...", "ELF... vmhook-binary-marker:c0ffee-2 ..."]) {
    fs.writeFileSync(binary, build);
    noting.events.length = 0;
    install(host, binary);
    const renamed = noting.events.indexOf(`rename ${HOOK}.vmhook-new to ${HOOK}`);
    assert.ok(renamed > 0, noting.events.join("; "));
    assert.ok(noting.events.slice(0, renamed).includes(`fsync ${HOOK}.vmhook-new`), noting.events.join("; "));
    assert.is(fs.readFileSync(host.resolve(HOOK), "utf8"), build);
  }
});

/**
 * What libvirt runs for a qemu event, as the contents of the programs it
 * ends up executing: the hook when it is an executable regular file, then
 * each executable in qemu.d/; the launcher is followed to what it execs, and
 * one that is not whole (no exec line) runs as itself, failing the event.
 */
function whatLibvirtRuns(host: RootedHost): string[] {
  const executable = (hostPath: string) => {
    const stat = fs.statSync(host.resolve(hostPath), { throwIfNoEntry: false });
    return stat?.isFile() && (stat.mode & 0o111) !== 0 ? fs.readFileSync(host.resolve(hostPath), "utf8") : undefined;
  };
  const sameFile = (a: string, b: string) => {
    const [one, other] = [a, b].map((hostPath) => fs.statSync(host.resolve(hostPath), { throwIfNoEntry: false }));
    return !!one && !!other && one.dev === other.dev && one.ino === other.ino;
  };
  const programs: string[] = [];
  const hook = executable(HOOK);
  if (hook !== undefined) programs.push(hook);
  const dir = `${HOOK}.d`;
  for (const name of fs.existsSync(host.resolve(dir)) ? fs.readdirSync(host.resolve(dir)).sort() : []) {
    const text = executable(`${dir}/${name}`);
    if (text === undefined) continue;
    const exec = /^exec (\S+) "\$@"$/m.exec(text);
    const guard = /^\[ (\S+) -ef (\S+) \] && exit 0$/m.exec(text);
    if (!exec) programs.push(`${name}, not whole: ${JSON.stringify(text)}`);
    else if (guard && sameFile(guard[1]!, guard[2]!)) continue;
    else programs.push(executable(exec[1]!) ?? `${name} execs ${exec[1]}, which libvirt cannot run`);
  }
  return programs;
}

// libvirt runs the hooks at any moment: while install puts vmhook in front of
// a dispatcher hook, a VM event used to find no qemu hook at all (between
// its rename away and the binary's rename in) or an executable, still empty
// launcher in qemu.d/; either failed the event or skipped the old hook.
test("install over another program's hook: at every change it makes, libvirt runs the old hook alone or vmhook and the old hook, each whole; a kill at any of them, then install again, ends installed, and uninstall leaves the host as a clean install and uninstall does", () => {
  const reference = SimHost.inMemory(() => new SimHost());
  const clean = setUp(reference);
  clean.putPreviousHook();
  install(clean.host, clean.binary);
  const binaryText = clean.read(HOOK);
  const fileFreshAtItsPlace = reference.changes.filter((change) => /^create \/etc\/libvirt\/hooks\/qemu(\.d\/.*)?$/.test(change));
  assert.equal(fileFreshAtItsPlace, [], "a file libvirt runs was written at its place, not renamed there whole");
  uninstall(clean.host, false);
  const after = reference.snapshot();
  reference.cleanup();

  let completed = false;
  for (let change = 1; !completed; change++) {
    const sim = SimHost.inMemory(() => new SimHost());
    try {
      const { host, binary, read, putPreviousHook } = setUp(sim);
      putPreviousHook();
      sim.killAtChange(change);
      let failure: unknown;
      try {
        install(host, binary);
        completed = true;
      } catch (error) {
        failure = error;
      }
      // A killed install's undo is killed too: its error says so, wrapping ProcessKilled.
      const killedAt = sim.revive() ?? "none: install completed";
      if (failure !== undefined && !(failure instanceof ProcessKilled) && !/the hook was killed at/.test(String(failure))) throw failure;
      const runs = whatLibvirtRuns(host);
      assert.ok([[PREVIOUS], [binaryText, PREVIOUS]].some((whole) => JSON.stringify(whole) === JSON.stringify(runs)), `killed at ${killedAt}: libvirt runs ${JSON.stringify(runs)}`);
      install(host, binary);
      assert.equal(whatLibvirtRuns(host), [binaryText, PREVIOUS], `installed again after a kill at ${killedAt}`);
      uninstall(host, false);
      assert.is(read(HOOK), PREVIOUS, `killed at ${killedAt}`);
      assert.equal(sim.snapshot(), after, `killed at ${killedAt}: left behind`);
    } finally {
      sim.cleanup();
    }
  }
});

// uninstall used to remove the hook, rename the kept one back, then remove
// its launcher: a kill between the last two left a launcher exec'ing a file
// that was gone, failing every VM start, and one after the first left no
// /usr/local/bin/vmhook pointing at the admin's own hook.
test("uninstall killed at any change it makes (kill -9, a power loss; a failed change stops it there too): libvirt runs the kept hook exactly once, with or without vmhook, never a launcher whose hook is gone; uninstall again, or install and uninstall, leaves the tree as it was before install, an empty qemu.d the admin had (of any mode) included", () => {
  for (const qemuDir of [undefined, 0o755, 0o700]) {
    for (const previous of ["an executable hook", "a hook libvirt skips (no execute bit)", "no hook"] as const) {
      for (const next of ["uninstall", "install"] as const) {
        let completed = false;
        for (let change = 1; !completed; change++) {
          const sim = SimHost.inMemory(() => new SimHost());
          try {
            const { host, binary, putPreviousHook, putLibvirt } = setUp(sim);
            for (const dir of ["/etc/libvirt/hooks", "/run", "/usr/local/bin"]) sim.dir(dir);
            if (qemuDir !== undefined) fs.mkdirSync(host.resolve(QEMU_D), { mode: qemuDir });
            putLibvirt("10.0.0");
            if (previous !== "no hook") putPreviousHook();
            if (previous === "a hook libvirt skips (no execute bit)") fs.chmodSync(host.resolve(HOOK), 0o644);
            const before = tree(host.root);
            install(host, binary);
            const vmhook = fs.readFileSync(binary, "utf8");
            const kept = previous === "an executable hook" ? [PREVIOUS] : [];
            sim.killAtChange(change);
            let failure: unknown;
            try {
              uninstall(host, false, { purgeOwnFiles: true });
              completed = true;
            } catch (error) {
              failure = error;
            }
            const killedAt = sim.revive() ?? "none: uninstall completed";
            const at = `${qemuDir === undefined ? "no qemu.d" : `qemu.d ${qemuDir.toString(8)}`}, ${previous}, then ${next}; killed at ${killedAt}`;
            if (failure !== undefined && !(failure instanceof ProcessKilled)) throw failure;
            const runs = whatLibvirtRuns(host);
            assert.ok([kept, [vmhook, ...kept]].some((whole) => JSON.stringify(whole) === JSON.stringify(runs)), `${at}: libvirt runs ${JSON.stringify(runs)}`);
            // The CLI link leads to vmhook or nowhere: never to the admin's hook, run as "vmhook uninstall" (by hand, or by install.sh --uninstall).
            const cli = host.readlink("/usr/local/bin/vmhook");
            if (cli !== undefined && fs.existsSync(host.resolve(cli))) assert.is(fs.readFileSync(host.resolve(cli), "utf8"), vmhook, `${at}: /usr/local/bin/vmhook leads to another program`);
            if (next === "install") {
              install(host, binary);
              assert.equal(whatLibvirtRuns(host), [vmhook, ...kept], `${at}: installed again`);
            }
            uninstall(host, false, { purgeOwnFiles: true });
            assert.equal(tree(host.root), before, `${at}: left behind`);
          } finally {
            sim.cleanup();
          }
        }
      }
    }
  }
});

// uninstall removed /etc/libvirt/hooks/qemu.d whenever it was empty, whoever
// made it: an admin's own (a dispatcher's, emptied; one of mode 0700) was gone
// after install and uninstall, although install makes it only when missing.
// (The kill sweep above runs uninstall --purge over such a qemu.d too.)
test("a qemu.d that was there before install (empty; mode 0755 or 0700) stays, with its mode, through install and uninstall", () => {
  for (const mode of [0o755, 0o700]) {
    for (const previous of ["an executable hook", "no hook"] as const) {
      const { host, binary, exists, putPreviousHook } = setUp();
      if (previous !== "no hook") putPreviousHook();
      fs.mkdirSync(host.resolve(QEMU_D), { recursive: true });
      fs.chmodSync(host.resolve(QEMU_D), mode);
      install(host, binary);
      assert.is(exists(LAUNCHER), previous !== "no hook", `qemu.d ${mode.toString(8)}, ${previous}: launcher`);
      uninstall(host, false);
      const qemuD = host.stat(QEMU_D);
      assert.is(qemuD?.isDirectory && (qemuD.mode & 0o7777).toString(8), mode.toString(8), `qemu.d ${mode.toString(8)}, ${previous}`);
      assert.equal(fs.readdirSync(host.resolve(QEMU_D)), [], `qemu.d ${mode.toString(8)}, ${previous}: left in qemu.d`);
    }
  }
});

// Records of an earlier vmhook do not say whether install made qemu.d: their
// uninstall removes it when empty, as that vmhook's did.
test("an install record without madeQemuDir (an earlier vmhook's): uninstall removes an empty qemu.d as before, also after an upgrade; one that names no saved hook had no launcher, so made no qemu.d, and the upgrade records that", () => {
  const kept = setUp();
  kept.putPreviousHook();
  install(kept.host, kept.binary);
  fs.writeFileSync(kept.host.resolve("/etc/vmhook/install.json"), JSON.stringify({ savedHook: SAVED, logrotate: true }));
  install(kept.host, kept.binary);
  assert.equal(record(kept.read), { savedHook: SAVED, logrotate: true });
  uninstall(kept.host, false);
  assert.not.ok(kept.exists(QEMU_D), "the qemu.d an earlier install made for its launcher stays");

  const plain = setUp();
  fs.mkdirSync(plain.host.resolve(QEMU_D), { recursive: true });
  install(plain.host, plain.binary);
  fs.writeFileSync(plain.host.resolve("/etc/vmhook/install.json"), JSON.stringify({ logrotate: true }));
  install(plain.host, plain.binary);
  assert.equal(record(plain.read), { logrotate: true, madeQemuDir: false });
  uninstall(plain.host, false);
  assert.ok(plain.exists(QEMU_D), "the admin's qemu.d is gone");
});

// install keeps the old hook by a hard link (and uninstall puts it back by
// one): where /etc/libvirt/hooks takes none (vfat, some FUSE or network file
// systems, a bind-mounted hook), link(2) failed halfway with the bare EPERM of
// a permission problem.
test("install and uninstall where /etc/libvirt/hooks takes no hard link (link(2): EPERM, EXDEV, ENOTSUP) refuse before any change, naming the directory, the errno and the fix; uninstall's fix, done by hand, lets it finish", () => {
  for (const code of ["EPERM", "EXDEV", "ENOTSUP"]) {
    const sim = new SimHost();
    try {
      const { host, binary, read, exists, putPreviousHook } = setUp(sim);
      putPreviousHook();
      const before = tree(host.root);
      sim.failChange(SAVED, code);
      assert.throws(
        () => install(host, binary),
        (error: Error) => error.message === `cannot give ${HOOK} a second name, ${SAVED} (link: ${code}): /etc/libvirt/hooks is on a file system without hard links (findmnt -T /etc/libvirt/hooks), or a security module or the immutable attribute (lsattr ${HOOK}) refuses it; vmhook needs one to swap the hooks while libvirt may run them, and changed nothing; move ${HOOK} away by hand (what it does then no longer runs), or put /etc/libvirt/hooks on a file system with hard links, then run vmhook install again`,
        code,
      );
      assert.equal(tree(host.root), before, `${code}: install changed the host`);

      sim.clearFailures();
      install(host, binary);
      // the hooks moved to such a file system since
      sim.failChange(`${HOOK}.vmhook-restore`, code);
      const installed = tree(host.root);
      assert.throws(() => uninstall(host, false), (error: Error) => error.message.startsWith(`cannot give ${SAVED} a second name, ${HOOK}.vmhook-restore (link: ${code}): /etc/libvirt/hooks is on a file system without hard links`) && error.message.endsWith(`put it back by hand: rm ${LAUNCHER}, then mv ${SAVED} ${HOOK} (in this order: the launcher runs ${SAVED}), then run vmhook uninstall again`), code);
      assert.equal(tree(host.root), installed, `${code}: uninstall changed the host`);
      fs.rmSync(host.resolve(LAUNCHER));
      fs.renameSync(host.resolve(SAVED), host.resolve(HOOK));
      uninstall(host, false);
      assert.is(read(HOOK), PREVIOUS, code);
      for (const gone of [SAVED, LAUNCHER, `${HOOK}.vmhook-restore`, "/etc/vmhook/install.json", "/usr/local/bin/vmhook"]) assert.not.ok(exists(gone), `${code}: ${gone} is still there`);
    } finally {
      sim.cleanup();
    }
  }
});

test("an install whose record cannot be written whole (ENOSPC) keeps the record it had: it used to delete it first, and the next install and uninstall then lost what it said (the logrotate config to remove, the Debian package's mark)", () => {
  const sim = new SimHost();
  try {
    const { host, binary, read, exists, putPreviousHook } = setUp(sim);
    putPreviousHook();
    install(host, binary);
    assert.equal(record(read), { savedHook: SAVED, logrotate: true, madeQemuDir: true });
    // the package's postinst over a hand install rewrites the record
    sim.failWrite(/^\/etc\/vmhook\/install\.json/, "ENOSPC");
    assert.throws(() => install(host, binary, { debianPackage: true }), /ENOSPC/);
    sim.clearFailures();
    assert.equal(record(read), { savedHook: SAVED, logrotate: true, madeQemuDir: true });
    assert.equal(fs.readdirSync(host.resolve("/etc/vmhook")).sort(), ["install.json", "plugins.d"], "a temporary copy of the record was left");
    assert.ok(uninstall(host, false).notes.includes(`removed ${LOGROTATE_CONFIG}`));
    assert.not.ok(exists(LOGROTATE_CONFIG));
    assert.is(read(HOOK), PREVIOUS);
  } finally {
    sim.cleanup();
  }
});

test("install fsyncs its record under another name before renaming it into place: a power loss leaves the old record or the whole new one", () => {
  const { host, binary, putPreviousHook } = setUp(new SyncNotingHost(fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-install-"))));
  const noting = host as SyncNotingHost;
  putPreviousHook();
  install(host, binary);
  const renamed = noting.events.indexOf("rename /etc/vmhook/install.json.tmp to /etc/vmhook/install.json");
  assert.ok(renamed > 0 && noting.events.slice(0, renamed).includes("fsync /etc/vmhook/install.json.tmp"), noting.events.join("; "));
});

test("install keeps the previous hook beside it, run from qemu.d/ by a launcher; installing again changes nothing", () => {
  const { host, binary, read, putPreviousHook } = setUp();
  putPreviousHook();
  const first = install(host, binary);
  assert.match(first.notes.join("\n"), `kept the existing hook: moved ${HOOK} to ${SAVED}`);
  assert.ok(first.hooksChanged);
  assert.is(read(SAVED), PREVIOUS);
  assert.is(read(HOOK), fs.readFileSync(binary, "utf8"));
  assert.match(read(LAUNCHER), `exec ${SAVED} "$@"`);
  assert.is(host.stat(LAUNCHER)!.mode & 0o777, 0o755);
  assert.is(host.readlink("/usr/local/bin/vmhook"), HOOK);

  const record = host.stat("/etc/vmhook/install.json");
  const mtime = fs.statSync(host.resolve("/etc/vmhook/install.json")).mtimeMs;
  // libvirt is signalled only when the hooks changed: never on a second run
  const again = install(host, binary);
  assert.equal(again, { notes: [`${HOOK} is already this vmhook`], hooksChanged: false });
  assert.ok(record);
  assert.is(fs.statSync(host.resolve("/etc/vmhook/install.json")).mtimeMs, mtime, "the install record was rewritten");
  assert.is(read(SAVED), PREVIOUS);
});

test("install refuses to move a hook libvirt runs when libvirt is older than 6.5 or does not tell its version: that libvirt does not run qemu.d/, so the kept hook would silently stop running; nothing changes, not even a directory made", () => {
  for (const [version, reason] of [["6.0.0", "libvirt 6.0.0 runs only"], [undefined, "neither libvirtd --version nor virtqemud --version tells"]] as const) {
    const { host, binary, read, exists, putPreviousHook, putLibvirt } = setUp();
    putPreviousHook();
    putLibvirt(version);
    assert.throws(() => install(host, binary), (error: Error) => error.message.startsWith(`${HOOK} is not vmhook, and ${reason}`), String(version));
    assert.is(read(HOOK), PREVIOUS, `${version}: the hook was moved`);
    for (const absent of [SAVED, LAUNCHER, `${HOOK}.vmhook-new`, "/etc/vmhook", "/run/vmhook", "/usr/local/bin/vmhook"]) assert.not.ok(exists(absent), `${version}: ${absent} is there`);
  }
  // 6.5 is the first libvirt that runs qemu.d/
  const { host, binary, read, putPreviousHook, putLibvirt } = setUp();
  putPreviousHook();
  putLibvirt("6.5.0");
  install(host, binary);
  assert.is(read(SAVED), PREVIOUS);
});

test("uninstall puts the previous hook back and removes the launcher, the link and the record", () => {
  const { host, binary, read, exists, putPreviousHook } = setUp();
  putPreviousHook();
  install(host, binary);
  const { notes, hooksChanged } = uninstall(host, false);
  assert.match(notes.join("\n"), `restored the previous hook from ${SAVED}`);
  assert.ok(hooksChanged);
  assert.is(read(HOOK), PREVIOUS);
  for (const gone of [SAVED, LAUNCHER, "/usr/local/bin/vmhook", "/etc/vmhook/install.json"]) assert.not.ok(exists(gone), `${gone} is still there`);
  assert.equal(uninstall(host, false), {
    notes: [`vmhook is not installed here: ${HOOK} is another program and there is no /etc/vmhook/install.json; nothing to remove`, "left /etc/vmhook: the empty /etc/vmhook/plugins.d (rm -r /etc/vmhook removes it)"],
    hooksChanged: false,
  });
});

test("a damaged install record is refused by install and uninstall: it names the hook to put back, so {} must not stand in for it", () => {
  const { host, binary, read, exists, putPreviousHook } = setUp();
  putPreviousHook();
  install(host, binary);
  fs.writeFileSync(host.resolve("/etc/vmhook/install.json"), "{ truncated");
  assert.throws(() => install(host, binary), /install\.json is damaged .*savedHook/);
  assert.throws(() => uninstall(host, false), /install\.json is damaged/);
  assert.is(read(HOOK), fs.readFileSync(binary, "utf8"), "the refused uninstall removed vmhook's hook");
  assert.is(read(SAVED), PREVIOUS, "the saved hook was touched");
  assert.ok(exists(LAUNCHER), "the saved hook's launcher is gone");
});

test("uninstall puts back only the hook install saved: a record naming another file (a user's, through a loose umask) is refused, and that file never becomes the hook libvirt runs as root", () => {
  const { host, binary, read, exists, putPreviousHook } = setUp();
  putPreviousHook();
  install(host, binary);
  const planted = "/home/alice/hook";
  fs.mkdirSync(host.resolve("/home/alice"), { recursive: true });
  fs.writeFileSync(host.resolve(planted), "#!/bin/sh\nid > /tmp/owned\n", { mode: 0o755 });
  fs.renameSync(host.resolve(SAVED), host.resolve(`${SAVED}.kept`));
  fs.writeFileSync(host.resolve("/etc/vmhook/install.json"), JSON.stringify({ savedHook: planted }));
  assert.throws(() => uninstall(host, false), /install\.json is damaged/);
  assert.is(read(HOOK), fs.readFileSync(binary, "utf8"), "the refused uninstall removed vmhook's hook");
  assert.ok(exists(planted), "the planted file was moved");
});

test("install writes its record readable by all and writable by root alone, whatever the umask it runs under", () => {
  const { host, binary, putPreviousHook } = setUp();
  putPreviousHook();
  const umask = process.umask(0);
  try {
    install(host, binary);
  } finally {
    process.umask(umask);
  }
  assert.is(host.stat("/etc/vmhook/install.json")!.mode & 0o777, 0o644);
  assert.is(host.stat("/etc/vmhook")!.mode & 0o777, 0o755);
});

test("install makes its directories and the launcher in the modes it documents under a umask of 077 too (hardened hosts): /etc/vmhook left to root alone refused every user's vmhook validate and plan reading the host policy", () => {
  const fresh = setUp();
  const kept = setUp();
  kept.putPreviousHook();
  const umask = process.umask(0o077);
  try {
    install(fresh.host, fresh.binary);
    install(kept.host, kept.binary);
  } finally {
    process.umask(umask);
  }
  const mode = (host: RootedHost, hostPath: string) => `${hostPath} ${(host.stat(hostPath)!.mode & 0o777).toString(8)}`;
  for (const dir of ["/etc/vmhook", "/etc/vmhook/plugins.d", "/etc/libvirt", "/etc/libvirt/hooks"]) assert.is(mode(fresh.host, dir), `${dir} 755`);
  assert.is(mode(fresh.host, "/run/vmhook"), "/run/vmhook 700");
  for (const made of ["/etc/libvirt/hooks/qemu.d", LAUNCHER]) assert.is(mode(kept.host, made), `${made} 755`);
});

test("install signals only the system's libvirt daemons that see the hooks it wrote: a user's session daemon (virt-manager's, GNOME Boxes') is passed over, a root daemon of another mount namespace (a container's, a test's private one) is left alone and named", () => {
  const sim = new SimHost();
  const OWN_MOUNTS = "mnt:[4026531841]";
  sim.link("/proc/self/ns/mnt", OWN_MOUNTS);
  const daemon = (pid: number, comm: string, uid: number, mounts = OWN_MOUNTS) =>
    sim.file(`/proc/${pid}/comm`, `${comm}\n`).file(`/proc/${pid}/status`, `Name:\t${comm}\nUid:\t${uid}\t${uid}\t${uid}\t${uid}\n`).link(`/proc/${pid}/ns/mnt`, mounts);
  daemon(812, "libvirtd", 0);
  daemon(4051, "libvirtd", 1000);
  daemon(4052, "virtqemud", 1000);
  daemon(990, "virtqemud", 0);
  daemon(5000, "bash", 0);
  daemon(7000, "libvirtd", 0, "mnt:[4026532999]");
  // gone between the listing and the look at its namespace
  sim.file("/proc/7100/comm", "virtqemud\n").file("/proc/7100/status", "Name:\tvirtqemud\nUid:\t0\t0\t0\t0\n");
  assert.equal(systemLibvirtDaemons(sim), [
    { pid: 812, command: "libvirtd", seesTheseHooks: true },
    { pid: 990, command: "virtqemud", seesTheseHooks: true },
    { pid: 7000, command: "libvirtd", seesTheseHooks: false },
  ]);
  const signalled: number[] = [];
  assert.equal(reloadLibvirt(sim, (pid) => signalled.push(pid)), {
    reloaded: ["libvirtd (pid 812)", "virtqemud (pid 990)"],
    left: ["libvirtd (pid 7000)"],
  });
  assert.equal(signalled, [812, 990]);
  sim.cleanup();
});

test("a previous hook that is not executable (libvirt skips it) is kept without a launcher: the launcher would fail every VM start", () => {
  const { host, binary, read, exists, putPreviousHook } = setUp();
  putPreviousHook();
  fs.chmodSync(host.resolve(HOOK), 0o644);
  const { notes } = install(host, binary);
  assert.match(notes.join("\n"), `kept the existing hook: moved ${HOOK} to ${SAVED}; it is not executable, so libvirt did not run it and does not now`);
  assert.is(read(SAVED), PREVIOUS);
  assert.not.ok(exists(LAUNCHER), "a launcher runs a hook that cannot be executed");
  uninstall(host, false);
  assert.is(read(HOOK), PREVIOUS);
  assert.is(host.stat(HOOK)!.mode & 0o777, 0o644);
});

test("an install that cannot copy the binary leaves the previous hook where it was and writes nothing", () => {
  const { host, read, exists, putPreviousHook } = setUp();
  putPreviousHook();
  assert.throws(() => install(host, path.join(host.root, "no-such-build")), /ENOENT/);
  assert.is(read(HOOK), PREVIOUS);
  for (const absent of [SAVED, LAUNCHER, `${HOOK}.vmhook-new`, "/etc/vmhook", "/run/vmhook"]) assert.not.ok(exists(absent), `${absent} is there`);
});

test("install and uninstall --purge that cannot change a file (/etc/libvirt a file, a read-only /etc, /var/log) name its real path, the errno and a fix, never Node's bare message; a failed install undoes what it did", () => {
  const blocked = setUp();
  fs.writeFileSync(blocked.host.resolve("/etc/libvirt"), "");
  assert.throws(
    () => install(blocked.host, blocked.binary),
    (error: FixableError) => error instanceof FixableError && error.reason === `cannot mkdir ${blocked.host.root}/etc/libvirt/hooks (ENOTDIR)` && error.fix === `a directory on the way to it is missing or is a file: check each part of the path (namei -l ${blocked.host.root}/etc/libvirt/hooks)`,
  );

  const sim = new SimHost();
  try {
    const { host, binary, read, exists, putPreviousHook } = setUp(sim);
    putPreviousHook();
    sim.failWrite(LOGROTATE_CONFIG, "EROFS");
    assert.throws(
      () => install(host, binary),
      (error: FixableError) => error instanceof FixableError && error.reason === `cannot write ${host.root}${LOGROTATE_CONFIG} (EROFS)` && error.fix === `its file system is mounted read-only (findmnt -T ${host.root}/etc/logrotate.d): remount it read-write, then try again`,
    );
    assert.is(read(HOOK), PREVIOUS, "the previous hook is back in place");
    for (const absent of [SAVED, LAUNCHER, `${HOOK}.vmhook-new`, LOGROTATE_CONFIG]) assert.not.ok(exists(absent), `${absent} is there`);

    sim.clearFailures();
    install(host, binary);
    sim.file("/var/log/vmhook.log", "a line\n").failChange("/var/log/vmhook.log", "EROFS");
    assert.throws(() => uninstall(host, false, { purgeOwnFiles: true }), (error: FixableError) => error instanceof FixableError && error.reason === `cannot remove ${host.root}/var/log/vmhook.log (EROFS)`);
  } finally {
    sim.cleanup();
  }
});

test("uninstall with another hook in vmhook's place since keeps that one and the saved hook", () => {
  const { host, binary, read, exists, putPreviousHook } = setUp();
  putPreviousHook();
  install(host, binary);
  fs.writeFileSync(host.resolve(HOOK), "#!/bin/sh\n# someone else's\n");
  const { notes } = uninstall(host, false);
  assert.match(notes.join("\n"), `kept ${SAVED}`);
  assert.is(read(HOOK), "#!/bin/sh\n# someone else's\n");
  assert.is(read(SAVED), PREVIOUS);
  assert.ok(exists(LAUNCHER));
});

test("a dangling symlink at the hook's place is kept, not overwritten", () => {
  const { host, binary } = setUp();
  fs.mkdirSync(host.resolve(path.dirname(HOOK)), { recursive: true });
  fs.symlinkSync("/opt/hooks/qemu-dispatcher", host.resolve(HOOK));
  install(host, binary);
  assert.is(host.readlink(SAVED), "/opt/hooks/qemu-dispatcher");
  assert.not.ok(host.stat(LAUNCHER), "a launcher execs the dangling link at every VM start");
  uninstall(host, false);
  assert.is(host.readlink(HOOK), "/opt/hooks/qemu-dispatcher");
});

test("install refuses when it cannot look at the hook or the saved hook (lstat EACCES from a security module, ELOOP): a hook it cannot see is not taken for none and overwritten; nothing changes", () => {
  for (const [unseen, code] of [[HOOK, "EACCES"], [SAVED, "EACCES"], [SAVED, "ELOOP"]] as const) {
    const { host, binary, read, exists, putPreviousHook } = setUp(new SimHost().failStat(unseen, code));
    putPreviousHook();
    fs.writeFileSync(host.resolve(SAVED), "#!/bin/sh\n# saved by an earlier install\n", { mode: 0o755 });
    assert.throws(() => install(host, binary), new RegExp(`${unseen.replace(/\./g, "\\.")}.*${code}`), `${unseen} ${code}`);
    assert.is(read(HOOK), PREVIOUS, `${unseen} ${code}: the hook was overwritten`);
    assert.is(read(SAVED), "#!/bin/sh\n# saved by an earlier install\n", `${unseen} ${code}: the saved hook was overwritten`);
    for (const absent of [LAUNCHER, `${HOOK}.vmhook-new`, "/etc/vmhook", "/run/vmhook", "/usr/local/bin/vmhook"]) assert.not.ok(exists(absent), `${unseen} ${code}: ${absent} is there`);
  }
});

test("install, uninstall and doctor refuse a hook they cannot read (EACCES from a security module, EIO, a directory: EISDIR) rather than call it another program: vmhook's own hook would be kept and run twice from qemu.d/; nothing changes", async () => {
  const { host, binary, exists } = setUp();
  fs.mkdirSync(host.resolve(HOOK), { recursive: true });
  fs.writeFileSync(host.resolve(`${HOOK}/inside`), "");
  const refusal = /^cannot read \S*\/etc\/libvirt\/hooks\/qemu \(EISDIR\), so vmhook cannot tell whether it is vmhook's own hook/;
  assert.throws(() => install(host, binary), refusal);
  assert.throws(() => uninstall(host, false), refusal);
  assert.ok(exists(`${HOOK}/inside`));
  for (const absent of [SAVED, LAUNCHER, "/etc/vmhook", "/run/vmhook", "/usr/local/bin/vmhook"]) assert.not.ok(exists(absent), `${absent} is there`);
  const finding = (await runDoctor(host)).host.find((found) => found.check === "libvirt hook");
  assert.is(finding?.status, "fail");
  assert.match(finding?.reason ?? "", refusal);
});

test("uninstall refuses when it cannot look at the saved hook: the record naming it and its launcher are kept, not dropped as if it were gone", () => {
  const sim = new SimHost();
  const { host, binary, read, exists, putPreviousHook } = setUp(sim);
  putPreviousHook();
  install(host, binary);
  sim.failStat(SAVED, "ELOOP");
  assert.throws(() => uninstall(host, false), /qemu\.vmhook-saved.*ELOOP/);
  assert.is(read(HOOK), fs.readFileSync(binary, "utf8"), "vmhook's hook was removed");
  assert.is(read(SAVED), PREVIOUS);
  for (const kept of [LAUNCHER, "/etc/vmhook/install.json", "/usr/local/bin/vmhook"]) assert.ok(exists(kept), `${kept} is gone`);
});

// What libvirt runs as root must be root's alone: a run of install over a
// hook that is vmhook but not a root-owned 0755 file puts one in its place.
const NOT_QUITE_INSTALLED: { name: string; spoil: (hook: string, binary: string) => void }[] = [
  { name: "a symlink to a build in a user's checkout (that user could replace what root runs)", spoil: (hook, binary) => fs.symlinkSync(binary, hook) },
  { name: "a copy without its execute bits (libvirt skips it: no VM gets vmhook)", spoil: (hook, binary) => fs.copyFileSync(binary, hook) },
  { name: "a copy writable by all", spoil: (hook, binary) => (fs.copyFileSync(binary, hook), fs.chmodSync(hook, 0o777)) },
  { name: "a copy owned by a user", spoil: (hook, binary) => (fs.copyFileSync(binary, hook), fs.chmodSync(hook, 0o755), fs.chownSync(hook, 1000, 1000)) },
];

for (const { name, spoil } of NOT_QUITE_INSTALLED) {
  test(`install over a vmhook hook that is ${name} puts a root-owned 0755 copy in its place and reloads libvirt`, () => {
    const { host, binary } = setUp();
    const hook = host.resolve(HOOK);
    fs.mkdirSync(path.dirname(hook), { recursive: true });
    fs.chmodSync(binary, 0o644);
    spoil(hook, binary);
    const result = install(host, binary);
    assert.ok(result.hooksChanged, result.notes.join("\n"));
    assert.match(result.notes.join("\n"), `installed ${HOOK}`);
    const stat = fs.lstatSync(hook);
    assert.ok(stat.isFile(), "a regular file");
    assert.is(stat.mode & 0o7777, 0o755);
    assert.is(stat.uid, 0);
    assert.is(fs.readFileSync(hook, "utf8"), fs.readFileSync(binary, "utf8"));
    assert.equal(install(host, binary), { notes: [`${HOOK} is already this vmhook`], hooksChanged: false });
  });
}

/** Every path under the root with its mode and content (what install and uninstall leave, compared whole). */
function tree(root: string): string[] {
  return (fs.readdirSync(root, { recursive: true }) as string[]).sort().map((entry) => {
    const stat = fs.lstatSync(path.join(root, entry));
    return `${entry} ${(stat.mode & 0o7777).toString(8)} ${stat.isFile() ? fs.readFileSync(path.join(root, entry), "utf8") : ""}`;
  });
}

test("install puts a logrotate config for /var/log/vmhook.log in /etc/logrotate.d (0644 whatever the umask: logrotate skips one others may write); uninstall --purge leaves the tree as it was before install", () => {
  const { host, binary, read } = setUp();
  for (const dir of ["/etc/libvirt/hooks", "/run", "/usr/local/bin"]) fs.mkdirSync(host.resolve(dir), { recursive: true });
  const before = tree(host.root);
  const umask = process.umask(0o077);
  try {
    assert.ok(install(host, binary).notes.includes(`installed ${LOGROTATE_CONFIG}: /var/log/vmhook.log is rotated monthly (or past 10 MiB), the last 12 retained`));
  } finally {
    process.umask(umask);
  }
  assert.is(read(LOGROTATE_CONFIG), LOGROTATE_TEXT);
  assert.is(host.stat(LOGROTATE_CONFIG)!.mode & 0o7777, 0o644);
  assert.equal(install(host, binary).notes, [`${HOOK} is already this vmhook`], "installed again: nothing to say");
  const { notes } = uninstall(host, false, { purgeOwnFiles: true });
  assert.ok(notes.includes(`removed ${LOGROTATE_CONFIG}`), notes.join("\n"));
  assert.equal(tree(host.root), before);
});

test("the Debian package's logrotate conffile is dpkg's: install finds it in place and leaves it, uninstall keeps it; a config the administrator changed is kept and named", () => {
  const packaged = setUp();
  fs.writeFileSync(packaged.host.resolve(LOGROTATE_CONFIG), LOGROTATE_TEXT, { mode: 0o644 });
  assert.not.match(install(packaged.host, packaged.binary, { debianPackage: true }).notes.join("\n"), "logrotate");
  assert.not.match(uninstall(packaged.host, false, { debianPackage: true }).notes.join("\n"), "logrotate");
  assert.is(packaged.read(LOGROTATE_CONFIG), LOGROTATE_TEXT);

  const edited = setUp();
  install(edited.host, edited.binary);
  const mine = LOGROTATE_TEXT.replace("rotate 12", "rotate 52");
  fs.writeFileSync(edited.host.resolve(LOGROTATE_CONFIG), mine);
  assert.ok(uninstall(edited.host, false).notes.includes(`left ${LOGROTATE_CONFIG}: it was changed since vmhook install wrote it; remove it by hand once /var/log/vmhook.log is gone`));
  assert.is(edited.read(LOGROTATE_CONFIG), mine);
  assert.match(install(edited.host, edited.binary).notes.join("\n"), `left ${LOGROTATE_CONFIG} alone: it is not the one vmhook writes`);
  assert.is(edited.read(LOGROTATE_CONFIG), mine);
});

test("without logrotate (no /etc/logrotate.d: Arch without the package) install writes no config and says the log is not rotated", () => {
  const { host, binary, exists } = setUp();
  fs.rmdirSync(host.resolve("/etc/logrotate.d"));
  assert.ok(install(host, binary).notes.includes("/var/log/vmhook.log is not rotated: logrotate is not installed (no /etc/logrotate.d); install it and run vmhook install again"));
  assert.not.ok(exists("/etc/logrotate.d"));
  assert.not.match(uninstall(host, false).notes.join("\n"), "logrotate");
});

test("uninstall --purge removes the rotated logs too (vmhook.log.1, vmhook.log.2.gz), and uninstall names them; other files in /var/log stay", () => {
  const { host, binary, exists } = setUp();
  install(host, binary);
  fs.mkdirSync(host.resolve("/var/log"), { recursive: true });
  for (const file of ["vmhook.log", "vmhook.log.1", "vmhook.log.2.gz", "vmhook.logger", "syslog"]) fs.writeFileSync(host.resolve(`/var/log/${file}`), "a line\n");
  assert.ok(uninstall(host, false).notes.includes("left /var/log/vmhook.log: the log, and 2 rotated copies (vmhook.log.1, vmhook.log.2.gz) (rm -f /var/log/vmhook.log /var/log/vmhook.log.[0-9]* removes them)"));
  install(host, binary);
  const { notes } = uninstall(host, false, { purgeOwnFiles: true });
  for (const gone of ["/var/log/vmhook.log", "/var/log/vmhook.log.1", "/var/log/vmhook.log.2.gz"]) assert.not.ok(exists(gone), `${gone} is still there: ${notes.join("; ")}`);
  assert.equal(fs.readdirSync(host.resolve("/var/log")).sort(), ["syslog", "vmhook.logger"]);
});

test("install without a previous hook saves nothing and uninstall leaves no hook", () => {
  const { host, binary, exists } = setUp();
  assert.not.match(install(host, binary).notes.join("\n"), "kept");
  assert.not.ok(exists(LAUNCHER));
  uninstall(host, false);
  assert.not.ok(exists(HOOK));
});

test("install replaces a CLI link to an earlier vmhook binary but leaves a link to another program alone", () => {
  const { host, binary } = setUp();
  const link = host.resolve("/usr/local/bin/vmhook");
  fs.mkdirSync(path.dirname(link), { recursive: true });
  const other = path.join(host.root, "other-tool");
  fs.writeFileSync(other, "#!/bin/sh\n# someone else's vmhook\n", { mode: 0o755 });
  fs.symlinkSync(other, link);
  assert.match(install(host, binary).notes.join("\n"), "left /usr/local/bin/vmhook alone");
  assert.is(host.readlink("/usr/local/bin/vmhook"), other);

  const older = path.join(host.root, "older-vmhook");
  fs.writeFileSync(older, "ELF... vmhook-binary-marker:c0ffee-1 ... older");
  fs.rmSync(link);
  fs.symlinkSync(older, link);
  install(host, binary);
  assert.is(host.readlink("/usr/local/bin/vmhook"), HOOK);
});

test("the install record removed by hand (rm -r /etc/vmhook): uninstall still puts back the hook install kept, which it used to leave unrun while saying it was gone; install again records it", () => {
  for (const reinstall of [false, true]) {
    const { host, binary, read, exists, putPreviousHook } = setUp();
    putPreviousHook();
    install(host, binary);
    fs.rmSync(host.resolve("/etc/vmhook"), { recursive: true });
    if (reinstall) install(host, binary);
    const { notes } = uninstall(host, false);
    assert.match(notes.join("\n"), `restored the previous hook from ${SAVED}`, `reinstalled: ${reinstall}`);
    assert.is(read(HOOK), PREVIOUS);
    for (const gone of [SAVED, LAUNCHER, "/etc/vmhook/install.json"]) assert.not.ok(exists(gone), `${gone} is still there`);
  }
});

test("uninstall removes the launcher of a kept hook that was deleted by hand (it would fail every VM start)", () => {
  const { host, binary, exists, putPreviousHook } = setUp();
  putPreviousHook();
  install(host, binary);
  fs.rmSync(host.resolve(SAVED));
  assert.match(uninstall(host, false).notes.join("\n"), `removed ${LAUNCHER}: the hook it ran, ${SAVED}, is gone`);
  for (const gone of [HOOK, LAUNCHER, "/etc/vmhook/install.json"]) assert.not.ok(exists(gone), `${gone} is still there`);
});

test("uninstall refuses while a journal holds changes, an unreadable one included, unless forced", () => {
  const { host, binary, exists } = setUp();
  install(host, binary);
  fs.writeFileSync(host.resolve("/run/vmhook/e1e1e1e1-0000-4000-8000-0000000000e1.json"), "{ half a jour");
  assert.throws(() => uninstall(host, false), /1 domain\(s\) still hold changes \(\/run\/vmhook\/e1e1e1e1-0000-4000-8000-0000000000e1\.json\)/);
  assert.ok(exists(HOOK));
  uninstall(host, true);
  assert.not.ok(exists(HOOK));
});

test("uninstall --force while a domain holds changes says that its release no longer undoes them and how they are undone once it stops, not that --purge removes its journal", () => {
  const { host, binary } = setUp();
  install(host, binary);
  const uuid = "e2e2e2e2-0000-4000-8000-0000000000e2";
  const journal = newJournal(host, { name: "win11", uuid });
  journal.phase = "running";
  journal.entries.push({ plugin: "hugepages", event: "prepare", description: "add 512 pages of 2048 kB", undo: { action: "x" }, state: "applied", at: journal.createdAt });
  writeJournal(host, journal);
  const notes = uninstall(host, true).notes.join("\n");
  assert.match(notes, `domain win11 still holds 1 change(s) (/run/vmhook/${uuid}.json): without the hook libvirt's release no longer undoes them; once win11 has stopped, install vmhook again and run vmhook recover win11`);
  assert.not.match(notes, "left /run/vmhook");
  assert.match(uninstall(host, true, { purgeOwnFiles: true }).notes.join("\n"), "kept /run/vmhook: journals there still hold changes");
});

const domainXml = (name: string, body: string) => `<domain type='kvm'>\n  <name>${name}</name>\n${body}\n</domain>\n`;

test("uninstall lists what it leaves: the plugins, the log, and domains still asking for vmhook (those backed by its huge pages stop starting)", () => {
  const { host, binary } = setUp();
  install(host, binary);
  fs.writeFileSync(host.resolve("/etc/vmhook/plugins.d/looking-glass.mjs"), "export default {}\n");
  fs.mkdirSync(host.resolve("/var/log"), { recursive: true });
  fs.writeFileSync(host.resolve("/var/log/vmhook.log"), "a line\n");
  fs.mkdirSync(host.resolve("/etc/libvirt/qemu"), { recursive: true });
  const metadata = (inner: string) => `  <metadata>\n    <vmhook:hooks xmlns:vmhook="urn:vmhook:1">${inner}</vmhook:hooks>\n  </metadata>`;
  fs.writeFileSync(host.resolve("/etc/libvirt/qemu/win11.xml"), domainXml("win11", `${metadata("<vmhook:hugepages size='1G'/>")}\n  <memoryBacking>\n    <hugepages/>\n  </memoryBacking>`));
  fs.writeFileSync(host.resolve("/etc/libvirt/qemu/work vm.xml"), domainXml("work vm", metadata("<vmhook:isolate/>")));
  fs.writeFileSync(host.resolve("/etc/libvirt/qemu/plain.xml"), domainXml("plain", "  <memoryBacking><hugepages/></memoryBacking>"));

  const { notes } = uninstall(host, false);
  assert.equal(notes.slice(notes.indexOf("removed /usr/local/bin/vmhook") + 1), [
    "left /etc/vmhook: 1 custom plugin(s) in /etc/vmhook/plugins.d: looking-glass.mjs (rm -r /etc/vmhook removes it)",
    "left /var/log/vmhook.log: the log (rm -f /var/log/vmhook.log /var/log/vmhook.log.[0-9]* removes them)",
    // Said after the hook and the CLI link are gone: the remedy is no vmhook command, which may no longer exist (dpkg -r, install.sh --uninstall).
    "left domain win11's vmhook metadata (harmless without vmhook; virsh metadata win11 --uri urn:vmhook:1 --config --remove drops it)",
    'domain win11 is backed by huge pages that vmhook reserved at each start: without vmhook it fails with "unable to map backing store for guest RAM"; remove <memoryBacking><hugepages/> (virsh edit win11) or reserve the pages at boot (hugepages=N on the kernel command line)',
    "left domain work vm's vmhook metadata (harmless without vmhook; virsh metadata 'work vm' --uri urn:vmhook:1 --config --remove drops it)",
  ]);
});

test("uninstall names a domain as libvirt knows it: the name's escapes in the saved XML are decoded before it goes into the virsh command", () => {
  const { host, binary } = setUp();
  install(host, binary);
  fs.mkdirSync(host.resolve("/etc/libvirt/qemu"), { recursive: true });
  // libvirt writes a name with ' and & escaped, as every string it puts in XML.
  fs.writeFileSync(host.resolve("/etc/libvirt/qemu/Bob's VM.xml"), domainXml("Bob&apos;s &amp; VM", '  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:isolate/></vmhook:hooks></metadata>'));
  const { notes } = uninstall(host, false);
  assert.ok(notes.includes(`left domain Bob's & VM's vmhook metadata (harmless without vmhook; virsh metadata 'Bob'\\''s & VM' --uri urn:vmhook:1 --config --remove drops it)`), notes.join("\n"));
});

test("uninstall names a domain file it cannot read instead of passing over it", () => {
  const { host, binary } = setUp();
  install(host, binary);
  // A directory where a domain's XML should be: unreadable even for root.
  fs.mkdirSync(host.resolve("/etc/libvirt/qemu/broken.xml"), { recursive: true });
  const { notes } = uninstall(host, false);
  assert.ok(notes.includes("could not read /etc/libvirt/qemu/broken.xml (EISDIR): check by hand whether it still carries vmhook metadata or <hugepages/> backing"), notes.join("\n"));
});

test("uninstall --purge removes vmhook's own files; the domains are only listed, never edited", () => {
  const { host, binary, exists } = setUp();
  install(host, binary);
  fs.writeFileSync(host.resolve("/etc/vmhook/vmhook.json"), "{}\n");
  fs.mkdirSync(host.resolve("/var/log"), { recursive: true });
  fs.writeFileSync(host.resolve("/var/log/vmhook.log"), "a line\n");
  fs.mkdirSync(host.resolve("/var/lib/vmhook/backups"), { recursive: true });
  fs.mkdirSync(host.resolve("/etc/libvirt/qemu"), { recursive: true });
  const domain = domainXml("win11", '  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:isolate/></vmhook:hooks></metadata>');
  fs.writeFileSync(host.resolve("/etc/libvirt/qemu/win11.xml"), domain);
  const { notes } = uninstall(host, false, { purgeOwnFiles: true });
  for (const gone of ["/etc/vmhook", "/var/log/vmhook.log", "/var/lib/vmhook", "/run/vmhook"]) {
    assert.ok(notes.includes(`removed ${gone}`), `${gone}: ${notes.join("; ")}`);
    assert.not.ok(exists(gone), `${gone} is still there`);
  }
  assert.match(notes.join("\n"), "left domain win11's vmhook metadata");
  assert.is(fs.readFileSync(host.resolve("/etc/libvirt/qemu/win11.xml"), "utf8"), domain);
});

test("uninstall where vmhook is not installed says so, naming what it looked at, and leaves another program's hook alone", () => {
  const { host, binary, read, putPreviousHook } = setUp();
  const notInstalled = (hook: string) => `vmhook is not installed here: ${HOOK} ${hook} and there is no /etc/vmhook/install.json; nothing to remove`;
  let result = uninstall(host, false);
  assert.equal([result.notes[0], result.hooksChanged], [notInstalled("does not exist"), false]);
  install(host, binary);
  uninstall(host, false);
  assert.is(uninstall(host, false).notes[0], notInstalled("does not exist"), "a second uninstall");
  putPreviousHook();
  result = uninstall(host, false);
  assert.equal([result.notes[0], result.hooksChanged], [notInstalled("is another program"), false]);
  assert.is(read(HOOK), PREVIOUS);
});

test("install without the CLI link, and the Debian package's install (it ships /usr/bin/vmhook), write nothing to /usr/local", () => {
  for (const options of [{ cliLink: false }, { debianPackage: true }]) {
    const { host, binary, exists } = setUp();
    install(host, binary, options);
    assert.ok(exists(HOOK));
    assert.not.ok(exists("/usr/local"), `${JSON.stringify(options)}: /usr/local was created`);
  }
});

const record = (read: (hostPath: string) => string) => JSON.parse(read("/etc/vmhook/install.json"));

test("a hand install (install.sh) first, then the Debian package: the logrotate config the hand install wrote is dpkg's conffile from then on, and no uninstall removes it (dpkg would take it for deleted by the administrator, and never put it back)", () => {
  for (const uninstallBy of ["the package's prerm", "hand"] as const) {
    const { host, binary, read, putPreviousHook } = setUp();
    putPreviousHook();
    install(host, binary);
    assert.equal(record(read), { savedHook: SAVED, logrotate: true, madeQemuDir: true });
    // dpkg -i: dpkg finds the same text in place and keeps it as its conffile; postinst runs vmhook install --debian-package
    const packaged = install(host, binary, { debianPackage: true });
    assert.not.match(packaged.notes.join("\n"), "logrotate");
    assert.equal(record(read), { savedHook: SAVED, debianPackage: true, madeQemuDir: true });
    const removed = uninstall(host, false, { debianPackage: uninstallBy === "the package's prerm" });
    assert.match(removed.notes.join("\n"), "restored the previous hook", uninstallBy);
    assert.not.match(removed.notes.join("\n"), "logrotate", uninstallBy);
    assert.is(read(LOGROTATE_CONFIG), LOGROTATE_TEXT, uninstallBy);
  }
});

test("the Debian package first, then a hand install over it: the conffile is left to dpkg, also once the administrator deleted it (said, with the way back), and stays so through the next postinst", () => {
  const { host, binary, read, exists } = setUp();
  fs.writeFileSync(host.resolve(LOGROTATE_CONFIG), LOGROTATE_TEXT, { mode: 0o644 }); // dpkg unpacks it before postinst
  install(host, binary, { debianPackage: true });
  assert.not.match(install(host, binary).notes.join("\n"), "logrotate");
  assert.equal(record(read), { debianPackage: true, madeQemuDir: false });
  fs.rmSync(host.resolve(LOGROTATE_CONFIG));
  const deleted = `/var/log/vmhook.log is not rotated: ${LOGROTATE_CONFIG}, the Debian package's conffile, was deleted, and dpkg keeps it deleted; to get it back, reinstall the package with dpkg's --force-confmiss`;
  for (const options of [{}, { debianPackage: true }]) {
    assert.ok(install(host, binary, options).notes.includes(deleted), JSON.stringify(options));
    assert.not.ok(exists(LOGROTATE_CONFIG), `${JSON.stringify(options)}: install wrote dpkg's deleted conffile back`);
    assert.equal(record(read), { debianPackage: true, madeQemuDir: false });
  }
});

test("the package's prerm never removes its conffile, even when the record says a hand install wrote it (a hand uninstall and install while the package stayed)", () => {
  const { host, binary, read } = setUp();
  install(host, binary);
  assert.equal(record(read), { logrotate: true, madeQemuDir: false });
  assert.not.match(uninstall(host, false, { debianPackage: true }).notes.join("\n"), "logrotate");
  assert.is(read(LOGROTATE_CONFIG), LOGROTATE_TEXT);
});

test.run();
