// Several VMs at once, one of them killed (SimHost.killAtChange, as
// crash-sweep.test.ts does for one VM). VM B runs while VM A's hook is killed
// at each change of its prepare or release; or A is killed first and B starts
// over A's journal. Once A is given back (vmhook recover A, or what libvirt
// runs next), the host must be as B alone leaves it (unless the two share
// what the last of them gives back: modules, helper services), with nothing
// of A's left in /run/vmhook; after B's release, exactly as before both.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { cli } from "../helpers/cli.ts";
import { cgroupHost, systemdAllowedCpus, systemdHost, withCpus } from "../helpers/cpu-hosts.ts";
import { NVIDIA_CARDS, nvidiaDesktop, twoNvidiaCards, vfioLoadsAfterOverride } from "../helpers/gpu-kernel.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { HugepageKernel } from "../helpers/hugepage-kernel.ts";
import { SimHost } from "../helpers/simhost.ts";

const A = { name: "vmA", uuid: "aaaaaaaa-1111-4111-8111-111111111111" };
const B = { name: "vmB", uuid: "bbbbbbbb-2222-4222-8222-222222222222" };

interface Scenario {
  name: string;
  /** B's own state while it runs is not B alone's: what VMs share is given back by the last of them (modules, helper services). */
  sharesWithA?: boolean;
  build: () => SimHost;
  a: string;
  b: string;
  /**
   * A's prepare starts modprobe vfio-pci in the background: its other order
   * (vfioLoadsAfterOverride) is swept too, with A alone first, and after B's
   * start when `bFirst` (B's own start may have loaded vfio-pci already).
   */
  otherOrder?: { bFirst: boolean };
}

const HUGEPAGES = "<memoryBacking><hugepages/></memoryBacking>";
const pinned = (cpus: [number, number]) => `<vcpu>2</vcpu><cputune><vcpupin vcpu='0' cpuset='${cpus[0]}'/><vcpupin vcpu='1' cpuset='${cpus[1]}'/><emulatorpin cpuset='${cpus.join(",")}'/></cputune>`;

function hugepageHost(sim = new SimHost().dir("/run/vmhook").dir("/var/log")): SimHost {
  new HugepageKernel(sim, { initial: { 2048: 100 } });
  return sim;
}

const domainXml = (vm: { name: string; uuid: string }, hooks: string, devices: string, memory = "1") =>
  `<domain type='kvm'><name>${vm.name}</name><uuid>${vm.uuid}</uuid><memory unit='GiB'>${memory}</memory>${devices}
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${hooks}</vmhook:hooks></metadata></domain>`;

const [CARD_A, CARD_B] = NVIDIA_CARDS;
const hostdev = (card: string) => {
  const [, bus, slot, fn] = /^0000:(\w\w):(\w\w)\.(\d)$/.exec(card)!;
  return `<devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x${bus}' slot='0x${slot}' function='0x${fn}'/></source></hostdev></devices>`;
};

