// The isolate plugin on a simulated host: the systemd path (a recording
// systemctl), the cgroup v2 path without systemd (a cgroup tree whose
// subtree_control behaves like the kernel's), governors, IRQs, the workqueue
// mask, several VMs sharing the host CPU set (the host policy's limits and a
// release racing another VM's prepare included), and the errors.
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import { parseKernelCpuList } from "../../lib/cpuset.ts";
import { Deadline } from "../../lib/deadline.ts";
import { newJournal, readJournal, writeJournal } from "../../lib/journal.ts";
import { withHostLock } from "../../lib/lock.ts";
import { createLogger } from "../../lib/log.ts";
import { paths } from "../../lib/paths.ts";
import { loadSettings } from "../../lib/settings.ts";
import { undoJournal, type RunEnvironment } from "../../lib/transaction.ts";
import { registry as builtins } from "../../plugins/index.ts";
import { runDoctor } from "../../lib/diagnostics/doctor.ts";
import { checkOriginals } from "../../plugins/isolate/retune.ts";
import { runHookEvent, type HookOutcome } from "../helpers/hook.ts";
import type { SimHost } from "../helpers/simhost.ts";
import { baseHost, cgroupHost, systemdHost } from "../helpers/cpu-hosts.ts";
import { HugepageKernel, MiB } from "../helpers/hugepage-kernel.ts";
import { assertPlanIsPrepare } from "../helpers/plan.ts";
import { cli } from "../helpers/cli.ts";

const UUIDS = ["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222", "33333333-3333-4333-8333-333333333333"];

interface VmSpec {
  name: string;
  uuid: string;
  /** The <vmhook:isolate> element's attributes, as written. */
  isolate: string;
  /** One cpuset per vcpupin. */
  pins?: string[];
  emulatorpin?: string;
  /** <vcpu cpuset>: libvirt's CPUs for every vCPU, emulator and I/O thread without a pin of its own. */
  vcpuCpuset?: string;
}

function domainXml(vm: VmSpec): string {
  const pins = (vm.pins ?? []).map((cpuset, vcpu) => `<vcpupin vcpu="${vcpu}" cpuset="${cpuset}"/>`).join("");
  const emulator = vm.emulatorpin ? `<emulatorpin cpuset="${vm.emulatorpin}"/>` : "";
  return `<domain type="kvm"><name>${vm.name}</name><uuid>${vm.uuid}</uuid><memory unit="MiB">512</memory>
  <vcpu${vm.vcpuCpuset ? ` cpuset="${vm.vcpuCpuset}"` : ""}>${Math.max(1, vm.pins?.length ?? 1)}</vcpu><cputune>${pins}${emulator}</cputune>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:isolate ${vm.isolate}/></vmhook:hooks></metadata></domain>`;
}

const vmA: VmSpec = { name: "vmA", uuid: UUIDS[0]!, isolate: "", pins: ["2", "3"], emulatorpin: "2-3" };
const vmB: VmSpec = { name: "vmB", uuid: UUIDS[1]!, isolate: "", pins: ["4", "5"] };

const prepare = (sim: SimHost, vm: VmSpec) => runHookEvent(sim, "prepare", "begin", domainXml(vm), vm.name);
const release = (sim: SimHost, vm: VmSpec) => runHookEvent(sim, "release", "end", domainXml(vm), vm.name);

const read = (sim: SimHost, path: string) => sim.readTrimmed(path);
const systemctlCalls = (sim: SimHost) => sim.execs.filter((e) => e.command === "systemctl").map((e) => e.args.join(" "));

function assertClean(sim: SimHost, before: Record<string, string>): void {
  assert.equal(sim.snapshot(), before);
  assert.equal(sim.stateFiles(), []);
}

test("systemd: AllowedCPUs of system.slice, user.slice and init.scope, previous values restored exactly", async () => {
  // init.scope as older systemd versions show a CPU set: space-separated.
  const { sim, units } = systemdHost({ "user.slice": "0-5", "init.scope": "0 1 2 3" });
  const before = sim.snapshot();
  const outcome = await prepare(sim, vmA);
  assert.is(outcome.code, 0, outcome.stderr);
  assert.equal(systemctlCalls(sim), [
    // at the checks, one call: this systemd has AllowedCPUs (244 or later), and whether a daemon-reload would undo it
    "show -p AllowedCPUs -p DropInPaths system.slice user.slice init.scope",
    "show -p AllowedCPUs system.slice",
    "show -p AllowedCPUs user.slice",
    "show -p AllowedCPUs init.scope",
    "set-property --runtime system.slice AllowedCPUs=0-1,4-7",
    "set-property --runtime user.slice AllowedCPUs=0-1,4-5",
    "set-property --runtime init.scope AllowedCPUs=0-1",
  ]);
  assert.not.ok(systemctlCalls(sim).some((call) => call.includes("machine.slice")));
  sim.execs.length = 0;

  assert.is((await release(sim, vmA)).code, 0);
  assert.equal(systemctlCalls(sim), [
    "set-property --runtime init.scope AllowedCPUs=0 1 2 3",
    "set-property --runtime user.slice AllowedCPUs=0-5",
    "set-property --runtime system.slice AllowedCPUs=",
  ]);
  assert.equal(units, { "system.slice": "", "user.slice": "0-5", "init.scope": "0 1 2 3" });
  assertClean(sim, before);
});

// set-property --runtime leaves its drop-in behind; left there after release, it would hide an admin's AllowedCPUs in a drop-in sorting before it at every daemon-reload until reboot.
test("systemd: release leaves each unit's runtime drop-ins as they were: vmhook's removed with the directories it made, an earlier set-property --runtime's back as it was", async () => {
  const { sim, units } = systemdHost({ "system.slice": "0-5" });
  const adminRuntime = "# This is a drop-in unit file extension, created via \"systemctl set-property\"\n# or an equivalent operation. Do not edit.\n[Slice]\nAllowedCPUs=\nAllowedCPUs=0-5\n";
  sim.file("/run/systemd/system.control/system.slice.d/50-AllowedCPUs.conf", adminRuntime);
  sim.file("/etc/systemd/system/user.slice.d/10-cpus.conf", "[Slice]\nAllowedCPUs=0-6\n");
  const before = sim.snapshot();
  assert.is((await prepare(sim, vmA)).code, 0);
  assert.match(read(sim, "/run/systemd/system.control/user.slice.d/50-AllowedCPUs.conf")!, "AllowedCPUs=0-1,4-7");
  assert.is((await release(sim, vmA)).code, 0);
  assert.equal(units, { "system.slice": "0-5", "user.slice": "", "init.scope": "" });
  assert.is(sim.read("/run/systemd/system.control/system.slice.d/50-AllowedCPUs.conf"), adminRuntime);
  assert.not.ok(sim.exists("/run/systemd/system.control/user.slice.d"), "user.slice's drop-in directory, which set-property made, is gone");
  assertClean(sim, before);
});

test("systemd: a unit's kept original is its AllowedCPUs and its runtime drop-in as vmhook reads them, or an older vmhook's value alone; anything else is refused", () => {
  for (const original of ["0-5", "0-5\nno-control-dir", "\nno-drop-in", "0-5\ndrop-in\n[Slice]\nAllowedCPUs=0-5\n"]) checkOriginals({ "systemd-allowed-cpus": { "system.slice": original } });
  for (const original of ["0-5\nExecStart=/bin/sh", "0-5\nno-drop-in\n", `0-5\ndrop-in\n${"x".repeat(70000)}`, "0-5\ndrop-in\n\0"]) {
    assert.throws(() => checkOriginals({ "systemd-allowed-cpus": { "system.slice": original } }), /keeps .* for "system.slice", not a value it has/, JSON.stringify(original).slice(0, 40));
  }
});

// set-property --runtime writes /run/systemd/system.control/UNIT.d/50-AllowedCPUs.conf; a daemon-reload applies a unit's drop-ins again, in
// file-name order, one of the same name in /etc/systemd/system.control hiding it.
const OVERRIDING_DROP_INS: [string, string, string | undefined][] = [
  ["systemctl edit's override.conf, which sorts after it", "/etc/systemd/system/system.slice.d/override.conf", "/etc/systemd/system/system.slice.d/override.conf"],
  ["a persistent systemctl set-property, of the same name in a higher directory", "/etc/systemd/system.control/system.slice.d/50-AllowedCPUs.conf", "/etc/systemd/system.control/system.slice.d/50-AllowedCPUs.conf"],
  ["a drop-in that sorts before it", "/etc/systemd/system/system.slice.d/10-cpus.conf", undefined],
  ["a later drop-in that keeps the host off the VM's CPUs itself", "/etc/systemd/system/system.slice.d/override.conf:0-1", undefined],
];

for (const [what, path, named] of OVERRIDING_DROP_INS) {
  test(`systemd: the admin's AllowedCPUs in ${what}: ${named ? "a warning says a daemon-reload gives the host the VM's CPUs back, and how to avoid it" : "no warning"}`, async () => {
    const { sim } = systemdHost({ "system.slice": "0-7" });
    const [file, cpus] = path.split(":");
    sim.file(file!, `[Slice]\nAllowedCPUs=${cpus ?? ""}\n`).file("/etc/systemd/system/user.slice.d/limits.conf", "[Slice]\nMemoryHigh=8G\n");
    const outcome = await prepare(sim, vmA);
    assert.is(outcome.code, 0, outcome.stderr);
    const warnings = fs.readFileSync(sim.resolve("/var/log/vmhook.log"), "utf8").match(/warn: isolate: .*daemon-reload.*/g) ?? [];
    if (!named) return assert.equal(warnings, []);
    assert.is(warnings.length, 1, warnings.join("\n"));
    assert.match(warnings[0]!, `system.slice's AllowedCPUs in ${named} takes over from vmhook's at the next systemctl daemon-reload`);
    assert.match(warnings[0]!, "/etc/systemd/system/system.slice.d/10-allowed-cpus.conf");
  });
}

