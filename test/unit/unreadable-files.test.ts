// A file that exists but cannot be read is an unknown, never "not there":
// Host.readTrimmed is undefined only for what does not exist and throws for
// any other errno; text only shown to a person goes through readForMessage.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Deadline, waitFor, WaitTimedOut } from "../../lib/deadline.ts";
import { FixableError } from "../../lib/errors.ts";
import { runDoctor } from "../../lib/diagnostics/doctor.ts";
import { readForMessage, RootedHost } from "../../lib/host.ts";
import { readJournal } from "../../lib/journal.ts";
import { paths } from "../../lib/paths.ts";
import { ensureStateDir, writeStateFile } from "../../lib/state-files.ts";
import { DEFAULT_SETTINGS, loadSettings } from "../../lib/settings.ts";
import { cli } from "../helpers/cli.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { HugepageKernel } from "../helpers/hugepage-kernel.ts";
import { SimHost } from "../helpers/simhost.ts";
import { withLoopTree } from "../helpers/loop-tree.ts";

const UUID = "e1e1e1e1-0000-4000-8000-0000000000f2";
const XML = `<domain type='kvm'><name>vm</name><uuid>${UUID}</uuid><memory unit='GiB'>1</memory>
  <memoryBacking><hugepages/></memoryBacking>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages/></vmhook:hooks></metadata></domain>`;

const CHECK_WHY = "vmhook does not act on what it cannot read; check why (ls -l, dmesg)";

function threw(run: () => unknown): Error & { code?: string } {
  try {
    run();
  } catch (error) {
    return error as Error & { code?: string };
  }
  throw new Error("expected a throw");
}

test("RootedHost.readTrimmed on a real file system: undefined only when nothing is there; a directory (EISDIR) and a symlink loop (ELOOP), which root cannot bypass, throw naming the path and keeping the errno", () => {
  withLoopTree((root, host) => {
  fs.writeFileSync(path.join(root, "value"), "  42\n");
  fs.mkdirSync(path.join(root, "dir"));
  assert.is(host.readTrimmed("/value"), "42");
  assert.is(host.readTrimmed("/missing"), undefined, "ENOENT");
  assert.is(host.readTrimmed("/value/below"), undefined, "ENOTDIR: a path through a file");
  const directory = threw(() => host.readTrimmed("/dir"));
  assert.is(directory.code, "EISDIR");
  assert.is(directory.message, `cannot read /dir (EISDIR); ${CHECK_WHY}`);
  const loop = threw(() => host.readTrimmed("/loop-a"));
  assert.is(loop.code, "ELOOP");
  assert.match(loop.message, "cannot read /loop-a (ELOOP)");
  assert.not.match(loop.message, root, "the host path, not the test root");
  assert.is(readForMessage(host, "/loop-a", "?"), "?", "text for a message falls back");
  assert.is(readForMessage(host, "/missing", "?"), "?");
  assert.is(readForMessage(host, "/value", "?"), "42");
  });
});

test("RootedHost.write that fails, at open (ENOENT, EISDIR) or at write(2) itself (ENOSPC, where Node names no file), throws naming the value, the host's path (not the root's) and the errno, kept as code", () => {
  withLoopTree((root, host) => {
    fs.mkdirSync(path.join(root, "dir"));
    const missing = threw(() => host.write("/sys/bus/pci/devices/0000:01:00.0/driver_override", "vfio-pci"));
    assert.equal([missing.code, missing.message], ["ENOENT", 'cannot write "vfio-pci" to /sys/bus/pci/devices/0000:01:00.0/driver_override (ENOENT: no such file or directory)']);
    const directory = threw(() => host.write("/dir", "1\n"));
    assert.equal([directory.code, directory.message], ["EISDIR", 'cannot write "1" to /dir (EISDIR: illegal operation on a directory)']);
    const long = threw(() => host.write("/dir", `${"x".repeat(100)}\n`));
    assert.is(long.message, "cannot write /dir (EISDIR: illegal operation on a directory)", "a value too long to show is left out");
  });
  const full = threw(() => new RootedHost("/").write("/dev/full", "512\n"));
  assert.equal([full.code, full.message], ["ENOSPC", 'cannot write "512" to /dev/full (ENOSPC: no space left on device)']);
});