const SCENARIOS: Scenario[] = [
  {
    name: "two NVIDIA cards, one per VM",
    sharesWithA: true,
    build: () => twoNvidiaCards().sim,
    a: domainXml(A, "<vmhook:vfio/>", hostdev(CARD_A)),
    b: domainXml(B, "<vmhook:vfio/>", hostdev(CARD_B)),
    otherOrder: { bFirst: false },
  },
  { name: "hugepages", build: () => hugepageHost(), a: domainXml(A, "<vmhook:hugepages/>", HUGEPAGES), b: domainXml(B, "<vmhook:hugepages/>", HUGEPAGES, "2") },
  {
    name: "isolate (systemd)",
    build: () => systemdHost().sim,
    a: domainXml(A, '<vmhook:isolate workqueues="yes" irqs="yes" governor="performance"/>', pinned([2, 3])),
    b: domainXml(B, '<vmhook:isolate workqueues="yes" irqs="yes" governor="performance"/>', pinned([4, 5])),
  },
  {
    name: "isolate (cgroup v2)",
    build: cgroupHost,
    a: domainXml(A, '<vmhook:isolate workqueues="yes" irqs="yes"/>', pinned([2, 3])),
    b: domainXml(B, '<vmhook:isolate workqueues="yes" irqs="yes"/>', pinned([4, 5])),
  },
  {
    name: "A: single-GPU vfio + hugepages + isolate; B: hugepages + isolate",
    build: () => {
      const sim = hugepageHost(withCpus(nvidiaDesktop().sim));
      systemdAllowedCpus(sim);
      return sim;
    },
    a: domainXml(A, '<vmhook:hugepages/><vmhook:isolate irqs="yes"/><vmhook:vfio/>', HUGEPAGES + pinned([2, 3]) + hostdev(CARD_A)),
    b: domainXml(B, '<vmhook:hugepages/><vmhook:isolate irqs="yes"/>', HUGEPAGES + pinned([4, 5]), "2"),
    otherOrder: { bFirst: true },
  },
];

type Event = "prepare" | "release";
/** How A is given back after the kill: vmhook recover A, or what libvirt runs next (stopped and release after a failed start; a start and shutdown after a release). */
type Aftermath = "recover A" | "libvirt";
type Vm = { name: string };

const START: [string, string][] = [["prepare", "begin"], ["start", "begin"], ["started", "begin"]];
const END: [string, string][] = [["stopped", "end"], ["release", "end"]];
const KILLED: Record<Event, [string, string]> = { prepare: START[0]!, release: END[1]! };

const hook = (sim: SimHost, xml: string, vm: Vm, [op, subop]: [string, string]) => runHookEvent(sim, op, subop, xml, vm.name);

async function run(sim: SimHost, xml: string, vm: Vm, events: [string, string][]): Promise<void> {
  for (const event of events) assert.is((await hook(sim, xml, vm, event)).code, 0, `${vm.name} ${event.join(" ")}`);
}

function differences(before: Record<string, string>, after: Record<string, string>): string[] {
  const paths = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
  return paths.filter((path) => before[path] !== after[path]).map((path) => `${path}: ${JSON.stringify(before[path])} -> ${JSON.stringify(after[path])}`);
}

/** `work` on a fresh host of the scenario, in RAM. */
async function onHost<T>(scenario: Scenario, work: (sim: SimHost) => Promise<T>): Promise<T> {
  const sim = SimHost.inMemory(scenario.build);
  try {
    return await work(sim);
  } finally {
    sim.cleanup();
  }
}

/** B running alone: the host A's kill must come back to while B runs. */
const bAlone = (scenario: Scenario) =>
  onHost(scenario, async (sim) => {
    await run(sim, scenario.b, B, START);
    return sim.snapshot();
  });

/**
 * What runs before A's killed event. B first: B starts before A's prepare, or
 * between A's start and A's release. A first: A's own lead-up alone (B starts
 * once A is killed).
 */
async function leadUp(sim: SimHost, scenario: Scenario, event: Event, bFirst: boolean): Promise<void> {
  if (event === "release") await run(sim, scenario.a, A, START);
  if (bFirst) await run(sim, scenario.b, B, START);
}

/** The state-changing operations of A's clean `event` after the lead-up: one kill point each; `slow`: on a slow or loaded host (SimHost.slowDown). */
const changesOf = (scenario: Scenario, event: Event, bFirst: boolean, slow = false) =>
  onHost(scenario, async (sim) => {
    sim.slowDown(slow ? 3 : 0);
    await leadUp(sim, scenario, event, bFirst);
    sim.changes.length = 0;
    assert.is((await hook(sim, scenario.a, A, KILLED[event])).code, 0);
    return [...sim.changes];
  });

