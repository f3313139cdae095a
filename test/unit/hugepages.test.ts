// The hugepages plugin on a simulated kernel: config derivation and every
// config error, exact pool deltas, shortfalls that leave nothing behind,
// 1G pages, per-node pools, and two VMs sharing a pool.
import * as fs from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { loadDomainPlugins } from "../../lib/config.ts";
import { registry } from "../../plugins/index.ts";
import { runDoctor } from "../../lib/diagnostics/doctor.ts";
import { parseDomain } from "../../lib/domain.ts";
import { newJournal, readJournal, writeJournal } from "../../lib/journal.ts";
import { createLogger } from "../../lib/log.ts";
import { paths } from "../../lib/paths.ts";
import type { UndoContext, UndoRecord } from "../../lib/plugin.ts";
import hugepages, { type HugepagesConfig } from "../../plugins/hugepages.ts";
import { GiB, HugepageKernel, MiB, type HugepageKernelOptions } from "../helpers/hugepage-kernel.ts";
import { cli } from "../helpers/cli.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { SimHost } from "../helpers/simhost.ts";
import { assertPlanIsPrepare } from "../helpers/plan.ts";
import { undoneText } from "../../lib/transaction.ts";

const UUID_A = "0a0a0a0a-0000-4000-8000-00000000000a";
const UUID_B = "0b0b0b0b-0000-4000-8000-00000000000b";

interface DomainOptions {
  uuid?: string;
  name?: string;
  memory?: string;
  element?: string;
  /** Extra XML inside <domain>: <memoryBacking>, <numatune>, <cpu>. */
  extra?: string;
}

function domainXml({ uuid = UUID_A, name = "vm", memory = "<memory unit='GiB'>1</memory>", element = "<vmhook:hugepages/>", extra = "<memoryBacking><hugepages/></memoryBacking>" }: DomainOptions = {}): string {
  return `<domain type='kvm'>
  <name>${name}</name><uuid>${uuid}</uuid>${memory}<vcpu>2</vcpu>${extra}
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${element}</vmhook:hooks></metadata>
</domain>`;
}

/** 1G pages for QEMU too: without a <page size>, libvirt uses the host's default size, 2M here. */
const ONE_G_BACKING = "<memoryBacking><hugepages><page size='1' unit='GiB'/></hugepages></memoryBacking>";

const cells = (...cells: string[]) => `<cpu><numa>${cells.join("")}</numa></cpu>`;

async function config(options: DomainOptions): Promise<HugepagesConfig> {
  const sim = new SimHost();
  try {
    const [instance] = await loadDomainPlugins(parseDomain(domainXml(options)), sim, registry);
    return instance!.config as HugepagesConfig;
  } finally {
    sim.cleanup();
  }
}

async function configError(options: DomainOptions): Promise<string> {
  try {
    await config(options);
  } catch (error) {
    return (error as Error).message;
  }
  throw new assert.Assertion({ message: "expected a config error", generated: false, operator: "throws", expects: "error", actual: "none" });
}

function host(options: HugepageKernelOptions = {}): { sim: SimHost; kernel: HugepageKernel } {
  const sim = new SimHost();
  sim.dir("/var/log").dir("/run/vmhook"); // vmhook's own state and log: not host state
  return { sim, kernel: new HugepageKernel(sim, options) };
}

const firstLine = (stderr: string) => stderr.split("\n")[0]!;

// ---- config derivation

test("defaults: 2M pages in the global pool, count from <memory>", async () => {
  const parsed = await config({});
  assert.equal(parsed.pools, [{ sizeKiB: 2048, pages: 512 }]);
  assert.is(parsed.retrySeconds, 10);
  assert.is(parsed.backedByHugepages, true);
});

test("the count is rounded up to whole pages", async () => {
  assert.equal((await config({ memory: "<memory unit='MiB'>1025</memory>" })).pools, [{ sizeKiB: 2048, pages: 513 }]);
  assert.equal((await config({ memory: "<memory unit='MiB'>1536</memory>", element: "<vmhook:hugepages size='1G'/>" })).pools, [{ sizeKiB: GiB, pages: 2 }]);
});

test("the size comes from <memoryBacking><page> when the element has none", async () => {
  const extra = "<memoryBacking><hugepages><page size='1048576' unit='KiB'/></hugepages></memoryBacking>";
  assert.equal((await config({ memory: "<memory unit='GiB'>4</memory>", extra })).pools, [{ sizeKiB: GiB, pages: 4 }]);
  assert.equal((await config({ memory: "<memory unit='GiB'>4</memory>", extra, element: "<vmhook:hugepages size='1G'/>" })).pools, [{ sizeKiB: GiB, pages: 4 }]);
});

test("<numatune><memory nodeset> splits the pages evenly, the first nodes taking the remainder", async () => {
  const parsed = await config({ memory: "<memory unit='MiB'>1030</memory>", extra: "<numatune><memory mode='strict' nodeset='0-1'/></numatune>" });
  assert.equal(parsed.pools, [
    { sizeKiB: 2048, node: 0, pages: 258 },
    { sizeKiB: 2048, node: 1, pages: 257 },
  ]);
});

test("guest cells: memory per cell, host node per <memnode>, page size per <page nodeset>", async () => {
  const parsed = await config({
    memory: "<memory unit='GiB'>3</memory>",
    extra: `<memoryBacking><hugepages><page size='1' unit='GiB' nodeset='0'/><page size='2' unit='MiB' nodeset='1'/></hugepages></memoryBacking>
      <numatune><memnode cellid='0' mode='strict' nodeset='1'/><memnode cellid='1' mode='strict' nodeset='0'/></numatune>
      ${cells("<cell id='0' cpus='0' memory='2' unit='GiB'/>", "<cell id='1' cpus='1' memory='1' unit='GiB'/>")}`,
  });
  assert.equal(parsed.pools, [
    { sizeKiB: GiB, node: 1, pages: 2 },
    { sizeKiB: 2048, node: 0, pages: 512 },
  ]);
});

test("cells without a <memnode> fall back to <numatune><memory>; pages of one pool are merged", async () => {
  const parsed = await config({
    memory: "<memory unit='GiB'>2</memory>",
    extra: `<memoryBacking><hugepages/></memoryBacking><numatune><memory nodeset='0'/><memnode cellid='1' nodeset='0'/></numatune>
      ${cells("<cell id='0' cpus='0' memory='1' unit='GiB'/>", "<cell id='1' cpus='1' memory='1' unit='GiB'/>")}`,
  });
  assert.equal(parsed.pools, [{ sizeKiB: 2048, node: 0, pages: 1024 }]);
});

// libvirt's <memory> counts the cells and the memory devices; QEMU backs each with huge pages like its target cell.
// A virtio-mem device's backend is mapped with reserve=off: huge pages are taken as the guest plugs blocks, up to <size>, when no hook runs.
const hotplugModels: [string, string][] = [
  ["dimm", ""],
  ["virtio-mem", "<block unit='MiB'>2</block><requested unit='MiB'>0</requested>"],
];

for (const [model, target] of hotplugModels) {
  test(`memory hotplug: a <memory model='${model}'> present at start is backed too, all of its <target><size>, on its guest cell's pool and page size (or its own); virtio-pmem and nvdimm are files, not counted`, async () => {
    const device = (size: string, node: number, source = "") => `<memory model='${model}'>${source}<target><size unit='MiB'>${size}</size><node>${node}</node>${target}</target></memory>`;
    const files = "<memory model='virtio-pmem' access='shared'><source><path>/tmp/pmem</path></source><target><size unit='GiB'>4</size></target></memory><memory model='nvdimm'><source><path>/tmp/nvdimm</path></source><target><size unit='GiB'>4</size><node>0</node></target></memory>";
    const parsed = await config({
      memory: "<maxMemory slots='4' unit='GiB'>16</maxMemory><memory unit='MiB'>11776</memory>",
      extra: `<memoryBacking><hugepages/></memoryBacking><numatune><memnode cellid='1' nodeset='1'/></numatune>
        ${cells("<cell id='0' cpus='0' memory='1' unit='GiB'/>", "<cell id='1' cpus='1' memory='1' unit='GiB'/>")}
        <devices>${device("512", 1)}${device("1024", 0, "<source><pagesize unit='GiB'>1</pagesize><nodemask>0</nodemask></source>")}${files}</devices>`,
    });
    assert.equal(parsed.pools, [
      { sizeKiB: 2048, pages: 512 },
      { sizeKiB: 2048, node: 1, pages: 768 },
      { sizeKiB: GiB, node: 0, pages: 1 },
    ]);
    const message = await configError({
      element: "<vmhook:hugepages size='2M'/>",
      extra: `${cells("<cell id='0' cpus='0' memory='1' unit='GiB'/>")}<devices>${device("1024", 0, "<source><pagesize unit='GiB'>1</pagesize></source>")}</devices>`,
    });
    assert.match(message, `size="2M" disagrees with <devices><memory model='${model}'><source><pagesize unit="KiB">1048576</pagesize>; remove size= or make both the same`);
  });
}

test("a <page> or <source><pagesize> of the base page size (4 KiB) is memory libvirt backs without huge pages: not counted, not refused", async () => {
  const extra = `<memoryBacking><hugepages><page size='2' unit='MiB' nodeset='0'/><page size='4' unit='KiB' nodeset='1'/></hugepages></memoryBacking>
    ${cells("<cell id='0' cpus='0' memory='1' unit='GiB'/>", "<cell id='1' cpus='1' memory='1' unit='GiB'/>")}
    <devices><memory model='dimm'><source><pagesize unit='KiB'>4</pagesize></source><target><size unit='GiB'>1</size><node>0</node></target></memory></devices>`;
  const memory = "<maxMemory slots='2' unit='GiB'>8</maxMemory><memory unit='GiB'>3</memory>";
  assert.equal((await config({ memory, extra })).pools, [{ sizeKiB: 2048, pages: 512 }]);
  assert.equal((await config({ memory, extra, element: "<vmhook:hugepages size='2M'/>" })).pools, [{ sizeKiB: 2048, pages: 512 }]);
});

