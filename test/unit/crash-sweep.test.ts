// The crash sweep. vmhook journals every change before it makes it, so a
// hook killed at any point (kill -9, OOM) leaves what is needed to give the
// host back. For each scenario a clean prepare (start for forward) or release
// lists the hook's state-changing operations (writes, programs, helpers,
// state files); then, for every N, the hook is killed at its N-th
// (SimHost.killAtChange) and, as a new process finds the host, vmhook recover
// --force — or what libvirt runs next: stopped and release after the failed
// start, the next start and its shutdown after a release — must leave it
// exactly as before the VM, with no journal, claim, note or shared state
// left. Every simulated program keeps its state in files under the root,
// where the snapshot sees it.
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { cli } from "../helpers/cli.ts";
import { systemdAllowedCpus, cgroupHost, systemdHost, withCpus } from "../helpers/cpu-hosts.ts";
import { nvidiaDesktop, vfioLoadsAfterOverride } from "../helpers/gpu-kernel.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { HugepageKernel } from "../helpers/hugepage-kernel.ts";
import { logindHost } from "../helpers/logind-host.ts";
import { nftHost } from "../helpers/nft-host.ts";
import { GPU, gvtHost, mdevHostdevXml, nvidiaHost, pciHostdevXml, VF, VF2 } from "../helpers/mdev-kernel.ts";
import { SimHost } from "../helpers/simhost.ts";
import { stopUnitsAllowing } from "../helpers/stop-units.ts";
import { RootedHost } from "../../lib/host.ts";
import { paths } from "../../lib/paths.ts";

const UUID = "6d0c5a44-3e1b-4f7a-9c2d-8e5f1a2b3c4d";
const NAME = "vm";

interface Scenario {
  name: string;
  /** A fresh host. */
  build: () => SimHost;
  /** The domain's <vmhook:hooks> content. */
  hooks: string;
  /** Domain XML besides <name>, <uuid>, <memory> and <metadata>. */
  devices?: string;
  /** The event that changes the host, prepare unless said. */
  applies?: "prepare" | "start";
  /** The host of the other order of a background program and the hook's steps (SimHost.endLater), swept too for the event that applies. */
  otherOrder?: { name: string; build: () => SimHost };
}

const HUGEPAGES = "<memoryBacking><hugepages/></memoryBacking>";
/** The single-GPU desktops' GPU, GPU_HOSTDEV's. */
const DESKTOP_GPU = "0000:01:00.0";

/** The order the sweep otherwise misses: modprobe vfio-pci (started in the background) ends once the GPU's driver_override names vfio-pci, whose load then binds it. */
const loadsAfterOverride = (build: () => SimHost) => ({ name: "modprobe vfio-pci ends after the GPU's driver_override", build: () => vfioLoadsAfterOverride(build()) });
const PINNED = "<vcpu>2</vcpu><cputune><vcpupin vcpu='0' cpuset='2'/><vcpupin vcpu='1' cpuset='3'/><emulatorpin cpuset='2-3'/></cputune>";
const GPU_HOSTDEV = "<devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices>";

function hugepageHost(sim = new SimHost().dir("/run/vmhook").dir("/var/log")): SimHost {
  new HugepageKernel(sim, { initial: { 2048: 100 } });
  return sim;
}

/** The single-GPU desktop with hugepages and CPUs that systemd fences: vfio, hugepages and isolate in one domain. */
function everythingHost(): SimHost {
  const sim = hugepageHost(withCpus(nvidiaDesktop().sim));
  systemdAllowedCpus(sim);
  return sim;
}

const MDEV_A = "4b20d080-1b54-4048-85b3-a6a62d165c01";
const MDEV_B = "4b20d080-1b54-4048-85b3-a6a62d165c02";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const STOP_UNITS = `${paths.pluginsDir}/stop-units`;
/** Where the simulated systemctl of the stop-units host keeps each unit's state. */
const UNIT_STATES = "/var/lib/systemd/sim-units";