test("RootedHost's changes (mkdir, createFile, rename, remove) that fail name the real path the user must fix, the errno (kept as code) and a fix for it, never Node's bare message", () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-changes-"));
  const sim = new SimHost();
  try {
    // /etc a file: nothing can be made below it.
    fs.writeFileSync(path.join(root, "etc"), "");
    fs.writeFileSync(path.join(root, "new"), "");
    const host = new RootedHost(root);
    const onTheWay = `a directory on the way to it is missing or is a file: check each part of the path (namei -l ${root}/etc/vmhook)`;
    const refused = (change: () => void, reason: string, fix: string, code: string) =>
      assert.throws(change, (error: FixableError & { code?: string }) => error instanceof FixableError && error.reason === reason && error.fix === fix && error.code === code);
    refused(() => host.mkdir("/etc/vmhook"), `cannot mkdir ${root}/etc/vmhook (ENOTDIR)`, onTheWay, "ENOTDIR");
    refused(() => host.createFile("/etc/vmhook", "{}"), `cannot write ${root}/etc/vmhook (ENOTDIR)`, onTheWay, "ENOTDIR");
    refused(() => host.rename("/new", "/etc/vmhook"), `cannot rename ${root}/new to ${root}/etc/vmhook (ENOTDIR)`, onTheWay, "ENOTDIR");
    // The source missing: the fix names it, not the destination, whose directory is there.
    const sourceGone = (source: string) => `${source} is not there: check each part of the path (namei -l ${source}); a directory on the way to it may be missing or a file`;
    refused(() => host.rename("/gone", "/new2"), `cannot rename ${root}/gone to ${root}/new2 (ENOENT)`, sourceGone(`${root}/gone`), "ENOENT");
    refused(() => host.copyIn(`${root}/no-build`, "/new2"), `cannot copy ${root}/no-build to ${root}/new2 (ENOENT)`, sourceGone(`${root}/no-build`), "ENOENT");
    refused(() => host.copyIn(`${root}/new/x`, "/new2"), `cannot copy ${root}/new/x to ${root}/new2 (ENOTDIR)`, sourceGone(`${root}/new/x`), "ENOTDIR");
    // The source there, the destination's directory not: the destination is named.
    refused(() => host.copyIn(`${root}/new`, "/etc/vmhook"), `cannot copy ${root}/new to ${root}/etc/vmhook (ENOTDIR)`, onTheWay, "ENOTDIR");
    // What the simulated host makes fail (a read-only /etc, a full /var) is refused the same way.
    sim.dir("/etc/vmhook").failChange("/etc/vmhook", "EROFS").failWrite("/var/lib/vmhook/x", "ENOSPC");
    refused(() => sim.remove("/etc/vmhook"), `cannot remove ${sim.root}/etc/vmhook (EROFS)`, `its file system is mounted read-only (findmnt -T ${sim.root}/etc): remount it read-write, then try again`, "EROFS");
    sim.mkdir("/var/lib/vmhook");
    refused(() => sim.createFile("/var/lib/vmhook/x", "1"), `cannot write ${sim.root}/var/lib/vmhook/x (ENOSPC)`, `its file system is full (df -h ${sim.root}/var/lib/vmhook): free space there, then try again`, "ENOSPC");
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
    sim.cleanup();
  }
});

test("SimHost.failRead: readTrimmed judges the injected errno as a real one, read throws it as it is, clearFailures ends it; ESRCH (a process gone while read) is nothing there", () => {
  const sim = new SimHost().file("/sys/bus/pci/devices/0000:01:00.0/reset_method", "flr bus").file("/proc/77/comm", "qemu");
  try {
    sim.failRead("/sys/bus/pci/devices/0000:01:00.0/reset_method", "ENODEV").failRead("/proc/77/comm", "ESRCH");
    const failed = threw(() => sim.readTrimmed("/sys/bus/pci/devices/0000:01:00.0/reset_method"));
    assert.is(failed.code, "ENODEV");
    assert.is(failed.message, `cannot read /sys/bus/pci/devices/0000:01:00.0/reset_method (ENODEV); ${CHECK_WHY}`);
    assert.is(threw(() => sim.read("/sys/bus/pci/devices/0000:01:00.0/reset_method")).code, "ENODEV");
    assert.is(sim.readTrimmed("/proc/77/comm"), undefined);
    sim.clearFailures();
    assert.is(sim.readTrimmed("/sys/bus/pci/devices/0000:01:00.0/reset_method"), "flr bus");
    assert.is(sim.readTrimmed("/proc/77/comm"), "qemu");
  } finally {
    sim.cleanup();
  }
});