// systemd puts a unit in the slice its Slice= names; vmhook narrows only system.slice, user.slice and init.scope. Another top-level
// slice may hold another manager's pinned work (kubelet's kubepods.slice) or VMs (a libvirt <partition>, /production: production.slice).
test("systemd: processes in other top-level slices that may run on the VM's CPUs are named in a warning; VMs' slices, idle groups and slices kept off those CPUs are not", async () => {
  const { sim, units } = systemdHost();
  const group = (name: string, populated: boolean, effective?: string) => {
    sim.file(`/sys/fs/cgroup/${name}/cgroup.events`, `populated ${populated ? 1 : 0}\nfrozen 0\n`);
    if (effective) sim.file(`/sys/fs/cgroup/${name}/cpuset.cpus.effective`, effective);
  };
  group("batch.slice", true); // an admin's Slice=batch.slice
  group("capsule.slice", true, "0-7"); // systemd 256's capsules
  group("kubepods.slice", true, "0-1"); // kept off the VM's CPUs by its own AllowedCPUs
  group("dev-hugepages.mount", false); // mount units sit at the top too, without processes
  group("machine.slice", true);
  group("production.slice", true); // a libvirt <partition>: machined's scopes in it are VMs'
  sim.dir("/sys/fs/cgroup/production.slice/machine-qemu\\x2d1\\x2dother.scope");
  const before = sim.snapshot();
  const outcome = await prepare(sim, vmA);
  assert.is(outcome.code, 0, outcome.stderr);
  const warnings = fs.readFileSync(sim.resolve("/var/log/vmhook.log"), "utf8").match(/warn: isolate: .*top-level.*/g) ?? [];
  assert.is(warnings.length, 1, warnings.join("\n"));
  assert.match(warnings[0]!, "processes in batch.slice, capsule.slice keep running on CPU 2-3 too: vmhook keeps only system.slice, user.slice, init.scope off them");
  assert.match(warnings[0]!, "with its own AllowedCPUs, e.g. systemctl set-property batch.slice AllowedCPUs=0-1,4-7");
  assert.not.ok(systemctlCalls(sim).some((call) => /batch|capsule|kubepods|production/.test(call)), "other slices are left alone");
  assert.equal(units, { "system.slice": "0-1,4-7", "user.slice": "0-1,4-7", "init.scope": "0-1,4-7" });
  // vmhook doctor says the same, and names a slice made after the start too, which prepare could not
  group("late.slice", true);
  const finding = (await runDoctor(sim, { file: "vmA.xml", xml: domainXml(vmA) })).domain!.findings.find((found) => found.check === "isolate slices");
  assert.equal([finding?.status, finding?.reason.replace(/: vmhook keeps .*/, "")], ["warn", "processes in batch.slice, capsule.slice, late.slice keep running on CPU 2-3 too"]);
  assert.match(finding?.fix ?? "", "systemctl set-property batch.slice AllowedCPUs=0-1,4-7");
  fs.rmSync(sim.resolve("/sys/fs/cgroup/late.slice"), { recursive: true });
  assert.is((await release(sim, vmA)).code, 0);
  assertClean(sim, before);
});

// As systemd when its cpuset.cpus write fails (it logs "Failed to set 'cpuset.cpus' attribute"): set-property succeeds, the property shows
// the value, the cgroup keeps its CPUs. Not seen on Linux 6.1 (a cpuset partition beside the unit was taken, and invalidated, see above).
test("systemd: AllowedCPUs that systemd took but could not write to the unit's cgroup fails the start, naming the unit, both values and where systemd says why, and the units get their values back; the start used to succeed with system.slice still on the VM's CPUs", async () => {
  const { sim, units } = systemdHost();
  const systemctl = sim.execHandler("systemctl")!;
  sim.onExec("systemctl", (args, host, options) => {
    const cgroup = sim.readTrimmed("/sys/fs/cgroup/system.slice/cpuset.cpus") ?? "";
    const result = systemctl(args, host, options);
    if (args[0] === "set-property" && args[2] === "system.slice" && args[3] !== "AllowedCPUs=") sim.file("/sys/fs/cgroup/system.slice/cpuset.cpus", cgroup);
    return result;
  });
  const before = sim.snapshot();
  const outcome = await prepare(sim, vmA);
  assert.is(outcome.code, 1);
  assert.match(
    outcome.stderr.split("\n")[0]!,
    'isolate: systemd took AllowedCPUs=0-1,4-7 for system.slice, but /sys/fs/cgroup/system.slice/cpuset.cpus is "": systemd could not write it (journalctl -b _PID=1 says why: "Failed to set \'cpuset.cpus\' attribute …"), so system.slice would still run on the VM\'s CPUs',
  );
  assert.equal(units, { "system.slice": "", "user.slice": "", "init.scope": "" });
  assertClean(sim, before);
});

test("systemd: a failing systemctl aborts the start and the units get their values back", async () => {
  const { sim, units } = systemdHost({ "system.slice": "0-7" });
  sim.onExec("systemctl", (args) => {
    if (args[0] === "show") return { stdout: `AllowedCPUs=${units[args[3]!]}\n` };
    if (args[2] === "init.scope" && args[3] !== "AllowedCPUs=") return { status: 1, stderr: "Failed to set unit properties on init.scope: Access denied\n" };
    units[args[2]!] = args[3]!.replace(/^AllowedCPUs=/, "");
    sim.file(`/sys/fs/cgroup/${args[2]}/cpuset.cpus`, units[args[2]!]!); // as systemd, before set-property answers
    return {};
  });
  const before = sim.snapshot();
  const outcome = await prepare(sim, vmA);
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, /systemctl set-property --runtime init.scope AllowedCPUs=0-1,4-7 failed: Failed to set unit properties on init.scope/);
  assert.equal(units, { "system.slice": "0-7", "user.slice": "", "init.scope": "" });
  assert.ok(systemctlCalls(sim).includes("set-property --runtime system.slice AllowedCPUs=0-7"), "system.slice got its value back");
  assertClean(sim, before);
});

test("systemd: a set-property refused at the first unit changed nothing: the start fails saying 0 changes were undone, and the rollback runs no set-property on the units it never touched (each would leave systemd wanting a daemon-reload); it used to count 1 and set user.slice and init.scope", async () => {
  const { sim } = systemdHost();
  const systemctl = sim.execHandler("systemctl")!;
  sim.onExec("systemctl", (args, host, options) =>
    args[0] === "set-property" && args[2] === "system.slice" ? { status: 1, stderr: "Failed to set unit properties on system.slice: Access denied\n" } : systemctl(args, host, options),
  );
  const before = sim.snapshot();
  const outcome = await prepare(sim, vmA);
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, /systemctl set-property --runtime system.slice AllowedCPUs=0-1,4-7 failed: Failed to set unit properties on system.slice: Access denied/);
  assert.match(outcome.stderr, "the host was left as it was (0 change(s) undone), so there is nothing to recover");
  assert.equal(systemctlCalls(sim).filter((call) => call.startsWith("set-property")), ["set-property --runtime system.slice AllowedCPUs=0-1,4-7"]);
  assertClean(sim, before);
});

test("systemd: a set-property refused at the first unit, and /run full (ENOSPC) as the journal drops that step: the start fails naming the set-property failure, not the journal write, which the log names; the failure used to be the ENOSPC alone", async () => {
  const { sim } = systemdHost();
  const systemctl = sim.execHandler("systemctl")!;
  let refusedAt = false;
  sim.onExec("systemctl", (args, host, options) => {
    if (args[0] !== "set-property" || args[2] !== "system.slice") return systemctl(args, host, options);
    refusedAt = true;
    return { status: 1, stderr: "Failed to set unit properties on system.slice: Access denied\n" };
  });
  const createFile = sim.createFile.bind(sim);
  let full = false;
  sim.createFile = (file: string, text: string, mode?: number) => {
    // The journal's write that drops the step, the first one after the refusal.
    if (refusedAt && !full && file === `${paths.journal(vmA.uuid)}.tmp`) {
      full = true;
      throw Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" });
    }
    createFile(file, text, mode);
  };
  const before = sim.snapshot();
  const outcome = await prepare(sim, vmA);
  sim.createFile = createFile;
  assert.ok(full);
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, /systemctl set-property --runtime system.slice AllowedCPUs=0-1,4-7 failed: Failed to set unit properties on system.slice: Access denied/, outcome.stderr);
  assert.match(outcome.stderr, "the host was left as it was (0 change(s) undone), so there is nothing to recover");
  assert.match(sim.read(paths.log), /isolate: .*: the journal could not drop it \(it changed nothing\): cannot write \S+ \(ENOSPC/);
  assertClean(sim, before);
});

// libvirt runs every vCPU, the emulator and I/O threads without a pin of their own on <vcpu cpuset> (qemuProcessSetupPid).
test("<vcpu cpuset> without <cputune>: the VM's CPUs are that cpuset, kept from the host", async () => {
  const { sim, units } = systemdHost();
  const before = sim.snapshot();
  const outcome = await prepare(sim, { ...vmA, pins: [], emulatorpin: undefined, vcpuCpuset: "2-3" });
  assert.is(outcome.code, 0, outcome.stderr);
  assert.equal(units, { "system.slice": "0-1,4-7", "user.slice": "0-1,4-7", "init.scope": "0-1,4-7" });
  assert.is((await release(sim, vmA)).code, 0);
  assertClean(sim, before);
});

test("<vcpu cpuset> beside a <vcpupin>: the emulator, which has no pin, runs there too, and those CPUs are kept from the host", async () => {
  const { sim, units } = systemdHost();
  const outcome = await prepare(sim, { ...vmA, pins: ["2"], emulatorpin: undefined, vcpuCpuset: "3-4" });
  assert.is(outcome.code, 0, outcome.stderr);
  assert.equal(units, { "system.slice": "0-1,5-7", "user.slice": "0-1,5-7", "init.scope": "0-1,5-7" });
});

test("<vcpu placement='auto'>: numad picks the CPUs as the domain starts and libvirt ignores its cpuset, which is not taken for the VM's", async () => {
  const sim = baseHost().file("/proc/1/comm", "init");
  const before = sim.snapshot();
  const xml = domainXml({ ...vmA, pins: [], emulatorpin: undefined, vcpuCpuset: "2-3" }).replace("<vcpu ", "<vcpu placement=\"auto\" ");
  const outcome = await runHookEvent(sim, "prepare", "begin", xml, vmA.name);
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, /has no host-cpus and the domain pins no CPUs/);
  assertClean(sim, before);
});

test("cgroup v2 without systemd: +cpuset in the root, cpuset.cpus of host groups, machine untouched, all undone", async () => {
  const sim = cgroupHost();
  const before = sim.snapshot();
  const outcome = await prepare(sim, vmA);
  assert.is(outcome.code, 0, outcome.stderr);
  assert.is(read(sim, "/sys/fs/cgroup/cgroup.subtree_control"), "cpu memory pids cpuset");
  assert.is(read(sim, "/sys/fs/cgroup/system.slice/cpuset.cpus"), "0-1,4-7");
  assert.is(read(sim, "/sys/fs/cgroup/user/cpuset.cpus"), "0-1,4-7");
  assert.is(read(sim, "/sys/fs/cgroup/machine/cpuset.cpus"), "");
  assert.not.ok(sim.writes.some((w) => w.path.startsWith("/sys/fs/cgroup/machine/")));
  assert.equal(sim.execs, []);

  assert.is((await release(sim, vmA)).code, 0);
  assertClean(sim, before);
});