/** A host with `file` (from `source`) in vmhook's plugins directory, both as vmhook requires: root's, not writable by others. */
function customPluginHost(file: string, source: string, mode: number): SimHost {
  const sim = new SimHost().dir("/run/vmhook").dir("/var/log").dir(paths.pluginsDir);
  fs.chmodSync(sim.resolve(paths.pluginsDir), 0o755);
  sim.file(`${paths.pluginsDir}/${file}`, source);
  fs.chmodSync(sim.resolve(`${paths.pluginsDir}/${file}`), mode);
  return sim;
}

/**
 * examples/plugins/stop-units, run for real under the root, with a systemctl
 * (a shell script there too) keeping each unit's state in a file: two units
 * that run and one that does not.
 */
function stopUnitsHost(): SimHost {
  const sim = customPluginHost("stop-units", stopUnitsAllowing("backup.timer idle.service sync@*.service"), 0o755);
  sim.onExec(STOP_UNITS, (args, host, options) => RootedHost.prototype.exec.call(host, STOP_UNITS, args, options));
  for (const [unit, state] of [["backup.timer", "active"], ["sync@alice.service", "active"], ["idle.service", "inactive"]]) sim.file(`${UNIT_STATES}/${unit}`, state);
  sim.file("/usr/bin/systemctl", `#!/bin/sh
state="$VMHOOK_ROOT${UNIT_STATES}/$2"
case "$1" in
is-active) cat "$state"; [ "$(cat "$state")" = active ] || exit 3 ;;
stop) echo inactive > "$state" ;;
start) echo active > "$state" ;;
*) exit 1 ;;
esac
`);
  fs.chmodSync(sim.resolve("/usr/bin/systemctl"), 0o755);
  return sim;
}

/** examples/plugins/looking-glass.mjs, with the user and group it names. Its apply and undo change /dev/shm with node:fs, where no kill lands: it is killed around them. */
function lookingGlassHost(): SimHost {
  return customPluginHost("looking-glass.mjs", fs.readFileSync(path.join(REPO, "examples/plugins/looking-glass.mjs"), "utf8"), 0o644)
    .dir("/dev/shm")
    .file("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nalice:x:1234:1234:Alice:/home/alice:/bin/bash\n")
    .file("/etc/group", "root:x:0:\nkvm:x:993:alice\n");
}

/** What the JavaScript plugins below change: a file that exists, and notes in a directory they create. */
const GOVERNOR = "/etc/tune/governor";
const NOTES = "/var/lib/vm-notes";

/** A host where the module plugin `file` finds the governor file it changes; every change goes through ctx.host, where the kill can land. */
function modulePluginHost(file: string, source: string): SimHost {
  return customPluginHost(file, source, 0o644).file(GOVERNOR, "powersave\n").dir("/var/lib");
}

/** The start of both module plugins below, up to their planners or handlers. */
const pluginStart = (name: string) => `
const [GOVERNOR, NOTES] = ${JSON.stringify([GOVERNOR, NOTES])};
export default {
  name: "${name}",
  summary: "sets the CPU governor and leaves notes while the VM runs",
  parse: () => ({}),`;

/** A plugin of the typed interface (plan + actions), as docs/plugins.md describes it. */
const TYPED_PLUGIN = `${pluginStart("tune")}
  plan: {
    prepare: (ctx) => [
      { action: "set-file", record: { action: "set-file", path: GOVERNOR, value: "performance\\n", old: ctx.host.read(GOVERNOR) }, description: "governor: performance" },
      {
        action: "write-notes",
        record: { action: "write-notes", dir: NOTES, createdDir: !ctx.host.exists(NOTES), notes: ["a", "b"].map((name) => \`\${NOTES}/\${ctx.domain.uuid}.\${name}\`) },
        description: "notes",
      },
    ],
  },
  actions: {
    "set-file": {
      check: (record) => record,
      apply(record, ctx) { ctx.host.write(record.path, record.value); },
      undo(record, ctx) { ctx.host.write(record.path, record.old); },
    },
    "write-notes": {
      check: (record) => record,
      apply(record, ctx) {
        if (record.createdDir) ctx.host.mkdir(record.dir);
        for (const note of record.notes) ctx.host.createFile(note, ctx.domain.name);
      },
      undo(record, ctx) {
        for (const note of record.notes) ctx.host.remove(note);
        if (record.createdDir) ctx.host.remove(record.dir);
      },
    },
  },
};
`;