test("no guest NUMA cells: a <page nodeset='0'> is the page of all memory, as libvirt reads it (a domain file not yet defined still has it)", async () => {
  const parsed = await config({ memory: "<memory unit='GiB'>4</memory>", extra: "<memoryBacking><hugepages><page size='1' unit='GiB' nodeset='0'/></hugepages></memoryBacking>" });
  assert.equal(parsed.pools, [{ sizeKiB: GiB, pages: 4 }]);
  assert.is(parsed.hostDefaultSizeKiB, undefined, "the page size is declared, not left to the host's default");
});

test("node= overrides <numatune>; timeout= is read", async () => {
  const parsed = await config({ element: "<vmhook:hugepages node='1' timeout='3'/>", extra: "<numatune><memory nodeset='0'/></numatune>" });
  assert.equal(parsed.pools, [{ sizeKiB: 2048, node: 1, pages: 512 }]);
  assert.is(parsed.retrySeconds, 3);
  assert.is(parsed.backedByHugepages, false);
});

test("config errors name the element, the attribute, the value and the fix", async () => {
  const cases: [DomainOptions, RegExp][] = [
    [{ element: "<vmhook:hugepages pages='3'/>" }, /^<vmhook:hugepages pages="3">: has unknown attribute pages; allowed: size, node, timeout$/],
    [{ element: "<vmhook:hugepages size='3M'/>" }, /^<vmhook:hugepages size="3M">: size="3M" is not a huge page size; on x86-64 use 2M or 1G/],
    [{ element: "<vmhook:hugepages size='4k'/>" }, /size="4k" is not a huge page size/],
    [{ element: "<vmhook:hugepages size='big'/>" }, /^<vmhook:hugepages size="big">: size="big" is not a size; write e.g. 2M or 1G$/],
    [{ element: "<vmhook:hugepages node='zero'/>" }, /^<vmhook:hugepages node="zero">: node="zero" has "zero"/],
    [{ element: "<vmhook:hugepages node='2000'/>" }, /node="2000" names node 2000, beyond the largest possible \(1023\)/],
    [{ element: "<vmhook:hugepages timeout='-1'/>" }, /^<vmhook:hugepages timeout="-1">: timeout="-1" must be a whole number from 0 to 3600$/],
    [{ element: "<vmhook:hugepages/><vmhook:hugepages size='1G'/>" }, /^<vmhook:hugepages size="1G">: appears 2 times; keep one$/],
    [
      { element: "<vmhook:hugepages size='2M'/>", extra: "<memoryBacking><hugepages><page size='1048576'/></hugepages></memoryBacking>" },
      /size="2M" disagrees with <memoryBacking><hugepages><page size="1048576" unit="KiB">; remove size= or make both the same/,
    ],
    [{ extra: "<memoryBacking><hugepages><page size='3' unit='MiB'/></hugepages></memoryBacking>" }, /^<memoryBacking><hugepages><page>: size="3072" \(KiB\) is not a huge page size/],
    [{ extra: `<numatune><memnode cellid='3' nodeset='0'/></numatune>${cells("<cell id='0' cpus='0-1' memory='1' unit='GiB'/>")}` }, /^<numatune><memnode>: cellid="3" names no guest NUMA cell/],
    [{ memory: "" }, /^<domain>: has no <memory>/],
  ];
  for (const [options, expected] of cases) {
    const message = await configError(options);
    assert.match(message, expected, `for ${options.element ?? options.extra ?? options.memory}: ${message}`);
  }
});

// ---- the host: pools grow and shrink by exact deltas