test("host settings: no file means the defaults; a file that cannot be read is an error naming it, never the defaults", () => {
  const sim = new SimHost();
  try {
    assert.equal(loadSettings(sim), DEFAULT_SETTINGS);
    sim.file("/etc/vmhook/vmhook.json", `{"deadlineSeconds": 300}`).failRead("/etc/vmhook/vmhook.json", "EIO");
    assert.throws(() => loadSettings(sim), (error: Error) => error.message === `cannot read /etc/vmhook/vmhook.json (EIO); ${CHECK_WHY}`);
    sim.clearFailures();
    assert.is(loadSettings(sim).deadlineSeconds, 300);
  } finally {
    sim.cleanup();
  }
});

/** A simulated host with an empty pool of 2M huge pages, cleaned up after `body`; `pool()` reads the pool's size. */
async function onHugepageHost(body: (sim: SimHost, pool: () => number) => Promise<void>): Promise<void> {
  const sim = new SimHost().dir("/var/log");
  try {
    new HugepageKernel(sim, { initial: { 2048: 0 } });
    await body(sim, () => Number(sim.read("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")));
  } finally {
    sim.cleanup();
  }
}

test("vmhook status, doctor and recover: a libvirt pid file that cannot be read (EISDIR): status says it cannot tell; recover keeps that domain's journal, naming the file, and the other domains are still recovered; it used to mean \"not running\" and undid a running VM's changes", async () => {
  await onHugepageHost(async (sim) => {
    const OTHER_UUID = "e1e1e1e1-0000-4000-8000-0000000000f3";
    assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 0);
    assert.is((await runHookEvent(sim, "prepare", "begin", XML.replace("<name>vm</name>", "<name>other</name>").replace(UUID, OTHER_UUID), "other")).code, 0);
    // Both started (QEMU ran): a pid file gone since means stopped, not "not launched yet".
    assert.is((await runHookEvent(sim, "started", "begin", XML)).code, 0);
    assert.is((await runHookEvent(sim, "started", "begin", XML.replace("<name>vm</name>", "<name>other</name>").replace(UUID, OTHER_UUID), "other")).code, 0);
    sim.dir("/run/libvirt/qemu/vm.pid");
    const status = await cli(["status", "--root", sim.root]);
    assert.is(status.code, 0);
    assert.match(status.stdout, `vm (${UUID}): cannot tell whether it runs (cannot read /run/libvirt/qemu/vm.pid (EISDIR);`);
    assert.match(status.stdout, `other (${OTHER_UUID}): not running`);
    const json = JSON.parse((await cli(["status", "--json", "--root", sim.root])).stdout) as { domains: { domain: { name: string }; running: boolean | null; runningUnknown?: string }[] };
    assert.equal(json.domains.map((d) => [d.domain.name, d.running, d.runningUnknown?.split(";")[0]]).sort(), [["other", false, undefined], ["vm", null, "cannot read /run/libvirt/qemu/vm.pid (EISDIR)"]]);
    const leftovers = (await runDoctor(sim)).host.filter((finding) => finding.check === "leftovers");
    assert.equal(leftovers.map((finding) => [finding.status, finding.reason.split(";")[0]]).sort(), [
      ["fail", "vm: cannot tell whether it runs (cannot read /run/libvirt/qemu/vm.pid (EISDIR)"],
      ["warn", `other is not running but its journal in /run/vmhook still holds 1 change(s)`],
    ]);
    const pool = Number(sim.read("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"));
    const { code, stdout } = await cli(["recover", "--root", sim.root]);
    assert.is(code, 1);
    assert.match(stdout, "vm: cannot tell whether it still runs: cannot read /run/libvirt/qemu/vm.pid (EISDIR)");
    assert.match(stdout, "other: 1 change(s) undone");
    assert.ok(readJournal(sim, UUID), "vm's journal is kept");
    assert.is(readJournal(sim, OTHER_UUID), undefined, "other's is undone");
    assert.is(Number(sim.read("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")), pool / 2, "vm's huge pages are still reserved, other's are given back");
  });
});