/** The same changes by a plugin of the first interface: its handler journals each step's undo, and what a step has begun, before making it. */
const LEGACY_PLUGIN = `${pluginStart("legacy-tune")}
  async prepare(ctx) {
    await ctx.step("governor: performance", { action: "restore-file", path: GOVERNOR, old: ctx.host.read(GOVERNOR) }, () => ctx.host.write(GOVERNOR, "performance\\n"));
    const createdDir = !ctx.host.exists(NOTES);
    await ctx.step("notes", { action: "remove-notes", dir: NOTES, createdDir, notes: [] }, (handle) => {
      if (createdDir) ctx.host.mkdir(NOTES);
      const notes = [];
      for (const name of ["a", "b"]) {
        notes.push(\`\${NOTES}/\${ctx.domain.uuid}.\${name}\`);
        handle.update({ action: "remove-notes", dir: NOTES, createdDir, notes });
        ctx.host.createFile(notes.at(-1), ctx.domain.name);
      }
    });
  },
  undo(record, ctx) {
    if (record.action === "restore-file") return ctx.host.write(record.path, record.old);
    for (const note of record.notes) ctx.host.remove(note);
    if (record.createdDir) ctx.host.remove(record.dir);
  },
};
`;

const SCENARIOS: Scenario[] = [
  { name: "hugepages", build: () => hugepageHost(), hooks: "<vmhook:hugepages/>", devices: HUGEPAGES },
  { name: "isolate (systemd AllowedCPUs)", build: () => systemdHost().sim, hooks: "<vmhook:isolate/>", devices: PINNED },
  {
    name: "isolate (systemd AllowedCPUs, an admin's set-property --runtime drop-in already there)",
    build: () => systemdHost({ "system.slice": "0-5" }).sim.file("/run/systemd/system.control/system.slice.d/50-AllowedCPUs.conf", "[Slice]\nAllowedCPUs=0-5\n"),
    hooks: "<vmhook:isolate/>",
    devices: PINNED,
  },
  { name: "isolate (cgroup v2 cpuset)", build: cgroupHost, hooks: "<vmhook:isolate/>", devices: PINNED },
  { name: "vfio single GPU", build: () => nvidiaDesktop().sim, hooks: "<vmhook:vfio/>", devices: GPU_HOSTDEV, otherOrder: loadsAfterOverride(() => nvidiaDesktop().sim) },
  {
    name: "vfio + hugepages + isolate",
    build: everythingHost,
    hooks: "<vmhook:hugepages/><vmhook:isolate/><vmhook:vfio/>",
    devices: HUGEPAGES + PINNED + GPU_HOSTDEV,
    otherOrder: loadsAfterOverride(everythingHost),
  },
  {
    name: "mdev (GVT-g)",
    build: () => gvtHost().dir("/var/log"),
    hooks: `<vmhook:mdev parent="${GPU}" type="i915-GVTg_V5_4" uuid="${MDEV_A}"/><vmhook:mdev parent="${GPU}" type="i915-GVTg_V5_8" uuid="${MDEV_B}"/>`,
    devices: `<devices>${mdevHostdevXml(MDEV_A)}${mdevHostdevXml(MDEV_B)}</devices>`,
  },
  {
    name: "vgpu (NVIDIA SR-IOV)",
    build: () => nvidiaHost().dir("/var/log"),
    hooks: `<vmhook:vgpu vf="${VF}" type="NVIDIA L40S-12Q"/><vmhook:vgpu vf="${VF2}" type="1434"/>`,
    devices: `<devices>${pciHostdevXml(VF)}${pciHostdevXml(VF2)}</devices>`,
  },
  { name: "nosleep", build: () => logindHost({ sim: new SimHost().dir("/var/log") }).sim, hooks: "<vmhook:nosleep/>" },
  { name: "custom executable plugin (stop-units)", build: stopUnitsHost, hooks: '<vmhook:plugin name="stop-units" units="backup.timer idle.service sync@alice.service"/>' },
  { name: "custom module plugin (looking-glass)", build: lookingGlassHost, hooks: '<vmhook:plugin name="looking-glass" owner="alice" group="kvm" size="1M"/>' },
  { name: "custom module plugin (typed interface)", build: () => modulePluginHost("tune.mjs", TYPED_PLUGIN), hooks: '<vmhook:plugin name="tune"/>' },
  { name: "custom module plugin (first interface)", build: () => modulePluginHost("legacy-tune.mjs", LEGACY_PLUGIN), hooks: '<vmhook:plugin name="legacy-tune"/>' },
  {
    name: "forward",
    build: () => nftHost(UUID).sim,
    hooks: '<vmhook:forward ports="2222:22,60000-60010/udp"/>',
    devices: "<devices><interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='default'/></interface></devices>",
    applies: "start",
  },
];