// Without systemd libvirt puts a domain with <resource><partition>/vms</partition> in /sys/fs/cgroup/vms.partition (virCgroupSetPartitionSuffix),
// which stays after the VM: narrowing it would move every VM started there onto the host's CPUs.
test("cgroup v2 without systemd: libvirt's partition groups (<resource><partition>: NAME.partition) are VMs', left alone", async () => {
  const sim = cgroupHost();
  sim.file("/sys/fs/cgroup/vms.partition/cgroup.procs", "");
  const before = sim.snapshot();
  const outcome = await prepare(sim, vmA);
  assert.is(outcome.code, 0, outcome.stderr);
  assert.is(read(sim, "/sys/fs/cgroup/user/cpuset.cpus"), "0-1,4-7");
  assert.is(read(sim, "/sys/fs/cgroup/vms.partition/cpuset.cpus"), "");
  assert.not.ok(sim.writes.some((w) => w.path.startsWith("/sys/fs/cgroup/vms.partition/")));
  assert.is((await release(sim, vmA)).code, 0);
  assertClean(sim, before);
});

test("cgroup v2 without systemd: cpuset already enabled and a group's own cpuset.cpus narrowed, then restored", async () => {
  const sim = cgroupHost();
  sim.file("/sys/fs/cgroup/cgroup.subtree_control", "cpuset cpu");
  for (const group of ["system.slice", "user", "machine"]) sim.file(`/sys/fs/cgroup/${group}/cpuset.cpus`, "\n");
  sim.file("/sys/fs/cgroup/user/cpuset.cpus", "3-6");
  const before = sim.snapshot();
  assert.is((await prepare(sim, vmA)).code, 0);
  assert.is(read(sim, "/sys/fs/cgroup/user/cpuset.cpus"), "4-6");
  assert.is(read(sim, "/sys/fs/cgroup/system.slice/cpuset.cpus"), "0-1,4-7");
  assert.is((await release(sim, vmA)).code, 0);
  // system.slice has a process: the kernel refuses "" there (ENOSPC), so it gets all of the root's CPUs, which means the same.
  assert.is(read(sim, "/sys/fs/cgroup/system.slice/cpuset.cpus"), "0-7");
  sim.file("/sys/fs/cgroup/system.slice/cpuset.cpus", "\n");
  assertClean(sim, before);
});

/** An admin's cpuset partition rt holding CPU 6, cpuset enabled in the root: the root's effective CPUs leave 6 out. */
function withPartition(sim: SimHost, group: string): SimHost {
  sim.file("/sys/fs/cgroup/cpuset.cpus.effective", "0-5,7");
  sim.file(`/sys/fs/cgroup/${group}/cgroup.procs`, "321").file(`/sys/fs/cgroup/${group}/cpuset.cpus`, "6").file(`/sys/fs/cgroup/${group}/cpuset.cpus.partition`, "root");
  return sim;
}

test("cgroup v2 without systemd: a cpuset partition (cpuset.cpus.partition root) keeps its CPU and stays valid; the host groups get the root's CPUs less the VM's; it used to give them the partition's CPU too, which made the kernel invalidate the partition", async () => {
  const sim = withPartition(cgroupHost(), "rt");
  sim.file("/sys/fs/cgroup/cgroup.subtree_control", "cpuset cpu");
  for (const group of ["system.slice", "user", "machine"]) sim.file(`/sys/fs/cgroup/${group}/cpuset.cpus`, "\n");
  const before = sim.snapshot();
  const outcome = await prepare(sim, vmA);
  assert.is(outcome.code, 0, outcome.stderr);
  assert.is(read(sim, "/sys/fs/cgroup/rt/cpuset.cpus.partition"), "root");
  assert.is(read(sim, "/sys/fs/cgroup/system.slice/cpuset.cpus"), "0-1,4-5,7");
  assert.is(read(sim, "/sys/fs/cgroup/user/cpuset.cpus"), "0-1,4-5,7");
  assert.not.ok(sim.writes.some((w) => w.path.startsWith("/sys/fs/cgroup/rt/")), "the partition is never written");
  assert.is((await release(sim, vmA)).code, 0);
  assert.is(read(sim, "/sys/fs/cgroup/rt/cpuset.cpus.partition"), "root");
  // system.slice has a process: the kernel refuses "" there (ENOSPC), so it gets the root's CPUs, which means the same.
  assert.is(read(sim, "/sys/fs/cgroup/system.slice/cpuset.cpus"), "0-5,7");
  sim.file("/sys/fs/cgroup/system.slice/cpuset.cpus", "\n");
  assertClean(sim, before);
});

test("systemd: a cpuset partition beside the slices keeps its CPU: AllowedCPUs leaves it out (systemd would only log the kernel's refusal, or the partition be invalidated)", async () => {
  const { sim, units } = systemdHost();
  withPartition(sim, "rt.slice");
  const before = sim.snapshot();
  assert.is((await prepare(sim, vmA)).code, 0);
  assert.equal(units, { "system.slice": "0-1,4-5,7", "user.slice": "0-1,4-5,7", "init.scope": "0-1,4-5,7" });
  assert.is((await release(sim, vmA)).code, 0);
  assertClean(sim, before);
});

test("a VM that would leave the host's groups only CPUs a cpuset partition holds is refused, naming the partition; nothing changed", async () => {
  const sim = withPartition(cgroupHost(), "rt");
  sim.file("/sys/fs/cgroup/cpuset.cpus.effective", "0-5");
  sim.file("/sys/fs/cgroup/rt/cpuset.cpus", "6-7");
  const before = sim.snapshot();
  const outcome = await prepare(sim, { ...vmA, pins: ["0-5"], emulatorpin: undefined });
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, /the host keeps only CPU 6-7, and the cpuset partition \/sys\/fs\/cgroup\/rt \(CPU 6-7\) holds them, .*keep a CPU outside the partitions for the host/);
  assertClean(sim, before);
});

test("cgroup v2 without systemd: a group's cpuset.cpus that cannot be read refuses at prepare; it was taken as empty and \"restored\" to empty", async () => {
  const sim = cgroupHost();
  sim.file("/sys/fs/cgroup/cgroup.subtree_control", "cpuset cpu");
  for (const group of ["system.slice", "user", "machine"]) sim.file(`/sys/fs/cgroup/${group}/cpuset.cpus`, "\n");
  sim.file("/sys/fs/cgroup/user/cpuset.cpus", "3-6").failRead("/sys/fs/cgroup/user/cpuset.cpus", "EIO");
  const before = sim.snapshot();
  const outcome = await prepare(sim, vmA);
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, "cannot read /sys/fs/cgroup/user/cpuset.cpus (EIO)");
  assert.equal(sim.writes, []);
  assertClean(sim, before);
});

test("cgroup v2 without systemd: a child group that enabled cpuset itself keeps it on in the root, with a warning", async () => {
  const sim = cgroupHost();
  const before = sim.snapshot();
  assert.is((await prepare(sim, vmA)).code, 0);
  sim.failWrite("/sys/fs/cgroup/cgroup.subtree_control", "EBUSY");
  assert.is((await release(sim, vmA)).code, 0);
  assert.match(fs.readFileSync(sim.resolve("/var/log/vmhook.log"), "utf8"), /warn: isolate: left cpuset enabled in \/sys\/fs\/cgroup\/cgroup.subtree_control/);
  assert.is(read(sim, "/sys/fs/cgroup/system.slice/cpuset.cpus"), "0-7", "no CPU stays fenced off");
  assert.is(read(sim, "/sys/fs/cgroup/user/cpuset.cpus"), "");
  assert.equal(sim.stateFiles(), []);
  sim.clearFailures();
  const after = sim.snapshot();
  assert.equal(Object.keys(after).filter((key) => after[key] !== before[key]).sort(), [
    "/sys/fs/cgroup/cgroup.subtree_control",
    "/sys/fs/cgroup/machine/cpuset.cpus",
    "/sys/fs/cgroup/system.slice/cpuset.cpus",
    "/sys/fs/cgroup/user/cpuset.cpus",
  ]);
});

test("cgroup v2 without systemd: processes left in the root cgroup, which no cpuset restricts, are named in a warning (kernel threads and init aside)", async () => {
  const sim = cgroupHost().file("/sys/fs/cgroup/cgroup.procs", "1\n2\n812\n");
  sim.file("/proc/1/cmdline", "init\0").file("/proc/2/cmdline", "").file("/proc/2/comm", "kthreadd");
  sim.file("/proc/812/cmdline", "/usr/bin/Xorg\0:0\0").file("/proc/812/comm", "Xorg");
  const before = sim.snapshot();
  assert.is((await prepare(sim, vmA)).code, 0);
  const log = fs.readFileSync(sim.resolve("/var/log/vmhook.log"), "utf8");
  assert.match(log, /warn: isolate: 1 process\(es\) in the root cgroup keep running on CPUs 2-3 too, as cgroup v2 cannot restrict the root group: 812 \(Xorg\)/);
  assert.not.match(log, /kthreadd|\b1 \(init/);
  assert.is((await release(sim, vmA)).code, 0);
  assertClean(sim, before);
});

// SMT: two threads of a core share its execution units and caches; the kernel lists a CPU's threads in topology/thread_siblings_list.
/** 8 CPUs as 4 cores of two threads, numbered as Linux does on most x86 hosts: CPU N and N+4 are one core. */
const withSmtPairs = (sim: SimHost) => {
  for (let cpu = 0; cpu < 8; cpu++) sim.file(`/sys/devices/system/cpu/cpu${cpu}/topology/thread_siblings_list`, `${cpu % 4},${(cpu % 4) + 4}`);
  return sim;
};
const smtWarnings = (sim: SimHost) => (fs.readFileSync(sim.resolve("/var/log/vmhook.log"), "utf8").match(/warn: isolate: CPU .* (shares a core|share cores) .*/g) ?? []);

const SPLIT_CORES: [string, Partial<VmSpec>, string | undefined][] = [
  ["pinned to one thread of two cores", { pins: ["2", "3"], emulatorpin: "2-3" }, "CPU 2-3 of this VM share cores with CPU 6-7, which the host keeps"],
  ["pinned to both threads of its cores", { pins: ["2", "3", "6", "7"], emulatorpin: "2-3" }, undefined],
  ["with host-cpus keeping whole cores", { isolate: 'host-cpus="0-1,4-5"', pins: [], emulatorpin: undefined }, undefined],
  ["with host-cpus keeping one thread of a core it isolates", { isolate: 'host-cpus="0-1,4-6"', pins: [], emulatorpin: undefined }, "CPU 2 of this VM shares a core with CPU 6, which the host keeps"],
];

for (const [what, spec, warning] of SPLIT_CORES) {
  test(`SMT: a VM ${what}: ${warning ? "a warning names the host's threads on the VM's cores" : "no warning"}, and the VM starts`, async () => {
    const sim = withSmtPairs(cgroupHost());
    const outcome = await prepare(sim, { ...vmA, ...spec });
    assert.is(outcome.code, 0, outcome.stderr);
    const warnings = smtWarnings(sim);
    if (warning) {
      assert.is(warnings.length, 1, warnings.join("\n"));
      assert.match(warnings[0]!, warning);
    } else assert.equal(warnings, []);
  });
}

// irqbalance keeps IRQs off only the CPUs of IRQBALANCE_BANNED_CPUS/_CPULIST, or else those isolcpus= and nohz_full= isolate (setup_banned_cpus):
// every rebalance may move an IRQ back onto the VM's CPUs.
const withIrqbalance = (sim: SimHost, environment: string[] = []) =>
  sim.file("/proc/905/comm", "irqbalance").file("/proc/905/environ", ["PATH=/usr/sbin:/usr/bin", ...environment].map((entry) => `${entry}\0`).join(""));

test('irqs="yes" with irqbalance running and not banned from the VM\'s CPUs: prepare refuses, naming it, the CPUs and the fix, host untouched', async () => {
  const sim = withIrqbalance(cgroupHost(), ["IRQBALANCE_ARGS="]);
  const before = sim.snapshot();
  const outcome = await prepare(sim, { ...vmA, isolate: 'irqs="yes"' });
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, /irqs="yes", but irqbalance \(pid 905\) runs and moves IRQs back onto CPU 2-3 when it rebalances.*IRQBALANCE_BANNED_CPULIST=2-3/);
  assertClean(sim, before);
});