test("prepare adds exactly this VM's pages on top of what the pool holds; release gives exactly those back", async () => {
  const { sim, kernel } = host({ initial: { 2048: 100 } });
  try {
    const before = sim.snapshot();
    const prepared = await runHookEvent(sim, "prepare", "begin", domainXml());
    assert.is(prepared.code, 0, prepared.stderr);
    assert.is(kernel.pool(2048), 612);
    assert.is(kernel.dropCaches, 0, "no reclaim when the memory is there");

    const journal = readJournal(sim, UUID_A)!;
    assert.is(journal.phase, "starting", "prepared; libvirt has not said started yet");
    assert.equal(
      journal.entries.map(({ plugin, event, state, undo }) => ({ plugin, event, state, undo })),
      [{ plugin: "hugepages", event: "prepare", state: "applied", undo: { action: "grow-pool", sizeKiB: 2048, node: null, pages: 512, added: 512, returned: 0 } }],
    );
    assert.match(journal.entries[0]!.description, "grow the 2M pool by 512 pages");

    const released = await runHookEvent(sim, "release", "end", domainXml());
    assert.is(released.code, 0, released.stderr);
    assert.is(kernel.pool(2048), 100);
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("1G pages: the 1G pool grows, the 2M pool is left alone", async () => {
  const { sim, kernel } = host();
  try {
    const xml = domainXml({ memory: "<memory unit='GiB'>3</memory>", element: "<vmhook:hugepages size='1G'/>", extra: ONE_G_BACKING });
    assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
    assert.is(kernel.pool(GiB), 3);
    assert.is(kernel.pool(2048), 0);
    await runHookEvent(sim, "release", "end", xml);
    assert.is(kernel.pool(GiB), 0);
  } finally {
    sim.cleanup();
  }
});

test("per-node pools: each node's pool grows by its share", async () => {
  const { sim, kernel } = host({ nodes: 2 });
  try {
    const before = sim.snapshot();
    const xml = domainXml({ extra: "<memoryBacking><hugepages/></memoryBacking><numatune><memory nodeset='0-1'/></numatune>" });
    assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
    assert.equal([kernel.pool(2048, 0), kernel.pool(2048, 1)], [256, 256]);
    assert.ok(sim.writes.every((w) => !w.path.startsWith("/sys/kernel/mm")), "the global pool file is not written");
    await runHookEvent(sim, "release", "end", xml);
    assert.equal(sim.snapshot(), before);
  } finally {
    sim.cleanup();
  }
});

test("<numatune><memory placement='auto'> (numad picks the nodes after the prepare hook) on a host of several nodes: a VM bound to them is refused, nothing taken; one node, or a mode that falls back, takes the global pool", async () => {
  const auto = (memory: string, vcpu = "<vcpu>2</vcpu>", element = "<vmhook:hugepages/>") =>
    domainXml({ element, extra: `<memoryBacking><hugepages/></memoryBacking>${memory}` }).replace("<vcpu>2</vcpu>", vcpu);
  const refused: [string, string][] = [
    ["strict", auto("<numatune><memory mode='strict' placement='auto'/></numatune>")],
    ["restrictive", auto("<numatune><memory mode='restrictive' placement='auto'/></numatune>")],
    ["a nodeset libvirt drops", auto("<numatune><memory placement='auto' nodeset='1'/></numatune>", undefined, "<vmhook:hugepages node='1'/>")],
    // libvirt adds <numatune><memory mode='strict' placement='auto'/> itself when the vCPUs are placed by numad
    ["<vcpu placement='auto'>", auto("", "<vcpu placement='auto'>2</vcpu>")],
    ["<vcpu placement='auto'> and a <numatune><memory> without nodeset", auto("<numatune><memory mode='strict'/></numatune>", "<vcpu placement='auto'>2</vcpu>")],
  ];
  for (const [what, xml] of refused) {
    const { sim } = host({ nodes: 2 });
    try {
      const before = sim.snapshot();
      const outcome = await runHookEvent(sim, "prepare", "begin", xml);
      assert.is(outcome.code, 1, what);
      assert.match(firstLine(outcome.stderr), "vmhook: hugepages: <numatune><memory placement='auto'>: numad picks the host NUMA nodes for this VM only after the prepare hook, so vmhook cannot know which node's pool", what);
      assert.match(outcome.stderr, "nodeset='0'/> (virsh edit)", what);
      assert.equal(sim.snapshot(), before, what);
      assert.equal(sim.stateFiles(), [], what);
    } finally {
      sim.cleanup();
    }
  }
  // Pages anywhere serve a VM whose memory may fall back to other nodes, and on one node the global pool is that node's.
  const fine: [string, number, string][] = [
    ["preferred", 2, auto("<numatune><memory mode='preferred' placement='auto'/></numatune>")],
    ["interleave", 2, auto("<numatune><memory mode='interleave' placement='auto'/></numatune>")],
    ["one node", 1, auto("<numatune><memory mode='strict' placement='auto'/></numatune>")],
  ];
  for (const [what, nodes, xml] of fine) {
    const { sim, kernel } = host({ nodes });
    try {
      const outcome = await runHookEvent(sim, "prepare", "begin", xml);
      assert.is(outcome.code, 0, `${what}: ${outcome.stderr}`);
      assert.is(kernel.pool(2048), 512, what);
    } finally {
      sim.cleanup();
    }
  }
});

const poolFiles = (sim: SimHost) => sim.writes.filter((w) => w.path.endsWith("/nr_hugepages"));

test("a request that cannot fit is refused before a page is taken: need, what the host can give, the floor, the remedy", async () => {
  const { sim, kernel } = host({ freeKiB: 600 * MiB });
  try {
    const before = sim.snapshot();
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml());
    assert.is(outcome.code, 1);
    assert.is(
      firstLine(outcome.stderr),
      "vmhook: hugepages: 512 pages of 2M (1024 MiB) for the 2M pool cannot fit: the host has 600 MiB available and keeps 1024 MiB free, so it can give 0 MiB",
    );
    assert.match(outcome.stderr, "free memory first (stop other VMs or services), then start the VM again");
    assert.match(outcome.stderr, "reserve the pages at boot (kernel command line: hugepagesz=2M hugepages=512)");
    assert.match(outcome.stderr, "plugins.hugepages.minFreeMiB in /etc/vmhook/vmhook.json");
    assert.equal(poolFiles(sim), [], "no pool file was written");
    assert.is(kernel.dropCaches, 0);
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("more than the machine has: refused at once, no boot reservation suggested, the largest VM that could fit named", async () => {
  const { sim } = host({ totalKiB: 24 * GiB, freeKiB: 22 * GiB });
  try {
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml({ memory: "<memory unit='GiB'>200</memory>" }));
    assert.is(outcome.code, 1);
    assert.match(firstLine(outcome.stderr), "vmhook: hugepages: 102400 pages of 2M (204800 MiB) for the 2M pool cannot fit: the host has 22528 MiB available and keeps 1228 MiB free");
    assert.match(outcome.stderr, "the host has 24576 MiB in all and can never give this: give the VM less <memory> (at most 23347 MiB here)");
    assert.not.match(outcome.stderr, "hugepagesz=");
    assert.equal(poolFiles(sim), []);
  } finally {
    sim.cleanup();
  }
});

test("the floor comes from plugins.hugepages.minFreeMiB; a bad value is an error naming it", async () => {
  const { sim, kernel } = host({ freeKiB: 1200 * MiB });
  try {
    assert.is((await runHookEvent(sim, "prepare", "begin", domainXml())).code, 1, "1024 MiB above the default floor of 1 GiB does not fit in 1200 MiB");
    sim.file("/etc/vmhook/vmhook.json", JSON.stringify({ plugins: { hugepages: { minFreeMiB: 128 } } }));
    const fits = await runHookEvent(sim, "prepare", "begin", domainXml());
    assert.is(fits.code, 0, fits.stderr);
    assert.is(kernel.pool(2048), 512);
    assert.ok(kernel.lowestAvailableKiB >= 128 * MiB, `MemAvailable fell to ${kernel.lowestAvailableKiB} KiB`);
    await runHookEvent(sim, "release", "end", domainXml());
    sim.file("/etc/vmhook/vmhook.json", JSON.stringify({ plugins: { hugepages: { minFreeMiB: "1G" } } }));
    const bad = await runHookEvent(sim, "prepare", "begin", domainXml());
    assert.is(
      firstLine(bad.stderr),
      'vmhook: /etc/vmhook/vmhook.json: "plugins": {"hugepages": {"minFreeMiB": "1G"}} is not a whole number of MiB from 0 to 4294967296; e.g. 2048 keeps 2 GiB free',
    );
    assert.is(kernel.pool(2048), 0);
  } finally {
    sim.cleanup();
  }
});

test("a request that fits only once the page cache is dropped: gives back what the first round got, drops caches, succeeds; MemAvailable never below the floor", async () => {
  const { sim, kernel } = host({ freeKiB: 800 * MiB, cacheKiB: 1536 * MiB });
  try {
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml());
    assert.is(outcome.code, 0, outcome.stderr);
    assert.is(kernel.pool(2048), 512);
    assert.is(kernel.dropCaches, 1);
    assert.ok(kernel.lowestAvailableKiB >= GiB, `MemAvailable fell to ${kernel.lowestAvailableKiB} KiB`);
    // the first round asked for 512 and got 400, which went back before the caches were dropped
    assert.equal(poolFiles(sim).map((w) => Number(w.data)), [512, 0, 512]);
    assert.ok(sim.writes.findIndex((w) => w.path === "/proc/sys/vm/drop_caches") > sim.writes.findIndex((w) => w.data.trim() === "0"), "given back before reclaiming");
    assert.is(readJournal(sim, UUID_A)!.entries[0]!.undo.added, 512);
    assert.match(fs.readFileSync(sim.resolve(paths.log), "utf8"), "the 2M pool grew by 512 pages in round 2");
  } finally {
    sim.cleanup();
  }
});

test("grows in steps of at most 1 GiB, reading MemAvailable between them", async () => {
  const { sim, kernel } = host();
  try {
    const xml = domainXml({ memory: "<memory unit='MiB'>2600</memory>" });
    assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
    assert.equal(poolFiles(sim).map((w) => Number(w.data)), [512, 1024, 1300]);
    assert.is(kernel.pool(2048), 1300);
  } finally {
    sim.cleanup();
  }
});

test("a first pool write the kernel refuses, the pool as it was, changed nothing: the start says 0 changes undone and the rollback writes no pool; it used to count 1", async () => {
  const { sim, kernel } = host();
  try {
    sim.failWrite("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "EBUSY");
    const before = sim.snapshot();
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml());
    assert.is(outcome.code, 1);
    assert.match(firstLine(outcome.stderr), /hugepages: the kernel refused 512 in \/sys\/kernel\/mm\/hugepages\/hugepages-2048kB\/nr_hugepages \(EBUSY\)/);
    assert.match(outcome.stderr, "the host was left as it was (0 change(s) undone), so there is nothing to recover");
    assert.equal(poolFiles(sim).length, 0, "no pool write but the refused one");
    assert.is(kernel.pool(2048), 0);
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("a pool write refused in a later round, after the round before gave its pages back and the pool reads as it was: the step holds nothing, so the start says 0 changes undone (unchangedAfterFailure); it used to count 1 for any write but the step's first", async () => {
  const { sim, kernel } = host({ freeKiB: 4 * GiB, fragmentedKiB: 3584 * MiB, compactionHelps: false });
  try {
    const before = sim.snapshot();
    // The reclaim between rounds 1 and 2: from then on the kernel refuses the pool write.
    const write = sim.write.bind(sim);
    sim.write = (file: string, data: string) => {
      write(file, data);
      if (file === "/proc/sys/vm/drop_caches") sim.failWrite("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "EBUSY");
    };
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml());
    assert.is(outcome.code, 1);
    assert.match(firstLine(outcome.stderr), /hugepages: the kernel refused 512 in \/sys\/kernel\/mm\/hugepages\/hugepages-2048kB\/nr_hugepages \(EBUSY\)/);
    assert.match(outcome.stderr, "the host was left as it was (0 change(s) undone), so there is nothing to recover");
    assert.equal(poolFiles(sim).map((w) => Number(w.data)), [512, 0], "round 1 grew and gave back; round 2's write was refused");
    assert.is(kernel.pool(2048), 0);
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("fragmented memory: compaction lets the second round succeed", async () => {
  const { sim, kernel } = host({ freeKiB: 4 * GiB, fragmentedKiB: 3584 * MiB });
  try {
    assert.is((await runHookEvent(sim, "prepare", "begin", domainXml())).code, 0);
    assert.is(kernel.pool(2048), 512);
    assert.is(kernel.compactions, 1);
  } finally {
    sim.cleanup();
  }
});

test("fragmented for good: bounded rounds, each giving back first; fails above the floor with memory measured after the give-back", async () => {
  const { sim, kernel } = host({ freeKiB: 4 * GiB, fragmentedKiB: 3584 * MiB, compactionHelps: false });
  try {
    const before = sim.snapshot();
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml({ element: "<vmhook:hugepages timeout='3600'/>" }));
    assert.is(outcome.code, 1);
    assert.is(
      firstLine(outcome.stderr),
      "vmhook: hugepages: got 256 of 512 pages of 2M; after giving them back 4096 MiB available, 4096 MiB free; free memory on the host, use smaller pages, or reserve them at boot",
    );
    assert.match(outcome.stderr, "the kernel found no more contiguous 2M blocks, even after dropping caches and compacting memory; 3 round(s)");
    assert.match(outcome.stderr, `the host was left as it was (${undoneText({ undone: 0, unfinished: 1 })})`);
    assert.equal([kernel.dropCaches, kernel.compactions], [2, 2], "3 rounds, a reclaim between each, however long timeout= is");
    assert.equal(poolFiles(sim).map((w) => Number(w.data)), [512, 0, 512, 0, 512, 0]);
    assert.ok(kernel.lowestAvailableKiB >= GiB);
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

/** Whether another open file description could take the host lock now (flock locks conflict between descriptions, even in one process). */
async function hostLockFree(sim: SimHost): Promise<() => boolean> {
  const { dlopen, FFIType } = await import("bun:ffi");
  const { symbols: libc } = dlopen("libc.so.6", { flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 } });
  return () => {
    const fd = fs.openSync(sim.resolve(paths.hostLock), "a");
    try {
      return libc.flock(fd, 2 | 4) === 0; // LOCK_EX | LOCK_NB; closing the descriptor releases it
    } finally {
      fs.closeSync(fd);
    }
  };
}

test("the host lock is let go while reclaiming and held for every pool write", async () => {
  const { sim, kernel } = host({ freeKiB: 4 * GiB, fragmentedKiB: 3584 * MiB });
  try {
    const lockFree = await hostLockFree(sim);
    const seen: string[] = [];
    const write = sim.write.bind(sim);
    sim.write = (hostPath: string, data: string) => {
      if (!hostPath.startsWith("/var/log")) seen.push(`${hostPath.split("/").pop()} ${lockFree() ? "unlocked" : "locked"}`);
      write(hostPath, data);
    };
    assert.is((await runHookEvent(sim, "prepare", "begin", domainXml())).code, 0);
    assert.is(kernel.pool(2048), 512);
    assert.equal(seen, ["nr_hugepages locked", "nr_hugepages locked", "drop_caches unlocked", "compact_memory unlocked", "nr_hugepages locked"]);
  } finally {
    sim.cleanup();
  }
});

test("caches that cannot be dropped (/proc/sys read-only, as in a container): the retry goes on with compaction alone and says what failed, not a bare errno", async () => {
  const { sim, kernel } = host({ freeKiB: 4 * GiB, fragmentedKiB: 3584 * MiB });
  try {
    sim.failWrite("/proc/sys/vm/drop_caches", "EROFS");
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml());
    assert.is(outcome.code, 0, outcome.stderr);
    assert.is(kernel.pool(2048), 512);
    assert.is(kernel.compactions, 1);
    assert.match(
      fs.readFileSync(sim.resolve(paths.log), "utf8"),
      "hugepages: cannot drop caches (writing /proc/sys/vm/drop_caches failed: EROFS); it only makes room for the next round, which runs without it",
    );
  } finally {
    sim.cleanup();
  }
});

test("no reclaim possible and the pool short: the shortfall says caches were not dropped nor memory compacted, why, and how to do it by hand; nothing left behind", async () => {
  const { sim, kernel } = host({ freeKiB: 4 * GiB, fragmentedKiB: 3584 * MiB });
  try {
    sim.failWrite(/^\/proc\/sys\/vm\/(drop_caches|compact_memory)$/, "EROFS");
    const before = sim.snapshot();
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml({ element: "<vmhook:hugepages timeout='5'/>" }));
    assert.is(outcome.code, 1);
    assert.match(firstLine(outcome.stderr), "vmhook: hugepages: got 256 of 512 pages of 2M");
    assert.not.match(outcome.stderr, "even after dropping caches");
    assert.match(
      outcome.stderr,
      "the kernel found no more contiguous 2M blocks, and vmhook could not drop caches (writing /proc/sys/vm/drop_caches failed: EROFS) nor compact memory (writing /proc/sys/vm/compact_memory failed: EROFS)",
    );
    assert.match(outcome.stderr, "where those files are read-only (a container), run on the host: sync; echo 3 > /proc/sys/vm/drop_caches; echo 1 > /proc/sys/vm/compact_memory; then start the VM again");
    assert.equal([kernel.dropCaches, kernel.compactions], [0, 0]);
    assert.is(kernel.pool(2048), 0);
    assert.equal(sim.snapshot(), before);
  } finally {
    sim.cleanup();
  }
});

test("1G on one node: the node keeps its share of the floor (its part of the host's 1638 MiB); refused naming the node and the per-node boot option", async () => {
  const { sim } = host({ nodes: 2, freeKiB: 1536 * MiB });
  try {
    const xml = domainXml({ memory: "<memory unit='GiB'>2</memory>", element: "<vmhook:hugepages size='1G' node='1'/>", extra: ONE_G_BACKING });
    const outcome = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(outcome.code, 1);
    assert.is(firstLine(outcome.stderr), "vmhook: hugepages: 2 pages of 1G (2048 MiB) for the 1G pool of node 1 cannot fit: node 1 has 1536 MiB available and keeps 819 MiB free, so it can give 716 MiB");
    assert.match(outcome.stderr, "hugepagesz=1G hugepages=1:2");
    assert.equal(poolFiles(sim), []);
  } finally {
    sim.cleanup();
  }
});

test("1G pages fragmented on one node: the shortfall names the node and suggests 2M pages", async () => {
  const { sim } = host({ nodes: 2, freeKiB: 4 * GiB, fragmentedKiB: [0, 3 * GiB], compactionHelps: false });
  try {
    const xml = domainXml({ memory: "<memory unit='GiB'>2</memory>", element: "<vmhook:hugepages size='1G' node='1' timeout='0'/>", extra: ONE_G_BACKING });
    const outcome = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(outcome.code, 1);
    assert.match(firstLine(outcome.stderr), "vmhook: hugepages: got 1 of 2 pages of 1G on node 1; after giving them back 4096 MiB available");
    assert.match(outcome.stderr, "2 round(s)");
    assert.match(outcome.stderr, `size="2M"`);
  } finally {
    sim.cleanup();
  }
});

test("when a later pool falls short, the pools already grown are given back too", async () => {
  const { sim, kernel } = host({ nodes: 2, freeKiB: 8 * GiB, fragmentedKiB: [0, 7 * GiB + 924 * MiB], compactionHelps: false });
  try {
    const before = sim.snapshot();
    const xml = domainXml({ element: "<vmhook:hugepages timeout='0'/>", extra: "<numatune><memory nodeset='0-1'/></numatune>" });
    const outcome = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(outcome.code, 1);
    assert.match(firstLine(outcome.stderr), "got 50 of 256 pages of 2M on node 1");
    assert.equal([kernel.pool(2048, 0), kernel.pool(2048, 1)], [0, 0]);
    assert.equal(sim.snapshot(), before);
  } finally {
    sim.cleanup();
  }
});

test("several pools of one node are counted together: the pool where the sum stops fitting is refused", async () => {
  const { sim } = host({ freeKiB: 3 * GiB });
  try {
    const xml = domainXml({
      memory: "<memory unit='GiB'>3</memory>",
      extra: `<memoryBacking><hugepages><page size='1' unit='GiB' nodeset='0'/><page size='2' unit='MiB' nodeset='1'/></hugepages></memoryBacking>
        <numatune><memory nodeset='0'/></numatune>${cells("<cell id='0' cpus='0' memory='1' unit='GiB'/>", "<cell id='1' cpus='1' memory='2' unit='GiB'/>")}`,
    });
    const outcome = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(outcome.code, 1);
    assert.match(firstLine(outcome.stderr), "vmhook: hugepages: 1024 pages of 2M (2048 MiB) for the 2M pool of node 0 cannot fit: node 0 has 3072 MiB available and keeps 1024 MiB free, so it can give 2048 MiB");
    assert.equal(poolFiles(sim), []);
  } finally {
    sim.cleanup();
  }
});

test("a free-memory figure the kernel gives that is no exact count fails closed, naming it", async () => {
  const { sim } = host();
  try {
    sim.file("/proc/meminfo", "MemTotal: 33554432 kB\nMemFree: 99999999999999999999 kB\nMemAvailable: 1 kB\nHugepagesize: 2048 kB\n");
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml());
    assert.is(firstLine(outcome.stderr), "vmhook: cannot read MemFree from /proc/meminfo (got 100000000000000000000); vmhook does not take huge pages without knowing the free memory");
    assert.equal(poolFiles(sim), []);
  } finally {
    sim.cleanup();
  }
});

test("sizes past 2^53 are errors naming them, at parse, never a page count that lost its digits", async () => {
  assert.match(await configError({ memory: "<memory unit='GiB'>9007199254740991</memory>" }), /^<memory>: value="9007199254740991 GiB" is beyond 2\^53 KiB \(8 EiB\)/);
  const huge = "<cell id='0' cpus='0' memory='9007199254740000' unit='KiB'/>";
  const message = await configError({ memory: "<memory unit='KiB'>9007199254740000</memory>", extra: cells(huge, huge.replace("id='0' cpus='0'", "id='1' cpus='1'")) });
  assert.match(message, /^the guest memory to back with 2M pages \(KiB\) comes to 18,014,398,509,481,984, beyond what vmhook can count exactly \(2\^53\); check the sizes it is made of$/);
});
/** The fix for a page size the host has no pool of: the domain may give the size in two places, which must agree. */
const USE_A_SIZE_IT_HAS = "use one of them, in size= on <vmhook:hugepages> and in <memoryBacking><hugepages><page size> where the domain gives one";

test("a missing node or pool size fails before any step, naming what the host has", async () => {
  const { sim } = host({ nodes: 2, sizes: [2048] });
  try {
    const before = sim.snapshot();
    const noNode = await runHookEvent(sim, "prepare", "begin", domainXml({ element: "<vmhook:hugepages node='0,3'/>" }));
    assert.is(noNode.code, 1);
    assert.is(firstLine(noNode.stderr), "vmhook: hugepages: host NUMA node 3 does not exist (this host has node(s) 0-1); fix node= on <vmhook:hugepages> or the nodeset in <numatune>");
    const noSize = await runHookEvent(sim, "prepare", "begin", domainXml({ element: "<vmhook:hugepages size='1G'/>" }));
    assert.is(noSize.code, 1);
    assert.is(firstLine(noSize.stderr), `vmhook: hugepages: this host has no 1G huge page pool; it has 2M: ${USE_A_SIZE_IT_HAS}`);
    assert.match(noSize.stderr, "pdpe1gb");
    // The size comes from <memoryBacking>: a size= of another size alone would disagree with it, so the fix names both.
    const fromBacking = await runHookEvent(sim, "prepare", "begin", domainXml({ extra: ONE_G_BACKING }));
    assert.is(fromBacking.code, 1);
    assert.is(firstLine(fromBacking.stderr), `vmhook: hugepages: this host has no 1G huge page pool; it has 2M: ${USE_A_SIZE_IT_HAS}`);
    assert.match(await configError({ element: "<vmhook:hugepages size='2M'/>", extra: ONE_G_BACKING }), "disagrees with <memoryBacking><hugepages><page size=");
    assert.equal(sim.writes, []);
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("a host NUMA node without memory (CPUs only, or its memory taken offline) is refused as such, not as a missing page size or a VM too large", async () => {
  // Linux 6.1 gives such a node pools that never grow (test/kernel shows it); older kernels gave it no hugepages directory
  for (const pools of [false, true]) {
    const { sim } = host({ nodes: 2, memoryless: { nodes: [1], pools } });
    try {
      const before = sim.snapshot();
      const outcome = await runHookEvent(sim, "prepare", "begin", domainXml({ element: "<vmhook:hugepages node='1'/>" }));
      assert.is(outcome.code, 1);
      assert.is(
        firstLine(outcome.stderr),
        "vmhook: hugepages: host NUMA node 1 has no memory (it is not in /sys/devices/system/node/has_memory, which lists 0: a node of CPUs only, or its memory was taken offline), so it has no huge pages to give; take them from a node with memory: fix node= on <vmhook:hugepages> or the nodeset in <numatune>",
        `pools: ${pools}`,
      );
      assert.equal(sim.writes, []);
      assert.equal(sim.snapshot(), before);
      assert.equal(sim.stateFiles(), []);
      const doctor = await runDoctor(sim, { file: "vm.xml", xml: domainXml({ element: "<vmhook:hugepages node='1'/>" }) });
      const finding = doctor.domain!.findings.find((found) => found.check === "hugepages node 1");
      assert.equal([finding?.status, finding?.reason.replace(/ \(it is .*/, "")], ["fail", "host NUMA node 1 has no memory"], `pools: ${pools}`);
    } finally {
      sim.cleanup();
    }
  }
});

test("a page size libvirt finds no hugetlbfs mount for is refused before a page is taken: the mount, and that libvirt looks for mounts when it starts", async () => {
  // libvirt backs guest memory with a page size only from a hugetlbfs mount of that size ("Unable to find any usable
  // hugetlbfs mount for 1048576 KiB"), and fails the start only after the prepare hook has grown the pool
  const cases: [HugepageKernelOptions, DomainOptions, string][] = [
    [{ mounted: [2048] }, { element: "<vmhook:hugepages size='1G'/>", extra: ONE_G_BACKING }, "libvirt backs guest memory with 1G pages only from a hugetlbfs mount of that size, and this host has none (hugetlbfs mounts: /dev/hugepages of 2M pages); mount one: mkdir -p /dev/hugepages1G && mount -t hugetlbfs -o pagesize=1G none /dev/hugepages1G, then restart libvirt (systemctl restart libvirtd, or virtqemud): it finds hugetlbfs mounts when it starts"],
    [{ mounted: [] }, {}, "libvirt backs guest memory with 2M pages only from a hugetlbfs mount of that size, and this host has none (no hugetlbfs is mounted); mount one: mkdir -p /dev/hugepages && mount -t hugetlbfs -o pagesize=2M none /dev/hugepages, then restart libvirt (systemctl restart libvirtd, or virtqemud): it finds hugetlbfs mounts when it starts"],
  ];
  for (const [options, domain, message] of cases) {
    const { sim, kernel } = host(options);
    try {
      const before = sim.snapshot();
      const outcome = await runHookEvent(sim, "prepare", "begin", domainXml(domain));
      assert.is(outcome.code, 1, message);
      assert.is(firstLine(outcome.stderr), `vmhook: hugepages: ${message}`);
      assert.equal(sim.writes, []);
      assert.is(kernel.dropCaches, 0);
      assert.equal(sim.snapshot(), before);
      assert.equal(sim.stateFiles(), []);
      const doctor = await runDoctor(sim, { file: "vm.xml", xml: domainXml(domain) });
      const finding = doctor.domain!.findings.find((found) => found.check === "hugepages mount");
      assert.equal([finding?.status, finding?.reason], ["fail", message.replace(/; mount one: .*/, "")]);
    } finally {
      sim.cleanup();
    }
  }
  // The kernel prints a 1G mount's size as pagesize=1024M; with it mounted the VM starts.
  const { sim, kernel } = host({ mounted: [2048, GiB] });
  try {
    assert.match(sim.read("/proc/self/mountinfo"), "pagesize=1024M");
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml({ element: "<vmhook:hugepages size='1G'/>", extra: ONE_G_BACKING }));
    assert.is(outcome.code, 0, outcome.stderr);
    assert.is(kernel.pool(GiB), 1);
    // Unreadable: vmhook cannot know, so it takes nothing.
    fs.rmSync(sim.resolve("/proc/self/mountinfo"));
    const unread = await runHookEvent(sim, "prepare", "begin", domainXml({ uuid: UUID_B, name: "b" }), "b");
    assert.is(firstLine(unread.stderr), "vmhook: hugepages: cannot read /proc/self/mountinfo, so vmhook cannot tell whether libvirt has a hugetlbfs mount of 2M pages to back the guest memory with");
    assert.is(kernel.pool(2048), 0);
  } finally {
    sim.cleanup();
  }
  // Without <memoryBacking><hugepages> libvirt needs no mount (vmhook only warns that QEMU will not use the pages).
  const bare = host({ mounted: [] });
  try {
    const outcome = await runHookEvent(bare.sim, "prepare", "begin", domainXml({ extra: "" }));
    assert.is(outcome.code, 0, outcome.stderr);
  } finally {
    bare.sim.cleanup();
  }
});

test("with hugetlbfs_mount set in qemu.conf, libvirt takes pages only from the mounts it names: a mount of the size it leaves out is refused, one it names (a list, a subdirectory) is taken", async () => {
  // qemu_conf.c: a set hugetlbfs_mount replaces the mounts libvirt found, each path's page size read by statfs
  const oneG = { element: "<vmhook:hugepages size='1G'/>", extra: ONE_G_BACKING };
  const refused: [string, string, string][] = [
    [
      'hugetlbfs_mount = "/dev/hugepages"\n',
      "libvirt backs guest memory with 1G pages only from a hugetlbfs mount of that size, and hugetlbfs_mount in /etc/libvirt/qemu.conf, which libvirt uses in place of the mounts it finds, names none (it names /dev/hugepages of 2M pages; mounted: /dev/hugepages of 2M pages, /dev/hugepages1G of 1G pages)",
      'add /dev/hugepages1G to it: hugetlbfs_mount = ["/dev/hugepages", "/dev/hugepages1G"] in /etc/libvirt/qemu.conf, then restart libvirt (systemctl restart libvirtd, or virtqemud): it reads qemu.conf when it starts',
    ],
    [
      "# hugetlbfs_mount = [\"/dev/hugepages1G\"]\nhugetlbfs_mount = [ ]\n",
      "libvirt backs guest memory with 1G pages only from a hugetlbfs mount of that size, and hugetlbfs_mount in /etc/libvirt/qemu.conf, which libvirt uses in place of the mounts it finds, names none (it names no path; mounted: /dev/hugepages of 2M pages, /dev/hugepages1G of 1G pages)",
      'add /dev/hugepages1G to it: hugetlbfs_mount = ["/dev/hugepages1G"] in /etc/libvirt/qemu.conf, then restart libvirt (systemctl restart libvirtd, or virtqemud): it reads qemu.conf when it starts',
    ],
    [
      "hugetlbfs_mount = /dev/hugepages1G\n",
      "cannot read hugetlbfs_mount in /etc/libvirt/qemu.conf (a \"quoted path\" or a [list] of them), so vmhook cannot tell which hugetlbfs mounts libvirt takes 1G pages from",
      "",
    ],
  ];
  for (const [conf, reason, fix] of refused) {
    const { sim, kernel } = host({ mounted: [2048, GiB] });
    try {
      sim.file("/etc/libvirt/qemu.conf", `# the mounts libvirt uses\n${conf}`);
      const before = sim.snapshot();
      const outcome = await runHookEvent(sim, "prepare", "begin", domainXml(oneG));
      assert.is(outcome.code, 1, conf);
      assert.is(firstLine(outcome.stderr), `vmhook: hugepages: ${reason}${fix ? `; ${fix}` : ""}`);
      assert.is(kernel.pool(GiB), 0);
      assert.equal(sim.snapshot(), before);
      const doctor = await runDoctor(sim, { file: "vm.xml", xml: domainXml(oneG) });
      const finding = doctor.domain!.findings.find((found) => found.check === "hugepages mount");
      assert.equal([finding?.status, finding?.reason], ["fail", reason]);
      // The fix is the refusal's own, or, where qemu.conf cannot be read, to fix what the reason names (it is not /proc/self/mountinfo).
      assert.is(finding?.fix, fix || "vmhook could not read what this check needs: fix what the message names, then run vmhook doctor again", conf);
    } finally {
      sim.cleanup();
    }
  }
  const taken = ['hugetlbfs_mount = ["/dev/hugepages", # the default size\n  "/dev/hugepages1G/libvirt/",\n]\n', "hugetlbfs_mount = '/dev/hugepages1G'\n", '#hugetlbfs_mount = "/dev/hugepages"\n'];
  for (const conf of taken) {
    const { sim, kernel } = host({ mounted: [2048, GiB] });
    try {
      sim.file("/etc/libvirt/qemu.conf", conf);
      const outcome = await runHookEvent(sim, "prepare", "begin", domainXml(oneG));
      assert.is(outcome.code, 0, `${conf}: ${outcome.stderr}`);
      assert.is(kernel.pool(GiB), 1);
    } finally {
      sim.cleanup();
    }
  }
});

test("with hugetlbfs_mount set, memory the domain gives no <page size> is backed with a named mount's page size, not Hugepagesize: vmhook reserves that size, and refuses when libvirt versions pick different ones", async () => {
  // qemu_conf.c marks the named mounts' default (the first in older libvirt, the second of two or more since), and
  // <hugepages/> without <page size> takes the default mount's size (qemuGetDomainDefaultHugepath), whatever Hugepagesize says.
  const only1G = 'hugetlbfs_mount = "/dev/hugepages1G"\n';
  const taken: [string, string, number][] = [
    [only1G, "<vmhook:hugepages size='1G'/>", GiB],
    ['hugetlbfs_mount = ["/dev/hugepages1G", "/dev/hugepages1G/libvirt"]\n', "<vmhook:hugepages size='1G'/>", GiB],
    ['hugetlbfs_mount = ["/dev/hugepages"]\n', "<vmhook:hugepages/>", 2048],
  ];
  for (const [conf, element, size] of taken) {
    const { sim, kernel } = host({ mounted: [2048, GiB] });
    try {
      sim.file("/etc/libvirt/qemu.conf", conf);
      const outcome = await runHookEvent(sim, "prepare", "begin", domainXml({ element }));
      assert.is(outcome.code, 0, `${conf}: ${outcome.stderr}`);
      assert.is(kernel.pool(size) * size, GiB, conf);
    } finally {
      sim.cleanup();
    }
  }
  const refused: [string, string, string][] = [
    [
      only1G,
      "<vmhook:hugepages/>",
      'hugetlbfs_mount in /etc/libvirt/qemu.conf names only mounts of 1G pages (/dev/hugepages1G of 1G pages), and libvirt backs guest memory that <memoryBacking><hugepages> gives no <page size> with that size, while vmhook would reserve 2M pages for it; add <page size="2048" unit="KiB"/> to <memoryBacking><hugepages> (virsh edit)',
    ],
    [
      'hugetlbfs_mount = ["/dev/hugepages", "/dev/hugepages1G"]\n',
      "<vmhook:hugepages/>",
      "hugetlbfs_mount in /etc/libvirt/qemu.conf names mounts of different page sizes (/dev/hugepages of 2M pages, /dev/hugepages1G of 1G pages), and which one backs guest memory that <memoryBacking><hugepages> gives no <page size> depends on the libvirt version (the first named, or the second), so vmhook cannot tell which pool to grow; add <page size=\"2048\" unit=\"KiB\"/> to <memoryBacking><hugepages> (virsh edit)",
    ],
  ];
  for (const [conf, element, message] of refused) {
    const { sim, kernel } = host({ mounted: [2048, GiB] });
    try {
      sim.file("/etc/libvirt/qemu.conf", conf);
      const before = sim.snapshot();
      const outcome = await runHookEvent(sim, "prepare", "begin", domainXml({ element }));
      assert.is(outcome.code, 1, conf);
      assert.is(firstLine(outcome.stderr), `vmhook: hugepages: ${message}`);
      assert.is(kernel.pool(2048) + kernel.pool(GiB), 0);
      assert.equal(sim.snapshot(), before);
      const doctor = await runDoctor(sim, { file: "vm.xml", xml: domainXml({ element }) });
      const finding = doctor.domain!.findings.find((found) => found.check === "hugepages page size");
      assert.equal([finding?.status, finding?.reason], ["fail", message.split("; add ")[0]]);
    } finally {
      sim.cleanup();
    }
  }
});

test("free pages another VM's QEMU has mapped but not touched yet (resv_hugepages) are not offered to this VM as its own", async () => {
  // 8192 pages of 2M (16 GiB) reserved at boot, 8 GiB left free: a 16 GiB VM cannot fit in new pages
  const xml = domainXml({ memory: "<memory unit='GiB'>16</memory>" });
  for (const [reserved, offered] of [[0, "8192"], [8192, undefined], [4096, undefined]] as const) {
    const { sim, kernel } = host({ freeKiB: 24 * GiB, totalKiB: 32 * GiB, initial: { 2048: 8192 } });
    try {
      kernel.reserve(2048, reserved);
      const outcome = await runHookEvent(sim, "prepare", "begin", xml);
      assert.is(outcome.code, 1, outcome.stderr);
      assert.match(outcome.stderr, "for the 2M pool cannot fit");
      assert.is(/the 2M pool already holds (\d+) free pages/.exec(outcome.stderr)?.[1], offered, `${reserved} reserved`);
      assert.is(kernel.pool(2048), 8192);
    } finally {
      sim.cleanup();
    }
  }
});

test("node= on a kernel without NUMA (no /sys/devices/system/node) says so, not that node 0 is missing from node 0", async () => {
  const { sim } = host();
  try {
    fs.rmSync(sim.resolve("/sys/devices/system/node"), { recursive: true });
    const before = sim.snapshot();
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml({ element: "<vmhook:hugepages node='0'/>" }));
    assert.is(outcome.code, 1);
    assert.is(
      firstLine(outcome.stderr),
      "vmhook: hugepages: this kernel has no NUMA nodes (/sys/devices/system/node is missing), so node=\"0\" has no per-node pool; remove node= from <vmhook:hugepages> and the nodeset in <numatune>",
    );
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("memory whose page size the domain leaves to libvirt (the host's default, Hugepagesize) is refused when vmhook would reserve another size", async () => {
  // libvirt backs <hugepages/> without <page size> with the default huge page size: QEMU would find none of the pages vmhook reserved
  const cases: [HugepageKernelOptions, string, string][] = [
    [{}, "<vmhook:hugepages size='1G'/>", "this host's default huge page size is 2M (Hugepagesize in /proc/meminfo), which libvirt uses for guest memory that <memoryBacking><hugepages> gives no <page size>, while vmhook would reserve 1G pages for it; add <page size=\"1048576\" unit=\"KiB\"/> to <memoryBacking><hugepages> (virsh edit)"],
    [{ defaultSizeKiB: GiB }, "<vmhook:hugepages/>", "this host's default huge page size is 1G (Hugepagesize in /proc/meminfo), which libvirt uses for guest memory that <memoryBacking><hugepages> gives no <page size>, while vmhook would reserve 2M pages for it; add <page size=\"2048\" unit=\"KiB\"/> to <memoryBacking><hugepages> (virsh edit)"],
  ];
  for (const [options, element, message] of cases) {
    const { sim } = host(options);
    try {
      const before = sim.snapshot();
      const outcome = await runHookEvent(sim, "prepare", "begin", domainXml({ element }));
      assert.is(outcome.code, 1, element);
      assert.is(firstLine(outcome.stderr), `vmhook: hugepages: ${message}`);
      assert.equal(sim.snapshot(), before);
      assert.equal(sim.stateFiles(), []);
    } finally {
      sim.cleanup();
    }
  }
  // The same size as the host's default, or a <page size> that says it: the pages QEMU takes are the ones reserved.
  const fine: [HugepageKernelOptions, DomainOptions, number][] = [
    [{ defaultSizeKiB: GiB }, { element: "<vmhook:hugepages size='1G'/>" }, GiB],
    [{}, { element: "<vmhook:hugepages size='1G'/>", extra: ONE_G_BACKING }, GiB],
    [{ defaultSizeKiB: GiB }, { extra: "<memoryBacking><hugepages><page size='2' unit='MiB'/></hugepages></memoryBacking>" }, 2048],
    [{ defaultSizeKiB: GiB }, { extra: "" }, 2048],
  ];
  for (const [options, domain, size] of fine) {
    const { sim, kernel } = host(options);
    try {
      const outcome = await runHookEvent(sim, "prepare", "begin", domainXml(domain));
      assert.is(outcome.code, 0, outcome.stderr);
      assert.is(kernel.pool(size) * size, GiB);
    } finally {
      sim.cleanup();
    }
  }
});

test("a bad config aborts prepare with the host untouched", async () => {
  const { sim } = host();
  try {
    const before = sim.snapshot();
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml({ element: "<vmhook:hugepages size='7M'/>" }));
    assert.is(outcome.code, 1);
    assert.match(firstLine(outcome.stderr), /^vmhook: <vmhook:hugepages size="7M">: size="7M" is not a huge page size/);
    assert.equal(sim.writes, []);
    assert.equal(sim.snapshot(), before);
  } finally {
    sim.cleanup();
  }
});

test("two VMs interleaved share the pool: prepare A, prepare B, release A, release B", async () => {
  const { sim, kernel } = host({ initial: { 2048: 10 } });
  try {
    const before = sim.snapshot();
    const a = domainXml({ uuid: UUID_A, name: "a" });
    const b = domainXml({ uuid: UUID_B, name: "b", memory: "<memory unit='MiB'>512</memory>" });
    assert.is((await runHookEvent(sim, "prepare", "begin", a, "a")).code, 0);
    assert.is(kernel.pool(2048), 522);
    assert.is((await runHookEvent(sim, "prepare", "begin", b, "b")).code, 0);
    assert.is(kernel.pool(2048), 778);
    assert.is((await runHookEvent(sim, "release", "end", a, "a")).code, 0);
    assert.is(kernel.pool(2048), 266);
    assert.ok(readJournal(sim, UUID_B), "B still holds its pages");
    assert.is((await runHookEvent(sim, "release", "end", b, "b")).code, 0);
    assert.is(kernel.pool(2048), 10);
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("release after someone shrank the pool never goes below 0", async () => {
  const { sim, kernel } = host();
  try {
    const xml = domainXml();
    await runHookEvent(sim, "prepare", "begin", xml);
    sim.write("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "100");
    assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
    assert.is(kernel.pool(2048), 0);
  } finally {
    sim.cleanup();
  }
});

test("a node pool and the global pool (the sum of the nodes) grown by two VMs: either release order gives back exactly each share", async () => {
  for (const order of [["a", "b"], ["b", "a"]]) {
    const { sim, kernel } = host({ nodes: 2, initial: { 2048: 10 } });
    try {
      const before = sim.snapshot();
      const xml: Record<string, string> = {
        a: domainXml({ uuid: UUID_A, name: "a", element: '<vmhook:hugepages node="0"/>' }),
        b: domainXml({ uuid: UUID_B, name: "b", memory: "<memory unit='MiB'>200</memory>" }),
      };
      assert.is((await runHookEvent(sim, "prepare", "begin", xml.a!, "a")).code, 0);
      assert.is((await runHookEvent(sim, "prepare", "begin", xml.b!, "b")).code, 0);
      assert.equal([kernel.pool(2048, 0), kernel.pool(2048, 1), kernel.pool(2048)], [572, 50, 622]);
      for (const vm of order) assert.is((await runHookEvent(sim, "release", "end", xml[vm]!, vm)).code, 0);
      assert.equal([kernel.pool(2048, 0), kernel.pool(2048, 1)], [10, 0], order.join(", "));
      assert.equal(sim.snapshot(), before);
    } finally {
      sim.cleanup();
    }
  }
});

const persistent = (kernel: HugepageKernel) => kernel.pool(2048) - kernel.surplus(2048);

test("surplus pages in use at release: the persistent pool shrinks by exactly this VM's pages, not by what nr_hugepages shows", async () => {
  const { sim, kernel } = host({ initial: { 2048: 10 } });
  try {
    const xml = domainXml();
    assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
    assert.is(kernel.pool(2048), 522);
    // The VM is gone; another program maps 600 pages with nr_overcommit_hugepages: the 522 free ones and 78 surplus.
    kernel.use(2048, 0, 600);
    assert.equal([kernel.pool(2048), kernel.surplus(2048)], [600, 78]);
    const released = await runHookEvent(sim, "release", "end", xml);
    assert.is(released.code, 0, released.stderr);
    assert.is(persistent(kernel), 10, "the admin's 10 pages stay, this VM's 512 go");
    assert.not.match(fs.readFileSync(sim.resolve(paths.log), "utf8"), "after shrinking");
    kernel.unuse(2048, 0, 600);
    assert.equal([kernel.pool(2048), kernel.surplus(2048)], [10, 0]);
  } finally {
    sim.cleanup();
  }
});

test("surplus pages at prepare are promoted by the kernel first: release demotes them again, the VM still gets all its pages", async () => {
  const { sim, kernel } = host();
  try {
    const xml = domainXml();
    kernel.use(2048, 0, 100); // overcommitted: 100 surplus pages in use
    assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
    assert.equal([kernel.pool(2048), kernel.surplus(2048)], [612, 0], "the 100 became persistent, 512 are new and free for the VM");
    assert.is(readJournal(sim, UUID_A)!.entries[0]!.undo.added, 612);
    assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
    assert.equal([kernel.pool(2048), kernel.surplus(2048)], [100, 100], "back to 100 surplus pages in use");
    kernel.unuse(2048, 0, 100);
    assert.is(kernel.pool(2048), 0, "freed, they leave the pool as surplus pages do");
  } finally {
    sim.cleanup();
  }
});

// ---- a pool write cut off before the journal says what the kernel did

const POOL_2M = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

/**
 * Calls `then` right after the first write of `count` (any, when undefined)
 * into the global 2M pool, once: the moment a read that fails or a SIGKILL
 * would stop the hook.
 */
function afterPoolWrite(sim: SimHost, then: () => void, count?: number): void {
  const write = sim.write.bind(sim);
  let done = false;
  sim.write = (hostPath: string, data: string) => {
    write(hostPath, data);
    if (!done && hostPath === POOL_2M && (count === undefined || Number(data) === count)) {
      done = true;
      then();
    }
  };
}

/** The journal file as it is on disk now: what a SIGKILL at this moment would leave. */
const journalOnDisk = (sim: SimHost, uuid: string) => fs.readFileSync(sim.resolve(paths.journal(uuid)), "utf8");

/** Puts a journal back as a killed hook left it (the run went on in this process; a killed one would not have). */
function leaveJournal(sim: SimHost, uuid: string, text: string): void {
  fs.mkdirSync(sim.resolve(paths.stateDir), { recursive: true });
  fs.writeFileSync(sim.resolve(paths.journal(uuid)), text);
}

const heldBy = (sim: SimHost, uuid: string) => JSON.stringify(readJournal(sim, uuid)?.entries.map((entry) => entry.undo) ?? []);

test("a pool read that fails right after a grow write: the rollback gives back the pages the kernel granted", async () => {
  const { sim, kernel } = host({ initial: { 2048: 100 } });
  try {
    const readTrimmed = sim.readTrimmed.bind(sim);
    let failNextRead = false;
    afterPoolWrite(sim, () => (failNextRead = true));
    sim.readTrimmed = (hostPath: string) => {
      if (failNextRead && hostPath === POOL_2M) {
        failNextRead = false;
        throw Object.assign(new Error(`could not read ${hostPath} (EIO)`), { code: "EIO" });
      }
      return readTrimmed(hostPath);
    };
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml());
    assert.is(outcome.code, 1);
    assert.match(firstLine(outcome.stderr), "EIO");
    assert.is(kernel.pool(2048), 100, `the failed prepare left the pool at ${kernel.pool(2048)} pages (was 100); the journal holds ${heldBy(sim, UUID_A)}`);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("a hook killed right after a grow write: the journal it leaves already names the write, so release gives back what the kernel granted", async () => {
  const { sim, kernel } = host({ initial: { 2048: 100 } });
  try {
    let left = "";
    afterPoolWrite(sim, () => (left = journalOnDisk(sim, UUID_A)), 612);
    assert.is((await runHookEvent(sim, "prepare", "begin", domainXml())).code, 0);
    // Killed at that moment: the kernel keeps the 512 pages, the journal is what was on disk.
    assert.is(kernel.pool(2048), 612);
    leaveJournal(sim, UUID_A, left);
    const released = await runHookEvent(sim, "release", "end", domainXml());
    assert.is(released.code, 0, released.stderr);
    assert.is(kernel.pool(2048), 100, `release left the pool at ${kernel.pool(2048)} pages (was 100); the killed hook's journal held ${JSON.stringify((JSON.parse(left) as { entries: { undo: unknown }[] }).entries.map((entry) => entry.undo))}`);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("a hook killed right after an undo's shrink write: the next undo gives nothing back twice", async () => {
  const { sim, kernel } = host({ initial: { 2048: 100 } });
  try {
    assert.is((await runHookEvent(sim, "prepare", "begin", domainXml())).code, 0);
    assert.is(kernel.pool(2048), 612);
    let left = "";
    afterPoolWrite(sim, () => (left = journalOnDisk(sim, UUID_A)), 100);
    assert.is((await runHookEvent(sim, "release", "end", domainXml())).code, 0);
    // Killed at that moment: the pool is back at 100, the journal is what was on disk; libvirt's release (or vmhook recover) undoes it again.
    assert.is(kernel.pool(2048), 100);
    leaveJournal(sim, UUID_A, left);
    const again = await runHookEvent(sim, "release", "end", domainXml());
    assert.is(again.code, 0, again.stderr);
    assert.is(kernel.pool(2048), 100, `the second undo took the pool to ${kernel.pool(2048)} pages: the admin's 100 are gone`);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("a hook killed right after a give-back write between rounds: release does not give those pages back a second time", async () => {
  const { sim, kernel } = host({ freeKiB: 800 * MiB, cacheKiB: 1536 * MiB, initial: { 2048: 100 } });
  try {
    let left = "";
    // Round 1 asks for 612, gets 400, and gives its 300 back (the write of 100) before dropping caches.
    afterPoolWrite(sim, () => (left = journalOnDisk(sim, UUID_A)), 100);
    assert.is((await runHookEvent(sim, "prepare", "begin", domainXml())).code, 0);
    assert.equal(poolFiles(sim).map((w) => Number(w.data)), [612, 100, 612]);
    // Killed at that moment: the pool held 100, the journal is what was on disk.
    sim.write(POOL_2M, "100");
    leaveJournal(sim, UUID_A, left);
    assert.is((await runHookEvent(sim, "release", "end", domainXml())).code, 0);
    assert.is(kernel.pool(2048), 100, `release took the pool to ${kernel.pool(2048)} pages: the admin's 100 are gone`);
  } finally {
    sim.cleanup();
  }
});

test("an undo that settles a cut-off write never gives back more than the write asked for: pages added since stay", async () => {
  const { sim, kernel } = host({ initial: { 2048: 100 } });
  try {
    let left = "";
    afterPoolWrite(sim, () => (left = journalOnDisk(sim, UUID_A)), 612);
    assert.is((await runHookEvent(sim, "prepare", "begin", domainXml())).code, 0);
    leaveJournal(sim, UUID_A, left);
    assert.equal(readJournal(sim, UUID_A)!.entries[0]!.undo, { action: "grow-pool", sizeKiB: 2048, node: null, pages: 512, added: 0, returned: 0, writing: { from: 100, to: 612 } });
    sim.write(POOL_2M, "1612"); // the admin reserves 1000 more meanwhile
    assert.is((await runHookEvent(sim, "release", "end", domainXml())).code, 0);
    assert.is(kernel.pool(2048), 1100, "the 512 the write asked for went back; the admin's 100 + 1000 stay");
    assert.match(fs.readFileSync(sim.resolve(paths.log), "utf8"), "a write of the 2M pool from 100 to 612 persistent pages was cut off; counted as 512 taken, though the pool holds 1612: something else changed it since");
  } finally {
    sim.cleanup();
  }
});

test("a write cut off by another VM while this prepare reclaims memory (the host lock let go) stops this prepare's next grow", async () => {
  const { sim, kernel } = host({ freeKiB: 800 * MiB, cacheKiB: 1536 * MiB, initial: { 2048: 100 } });
  try {
    // Round 1 gets 400 of the 512 pages, gives them back and drops caches outside the host lock; meanwhile b's hook is killed mid-write.
    const write = sim.write.bind(sim);
    sim.write = (hostPath: string, data: string) => {
      write(hostPath, data);
      if (hostPath !== "/proc/sys/vm/drop_caches" || readJournal(sim, UUID_B)) return;
      const cutOff = newJournal(sim, { name: "b", uuid: UUID_B });
      const undo = { action: "grow-pool", sizeKiB: 2048, node: null, pages: 64, added: 0, returned: 0, writing: { from: 100, to: 164 } };
      cutOff.entries.push({ plugin: "hugepages", event: "prepare", description: "grow the 2M pool by 64 pages", undo, state: "pending", at: cutOff.createdAt });
      writeJournal(sim, cutOff);
    };
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml());
    assert.is(outcome.code, 1, "round 2 would grow the pool while b's write is cut off");
    assert.match(firstLine(outcome.stderr), "a write of b to the 2M pool (persistent count 100 to 164) was cut off");
    assert.equal(poolFiles(sim).map((w) => Number(w.data)), [612, 100], "no write after the caches were dropped");
    assert.is(kernel.pool(2048), 100);
    assert.is(readJournal(sim, UUID_A), undefined);
  } finally {
    sim.cleanup();
  }
});

const UNREADABLE_POOL_RECORDS: [string, Record<string, unknown>][] = [
  ["its write's count as a string", { sizeKiB: 2048, writing: { from: "100", to: 164 } }],
  ["its page size as a string", { sizeKiB: "2048", writing: { from: 100, to: 164 } }],
];

for (const [what, fields] of UNREADABLE_POOL_RECORDS) {
  test(`another VM's journal with a pool record vmhook cannot read (${what}) refuses prepare, naming that VM and its journal`, async () => {
    const { sim, kernel } = host({ initial: { 2048: 100 } });
    try {
      const broken = newJournal(sim, { name: "b", uuid: UUID_B });
      const undo = { action: "grow-pool", node: null, pages: 64, added: 0, returned: 0, ...fields } as UndoRecord;
      broken.entries.push({ plugin: "hugepages", event: "prepare", description: "grow the 2M pool by 64 pages", undo, state: "pending", at: broken.createdAt });
      writeJournal(sim, broken);
      const outcome = await runHookEvent(sim, "prepare", "begin", domainXml());
      assert.is(outcome.code, 1);
      assert.match(firstLine(outcome.stderr), `hugepages: cannot tell what VM b holds: its journal /run/vmhook/${UUID_B}.json has a record vmhook cannot read (hugepages: cannot undo journal record`);
      assert.is(kernel.pool(2048), 100);
    } finally {
      sim.cleanup();
    }
  });
}

test("while another VM's pool write is cut off, no pool of that page size grows: prepare refuses, naming the VM and vmhook recover", async () => {
  const { sim, kernel } = host({ nodes: 2, initial: { 2048: 100 } });
  try {
    const a = domainXml({ uuid: UUID_A, name: "a" });
    const b = domainXml({ uuid: UUID_B, name: "b", element: '<vmhook:hugepages node="1"/>' });
    let left = "";
    afterPoolWrite(sim, () => (left = journalOnDisk(sim, UUID_A)));
    assert.is((await runHookEvent(sim, "prepare", "begin", a, "a")).code, 0);
    leaveJournal(sim, UUID_A, left);
    const pools = [kernel.pool(2048, 0), kernel.pool(2048, 1)];
    const refused = await runHookEvent(sim, "prepare", "begin", b, "b");
    assert.is(refused.code, 1);
    assert.is(
      firstLine(refused.stderr),
      "vmhook: hugepages: a write of a to the 2M pool (persistent count 100 to 612) was cut off before its journal said what the kernel did, so no 2M pool is written until a's journal is undone; run vmhook recover a, then start this VM again",
    );
    assert.equal([kernel.pool(2048, 0), kernel.pool(2048, 1)], pools, "b took nothing");
    assert.is(readJournal(sim, UUID_B), undefined);
    // A 1G pool is another pool: it may grow.
    const other = await runHookEvent(sim, "prepare", "begin", domainXml({ uuid: UUID_B, name: "b", element: "<vmhook:hugepages size='1G'/>", extra: ONE_G_BACKING }), "b");
    assert.is(other.code, 0, other.stderr);
    assert.is((await runHookEvent(sim, "release", "end", b, "b")).code, 0);
    // Once a's journal is undone, b starts.
    assert.is((await runHookEvent(sim, "release", "end", a, "a")).code, 0);
    assert.is(kernel.pool(2048), 100);
    assert.is((await runHookEvent(sim, "prepare", "begin", b, "b")).code, 0);
    assert.equal([kernel.pool(2048, 0), kernel.pool(2048, 1)], [100, 512]);
  } finally {
    sim.cleanup();
  }
});

test("while another VM's shrink is cut off, no pool of that page size shrinks either: b's release keeps its pages until a's journal is undone, and neither VM's pages stay behind", async () => {
  const { sim, kernel } = host({ initial: { 2048: 100 } });
  try {
    const a = domainXml({ uuid: UUID_A, name: "a" });
    const b = domainXml({ uuid: UUID_B, name: "b" });
    assert.is((await runHookEvent(sim, "prepare", "begin", a, "a")).code, 0);
    assert.is((await runHookEvent(sim, "prepare", "begin", b, "b")).code, 0);
    let left = "";
    afterPoolWrite(sim, () => (left = journalOnDisk(sim, UUID_A)), 612);
    assert.is((await runHookEvent(sim, "release", "end", a, "a")).code, 0);
    // a's hook was killed right before its shrink reached the kernel: b's 512 and a's 512 are still there, a's journal names the write.
    sim.write(POOL_2M, "1124");
    leaveJournal(sim, UUID_A, left);

    const releasedB = await runHookEvent(sim, "release", "end", b, "b");
    const afterB = kernel.pool(2048);
    for (const name of ["a", "b"]) assert.is((await cli(["recover", name, "--root", sim.root], sim)).code, 0, `vmhook recover ${name}`);
    assert.is(kernel.pool(2048), 100, `${kernel.pool(2048) - 100} pages stay reserved with no VM holding them: b's shrink made a's cut-off write look done`);
    assert.equal(sim.stateFiles(), []);

    assert.is(afterB, 1124, "b gave back nothing while a's write was cut off");
    assert.is(releasedB.code, 0, "release never fails libvirt");
    assert.match(releasedB.stderr, "hugepages: a write of a to the 2M pool (persistent count 1124 to 612) was cut off before its journal said what the kernel did, so no 2M pool is written until a's journal is undone; run vmhook recover a, then vmhook recover b");
  } finally {
    sim.cleanup();
  }
});

/** The hugepages undo uses only host, log, update (here the record is changed in place, which the runner then journals) and, before a pool write, the other VMs' journals (none here). */
function undoContext(sim: SimHost): UndoContext {
  return { host: sim, domain: { name: "vm", uuid: UUID_A }, log: createLogger(sim, { echo: "none", file: false }), update: () => {}, journals: () => [] } as unknown as UndoContext;
}

/** As the runner undoes a journal entry: the record is checked by its action first. */
function undo(record: UndoRecord, ctx: UndoContext): void | Promise<void> {
  const grow = hugepages.actions["grow-pool"]!;
  return grow.undo(grow.check(record), ctx);
}

test("undo is idempotent: the record says what was given back", async () => {
  const { sim, kernel } = host({ initial: { 2048: 600 } });
  try {
    const record = { action: "grow-pool", sizeKiB: 2048, node: null, added: 512, returned: 0 };
    await undo(record, undoContext(sim));
    assert.is(kernel.pool(2048), 88);
    assert.is(record.returned, 512);
    await undo(record, undoContext(sim));
    assert.is(kernel.pool(2048), 88);
  } finally {
    sim.cleanup();
  }
});

test("undo refuses a record it cannot trust", async () => {
  const { sim } = host();
  try {
    const records: UndoRecord[] = [
      { action: "grow-pool", sizeKiB: "2048/../../x", node: null, added: 1, returned: 0 },
      { action: "grow-pool", sizeKiB: 2048, node: -1, added: 1, returned: 0 },
      { action: "shrink-pool", sizeKiB: 2048, node: null, added: 1, returned: 0 },
      { action: "grow-pool", sizeKiB: 2048, node: null, added: 1, returned: 0, writing: { from: 100 } },
      { action: "grow-pool", sizeKiB: 2048, node: null, added: 1, returned: 0, writing: [100, 612] },
    ];
    for (const record of records) {
      assert.throws(() => undo(record, undoContext(sim)), /cannot undo journal record/);
    }
    assert.equal(sim.writes, []);
  } finally {
    sim.cleanup();
  }
});

test("vmhook plan lists exactly the steps prepare runs", async () => {
  const { sim } = host({ nodes: 2 });
  const xml = domainXml({ memory: "<memory unit='GiB'>2</memory>", extra: `<memoryBacking><hugepages/></memoryBacking>${cells("<cell id='0' cpus='0' memory='1' unit='GiB'/>", "<cell id='1' cpus='1' memory='1' unit='GiB'/>")}<numatune><memnode cellid='0' nodeset='0'/><memnode cellid='1' nodeset='1'/></numatune>` });
  try {
    assert.equal(await assertPlanIsPrepare(sim, xml), ["hugepages: grow the 2M pool of node 0 by 512 pages", "hugepages: grow the 2M pool of node 1 by 512 pages"]);
  } finally {
    sim.cleanup();
  }
});

test.run();