const domainXml = (scenario: Scenario) =>
  `<domain type='kvm'><name>${NAME}</name><uuid>${UUID}</uuid><memory unit='GiB'>1</memory>${scenario.devices ?? ""}
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${scenario.hooks}</vmhook:hooks></metadata></domain>`;

type Event = "prepare" | "start" | "release";
/** How the host is given back after the kill: by vmhook recover --force, or by what libvirt runs next. */
type Aftermath = "recover --force" | "libvirt";

/** libvirt's events up to the killed one: a release follows prepare, start and started. */
const LEAD_UP: Record<Event, [string, string][]> = {
  prepare: [],
  start: [["prepare", "begin"]],
  release: [["prepare", "begin"], ["start", "begin"], ["started", "begin"]],
};
const KILLED: Record<Event, [string, string]> = { prepare: ["prepare", "begin"], start: ["start", "begin"], release: ["release", "end"] };

async function hook(sim: SimHost, xml: string, [op, subop]: [string, string]): Promise<number> {
  return (await runHookEvent(sim, op, subop, xml, NAME)).code;
}

/** The state-changing operations of a clean run of `event`; `slow`: on a slow or loaded host (SimHost.slowDown). */
async function cleanRunChanges(scenario: Scenario, event: Event, slow = false): Promise<string[]> {
  const sim = SimHost.inMemory(scenario.build).slowDown(slow ? 3 : 0);
  const xml = domainXml(scenario);
  try {
    for (const step of LEAD_UP[event]) assert.is(await hook(sim, xml, step), 0, `${scenario.name}: ${step.join(" ")} of a clean run`);
    sim.changes.length = 0;
    assert.is(await hook(sim, xml, KILLED[event]), 0, `${scenario.name}: ${event} of a clean run`);
    return [...sim.changes];
  } finally {
    sim.cleanup();
  }
}

/**
 * The kill points worth a run: all but the creation of a state file's temp
 * copy right before its rename. Killed at either, the state file is as it
 * was; at the rename, the temp copy is left too: the same and more.
 */
function killPoints(changes: string[]): number[] {
  const subsumed = (change: string, next: string | undefined) => change.startsWith("create ") && next === `rename ${change.slice("create ".length)} to ${change.slice("create ".length, -".tmp".length)}`;
  return changes.flatMap((change, index) => (subsumed(change, changes[index + 1]) ? [] : [index + 1]));
}

/** What differs between two snapshots, one line per path. */
function differences(before: Record<string, string>, after: Record<string, string>): string[] {
  const paths = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
  return paths.filter((path) => before[path] !== after[path]).map((path) => `${path}: ${JSON.stringify(before[path])} -> ${JSON.stringify(after[path])}`);
}