// Setting IRQBALANCE_BANNED_CPULIST ends the isolcpus=/nohz_full= ban, and IRQBALANCE_BANNED_CPUS, when set, wins over it:
// the line to add keeps what irqbalance bans already, in the variable it reads.
const ADVICE: [string, (sim: SimHost) => SimHost, string][] = [
  ["IRQBALANCE_BANNED_CPUS set (tuned's cpu-partitioning), which irqbalance reads before _CPULIST", (sim) => withIrqbalance(sim, ["IRQBALANCE_BANNED_CPUS=00000040"]), "IRQBALANCE_BANNED_CPUS=4c"],
  ["IRQBALANCE_BANNED_CPULIST set", (sim) => withIrqbalance(sim, ["IRQBALANCE_BANNED_CPULIST=6"]), "IRQBALANCE_BANNED_CPULIST=2-3,6"],
  ["isolcpus= banned by default", (sim) => withIrqbalance(sim).file("/sys/devices/system/cpu/isolated", "6"), "IRQBALANCE_BANNED_CPULIST=2-3,6"],
];

for (const [what, setUp, line] of ADVICE) {
  test(`irqs="yes" with irqbalance banning other CPUs (${what}): the refusal's line bans the VM's CPUs and keeps those, in the variable irqbalance reads`, async () => {
    const sim = setUp(cgroupHost());
    const outcome = await prepare(sim, { ...vmA, isolate: 'irqs="yes"' });
    assert.is(outcome.code, 1, outcome.stderr);
    assert.match(outcome.stderr.split("\n")[0]!, `ban them: ${line} in its environment file`);
  });
}

const BANNING: [string, (sim: SimHost) => SimHost][] = [
  ["IRQBALANCE_BANNED_CPULIST", (sim) => withIrqbalance(sim, ["IRQBALANCE_BANNED_CPULIST=2-5"])],
  ["IRQBALANCE_BANNED_CPUS (a mask, older irqbalance)", (sim) => withIrqbalance(sim, ["IRQBALANCE_BANNED_CPUS=0000000c"])],
  ["isolcpus= and nohz_full=, banned when no list is given", (sim) => withIrqbalance(sim).file("/sys/devices/system/cpu/isolated", "2").file("/sys/devices/system/cpu/nohz_full", "3")],
];

for (const [what, setUp] of BANNING) {
  test(`irqs="yes" with irqbalance banned from the VM's CPUs (${what}): the IRQs move`, async () => {
    const sim = setUp(cgroupHost());
    const outcome = await prepare(sim, { ...vmA, isolate: 'irqs="yes"' });
    assert.is(outcome.code, 0, outcome.stderr);
    assert.is(read(sim, "/proc/irq/17/smp_affinity_list"), read(sim, "/sys/fs/cgroup/system.slice/cpuset.cpus"));
  });
}

test('irqs="yes" required="no" with irqbalance running: a warning, the VM starts, the IRQs are left to irqbalance', async () => {
  const sim = withIrqbalance(cgroupHost());
  const outcome = await prepare(sim, { ...vmA, isolate: 'irqs="yes" required="no"' });
  assert.is(outcome.code, 0, outcome.stderr);
  assert.match(fs.readFileSync(sim.resolve("/var/log/vmhook.log"), "utf8"), /warn: isolate: irqs="yes", but irqbalance \(pid 905\) runs.*skipped because of required="no"/);
  assert.is(read(sim, "/proc/irq/17/smp_affinity_list"), "3");
  assert.is(read(sim, "/sys/fs/cgroup/system.slice/cpuset.cpus"), "0-1,4-7");
});

for (const [what, startIrqbalance, cause] of [
  ["irqbalance started after the VM", true, "irqbalance (pid 905) runs now and does not ban CPU 2-3: its rebalances put IRQs there"],
  ["a hand's write, no irqbalance", false, "something moved it back since (irqbalance --oneshot, or a write to its smp_affinity_list)"],
] as const) {
  test(`irqs="yes": an IRQ moved back onto the running VM's CPUs (${what}) is named by vmhook doctor with the fix; the IRQ the kernel would not move is not; it used to say nothing of it`, async () => {
    const sim = cgroupHost();
    const a = { ...vmA, isolate: 'irqs="yes"' };
    assert.is((await prepare(sim, a)).code, 0);
    const irqFinding = async () => (await runDoctor(sim, { file: "vmA.xml", xml: domainXml(a) })).domain!.findings.find((found) => found.check === "isolate IRQs");
    assert.is(await irqFinding(), undefined, "none while they stay off");
    if (startIrqbalance) withIrqbalance(sim);
    sim.file("/proc/irq/16/smp_affinity_list", "2");
    const finding = await irqFinding();
    assert.is(finding?.status, "fail");
    assert.is(finding!.reason, `IRQ 16 is on CPU 2 again, which running VM vmA isolates: its irqs="yes" moved it off at the start, and ${cause}`);
    assert.is(finding!.fix, `${startIrqbalance ? "ban those CPUs from irqbalance as the isolate irqbalance finding says, or stop it; then " : ""}move it off: echo 0-1,4-7 > /proc/irq/16/smp_affinity_list`);
  });
}

test(`irqs="yes": the echo vmhook doctor gives for an IRQ back on the running VM's CPUs keeps it off the CPUs the VM runs on, also when its definition was edited since to pin others (for its next start); it used to give the CPUs the edited definition leaves, the running VM's among them`, async () => {
  const sim = cgroupHost();
  const a = { ...vmA, isolate: 'irqs="yes"' };
  assert.is((await prepare(sim, a)).code, 0);
  const edited = { ...a, pins: ["4", "5"], emulatorpin: "4-5" };
  sim.file("/proc/irq/16/smp_affinity_list", "2");
  const finding = (await runDoctor(sim, { file: "vmA.xml", xml: domainXml(edited) })).domain!.findings.find((found) => found.check === "isolate IRQs");
  assert.is(finding?.reason, `IRQ 16 is on CPU 2 again, which running VM vmA isolates: its irqs="yes" moved it off at the start, and something moved it back since (irqbalance --oneshot, or a write to its smp_affinity_list)`);
  assert.is(finding!.fix, "move it off: echo 0-1,4-7 > /proc/irq/16/smp_affinity_list");
});

test("governor, IRQs (one refusing) and the workqueue mask, with host-cpus", async () => {
  const sim = cgroupHost();
  const before = sim.snapshot();
  const vm = { ...vmA, isolate: 'host-cpus="0-1" governor="performance" workqueues="yes" irqs="yes"' };
  const outcome = await prepare(sim, vm);
  assert.is(outcome.code, 0, outcome.stderr);
  assert.is(read(sim, "/sys/fs/cgroup/system.slice/cpuset.cpus"), "0-1");
  assert.is(read(sim, "/sys/devices/virtual/workqueue/cpumask"), "3");
  assert.is(read(sim, "/proc/irq/16/smp_affinity_list"), "0-1");
  assert.is(read(sim, "/proc/irq/17/smp_affinity_list"), "0-1");
  assert.is(read(sim, "/proc/irq/0/smp_affinity_list"), "0-7", "IRQ 0 refused (EIO) and is left alone");
  assert.is(read(sim, "/proc/irq/default_smp_affinity"), "3", "IRQs set up later (QEMU's devices) start on the host CPUs too");
  // The governor goes to the VM's own (pinned) CPUs only.
  assert.is(read(sim, "/sys/devices/system/cpu/cpu2/cpufreq/scaling_governor"), "performance");
  assert.is(read(sim, "/sys/devices/system/cpu/cpu3/cpufreq/scaling_governor"), "performance");
  assert.is(read(sim, "/sys/devices/system/cpu/cpu4/cpufreq/scaling_governor"), "schedutil");
  assert.is((await release(sim, vm)).code, 0);
  assertClean(sim, before);
});

test("workqueue mask beyond 32 CPUs is written as comma-separated 32-bit words", async () => {
  const sim = cgroupHost().file("/sys/devices/system/cpu/present", "0-39").file("/sys/devices/system/cpu/online", "0-39");
  sim.file("/sys/devices/virtual/workqueue/cpumask", "ff,ffffffff");
  const before = sim.snapshot();
  const vm = { ...vmA, isolate: 'workqueues="yes"', pins: ["32", "33"], emulatorpin: undefined };
  assert.is((await prepare(sim, vm)).code, 0);
  assert.is(read(sim, "/sys/devices/virtual/workqueue/cpumask"), "fc,ffffffff");
  assert.is((await release(sim, vm)).code, 0);
  assertClean(sim, before);
});

/** systemd on the legacy hierarchy: no cgroup.controllers at /sys/fs/cgroup. */
function cgroupV1Host(): SimHost {
  const sim = baseHost().file("/proc/1/comm", "systemd");
  sim.remove("/sys/fs/cgroup/cgroup.controllers");
  return sim;
}

test("cgroup v1: a clear error at prepare, nothing changed", async () => {
  const sim = cgroupV1Host();
  sim.dir("/sys/fs/cgroup/cpuset");
  const before = sim.snapshot();
  const outcome = await prepare(sim, { ...vmA, isolate: 'irqs="yes"' });
  assert.is(outcome.code, 1);
  const first = outcome.stderr.split("\n")[0]!;
  assert.match(first, /needs the unified cgroup v2 hierarchy/);
  assert.match(first, /systemd\.unified_cgroup_hierarchy=1/);
  assert.match(first, /required="no"/);
  assertClean(sim, before);
});

/** systemd before 244 (RHEL 8 has 239): no AllowedCPUs, so show prints nothing for it and set-property refuses it. */
function systemdWithoutAllowedCpus(): SimHost {
  const sim = baseHost().file("/proc/1/comm", "systemd");
  sim.onExec("systemctl", (args) => {
    if (args[0] === "show") return {};
    if (args[0] === "set-property") return { status: 1, stderr: `Unknown assignment: ${args[3]}\n` };
    return { status: 1, stderr: `unexpected systemctl ${args.join(" ")}` };
  });
  return sim;
}