test("recover never undoes a VM libvirt is starting: between prepare and QEMU's launch there is no pid file yet; --force does it, and once started a missing pid file means stopped", async () => {
  await onHugepageHost(async (sim, pool) => {
    assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 0);
    const reserved = pool();
    assert.ok(reserved > 0);
    // libvirt writes /run/libvirt/qemu/vm.pid only when it launches QEMU, after the prepare and start hooks (seen on libvirt 9.0).
    const status = await cli(["status", "--root", sim.root]);
    assert.match(status.stdout, `vm (${UUID}): being started (prepared; QEMU not launched yet); vmhook holds for it`);
    const recover = await cli(["recover", "--root", sim.root]);
    assert.is(recover.code, 1);
    assert.match(recover.stdout, "vm: libvirt is starting it (prepared; QEMU not launched yet), or its libvirtd stopped while starting it; nothing of it was undone: if virsh domstate vm says shut off and no start is under way, run vmhook recover --force vm");
    assert.is(pool(), reserved, "the pages of the VM being started stay");
    assert.ok(readJournal(sim, UUID));

    // QEMU ran (started), then stopped without a release: a missing pid file means not running.
    assert.is((await runHookEvent(sim, "started", "begin", XML)).code, 0);
    assert.is(readJournal(sim, UUID)!.phase, "running");
    const after = await cli(["recover", "--root", sim.root]);
    assert.is(after.code, 0, after.stdout);
    assert.match(after.stdout, "vm: 1 change(s) undone");
    assert.is(pool(), 0);

    // Prepared and never started (libvirtd gone mid-start): --force gives it back.
    assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 0);
    const forced = await cli(["recover", "--force", "vm", "--root", sim.root]);
    assert.is(forced.code, 0, forced.stdout);
    assert.is(pool(), 0);
  });
});

/** /proc/PID/stat of a process with this command, parent and start time (field 22). */
function procStat(sim: SimHost, pid: number, command: string, ppid: number, startTime: number, state = "S"): void {
  sim.file(`/proc/${pid}/stat`, `${pid} (${command}) ${state} ${ppid} ${pid} ${pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 ${startTime} 0 0`);
}

test("a journal still 'starting' once libvirt's daemon that ran its prepare is gone (a zombie, or its pid belongs to a later process) is left over: status, doctor and recover say so, and recover gives it back without --force", async () => {
  await onHugepageHost(async (sim, pool) => {
    // libvirtd (pid 300) runs the hook through a dispatcher script (pid 4000).
    procStat(sim, 300, "libvirtd", 1, 5000);
    procStat(sim, 4000, "qemu hook", 300, 90000);
    const ends = [() => sim.remove("/proc/300"), () => procStat(sim, 300, "libvirtd", 1, 5000, "Z"), () => procStat(sim, 300, "libvirtd", 1, 7777)];
    for (const daemonEnds of ends) {
      assert.is((await runHookEvent(sim, "prepare", "begin", XML, "vm", 4000)).code, 0);
      assert.equal(readJournal(sim, UUID)!.starter, { command: "libvirtd", instance: "300:5000" });
      // While that libvirtd runs, the start may go on: nothing is undone.
      assert.is((await cli(["recover", "--root", sim.root])).code, 1);
      assert.ok(pool() > 0);

      daemonEnds();
      const gone = "libvirtd (pid 300), which was starting it, is gone";
      assert.match((await cli(["status", "--root", sim.root])).stdout, `vm (${UUID}): its start was abandoned (${gone}), yet vmhook still holds for it (vmhook recover vm gives it back)`);
      const leftovers = (await runDoctor(sim)).host.filter((finding) => finding.check === "leftovers");
      assert.equal(leftovers.map((finding) => [finding.status, finding.reason, finding.fix]), [["warn", `vm: its start was abandoned (${gone}), yet its journal in /run/vmhook holds 1 change(s)`, "run vmhook recover vm"]]);
      const recover = await cli(["recover", "--root", sim.root]);
      assert.is(recover.code, 0, recover.stdout);
      assert.match(recover.stdout, `vm: its start was abandoned: ${gone}\nvm: 1 change(s) undone`);
      assert.is(pool(), 0);
      assert.is(readJournal(sim, UUID), undefined);
      procStat(sim, 300, "libvirtd", 1, 5000);
    }
  });
});

test("a starting journal whose daemon cannot be read in /proc, or that names none, stays for --force", async () => {
  await onHugepageHost(async (sim) => {
    procStat(sim, 300, "libvirtd", 1, 5000);
    procStat(sim, 301, "bash", 1, 5000);
    assert.is((await runHookEvent(sim, "prepare", "begin", XML, "vm", 300)).code, 0);
    sim.failRead("/proc/300/stat", "EACCES");
    const unreadable = await cli(["recover", "--root", sim.root]);
    assert.is(unreadable.code, 1);
    assert.match(unreadable.stdout, "vm: libvirt is starting it");
    sim.clearFailures();
    assert.is((await cli(["recover", "--force", "--root", sim.root])).code, 0);
    // Run by a process that is no libvirt daemon, nor has one above it: no starter is noted, so its end says nothing.
    assert.is((await runHookEvent(sim, "prepare", "begin", XML, "vm", 301)).code, 0);
    assert.is(readJournal(sim, UUID)!.starter, undefined);
    sim.remove("/proc/301");
    assert.is((await cli(["recover", "--root", sim.root])).code, 1);
    assert.ok(readJournal(sim, UUID));
  });
});

