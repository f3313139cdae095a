// vmhook upgraded while VMs run: journals an earlier vmhook wrote (journal
// version 1, test/fixtures/journal-v1) are released, recovered and shown by
// this one. Each old shape is undone as it was meant, or refused naming the
// file and what to do; never undone by this version's reading of its fields.
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { JOURNAL_VERSION, readJournal } from "../../lib/journal.ts";
import { paths } from "../../lib/paths.ts";
import { cli } from "../helpers/cli.ts";
import { nvidiaDesktop } from "../helpers/gpu-kernel.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { HugepageKernel } from "../helpers/hugepage-kernel.ts";
import { cgroupHost } from "../helpers/cpu-hosts.ts";
import { SimHost } from "../helpers/simhost.ts";

const HUGEPAGES_UUID = "0a0a0a0a-0000-4000-8000-00000000000a";
const GPU_UUID = "0b5c64e3-55a1-4b84-9d2b-4e0a3e7d2f10";

/** Puts an earlier vmhook's journal (a fixture) in place of the domain's. */
function leaveOldJournal(sim: SimHost, fixture: string, uuid: string): void {
  fs.mkdirSync(sim.resolve(paths.stateDir), { recursive: true });
  fs.copyFileSync(new URL(`../fixtures/journal-v1/${fixture}.json`, import.meta.url), sim.resolve(paths.journal(uuid)));
}

const hugepagesXml = `<domain type='kvm'><name>vm</name><uuid>${HUGEPAGES_UUID}</uuid><memory unit='GiB'>1</memory><vcpu>2</vcpu>
  <memoryBacking><hugepages/></memoryBacking>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages/></vmhook:hooks></metadata></domain>`;

/** A host whose 2M pool holds `pages` persistent pages, with an earlier vmhook's hugepages journal. */
function hugepagesHost(pages: number, fixture: string): { sim: SimHost; kernel: HugepageKernel } {
  const sim = new SimHost().dir("/var/log");
  const kernel = new HugepageKernel(sim, { initial: { 2048: pages } });
  leaveOldJournal(sim, fixture, HUGEPAGES_UUID);
  return { sim, kernel };
}

test("a vmhook 0.1 journal of a single-GPU NVIDIA handover (records named by their undo) is undone: the host is as before the VM", async () => {
  const kernel = nvidiaDesktop();
  try {
    const before = kernel.sim.snapshot();
    const xml = `<domain type='kvm'><name>win11</name><uuid>${GPU_UUID}</uuid><memory unit='GiB'>8</memory>
      <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio/></vmhook:hooks></metadata>
      <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices></domain>`;
    // The host as the earlier vmhook left it while the VM ran; it kept no claims ledger.
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
    fs.rmSync(kernel.sim.resolve(paths.claims));
    leaveOldJournal(kernel.sim, "vfio-nvidia-single-gpu", GPU_UUID);

    const status = await cli(["status", "--root", kernel.sim.root], kernel.sim);
    assert.match(status.stdout, "vfio: bind 0000:01:00.0 to vfio-pci (from nvidia)");
    const released = await runHookEvent(kernel.sim, "release", "end", xml);
    assert.is(released.code, 0, released.stderr);
    assert.equal(kernel.sim.snapshot(), before);
    assert.equal(kernel.sim.stateFiles(), []);
  } finally {
    kernel.sim.cleanup();
  }
});