test("systemd without AllowedCPUs (before 244): a clear error at prepare naming the version needed, nothing changed, nothing left to recover", async () => {
  const sim = systemdWithoutAllowedCpus();
  const before = sim.snapshot();
  const outcome = await prepare(sim, vmA);
  assert.is(outcome.code, 1);
  const first = outcome.stderr.split("\n")[0]!;
  assert.match(first, "systemd on this host has no AllowedCPUs (systemd 244 or later has it)");
  assert.match(first, 'required="no"');
  assert.not.ok(systemctlCalls(sim).some((call) => call.startsWith("set-property")), "no unit is changed");
  assertClean(sim, before);
});

/** Hosts whose cgroups vmhook cannot fence, and the start of the warning required="no" turns the refusal into. */
const UNFENCEABLE: [string, () => SimHost, string][] = [
  ["cgroup v1", cgroupV1Host, "it needs the unified cgroup v2 hierarchy"],
  ["systemd without AllowedCPUs", systemdWithoutAllowedCpus, "systemd on this host has no AllowedCPUs"],
];

for (const [what, makeHost, warning] of UNFENCEABLE) {
  test(`${what} with required="no": a warning, the VM starts, the other settings still apply`, async () => {
    const sim = makeHost();
    const before = sim.snapshot();
    const vm = { ...vmA, isolate: 'required="no" irqs="yes"' };
    const outcome = await prepare(sim, vm);
    assert.is(outcome.code, 0, outcome.stderr);
    assert.match(fs.readFileSync(sim.resolve("/var/log/vmhook.log"), "utf8"), new RegExp(`warn: isolate: ${warning}.*skipped because of required="no"`));
    assert.is(read(sim, "/proc/irq/16/smp_affinity_list"), "0-1,4-7");
    assert.not.ok(systemctlCalls(sim).some((call) => call.startsWith("set-property")), "no unit is changed");
    assert.is((await release(sim, vm)).code, 0);
    assertClean(sim, before);
  });
}

// Linux keeps an offline CPU's cpufreq policy: its files answer EBUSY, and coming online it gets the governor it had (last_governor).
test("a VM's CPU taken offline while it runs: its release puts back every governor it can and keeps that CPU's with a warning; another VM with a governor starts and stops; once the CPU is online, vmhook recover puts it back; the release used to fail, and every later start with a governor with it", async () => {
  const sim = cgroupHost();
  const before = sim.snapshot();
  const governor = (cpu: number) => `/sys/devices/system/cpu/cpu${cpu}/cpufreq/scaling_governor`;
  let offline = false;
  sim.onWrite(governor(3), (data, hostPath, host) => {
    if (offline) throw Object.assign(new Error(`EBUSY: ${hostPath}`), { code: "EBUSY" });
    fs.writeFileSync(host.resolve(hostPath), `${data}\n`);
  });
  const a = { ...vmA, isolate: 'governor="performance"' };
  const b = { ...vmB, isolate: 'governor="performance"', pins: ["5"] };
  assert.is((await prepare(sim, a)).code, 0);
  offline = true;
  sim.file("/sys/devices/system/cpu/online", "0-2,4-7");

  const released = await release(sim, a);
  assert.is(released.code, 0, released.stderr);
  assert.not.match(released.stderr, "could not be undone");
  assert.is(read(sim, governor(2)), "schedutil");
  assert.match(fs.readFileSync(sim.resolve("/var/log/vmhook.log"), "utf8"), /isolate: cannot write back "schedutil" to \/sys\/devices\/system\/cpu\/cpu3\/cpufreq\/scaling_governor \(CPU 3 is offline\) now; vmhook keeps it/);
  assert.equal(sim.stateFiles(), ["shared/isolate.json"]);
  assert.match((await cli(["status"], sim)).stdout, "vmhook recover would put back the governor values saved before the first VM (1: /sys/devices/system/cpu/cpu3/cpufreq/scaling_governor)");

  const started = await prepare(sim, b);
  assert.is(started.code, 0, started.stderr);
  assert.is(read(sim, governor(5)), "performance");
  assert.is((await release(sim, b)).code, 0);
  assert.equal(sim.stateFiles(), ["shared/isolate.json"]);

  // Online again with the governor it had when it went offline.
  offline = false;
  sim.file("/sys/devices/system/cpu/online", "0-7");
  const recovered = await cli(["recover"], sim);
  assert.is(recovered.code, 0, recovered.stderr);
  sim.remove("/var/log/vmhook.log");
  assertClean(sim, before);
});

test("a governor the CPUs do not offer is an error naming the available ones", async () => {
  const sim = cgroupHost();
  const before = sim.snapshot();
  const outcome = await prepare(sim, { ...vmA, isolate: 'governor="ondemand"' });
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, /governor="ondemand" is not available for CPU 2 \(available: performance powersave schedutil\)/);
  assertClean(sim, before);
});

const BAD_CONFIGS: [string, Partial<VmSpec>, RegExp, { online?: string }?][] = [
  ["a CPU that does not exist", { isolate: 'host-cpus="0-1,9"' }, /host-cpus: CPU 9 does not exist on this host \(present: 0-7\)/],
  ["an offline CPU in host-cpus", { isolate: 'host-cpus="0,6"' }, /host-cpus: CPU 6 is offline \(online: 0-5\)/, { online: "0-5" }],
  ["an offline pinned CPU", { pins: ["2", "7"] }, /<cputune> \(vcpupin, emulatorpin, iothreadpin\) and <vcpu cpuset>: CPU 7 is offline \(online: 0-5\)/, { online: "0-5" }],
  ["a cpuset that is not one", { isolate: 'host-cpus="0-x"' }, /host-cpus="0-x" has "0-x", which is not a CPU/],
  ["an empty host set", { isolate: 'host-cpus="1,^1"' }, /host-cpus="1,\^1" leaves no CPU/],
  ["host-cpus that keep every CPU", { isolate: 'host-cpus="0-5"', pins: [], emulatorpin: undefined }, /host-cpus="0-5" keeps every online CPU \(0-5\) for the host/, { online: "0-5" }],
  ["host-cpus that include a pinned CPU", { isolate: 'host-cpus="0-2"' }, /host-cpus="0-2" includes CPU 2, which the domain pins the VM to \(<cputune> or <vcpu cpuset>\)/],
  ["no pins and no host-cpus", { pins: [], emulatorpin: undefined }, /has no host-cpus and the domain pins no CPUs \(<cputune> or <vcpu cpuset>\)/],
  ["host-cpus that include a CPU of <vcpu cpuset>", { isolate: 'host-cpus="0-1,4"', pins: [], emulatorpin: undefined, vcpuCpuset: "4-5" }, /host-cpus="0-1,4" includes CPU 4, which the domain pins the VM to \(<cputune> or <vcpu cpuset>\)/],
  ["an offline CPU in <vcpu cpuset>", { pins: [], emulatorpin: undefined, vcpuCpuset: "2,7" }, /<cputune> \(vcpupin, emulatorpin, iothreadpin\) and <vcpu cpuset>: CPU 7 is offline \(online: 0-5\)/, { online: "0-5" }],
  ["pins that leave the host nothing", { pins: ["0-3", "4-7"] }, /pinning CPUs 0-7 \(<cputune> or <vcpu cpuset>\) leaves the host no online CPU, but the host policy keeps at least 1 CPU\(s\) for the host/],
  ["an unknown attribute", { isolate: 'host-cpu="0"' }, /has unknown attribute host-cpu; allowed: host-cpus, governor/],
  ["a bad yes/no", { isolate: 'irqs="maybe"' }, /irqs="maybe" must be yes or no/],
];

for (const [what, spec, message, hostOptions] of BAD_CONFIGS) {
  test(`bad config: ${what} aborts prepare with the host untouched`, async () => {
    const sim = baseHost(hostOptions).file("/proc/1/comm", "init");
    const before = sim.snapshot();
    const outcome = await prepare(sim, { ...vmA, ...spec });
    assert.is(outcome.code, 1);
    assert.match(outcome.stderr.split("\n")[0]!, message);
    assertClean(sim, before);
  });
}

test("two VMs: the host set is recomputed on each prepare and release, originals come back with the last", async () => {
  const sim = cgroupHost();
  const before = sim.snapshot();
  const a = { ...vmA, isolate: 'workqueues="yes" irqs="yes" governor="performance"' };
  const b = { ...vmB, isolate: 'workqueues="yes" irqs="yes" governor="performance"' };
  const host = () => [read(sim, "/sys/fs/cgroup/system.slice/cpuset.cpus"), read(sim, "/sys/devices/virtual/workqueue/cpumask"), read(sim, "/proc/irq/16/smp_affinity_list")];
  const governors = () => [0, 1, 2, 3, 4, 5, 6, 7].map((cpu) => read(sim, `/sys/devices/system/cpu/cpu${cpu}/cpufreq/scaling_governor`)![0]).join("");

  assert.is((await prepare(sim, a)).code, 0);
  assert.equal(host(), ["0-1,4-7", "f3", "0-1,4-7"]);
  assert.is((await prepare(sim, b)).code, 0);
  assert.equal(host(), ["0-1,6-7", "c3", "0-1,6-7"]);
  assert.is(governors(), "ssppppss");
  // IRQ 17 was on CPU 3 before A: it stays on the host set, never on B's CPUs.
  assert.is(read(sim, "/proc/irq/17/smp_affinity_list"), "0-1,6-7");

  assert.is((await release(sim, a)).code, 0);
  assert.equal(host(), ["0-3,6-7", "cf", "0-3,6-7"]);
  assert.is(governors(), "ssssppss");
  assert.is(read(sim, "/proc/irq/17/smp_affinity_list"), "3", "IRQ 17 goes back to its CPU once no VM isolates it");
  assert.equal(sim.stateFiles(), [`${vmB.uuid}.json`, "shared/isolate.json"]);

  assert.is((await release(sim, b)).code, 0);
  assertClean(sim, before);
});

/** vmA starts, vmB starts, vmA stops, vmB stops: the three units' AllowedCPUs after each of the first three, all as before after the last. */
async function assertTwoVmsUnderSystemd(sim: SimHost, units: Record<string, string>, hostCpus: [string, string, string]): Promise<void> {
  const before = sim.snapshot();
  const steps = [() => prepare(sim, vmA), () => prepare(sim, vmB), () => release(sim, vmA)];
  for (const [index, step] of steps.entries()) {
    assert.is((await step()).code, 0);
    const cpus = hostCpus[index]!;
    assert.equal(units, { "system.slice": cpus, "user.slice": cpus, "init.scope": cpus });
  }
  assert.is((await release(sim, vmB)).code, 0);
  assert.equal(units, { "system.slice": "", "user.slice": "", "init.scope": "" });
  assertClean(sim, before);
}