test("RootedHost.stat on a real file system: undefined only when nothing is there; a symlink loop on the way (ELOOP) throws naming the path", () => {
  withLoopTree((root, host) => {
  fs.writeFileSync(path.join(root, "value"), "42\n");
  assert.is(host.stat("/value")?.isFile, true);
  assert.is(host.stat("/loop-a")?.isSymlink, true, "lstat: the link itself");
  assert.is(host.stat("/missing"), undefined, "ENOENT");
  assert.is(host.stat("/value/below"), undefined, "ENOTDIR");
  const loop = threw(() => host.stat("/loop-a/below"));
  assert.is(loop.code, "ELOOP");
  assert.is(loop.message, `cannot stat /loop-a/below (ELOOP); ${CHECK_WHY}`);
  });
});

test("host policy: a policy file that cannot be looked at (EACCES from a security module) refuses prepare with the host unchanged; it used to mean \"no policy\" and the defaults", async () => {
  await onHugepageHost(async (sim) => {
    sim.file("/etc/vmhook/policy.json", "{}").failStat("/etc/vmhook/policy.json", "EACCES");
    const before = sim.snapshot();
    const { code, stderr } = await runHookEvent(sim, "prepare", "begin", XML);
    assert.is(code, 1);
    assert.match(stderr, "cannot stat /etc/vmhook/policy.json (EACCES)");
    assert.equal(sim.snapshot(), before, "the host is left as it was");
    sim.clearFailures();
    assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 0, "readable again, the same domain starts");
  });
});

test("RootedHost.exists on a real file system: false only when nothing is there (a dangling link too); a symlink loop (ELOOP) throws naming the path", () => {
  withLoopTree((root, host) => {
  fs.writeFileSync(path.join(root, "value"), "42\n");
  fs.symlinkSync("nowhere", path.join(root, "dangling"));
  assert.is(host.exists("/value"), true);
  assert.is(host.exists("/missing"), false, "ENOENT");
  assert.is(host.exists("/dangling"), false, "a link to nothing");
  assert.is(host.exists("/value/below"), false, "ENOTDIR");
  const loop = threw(() => host.exists("/loop-a"));
  assert.is(loop.code, "ELOOP");
  assert.is(loop.message, `cannot look up /loop-a (ELOOP); ${CHECK_WHY}`);
  });
});

test("hugepages: a pool's surplus count that cannot be looked up refuses prepare with the host unchanged; it used to count as no surplus pages, and the pool's own size was computed from that", async () => {
  await onHugepageHost(async (sim) => {
    const surplus = "/sys/kernel/mm/hugepages/hugepages-2048kB/surplus_hugepages";
    assert.ok(sim.exists(surplus), "the simulated kernel has the file");
    sim.failExists(surplus, "EACCES");
    const before = sim.snapshot();
    const { code, stderr } = await runHookEvent(sim, "prepare", "begin", XML);
    assert.is(code, 1);
    assert.match(stderr, `cannot look up ${surplus} (EACCES)`);
    assert.equal(sim.snapshot(), before, "the host is left as it was");
  });
});

test("waitFor: only its own timeout is a WaitTimedOut; a read that fails inside the wait is passed on as it is, so no caller takes it for \"not yet\"", () => {
  const sim = new SimHost().file("/sys/bus/pci/devices/0000:03:00.0/driver_override", "");
  try {
    const deadline = new Deadline(sim, 10_000);
    const timeout = threw(() => waitFor(sim, deadline, "it is set", () => sim.readTrimmed("/sys/bus/pci/devices/0000:03:00.0/driver_override") === "vfio-pci", { timeoutMs: 30 }));
    assert.instance(timeout, WaitTimedOut);
    assert.match(timeout.message, "waiting until it is set");
    sim.failRead("/sys/bus/pci/devices/0000:03:00.0/driver_override", "EIO");
    const failed = threw(() => waitFor(sim, deadline, "it is set", () => sim.readTrimmed("/sys/bus/pci/devices/0000:03:00.0/driver_override") === "vfio-pci", { timeoutMs: 30 }));
    assert.not.instance(failed, WaitTimedOut);
    assert.is(failed.code, "EIO");
  } finally {
    sim.cleanup();
  }
});