test("a version 1 hugepages journal of a running VM gives back exactly the pages it added", async () => {
  const { sim, kernel } = hugepagesHost(612, "hugepages-running");
  try {
    const released = await runHookEvent(sim, "release", "end", hugepagesXml);
    assert.is(released.code, 0, released.stderr);
    assert.is(kernel.pool(2048), 100);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

// vmhook 0.1 (main at 31ffcde, what users run) journals every pool write
// before it makes it (record.writing) and settles it once read back, so a
// record without one counts exactly what the VM holds, whatever stopped its
// hook: a prepare stopped before its first write holds nothing, a release
// stopped before its give-back (waiting for the host lock) holds all it added.
const STOPPED: { name: string; fixture: string; pool: number }[] = [
  { name: "a prepare stopped before its first pool write (entry pending)", fixture: "hugepages-prepare-stopped", pool: 100 },
  { name: "a release stopped before its give-back (journal releasing)", fixture: "hugepages-release-stopped", pool: 612 },
];

for (const { name, fixture, pool } of STOPPED) {
  test(`a version 1 journal of ${name} is released by what its record counts: the pool is as before the VM`, async () => {
    const { sim, kernel } = hugepagesHost(pool, fixture);
    try {
      const released = await runHookEvent(sim, "release", "end", hugepagesXml);
      assert.is(released.code, 0, released.stderr);
      assert.is(released.stderr, "");
      assert.is(kernel.pool(2048), 100);
      assert.equal(sim.stateFiles(), []);
    } finally {
      sim.cleanup();
    }
  });
}

// A journal of a vmhook before it kept the domain's <seclabel model='dac'>
// user (Journal.dacUser) cannot tell whom libvirt ran that domain's QEMU as:
// with no QEMU noted, every process with its -uuid counts, as that vmhook
// counted them, so a guest run as its seclabel user that libvirt lost track
// of keeps what it holds.
test("a version 1 journal that predates the seclabel user, of a guest run as its seclabel user that libvirt lost track of: prepare, release and recover keep what it holds", async () => {
  const { sim, kernel } = hugepagesHost(612, "hugepages-running");
  try {
    sim.file("/etc/passwd", "root:x:0:0::/root:/bin/sh\nqemu:x:107:107::/:/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/sh\n").file("/etc/libvirt/qemu.conf", 'user = "qemu"\n');
    sim.process(4242, ["/usr/bin/qemu-system-x86_64", "-uuid", HUGEPAGES_UUID], { uid: 1000 });
    const xml = hugepagesXml.replace("</metadata>", "</metadata><seclabel type='static' model='dac' relabel='yes'><label>alice:alice</label></seclabel>");
    const journalBefore = sim.read(paths.journal(HUGEPAGES_UUID));
    const prepared = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(prepared.code, 1);
    assert.match(prepared.stderr, "a QEMU of this domain still runs (pid 4242");
    const released = await runHookEvent(sim, "release", "end", xml);
    assert.match(released.stderr, "a QEMU of this domain still runs (pid 4242");
    const recovered = await cli(["recover", "vm", "--root", sim.root], sim);
    assert.match(recovered.stdout, "vm: still running; its changes are given back when it stops");
    assert.is(kernel.pool(2048), 612, "the guest's pages are still reserved");
    assert.is(sim.read(paths.journal(HUGEPAGES_UUID)), journalBefore);

    sim.remove("/proc/4242");
    assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
    assert.is(kernel.pool(2048), 100, "once it is gone, release gives the pages back");
  } finally {
    sim.cleanup();
  }
});

test("a journal written now says whether the domain sets a seclabel user: a name, or null for none", async () => {
  const { sim } = hugepagesHost(100, "hugepages-running");
  try {
    fs.rmSync(sim.resolve(paths.journal(HUGEPAGES_UUID)));
    assert.is((await runHookEvent(sim, "prepare", "begin", hugepagesXml)).code, 0);
    assert.is(readJournal(sim, HUGEPAGES_UUID)!.dacUser, null);
    await runHookEvent(sim, "release", "end", hugepagesXml);
    const xml = hugepagesXml.replace("</metadata>", "</metadata><seclabel type='static' model='dac'><label>+1000:+1000</label></seclabel>");
    assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
    assert.is(readJournal(sim, HUGEPAGES_UUID)!.dacUser, "+1000");
  } finally {
    sim.cleanup();
  }
});

test("journals are written in this version's format; one of a later version is refused, naming the file", async () => {
  const { sim } = hugepagesHost(612, "hugepages-running");
  try {
    const file = sim.resolve(paths.journal(HUGEPAGES_UUID));
    fs.writeFileSync(file, fs.readFileSync(file, "utf8").replace('"version": 1', `"version": ${JOURNAL_VERSION + 1}`));
    const status = await cli(["status", "--root", sim.root], sim);
    assert.match(`${status.stdout}${status.stderr}`, `journal ${paths.journal(HUGEPAGES_UUID)} cannot be read (unsupported version ${JOURNAL_VERSION + 1}; this vmhook reads version ${JOURNAL_VERSION}: a later vmhook wrote it`);
    fs.rmSync(file);
    assert.is((await runHookEvent(sim, "prepare", "begin", hugepagesXml)).code, 0);
    assert.is(readJournal(sim, HUGEPAGES_UUID)!.version, JOURNAL_VERSION);
  } finally {
    sim.cleanup();
  }
});

// Going back to an older vmhook while VMs run: a record of an action a later
// one added (same journal version: its own "action" field shows it) cannot be
// undone here. The plugin's other records were made around it; undoing them
// alone would leave that plugin's changes half given back.
test("a record of an action this vmhook does not know (a later vmhook's) keeps every change of its plugin, naming the journal and the fix; the other plugins' changes are given back", async () => {
  const kernel = nvidiaDesktop();
  const sim = kernel.sim;
  try {
    const pages = new HugepageKernel(sim, { initial: { 2048: 100 } });
    const xml = `<domain type='kvm'><name>win11</name><uuid>${GPU_UUID}</uuid><memory unit='GiB'>1</memory><memoryBacking><hugepages/></memoryBacking>
      <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages/><vmhook:vfio/></vmhook:hooks></metadata>
      <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices></domain>`;
    assert.is((await runHookEvent(sim, "prepare", "begin", xml, "win11")).code, 0);
    const file = sim.resolve(paths.journal(GPU_UUID));
    const journal = JSON.parse(fs.readFileSync(file, "utf8"));
    const vfioEntries = journal.entries.filter((entry: { plugin: string }) => entry.plugin === "vfio").length;
    journal.entries.push({ plugin: "vfio", event: "prepare", description: "a later vmhook's step", undo: { action: "later-step" }, state: "applied", at: journal.createdAt });
    fs.writeFileSync(file, JSON.stringify(journal));
    const held = kernel.sim.snapshot();

    const released = await runHookEvent(sim, "release", "end", xml, "win11");
    assert.match(released.stderr, `vfio: "a later vmhook's step" in ${paths.journal(GPU_UUID)} cannot be read by this vmhook`);
    assert.match(released.stderr, "install the vmhook that wrote it again");
    const kept = readJournal(sim, GPU_UUID)!;
    assert.equal(kept.entries.map((entry) => [entry.plugin, entry.state]), Array(vfioEntries + 1).fill(["vfio", "undo-failed"]));
    const after = sim.snapshot();
    const changed = Object.keys({ ...held, ...after }).filter((key) => held[key] !== after[key] && !key.startsWith("/run/vmhook") && key !== paths.log);
    assert.ok(changed.length > 0 && changed.every((key) => /hugepages|meminfo/.test(key)), `only the pages were given back: ${changed.join(", ")}`);
    assert.is(pages.pool(2048), 100);
    assert.is(sim.readTrimmed("/sys/bus/pci/devices/0000:01:00.0/driver_override"), "vfio-pci", "the GPU stays on vfio-pci");
  } finally {
    sim.cleanup();
  }
});

// A later vmhook may add a phase or an entry state without raising the
// journal's version (the field itself shows it): what it means is unknown
// here, so the journal is refused as one of a later version is, not undone
// by a guess (recover gives back a journal "starting" only once abandoned).
const LATER_VALUES: { what: string; edit: (journal: { phase: string; entries: { state: string }[] }) => void; problem: string }[] = [
  { what: "a phase", edit: (journal) => (journal.phase = "launching"), problem: `phase "launching" is not one this vmhook knows` },
  { what: "an entry state", edit: (journal) => (journal.entries[0]!.state = "half-applied"), problem: `entry 1 has state "half-applied", which this vmhook does not know` },
];

for (const { what, edit, problem } of LATER_VALUES) {
  test(`a journal with ${what} this vmhook does not know is refused by status, release and recover, naming the file; nothing is undone`, async () => {
    const { sim, kernel } = hugepagesHost(612, "hugepages-running");
    try {
      const file = sim.resolve(paths.journal(HUGEPAGES_UUID));
      const journal = JSON.parse(fs.readFileSync(file, "utf8"));
      edit(journal);
      fs.writeFileSync(file, JSON.stringify(journal));
      const text = fs.readFileSync(file, "utf8");
      const expected = `journal ${paths.journal(HUGEPAGES_UUID)} cannot be read (${problem}: a later vmhook wrote it, and that one undoes it: install it again)`;
      const status = await cli(["status", "--root", sim.root], sim);
      assert.match(`${status.stdout}${status.stderr}`, expected);
      assert.match((await runHookEvent(sim, "release", "end", hugepagesXml)).stderr, expected);
      assert.is.not((await cli(["recover", "--force", "--root", sim.root], sim)).code, 0);
      assert.is(kernel.pool(2048), 612);
      assert.is(fs.readFileSync(file, "utf8"), text);
    } finally {
      sim.cleanup();
    }
  });
}

// Everything vmhook 0.1 (31ffcde) leaves in /run/vmhook while a VM runs
// (test/fixtures/state-0.1: its journal, claims ledger and isolate's saved
// originals, written by its prepare and started on these simulated hosts,
// which leave the host exactly as this version's do) is released by this one.
const STATE_01: { fixture: string; build: () => SimHost; xml: string; name: string }[] = [
  {
    fixture: "gpu-hugepages",
    build: () => {
      const sim = nvidiaDesktop().sim;
      new HugepageKernel(sim, { initial: { 2048: 100 } });
      return sim;
    },
    xml: `<domain type='kvm'><name>win11</name><uuid>${GPU_UUID}</uuid><memory unit='GiB'>1</memory><memoryBacking><hugepages/></memoryBacking>
      <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages/><vmhook:vfio/></vmhook:hooks></metadata>
      <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices></domain>`,
    name: "win11",
  },
  {
    fixture: "isolate-irqs",
    build: cgroupHost,
    xml: `<domain type="kvm"><name>vmA</name><uuid>11111111-1111-4111-8111-111111111111</uuid><memory unit="MiB">512</memory><vcpu>2</vcpu>
      <cputune><vcpupin vcpu="0" cpuset="2"/><vcpupin vcpu="1" cpuset="3"/><emulatorpin cpuset="2-3"/></cputune>
      <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:isolate irqs="yes"/></vmhook:hooks></metadata></domain>`,
    name: "vmA",
  },
];

for (const { fixture, build, xml, name } of STATE_01) {
  test(`vmhook 0.1's state of a running VM (${fixture}: journal, claims, saved originals) is shown by status and released by this vmhook: the host is as before the VM`, async () => {
    const sim = build();
    try {
      const before = sim.snapshot();
      for (const [op, subop] of [["prepare", "begin"], ["started", "begin"]] as const) assert.is((await runHookEvent(sim, op, subop, xml, name)).code, 0);
      // The host as 0.1 left it while the VM ran; /run/vmhook as it wrote it.
      for (const file of sim.stateFiles()) fs.rmSync(sim.resolve(`${paths.stateDir}/${file}`));
      fs.cpSync(new URL(`../fixtures/state-0.1/${fixture}`, import.meta.url), sim.resolve(paths.stateDir), { recursive: true });
      const status = await cli(["status", "--root", sim.root], sim);
      assert.is(status.code, 0, status.stderr);
      assert.not.match(`${status.stdout}${status.stderr}`, /cannot|unreadable/);
      const released = await runHookEvent(sim, "release", "end", xml, name);
      assert.is(released.code, 0, released.stderr);
      assert.is(released.stderr, "");
      assert.equal(sim.snapshot(), before);
      assert.equal(sim.stateFiles(), []);
    } finally {
      sim.cleanup();
    }
  });
}

// The settings file is read anew by every hook: one edited while the VM
// runs (a stray comma, a value this vmhook refuses, written for a later
// one) must not keep release from giving the host back what the VM took.
const UNREADABLE_SETTINGS: { name: string; text: string; problem: string }[] = [
  { name: "not valid JSON", text: `{"deadlineSeconds": 300,}`, problem: `${paths.hostConfig} is not valid JSON` },
  { name: "a value this vmhook refuses", text: `{"undoDeadlineSeconds": 7200}`, problem: `${paths.hostConfig}: "undoDeadlineSeconds" is 7200` },
  { name: "a vfio setting this vmhook refuses", text: `{"plugins": {"vfio": {"bindTimeoutSeconds": "30"}}}`, problem: `${paths.hostConfig}: plugins.vfio.bindTimeoutSeconds must be a number of seconds` },
  { name: "a vfio setting this vmhook does not know", text: `{"plugins": {"vfio": {"bindTimeoutSecond": 30}}}`, problem: `${paths.hostConfig}: plugins.vfio.bindTimeoutSecond is not a setting of the vfio plugin` },
];

for (const { name, text, problem } of UNREADABLE_SETTINGS) {
  test(`host settings made ${name} while a single-GPU VM runs: release still gives the GPU back to the host with the defaults, and says so`, async () => {
    const kernel = nvidiaDesktop();
    try {
      kernel.sim.dir(path.dirname(paths.hostConfig));
      const before = kernel.sim.snapshot();
      const xml = `<domain type='kvm'><name>win11</name><uuid>${GPU_UUID}</uuid><memory unit='GiB'>8</memory>
        <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio/></vmhook:hooks></metadata>
        <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices></domain>`;
      const prepared = await runHookEvent(kernel.sim, "prepare", "begin", xml);
      assert.is(prepared.code, 0, prepared.stderr);
      kernel.sim.file(paths.hostConfig, text);
      const released = await runHookEvent(kernel.sim, "release", "end", xml);
      assert.is(released.code, 0, released.stderr);
      const log = kernel.sim.read(paths.log);
      assert.match(log, problem);
      assert.match(log, "released with the default settings; the next start refuses until it is fixed");
      assert.match(log, "released: ");
      fs.rmSync(kernel.sim.resolve(paths.hostConfig));
      assert.equal(kernel.sim.snapshot(), before);
      assert.equal(kernel.sim.stateFiles(), []);
    } finally {
      kernel.sim.cleanup();
    }
  });
}

test.run();