test("two VMs under systemd: releasing the first recomputes AllowedCPUs without it", async () => {
  const { sim, units } = systemdHost();
  await assertTwoVmsUnderSystemd(sim, units, ["0-1,4-7", "0-1,6-7", "0-3,6-7"]);
});

test("a VM that does not allow overlap does not start on a running VM's CPUs, even one that allows it: the error names the CPU and the VM", async () => {
  const sim = cgroupHost();
  assert.is((await prepare(sim, { ...vmA, isolate: 'allow-overlap="yes"' })).code, 0);
  const afterA = sim.snapshot();
  const outcome = await prepare(sim, { ...vmB, pins: ["3", "4"] });
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, /CPU 3 of this VM is already isolated for running VM vmA; .* allow-overlap="yes"/);
  assert.equal(sim.snapshot(), afterA);
  assert.equal(sim.stateFiles(), [`${vmA.uuid}.json`, "shared/isolate.json"]);
});

test("vmhook doctor judges the isolate element beside the running VMs, as prepare does: a CPU another VM isolates, or none left for the host, fails with prepare's reason", async () => {
  const sim = cgroupHost();
  assert.is((await prepare(sim, vmA)).code, 0);
  const isolateFinding = async (vm: VmSpec) => (await runDoctor(sim, { file: `${vm.name}.xml`, xml: domainXml(vm) })).domain!.findings.find((found) => found.check === "isolate")!;
  const overlapping = await isolateFinding({ ...vmB, pins: ["3", "4"] });
  assert.is(overlapping.status, "fail");
  assert.is(overlapping.reason, "CPU 3 of this VM is already isolated for running VM vmA: prepare refuses it while they run");
  assert.is(overlapping.fix, 'pin the VMs to different CPUs, or set allow-overlap="yes" on <vmhook:isolate>');
  const rest = await isolateFinding({ ...vmB, pins: ["0", "1", "4", "5", "6", "7"] });
  assert.is(rest.status, "fail");
  assert.is(rest.reason, "starting it would leave the host no CPU: this VM isolates 0-1,4-7, running VMs vmA 2-3 (online: 0-7): prepare refuses it while they run");
  // vmA itself, running, is not beside itself
  assert.is((await isolateFinding(vmA)).status, "ok");
  assert.is((await isolateFinding(vmB)).status, "ok");
});

test('allow-overlap="yes" on both VMs: they share a CPU, and each release keeps the other\'s CPUs off the host', async () => {
  const sim = cgroupHost();
  const before = sim.snapshot();
  const a = { ...vmA, isolate: 'allow-overlap="yes"' };
  const b = { ...vmB, pins: ["3", "4"], isolate: 'allow-overlap="yes"' };
  assert.is((await prepare(sim, a)).code, 0);
  assert.is((await prepare(sim, b)).code, 0);
  assert.is(read(sim, "/sys/fs/cgroup/system.slice/cpuset.cpus"), "0-1,5-7");
  assert.is((await release(sim, a)).code, 0);
  assert.is(read(sim, "/sys/fs/cgroup/system.slice/cpuset.cpus"), "0-2,5-7");
  assert.is((await release(sim, b)).code, 0);
  assertClean(sim, before);
});

// An overlap needs every VM involved to allow it: B's author cannot put B on the CPUs A isolates for itself.
const INTRUDERS: [string, string, (sim: SimHost) => void][] = [
  ["A says nothing (allow-overlap defaults to no)", "", () => {}],
  ["A's claims were journaled by a vmhook that did not record allow-overlap", 'allow-overlap="yes"', (sim) => editStateFile(sim, paths.journal(vmA.uuid), (journal) => isolateEntries(journal).forEach((entry) => delete entry.undo.allowOverlap))],
];

for (const [what, aIsolate, edit] of INTRUDERS) {
  test(`B with allow-overlap="yes" does not start on CPUs of a running A that does not allow it (${what}): the refusal names A, the CPU and the fix`, async () => {
    const sim = cgroupHost();
    assert.is((await prepare(sim, { ...vmA, isolate: aIsolate })).code, 0);
    edit(sim);
    const afterA = sim.snapshot();
    const outcome = await prepare(sim, { ...vmB, pins: ["3", "4"], isolate: 'allow-overlap="yes"' });
    assert.is(outcome.code, 1);
    assert.match(outcome.stderr.split("\n")[0]!, /CPU 3 of this VM is isolated for running VM vmA, which does not allow overlap; pin the VMs to different CPUs, or set allow-overlap="yes" on vmA too/);
    assert.equal(sim.snapshot(), afterA, "A's CPU 3 stays off the host and off B");
    assert.equal(sim.stateFiles(), [`${vmA.uuid}.json`, "shared/isolate.json"]);
  });
}

test("a second VM that would leave the host no CPU names the running VMs", async () => {
  const sim = cgroupHost();
  assert.is((await prepare(sim, { ...vmA, pins: ["0-3"], emulatorpin: undefined })).code, 0);
  const afterA = sim.snapshot();
  const outcome = await prepare(sim, { ...vmB, pins: ["4-7"] });
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, /would leave the host no CPU: this VM isolates 4-7, running VMs vmA 0-3 \(online: 0-7\)/);
  assert.equal(sim.snapshot(), afterA);
});

// ---- CPUs the kernel command line isolates (isolcpus=): never the host's

/** A host booted with isolcpus= (and nohz_full=, which keeps processes scheduled there), as the kernel lists them in sysfs ("(null)": booted without nohz_full=). */
const bootIsolating = (sim: SimHost, isolcpus: string, nohzFull = "(null)") =>
  sim.file("/sys/devices/system/cpu/isolated", isolcpus).file("/sys/devices/system/cpu/nohz_full", nohzFull);

test("CPUs isolated at boot (isolcpus=) never join the host set: not at prepare, not when another VM's release recomputes it", async () => {
  const { sim, units } = systemdHost();
  bootIsolating(sim, "6-7", "5-7");
  await assertTwoVmsUnderSystemd(sim, units, ["0-1,4-5", "0-1", "0-3"]);
});

test("what the admin put on CPUs isolated at boot stays there: only the VM's CPUs are taken out, and what must move goes to the host's CPUs", async () => {
  const sim = bootIsolating(cgroupHost(), "6-7");
  sim.file("/proc/irq/18/smp_affinity_list", "6").file("/proc/irq/19/smp_affinity_list", "3,7");
  const before = sim.snapshot();
  const vm = { ...vmA, isolate: 'irqs="yes" workqueues="yes"' };
  assert.is((await prepare(sim, vm)).code, 0);
  assert.is(read(sim, "/proc/irq/18/smp_affinity_list"), "6", "an IRQ the admin pinned to a boot-isolated CPU the VM does not use");
  assert.is(read(sim, "/proc/irq/19/smp_affinity_list"), "7");
  assert.is(read(sim, "/proc/irq/16/smp_affinity_list"), "0-1,4-7", "allowed on 6-7 before, and still");
  assert.is(read(sim, "/proc/irq/17/smp_affinity_list"), "0-1,4-5", "on the VM's CPU 3 before: moved to the host's CPUs, not onto 6-7");
  assert.is(read(sim, "/sys/fs/cgroup/system.slice/cpuset.cpus"), "0-1,4-5", "a group without its own CPUs gets the host's");
  assert.is((await release(sim, vm)).code, 0);
  assertClean(sim, before);
});

test("CPUs isolated at boot do not count for the host: a VM that leaves the host only those is refused at prepare, naming them", async () => {
  const sim = bootIsolating(cgroupHost(), "2-7");
  const before = sim.snapshot();
  const outcome = await prepare(sim, { ...vmA, pins: ["0-1"], emulatorpin: undefined });
  assert.is(outcome.code, 1, `started; the host's groups got CPU ${read(sim, HOST_CPUS)}`);
  assert.match(outcome.stderr.split("\n")[0]!, "pinning CPUs 0-1 (<cputune> or <vcpu cpuset>) leaves the host no online CPU (CPU 2-7 isolated at boot by isolcpus=, where the host never runs)");
  assertClean(sim, before);
});

test("policy isolate.minHostCpus does not count CPUs isolated at boot, which the host never uses", async () => {
  const sim = bootIsolating(cgroupHost().file(paths.policy, JSON.stringify({ isolate: { minHostCpus: 3 } })), "4-7");
  const before = sim.snapshot();
  const outcome = await prepare(sim, vmA);
  assert.is(outcome.code, 1, `started; the host keeps only CPU ${read(sim, HOST_CPUS)}`);
  assert.match(outcome.stderr.split("\n")[0]!, "leaves the host only CPU 0-1 (CPU 4-7 isolated at boot by isolcpus=, where the host never runs), but the host policy keeps at least 3 CPU(s)");
  assertClean(sim, before);
});

test("a failure in a later step rolls back the earlier ones: nothing left behind", async () => {
  const sim = cgroupHost().failWrite("/sys/devices/virtual/workqueue/cpumask", "EPERM");
  const before = sim.snapshot();
  const outcome = await prepare(sim, { ...vmA, isolate: 'workqueues="yes" irqs="yes"' });
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, /cannot write "f3" to \/sys\/devices\/virtual\/workqueue\/cpumask/);
  // The workqueue step wrote nothing: one change was made, and undone. It used to count 2.
  assert.match(outcome.stderr, "the host was left as it was (1 change(s) undone), so there is nothing to recover");
  assert.ok(sim.writes.some((w) => w.path === "/sys/fs/cgroup/system.slice/cpuset.cpus" && w.data === "0-1,4-7\n"), "the cgroup step ran before the failure");
  assertClean(sim, before);
});

test("/run full (ENOSPC) as the second step is journaled: its apply never ran, so the rollback says 1 change undone, not 2 as it used to", async () => {
  const sim = cgroupHost();
  const before = sim.snapshot();
  const createFile = sim.createFile.bind(sim);
  let refused = false;
  sim.createFile = (file: string, text: string, mode?: number) => {
    // The first journal write naming the workqueue step: the one before its apply.
    if (!refused && file === `${paths.journal(vmA.uuid)}.tmp` && text.includes('"workqueue-mask"')) {
      refused = true;
      throw Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" });
    }
    createFile(file, text, mode);
  };
  const outcome = await prepare(sim, { ...vmA, isolate: 'workqueues="yes"' });
  assert.ok(refused);
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, "ENOSPC");
  assert.match(outcome.stderr, "the host was left as it was (1 change(s) undone), so there is nothing to recover");
  assert.not.ok(sim.writes.some((w) => w.path === "/sys/devices/virtual/workqueue/cpumask"), "the workqueue step never ran");
  assertClean(sim, before);
});