test("vmhook's state that cannot be made or written is refused naming the host's path and the errno, with the fix apart, never Node's message with the real path under --root", () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-state-"));
  const sim = new SimHost();
  try {
    // /run a file: no state directory can be made there.
    fs.writeFileSync(path.join(root, "run"), "");
    const fix = `vmhook records every change in ${paths.stateDir} before it makes it: check why (ls -ld ${paths.stateDir}, df -h ${paths.stateDir}, dmesg)`;
    assert.throws(() => ensureStateDir(new RootedHost(root)), (error: FixableError) => error instanceof FixableError && error.reason === `cannot create ${paths.stateDir} (ENOTDIR)` && error.fix === fix);
    const file = `${paths.stateDir}/claims.json`;
    ensureStateDir(sim);
    sim.failWrite(`${file}.tmp`, "EIO");
    assert.throws(() => writeStateFile(sim, file, "{}"), (error: FixableError & { code?: string }) => error instanceof FixableError && error.reason === `cannot write ${file} (EIO)` && error.fix === fix && error.code === "EIO");
    sim.clearFailures();
    sim.failWrite(`${file}.tmp`, "EROFS");
    const readOnly = `its file system is mounted read-only (findmnt -T ${paths.stateDir}): remount it read-write, then run vmhook recover`;
    assert.throws(() => writeStateFile(sim, file, "{}"), (error: FixableError & { code?: string }) => error instanceof FixableError && error.reason === `cannot write ${file} (EROFS)` && error.fix === readOnly && error.code === "EROFS");
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
    sim.cleanup();
  }
});

test("a state file's write that fails once its temp copy is made (EIO, EDQUOT, EFBIG from write(2) or fsync(2)), or whose rename fails: the file stays as it was, and no temp copy is left for lonelyTemps to take for a killed writer", () => {
  const sim = new SimHost();
  try {
    const file = `${paths.stateDir}/claims.json`;
    ensureStateDir(sim);
    writeStateFile(sim, file, "{}");
    for (const [fail, errno] of [["write", "EIO"], ["write", "EDQUOT"], ["write", "EFBIG"], ["write", "ENOSPC"], ["rename", "EIO"], ["rename", "EROFS"]] as const) {
      if (fail === "write") sim.failWrite(`${file}.tmp`, errno);
      else sim.failChange(file, errno);
      assert.throws(() => writeStateFile(sim, file, '{"new": 1}'), (error: FixableError & { code?: string }) => error instanceof FixableError && error.code === errno && error.reason.startsWith(`cannot write ${file} (${errno}`));
      sim.clearFailures();
      assert.is(sim.read(file), "{}", `${fail} ${errno}`);
      assert.equal(sim.stateFiles(), ["claims.json"], `${fail} ${errno}`);
    }
  } finally {
    sim.cleanup();
  }
});

test("a journal larger than the room left on /run (a real 8 KiB tmpfs, one page free): the write fails with ENOSPC and the journal stays as it was; the full file system's short write used to be renamed over it, a journal cut off mid-JSON", () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-state-"));
  const dir = path.join(root, "run/vmhook");
  fs.mkdirSync(dir, { recursive: true });
  const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "size=8k,mode=0700", "tmpfs", dir], { encoding: "utf8", timeout: 10_000 });
  assert.is(mounted.status, 0, `mount tmpfs (the unit tests run as root): ${mounted.stderr}`);
  try {
    const host = new RootedHost(root);
    const file = `${paths.stateDir}/claims.json`;
    writeStateFile(host, file, "{}\n");
    // The journal takes one page; one page is left, which 6000 bytes do not fit.
    const large = `${JSON.stringify({ padding: "x".repeat(6000) })}\n`;
    assert.throws(() => writeStateFile(host, file, large), (error: FixableError & { code?: string }) => error instanceof FixableError && error.code === "ENOSPC" && error.reason === `cannot write ${file} (ENOSPC: the file system is full)`);
    assert.is(fs.readFileSync(path.join(dir, "claims.json"), "utf8"), "{}\n");
    assert.equal(fs.readdirSync(dir), ["claims.json"], "no temp copy is left");
  } finally {
    spawnSync("umount", [dir], { timeout: 10_000 });
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test.run();