async function giveBackA(sim: SimHost, scenario: Scenario, event: Event, aftermath: Aftermath, problems: string[]): Promise<void> {
  if (aftermath === "recover A") {
    const recover = await cli(["recover", A.name, "--root", sim.root], sim);
    if (recover.code !== 0) problems.push(`recover exited ${recover.code}: ${recover.stdout}${recover.stderr}`);
    return;
  }
  for (const event_ of event === "prepare" ? END : [...START, ...END]) {
    const outcome = await hook(sim, scenario.a, A, event_);
    if (outcome.code === 0 || event_[1] === "end") continue;
    problems.push(`A's next ${event_[0]} failed: ${outcome.stderr.split("\n")[0]}`);
    for (const end of END) await hook(sim, scenario.a, A, end);
    return;
  }
}

/** With B running: as B alone leaves the host, and nothing of A's in /run/vmhook. */
function checkBRuns(sim: SimHost, scenario: Scenario, withB: Record<string, string>, problems: string[]): void {
  const changed = scenario.sharesWithA ? [] : differences(withB, sim.snapshot());
  if (changed.length > 0) problems.push(`with B running, ${changed.length} path(s) differ from B alone: ${changed.slice(0, 4).join("; ")}`);
  const left = sim.stateFiles().filter((file) => file.startsWith(A.uuid) || file.startsWith("stuck/"));
  if (left.length > 0) problems.push(`A's state files left: ${left.join(", ")}`);
}

/** B released: the host exactly as before both, no state file left. */
async function checkAfterB(sim: SimHost, scenario: Scenario, before: Record<string, string>, problems: string[]): Promise<void> {
  for (const end of END) await hook(sim, scenario.b, B, end);
  const after = differences(before, sim.snapshot());
  if (after.length > 0) problems.push(`after B's release, ${after.length} path(s) differ: ${after.slice(0, 4).join("; ")}`);
  if (sim.stateFiles().length > 0) problems.push(`state files left: ${sim.stateFiles().join(", ")}`);
}

/** B runs; A's `event` is killed at change n, then given back as `aftermath`. */
const killedBesideB = (scenario: Scenario, event: Event, n: number, aftermath: Aftermath, withB: Record<string, string>) =>
  onHost(scenario, async (sim) => {
    const before = sim.snapshot();
    await leadUp(sim, scenario, event, true);
    sim.killAtChange(n);
    await hook(sim, scenario.a, A, KILLED[event]);
    const killedAt = sim.revive();
    const where = `${scenario.name}: A's ${event} killed at change ${n} (${killedAt ?? "never reached"}) while B runs, then ${aftermath}`;
    if (killedAt === undefined) return [`${where}: the clean run had more changes`];
    const problems: string[] = [];
    await giveBackA(sim, scenario, event, aftermath, problems);
    checkBRuns(sim, scenario, withB, problems);
    await checkAfterB(sim, scenario, before, problems);
    return problems.length > 0 ? [`${where}: ${problems.join("; ")}`] : [];
  });