test("a second VM whose prepare fails leaves the first VM's isolation exactly as it was", async () => {
  const sim = cgroupHost();
  const a = { ...vmA, isolate: 'workqueues="yes" irqs="yes"' };
  assert.is((await prepare(sim, a)).code, 0);
  const afterA = sim.snapshot();
  // One refusal, as from a driver that was busy for a moment: the rollback's write then works.
  let failed = false;
  sim.onWrite("/proc/irq/16/smp_affinity_list", (data, hostPath, host) => {
    if (!failed && (failed = true)) throw Object.assign(new Error("EPERM: operation not permitted"), { code: "EPERM" });
    fs.writeFileSync(host.resolve(hostPath), `${data}\n`);
  });
  const outcome = await prepare(sim, { ...vmB, isolate: 'workqueues="yes" irqs="yes"' });
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, /cannot write "0-1,6-7" to \/proc\/irq\/16\/smp_affinity_list/);
  assert.ok(sim.writes.some((w) => w.path === "/sys/devices/virtual/workqueue/cpumask" && w.data === "c3\n"), "B's workqueue step ran before the failure");
  assert.equal(sim.snapshot(), afterA);
  assert.equal(sim.stateFiles(), [`${vmA.uuid}.json`, "shared/isolate.json"]);
});

test("an IRQ that takes A's narrowing but refuses B's gets its value from before A back once both VMs are gone, in either order", async () => {
  for (const order of [[vmA, vmB], [vmB, vmA]]) {
    const sim = cgroupHost().file("/proc/irq/18/smp_affinity_list", "0-7");
    // As an interrupt controller that reaches only CPUs 2-5: a list without any of them is refused (EINVAL).
    sim.onWrite("/proc/irq/18/smp_affinity_list", (data, hostPath, host) => {
      if (!parseKernelCpuList(data).some((cpu) => cpu >= 2 && cpu <= 5)) throw Object.assign(new Error("EINVAL: invalid argument"), { code: "EINVAL" });
      fs.writeFileSync(host.resolve(hostPath), `${data}\n`);
    });
    const before = sim.snapshot();
    const [a, b] = [vmA, vmB].map((vm) => ({ ...vm, isolate: 'irqs="yes"' }));
    assert.is((await prepare(sim, a!)).code, 0);
    assert.is(read(sim, "/proc/irq/18/smp_affinity_list"), "0-1,4-7");
    assert.is((await prepare(sim, b!)).code, 0);
    assert.is(read(sim, "/proc/irq/18/smp_affinity_list"), "0-1,4-7", "B's 0-1,6-7 was refused: left as it is");
    for (const vm of order) assert.is((await release(sim, { ...vm, isolate: 'irqs="yes"' })).code, 0);
    assertClean(sim, before);
  }
});

test('irqs="yes": an IRQ freed between listing /proc/irq and reading its affinity (another VM\'s vfio MSI-X going away) is skipped, the start goes on', async () => {
  const sim = cgroupHost().file("/proc/irq/40/smp_affinity_list", "0-7").failRead("/proc/irq/40/smp_affinity_list", "ENOENT");
  const before = sim.snapshot();
  const vm = { ...vmA, isolate: 'irqs="yes"' };
  const outcome = await prepare(sim, vm);
  assert.is(outcome.code, 0, outcome.stderr);
  assert.is(read(sim, "/proc/irq/16/smp_affinity_list"), "0-1,4-7");
  assert.not.ok(sim.writes.some((w) => w.path === "/proc/irq/40/smp_affinity_list"), "nothing written to the IRQ that is gone");
  assert.is((await release(sim, vm)).code, 0);
  assertClean(sim, before);
});

test("undo is idempotent: a release that crashed before updating the journal runs again harmlessly", async () => {
  const sim = cgroupHost();
  const before = sim.snapshot();
  const vm = { ...vmA, isolate: 'irqs="yes" workqueues="yes"' };
  assert.is((await prepare(sim, vm)).code, 0);
  const journal = sim.resolve(`/run/vmhook/${vm.uuid}.json`);
  const saved = fs.readFileSync(journal, "utf8");
  assert.is((await release(sim, vm)).code, 0);
  assertClean(sim, before);
  fs.writeFileSync(journal, saved);
  assert.is((await release(sim, vm)).code, 0);
  assertClean(sim, before);
});

test("vmhook plan lists exactly the steps prepare runs", async () => {
  const { sim } = systemdHost();
  const vm = { ...vmA, isolate: 'governor="performance" workqueues="yes" irqs="yes"' };
  assert.equal(await assertPlanIsPrepare(sim, domainXml(vm), vm.name), [
    "isolate: keep systemd's system.slice, user.slice, init.scope off CPUs 2-3",
    "isolate: keep unbound kernel workqueues off CPUs 2-3",
    "isolate: move IRQs off CPUs 2-3",
    "isolate: set the cpufreq governor of CPUs 2-3 to performance",
  ]);
});

// ---- the host policy counts every running VM

const HOST_CPUS = "/sys/fs/cgroup/system.slice/cpuset.cpus";

test("policy isolate.minHostCpus counts every running VM: B, within it alone, may not leave the host fewer CPUs together with A", async () => {
  const sim = cgroupHost().file(paths.policy, JSON.stringify({ isolate: { minHostCpus: 4 } }));
  const b = { ...vmB, pins: ["4", "5", "6"] };
  assert.is((await prepare(sim, vmA)).code, 0);
  assert.is(read(sim, HOST_CPUS), "0-1,4-7");
  const afterA = sim.snapshot();

  // Alone B would leave the host 0-3,7 (5 CPUs); with A running, 0-1,7 (3).
  const outcome = await prepare(sim, b);
  assert.is(outcome.code, 1, `B started; the host keeps only CPU ${read(sim, HOST_CPUS)}, below the policy's minimum of 4`);
  assert.match(outcome.stderr.split("\n")[0]!, "this VM (isolating 4-6) and running VM vmA (2-3) together leave the host only CPU 0-1,7, but the host policy keeps at least 4 CPU(s) for the host");
  assert.match(outcome.stderr, `lower "isolate.minHostCpus" in ${paths.policy}`);
  assert.equal(sim.snapshot(), afterA);
  assert.equal(sim.stateFiles(), [`${vmA.uuid}.json`, "shared/isolate.json"]);
  // vmhook doctor on B while A runs says what prepare says
  const doctored = (await runDoctor(sim, { file: "vmB.xml", xml: domainXml(b) })).domain!.findings.find((found) => found.check === "isolate")!;
  assert.equal([doctored.status, doctored.reason], ["fail", "this VM (isolating 4-6) and running VM vmA (2-3) together leave the host only CPU 0-1,7, but the host policy keeps at least 4 CPU(s) for the host: prepare refuses it while they run"]);
  assert.match(doctored.fix!, `give the host more CPUs or stop vmA first, or to allow it, lower "isolate.minHostCpus" in ${paths.policy}`);
  assert.equal(sim.snapshot(), afterA);

  assert.is((await release(sim, vmA)).code, 0);
  const alone = await prepare(sim, b);
  assert.is(alone.code, 0, alone.stderr);
  assert.is(read(sim, HOST_CPUS), "0-3,7");
});

test("policy isolate.everyNumaNode (the default) counts every running VM: two VMs may not take a NUMA node's last CPUs between them", async () => {
  const sim = cgroupHost().file("/sys/devices/system/node/node0/cpulist", "0-3").file("/sys/devices/system/node/node1/cpulist", "4-7");
  const a = { ...vmA, pins: ["4", "5"], emulatorpin: undefined };
  const b = { ...vmB, pins: ["6", "7"] };
  assert.is((await prepare(sim, a)).code, 0);
  const afterA = sim.snapshot();
  const outcome = await prepare(sim, b);
  assert.is(outcome.code, 1, `B started; the host keeps only CPU ${read(sim, HOST_CPUS)}, none on NUMA node 1`);
  assert.match(outcome.stderr.split("\n")[0]!, "this VM (isolating 6-7) and running VM vmA (4-5) together leave the host only CPU 0-3, none on NUMA node 1 (CPUs 4-7)");
  assert.match(outcome.stderr, `set "isolate.everyNumaNode": false in ${paths.policy}`);
  assert.equal(sim.snapshot(), afterA);
});

/** cgroupHost with ttyS0 on IRQ 4, delivered to CPU `deliveredTo`; as the kernel (GIC), the effective CPU follows a new affinity. */
function consoleIrqHost(deliveredTo = "0"): SimHost {
  const sim = cgroupHost();
  sim.file("/proc/interrupts", "            CPU0       CPU1\n   4:        120          0   IO-APIC    4-edge      ttyS0\n");
  sim.file("/proc/irq/4/smp_affinity_list", "0-7").file("/proc/irq/4/effective_affinity_list", deliveredTo);
  sim.onWrite("/proc/irq/4/smp_affinity_list", (data, hostPath, host) => {
    host.file(hostPath, data).file("/proc/irq/4/effective_affinity_list", data.split(/[-,]/)[0]!);
  });
  return sim;
}

/** Keeps CPU 1 alone for the host, and moves the IRQs (the console's too) there. */
const consoleVm = { ...vmA, isolate: 'host-cpus="1" irqs="yes"' };

test("policy: what prepare admitted holds for the rest of the run; irqs=\"yes\" moving the boot console's IRQ onto the one host CPU fails neither start, started, reconnect nor stopped", async () => {
  const sim = consoleIrqHost();
  const before = sim.snapshot();
  const vm = consoleVm;
  const xml = domainXml(vm);
  assert.is((await prepare(sim, vm)).code, 0);
  assert.is(read(sim, "/proc/irq/4/effective_affinity_list"), "1", "the console's IRQ went to the CPU the host keeps");
  for (const [op, subop] of [["start", "begin"], ["started", "begin"], ["reconnect", "begin"], ["stopped", "end"]] as const) {
    assert.equal(await runHookEvent(sim, op, subop, xml, vm.name), { code: 0, stderr: "" }, `${op} ${subop}`);
  }
  assert.is((await release(sim, vm)).code, 0);
  assertClean(sim, before);
});

test("policy: a run whose release never came (libvirtd died) is given back before the next prepare judges the config, so the console's IRQ it moved refuses nothing", async () => {
  const sim = consoleIrqHost();
  const before = sim.snapshot();
  assert.is((await prepare(sim, consoleVm)).code, 0);
  const outcome = await prepare(sim, consoleVm);
  assert.is(outcome.code, 0, outcome.stderr);
  assert.match(sim.read(paths.log), "found a journal from an earlier run (phase starting, ");
  assert.is((await release(sim, consoleVm)).code, 0);
  assertClean(sim, before);
});

// Another VM's irqs="yes" moved the console's IRQ: B is judged on where the host had it, as A alone was.
const CONSOLE_NEIGHBOURS: [string, VmSpec, VmSpec][] = [
  ["both keep host CPU 1 only, allowing overlap", { ...consoleVm, isolate: 'host-cpus="1" irqs="yes" allow-overlap="yes"' }, { ...vmB, pins: [], isolate: 'host-cpus="1" allow-overlap="yes"' }],
  ["disjoint pins leave the host CPU 1 together", { ...vmA, pins: ["0", "2", "3"], emulatorpin: undefined, isolate: 'irqs="yes"' }, { ...vmB, pins: ["4", "5", "6", "7"] }],
];