/** Kills the hook at its n-th change during `event`, gives the host back as `aftermath` does; what was not as it should be. */
async function killAt(scenario: Scenario, event: Event, n: number, aftermath: Aftermath): Promise<string[]> {
  const sim = SimHost.inMemory(scenario.build);
  const xml = domainXml(scenario);
  try {
    const before = sim.snapshot();
    for (const step of LEAD_UP[event]) assert.is(await hook(sim, xml, step), 0);
    sim.killAtChange(n);
    await hook(sim, xml, KILLED[event]);
    const killedAt = sim.revive();
    const where = `${scenario.name}, ${event} killed at change ${n} (${killedAt ?? "never reached"}), then ${aftermath}`;
    if (killedAt === undefined) return [`${where}: the clean run had more changes than this one`];
    const problems: string[] = [];
    if (aftermath === "recover --force") {
      const recover = await cli(["recover", "--force", "--root", sim.root], sim);
      if (recover.code !== 0) problems.push(`recover exited ${recover.code}: ${recover.stdout}${recover.stderr}`);
    } else if (event !== "release") {
      // A start that failed: libvirt still runs stopped and release.
      await hook(sim, xml, ["stopped", "end"]);
      await hook(sim, xml, ["release", "end"]);
    } else {
      // The VM is started again, and shut down.
      for (const [op, subop] of LEAD_UP.release) {
        const outcome = await runHookEvent(sim, op, subop, xml, NAME);
        if (outcome.code === 0) continue;
        problems.push(`the next ${op} failed: ${outcome.stderr.split("\n")[0]}`);
        break;
      }
      await hook(sim, xml, ["stopped", "end"]);
      await hook(sim, xml, ["release", "end"]);
    }
    const changed = differences(before, sim.snapshot());
    if (changed.length > 0) problems.push(`${changed.length} host path(s) differ: ${changed.slice(0, 3).join("; ")}${changed.length > 3 ? "; ..." : ""}`);
    const left = sim.stateFiles();
    if (left.length > 0) problems.push(`state files left: ${left.join(", ")}`);
    return problems.length > 0 ? [`${where}: ${problems.join("; ")}`] : [];
  } finally {
    sim.cleanup();
  }
}

// Each kill point is given back one way, the two ways in turn: every kill point twice would take twice as long.
const AFTERMATHS: Aftermath[] = ["recover --force", "libvirt"];

/** Each scenario, and the other order of those that have one (for the event that applies only: releases run no background program). */
const SWEPT = SCENARIOS.flatMap((scenario) => {
  const { otherOrder, ...first } = scenario;
  const applies = scenario.applies ?? "prepare";
  const events = (only?: Event) => (only ? [only] : [applies, "release" as const]);
  return [
    { scenario: first, events: events() },
    ...(otherOrder ? [{ scenario: { ...first, name: `${scenario.name}, ${otherOrder.name}`, build: otherOrder.build }, events: events(applies), firstOrder: first }] : []),
  ];
});

for (const { scenario, events, firstOrder } of SWEPT) {
  if (firstOrder) {
    test(`${scenario.name}: a clean ${events[0]} binds the GPU by vfio-pci's load, where the first order probes it (the other order is really swept)`, async () => {
      const probesGpu = (changes: string[]) => changes.includes(`start a helper writing "${DESKTOP_GPU}" to /sys/bus/pci/drivers_probe`);
      const [first, other] = [await cleanRunChanges(firstOrder, events[0]!), await cleanRunChanges(scenario, events[0]!)];
      assert.equal([probesGpu(first), probesGpu(other)], [true, false]);
    });
  }
  for (const event of events) {
    // Each kill point below is found by its number in a clean run: were the order time-dependent, a sweep would kill at other changes, or at none.
    test(`${scenario.name}: a clean ${event} makes the same changes in the same order on a slow host`, async () => {
      assert.equal(await cleanRunChanges(scenario, event, true), await cleanRunChanges(scenario, event));
    });
    test(`${scenario.name}: ${event} killed at each of its changes; the host comes back exactly`, async () => {
      const points = killPoints(await cleanRunChanges(scenario, event));
      assert.ok(points.length > 0);
      const problems: string[] = [];
      for (const [index, n] of points.entries()) problems.push(...(await killAt(scenario, event, n, AFTERMATHS[index % AFTERMATHS.length]!)));
      assert.equal(problems, []);
    });
  }
}

test.run();