/** A's `event` killed at change n and left so; B starts (or is refused, changing nothing, and libvirt ends it, and starts it again after); then vmhook recover A. */
const bStartsOverKilledA = (scenario: Scenario, event: Event, n: number, withB: Record<string, string>) =>
  onHost(scenario, async (sim) => {
    const before = sim.snapshot();
    await leadUp(sim, scenario, event, false);
    sim.killAtChange(n);
    await hook(sim, scenario.a, A, KILLED[event]);
    const killedAt = sim.revive();
    const where = `${scenario.name}: A's ${event} killed at change ${n} (${killedAt ?? "never reached"}), then B starts, then recover A`;
    if (killedAt === undefined) return [`${where}: the clean run had more changes`];
    const problems: string[] = [];
    const beforeB = sim.snapshot();
    const prepared = await hook(sim, scenario.b, B, START[0]!);
    if (prepared.code === 0) await run(sim, scenario.b, B, START.slice(1));
    else {
      for (const end of END) await hook(sim, scenario.b, B, end);
      const changed = differences(beforeB, sim.snapshot());
      if (changed.length > 0) problems.push(`B's refused start (${prepared.stderr.split("\n")[0]}) changed ${changed.slice(0, 3).join("; ")}`);
    }
    await giveBackA(sim, scenario, event, "recover A", problems);
    if (prepared.code !== 0) {
      const again = await hook(sim, scenario.b, B, START[0]!);
      if (again.code !== 0) return [`${where}: ${[...problems, `B's start after recover A failed: ${again.stderr.split("\n")[0]}`].join("; ")}`];
      await run(sim, scenario.b, B, START.slice(1));
    }
    checkBRuns(sim, scenario, withB, problems);
    await checkAfterB(sim, scenario, before, problems);
    return problems.length > 0 ? [`${where}: ${problems.join("; ")}`] : [];
  });

const AFTERMATHS: Aftermath[] = ["recover A", "libvirt"];

/** Whether A's clean changes probe A's card: vfio-pci's load binds it in the other order, where it ends after the card's driver_override. */
const probesCardA = (changes: string[]) => changes.includes(`start a helper writing "${CARD_A}" to /sys/bus/pci/drivers_probe`);

/** Each scenario, and the other order of those that have one: A's prepare only (a release runs no background program). */
const SWEPT = SCENARIOS.flatMap((scenario) => {
  const { otherOrder, ...first } = scenario;
  return [
    { scenario: first, events: ["prepare", "release"] as Event[], bFirst: true },
    ...(otherOrder ? [{ scenario: { ...first, name: `${scenario.name}, modprobe vfio-pci ends after a driver_override`, build: () => vfioLoadsAfterOverride(first.build()) }, events: ["prepare"] as Event[], bFirst: otherOrder.bFirst, firstOrder: first }] : []),
  ];
});

for (const { scenario, events, bFirst: sweepBFirst, firstOrder } of SWEPT) {
  if (firstOrder) {
    test(`${scenario.name}: A's clean prepare binds A's card by vfio-pci's load, where the first order probes it (the other order is really swept)`, async () => {
      for (const bFirst of sweepBFirst ? [true, false] : [false]) {
        const [first, other] = [await changesOf(firstOrder, "prepare", bFirst), await changesOf(scenario, "prepare", bFirst)];
        assert.equal([probesCardA(first), probesCardA(other)], [true, false], bFirst ? "B first" : "A first");
      }
    });
  }
  for (const event of events) {
    // Each kill point below is found by its number in a clean run: were the order time-dependent, a sweep would kill at other changes, or at none.
    test(`${scenario.name}: A's clean ${event} makes the same changes in the same order on a slow host`, async () => {
      for (const bFirst of [true, false]) assert.equal(await changesOf(scenario, event, bFirst, true), await changesOf(scenario, event, bFirst), bFirst ? "B first" : "A first");
    });
    // B's start loads vfio-pci in one scenario's other order: A's prepare after it is the first order's, swept there.
    if (sweepBFirst) {
      test(`${scenario.name}: A's ${event} killed at each change while B runs; A given back, B's host as B alone's, then as before both`, async () => {
        const withB = await bAlone(scenario);
        const changes = await changesOf(scenario, event, true);
        const problems: string[] = [];
        for (let n = 1; n <= changes.length; n++) problems.push(...(await killedBesideB(scenario, event, n, AFTERMATHS[n % AFTERMATHS.length]!, withB)));
        assert.equal(problems, []);
      });
    }
    test(`${scenario.name}: A's ${event} killed at each change, B starts over A's journal, recover A: B's host as B alone's, then as before both`, async () => {
      const withB = await bAlone(scenario);
      const changes = await changesOf(scenario, event, false);
      const problems: string[] = [];
      for (let n = 1; n <= changes.length; n++) problems.push(...(await bStartsOverKilledA(scenario, event, n, withB)));
      assert.equal(problems, []);
    });
  }
}

test.run();