for (const [what, a, b] of CONSOLE_NEIGHBOURS) {
  test(`policy: the console's IRQ that running VM A's irqs="yes" moved onto the one host CPU does not refuse B (${what}): the host had it on CPU 0`, async () => {
    const sim = consoleIrqHost();
    const before = sim.snapshot();
    assert.is((await prepare(sim, a)).code, 0);
    assert.is(read(sim, "/proc/irq/4/effective_affinity_list"), "1", "A moved the console's IRQ to CPU 1");
    const outcome = await prepare(sim, b);
    assert.is(outcome.code, 0, outcome.stderr);
    assert.is(read(sim, HOST_CPUS), "1");
    assert.is((await release(sim, a)).code, 0);
    assert.is((await release(sim, b)).code, 0);
    assertClean(sim, before);
  });
}

test('policy: the console\'s IRQ that running VM A\'s irqs="yes" moved off CPU 1 does not let B leave the host only CPU 1, where the host has it', async () => {
  const sim = consoleIrqHost("1");
  assert.is((await prepare(sim, { ...vmA, isolate: 'irqs="yes"' })).code, 0);
  assert.is(read(sim, "/proc/irq/4/effective_affinity_list"), "0", "A's narrowing moved the console's IRQ to CPU 0");
  const afterA = sim.snapshot();
  const outcome = await prepare(sim, { ...vmB, pins: ["0", "4", "5", "6", "7"] });
  assert.is(outcome.code, 1, `B started; the host keeps only CPU ${read(sim, HOST_CPUS)}, where the host takes the console's IRQs`);
  assert.match(outcome.stderr.split("\n")[0]!, "this VM (isolating 0,4-7) and running VM vmA (2-3) together leave the host only CPU 1, the CPU that takes the boot console's IRQs");
  assert.equal(sim.snapshot(), afterA);
});

// ---- a release racing another VM's prepare

test("A's release drops its claim from the journal before it lets go of the host lock: B's prepare, waiting for the lock, leaves A's CPUs to the host", async () => {
  // Two hook processes: A's release takes the host lock to undo its claim; B's
  // prepare waits for the same lock in flock(2) and, once A lets go, may run
  // its whole prepare before A's release goes on. The runner's lock is
  // wrapped so that B's prepare (an ordinary hook run, taking the real lock
  // itself) runs exactly there, the moment A's lock is let go. B computes the
  // host set from the journals as A left them at that moment.
  const sim = cgroupHost();
  const before = sim.snapshot();
  const b = { ...vmB, pins: ["4", "5", "6"] };
  assert.is((await prepare(sim, vmA)).code, 0);
  let bPrepared: HookOutcome | undefined;
  const env: RunEnvironment = {
    host: sim,
    log: createLogger(sim, { echo: "none", file: false }),
    settings: loadSettings(sim),
    registry: builtins,
    async withHostLock(host, deadline, work) {
      try {
        return await withHostLock(host, deadline, work);
      } finally {
        bPrepared ??= await prepare(sim, b);
      }
    },
  };
  const { failed } = await undoJournal(readJournal(sim, vmA.uuid)!, env, new Deadline(sim, 30_000));
  assert.equal(failed, []);
  assert.is(bPrepared?.code, 0, bPrepared?.stderr);
  assert.is(read(sim, HOST_CPUS), "0-3,7", "with only B running the host keeps everything but B's CPUs 4-6");
  assert.equal(sim.stateFiles(), [`${b.uuid}.json`, "shared/isolate.json"]);
  assert.is((await release(sim, b)).code, 0);
  assertClean(sim, before);
});

// ---- a prepare racing another VM's prepare while that one lets go of the host lock

// A's hugepages step gives back, drops caches and compacts outside the host
// lock (a slow reclaim), then takes the lock again. A's isolation was planned
// before that, against the journals as they were: B's prepare may run whole in
// between, and B sees no isolate claim of A's yet (A's step comes after).
const RACING_PREPARES: { what: string; b: VmSpec; claim: number[]; policy?: object; refusal: string }[] = [
  { what: "isolating CPU 3, one of A's", b: { ...vmB, pins: ["3", "4"] }, claim: [3, 4], refusal: "CPU isolation: CPU 3 of this VM is already isolated for running VM vmB" },
  {
    what: "isolating CPUs 4-6: with A, the host keeps fewer CPUs than the policy's minimum",
    b: { ...vmB, pins: ["4", "5", "6"] },
    claim: [4, 5, 6],
    policy: { isolate: { minHostCpus: 4 } },
    refusal: "this VM (isolating 2-3) and running VM vmB (4-6) together leave the host only CPU 0-1,7, but the host policy keeps at least 4 CPU(s) for the host",
  },
];

for (const { what, b, claim, policy, refusal } of RACING_PREPARES) {
  test(`B prepared (${what}) while A's hugepages reclaim memory outside the host lock: A's isolation is planned again after it, and refused`, async () => {
    const sim = cgroupHost();
    if (policy) sim.file(paths.policy, JSON.stringify(policy));
    const kernel = new HugepageKernel(sim, { freeKiB: 800 * MiB, cacheKiB: 1536 * MiB });
    const a = domainXml(vmA).replace('<memory unit="MiB">512</memory>', '<memory unit="GiB">1</memory>').replace("<vmhook:isolate", "<vmhook:hugepages/><vmhook:isolate");
    const write = sim.write.bind(sim);
    let raced = false;
    sim.write = (hostPath: string, data: string) => {
      write(hostPath, data);
      if (hostPath !== "/proc/sys/vm/drop_caches" || raced) return;
      raced = true;
      assert.equal(isolateEntries(readJournal(sim, vmA.uuid)!), [], "B's prepare, taking the lock now, finds no isolate claim of A's");
      // B's prepare as it ends then: its claim journaled (its host writes do not matter here).
      const journal = newJournal(sim, { name: b.name, uuid: b.uuid });
      journal.phase = "starting";
      const undo = { action: "cgroup-cpuset", isolated: claim, own: claim, governor: null };
      journal.entries.push({ plugin: "isolate", event: "prepare", description: "keep the host's top-level cgroups off B's CPUs", undo, state: "applied", at: journal.createdAt });
      writeJournal(sim, journal);
    };
    const outcome = await runHookEvent(sim, "prepare", "begin", a, vmA.name);
    assert.ok(raced, "A's hugepages reclaimed memory");
    assert.is(outcome.code, 1, `A started; the host keeps CPU ${read(sim, HOST_CPUS)}`);
    assert.match(outcome.stderr.split("\n")[0]!, refusal);
    assert.is(read(sim, HOST_CPUS), undefined, "A fenced off no CPU");
    assert.is(kernel.pool(2048), 0, "A's pages went back with the rollback");
    assert.is(readJournal(sim, vmA.uuid), undefined);
  });
}

// ---- state files that are not as vmhook wrote them

/** Rewrites a state file as JSON after `change`: a hand edit, or a disk that kept part of a write. */
function editStateFile(sim: SimHost, file: string, change: (value: any) => void): void {
  const value = JSON.parse(fs.readFileSync(sim.resolve(file), "utf8"));
  change(value);
  fs.writeFileSync(sim.resolve(file), JSON.stringify(value));
}

const isolateEntries = (journal: { entries: { plugin: string; undo: Record<string, unknown> }[] }) => journal.entries.filter((entry) => entry.plugin === "isolate");

const BAD_CLAIMS: [string, (claim: Record<string, unknown>) => void, string][] = [
  ["its isolated CPUs as a string", (claim) => (claim.isolated = "2-3"), "isolated"],
  ["a CPU beyond any host", (claim) => (claim.own = [2, 9000]), "own"],
  ["no own CPUs", (claim) => delete claim.own, "own"],
  ["allow-overlap as text", (claim) => (claim.allowOverlap = "yes"), "allowOverlap"],
];

for (const [what, corrupt, field] of BAD_CLAIMS) {
  test(`another VM's journal whose isolate claim has ${what}: the next prepare refuses, naming that journal and "${field}", and changes nothing`, async () => {
    const sim = cgroupHost();
    const a = { ...vmA, isolate: 'governor="performance"' };
    assert.is((await prepare(sim, a)).code, 0);
    editStateFile(sim, paths.journal(vmA.uuid), (journal) => isolateEntries(journal).forEach((entry) => corrupt(entry.undo)));
    const before = sim.snapshot();
    const outcome = await prepare(sim, { ...vmB, isolate: 'governor="performance"' });
    assert.is(outcome.code, 1);
    assert.match(outcome.stderr, paths.journal(vmA.uuid));
    assert.match(outcome.stderr, `"${field}"`);
    assert.equal(sim.snapshot(), before, "A's CPUs are not handed back to the host, no governor file of a CPU taken from the record is written");
  });
}

const BAD_ORIGINALS: [string, (state: Record<string, any>) => void, string][] = [
  ["a file no isolate setting writes", (state) => (state["cgroup-cpuset"]["/etc/motd"] = "x"), "/etc/motd"],
  ["an original value that is not text", (state) => (state["cgroup-cpuset"]["/sys/fs/cgroup/user/cpuset.cpus"] = 5), "/sys/fs/cgroup/user/cpuset.cpus"],
  ["a setting whose originals are null", (state) => (state["cgroup-cpuset"] = null), "cgroup-cpuset"],
  ["boot console CPUs that are not CPU numbers", (state) => (state["boot-console-cpus"] = ["0; rm -rf /"]), "boot-console-cpus"],
];

for (const [what, corrupt, field] of BAD_ORIGINALS) {
  test(`isolate's shared state with ${what}: the release refuses, naming the file and "${field}", and writes nothing from it`, async () => {
    const sim = cgroupHost();
    sim.file("/etc/motd", "welcome");
    assert.is((await prepare(sim, vmA)).code, 0);
    editStateFile(sim, paths.sharedState("isolate"), corrupt);
    const before = sim.snapshot();
    const outcome = await release(sim, vmA);
    assert.match(outcome.stderr, paths.sharedState("isolate"));
    assert.match(outcome.stderr, field);
    assert.equal(sim.snapshot(), before);
    assert.is(readJournal(sim, vmA.uuid)?.entries.length, isolateEntries(readJournal(sim, vmA.uuid)!).length, "the claims stay journaled for vmhook recover");
  });
}

test("isolate's shared state that holds null (not an object) is not taken for \"nothing saved\": the release refuses", async () => {
  const sim = cgroupHost();
  assert.is((await prepare(sim, vmA)).code, 0);
  fs.writeFileSync(sim.resolve(paths.sharedState("isolate")), "null\n");
  const before = sim.snapshot();
  const outcome = await release(sim, vmA);
  assert.match(outcome.stderr, paths.sharedState("isolate"));
  assert.equal(sim.snapshot(), before);
});

test.run();
