// `vmhook plan` marks the steps that cannot succeed on this host REFUSED, with the
// reason and the fix (the planner's own mark, or the plugin's failing check), and exits 1.
import * as fs from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { cli } from "../helpers/cli.ts";
import { assertGolden } from "../helpers/golden.ts";
import { SimHost } from "../helpers/simhost.ts";
import { fail, ok } from "../../lib/diagnostics/findings.ts";
import { markRefused } from "../../lib/plan-feasibility.ts";
import type { PlannedStep } from "../../lib/transaction.ts";
import { newJournal, readJournal, writeJournal } from "../../lib/journal.ts";
import { paths } from "../../lib/paths.ts";
import { nvidiaDesktop } from "../helpers/gpu-kernel.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { assertPlanIsPrepare, plannedSteps } from "../helpers/plan.ts";

/** 4 GB of RAM, about 1.5 GB of it free or reclaimable, an empty 2M pool, GRUB. */
function smallHost(): SimHost {
  return new SimHost()
    .file("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", 0)
    .file("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", 0)
    .file("/proc/meminfo", "MemTotal: 4000000 kB\nMemFree: 1000000 kB\nMemAvailable: 1500000 kB\nHugepagesize: 2048 kB\n")
    .file("/proc/self/mountinfo", "40 22 0:40 / /dev/hugepages rw,relatime shared:20 - hugetlbfs hugetlbfs rw,pagesize=2M\n")
    .file("/etc/default/grub", "GRUB_CMDLINE_LINUX_DEFAULT=quiet\n")
    .file("/usr/sbin/update-grub");
}

const domain = (memory: string) =>
  `<domain><name>vm</name><uuid>d0d0d0d0-0000-4000-8000-0000000000d0</uuid><memory unit='MiB'>${memory}</memory><memoryBacking><hugepages/></memoryBacking><metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages size="2M"/></vmhook:hooks></metadata></domain>`;

test("plan: 8 GiB of pages on a host with 1.5 GB to give: the step is marked, with the fix, and plan exits 1", async () => {
  const sim = smallHost();
  try {
    fs.writeFileSync(sim.resolve("/vm.xml"), domain("8192"));
    const before = sim.snapshot();
    const planned = await cli(["plan", sim.resolve("/vm.xml"), "--root", sim.root]);
    assert.is(planned.code, 1);
    assertGolden("plan-impossible.txt", planned.stdout);
    const json = JSON.parse((await cli(["plan", "--json", sim.resolve("/vm.xml"), "--root", sim.root])).stdout);
    assert.is(json.possible, false);
    assert.match(json.steps[0].refused.reason, "cannot fit");
    assert.equal(sim.snapshot(), before);
  } finally {
    sim.cleanup();
  }
});

test("plan: what fits is planned without a mark and exits 0", async () => {
  const sim = smallHost();
  try {
    fs.writeFileSync(sim.resolve("/vm.xml"), domain("64"));
    const planned = await cli(["plan", sim.resolve("/vm.xml"), "--root", sim.root]);
    assert.equal([planned.code, planned.stdout], [0, "prepare of vm would take 1 step(s):\n  1. hugepages: grow the 2M pool by 32 pages\n"]);
  } finally {
    sim.cleanup();
  }
});

test("a plugin's failing doctor check marks its steps refused with the fix; a planner's own mark stays; checks of plugins that plan the event but planned no step block", () => {
  const step = (plugin: string, refused?: PlannedStep["refused"]): PlannedStep => ({ plugin, event: "prepare", action: "x", description: `${plugin} step`, record: { action: "x" }, ...(refused ? { refused } : {}) });
  const own = { reason: "the planner knows better", remedies: [] };
  const findings = [
    { ...fail("mdev i915-GVTg_V5_4", "no instance left", "stop the VMs using them"), plugin: "mdev" },
    { ...fail("isolate", "CPU 9 is not online", "use online CPUs only"), plugin: "isolate" },
    { ...fail("vfio", "no IOMMU", "turn it on"), plugin: "vfio" },
    { ...ok("hugepages", "fits"), plugin: "hugepages" },
    fail("nvidia", "untagged findings mark nothing", "-"),
  ];
  const { steps, blocking } = markRefused([step("mdev"), step("isolate", own), step("hugepages")], findings, ["mdev", "isolate", "hugepages", "vfio"]);
  assert.equal(
    steps.map((s) => s.refused),
    [{ reason: "mdev i915-GVTg_V5_4: no instance left", remedies: ["stop the VMs using them"] }, own, undefined],
  );
  assert.equal(blocking.map((finding) => finding.plugin), ["vfio"]);
  // a plugin that acts at a later event (forward at start) blocks nothing in this plan
  assert.equal(markRefused([], findings, ["mdev"]).blocking.map((finding) => finding.plugin), ["mdev"]);
});


test("a check that reports what a planner refuses on a step of its own (vfio's unload-modules) is paired with that step by the key both carry, never by their words: shown once, on that step", () => {
  const step = (description: string, refused?: PlannedStep["refused"]): PlannedStep => ({ plugin: "vfio", event: "prepare", action: "x", description, record: { action: "x" }, ...(refused ? { refused } : {}) });
  const own = { reason: "vfio: the planner's words for it", remedies: [], key: "unload-modules:amdgpu" };
  const reported = { ...fail("unload-modules", "the doctor's other words for it", "remove amdgpu"), plugin: "vfio", refusal: "unload-modules:amdgpu" };
  const { steps, blocking } = markRefused([step("unload module amdgpu", own), step("bind 0000:01:00.0 to vfio-pci")], [reported], ["vfio"]);
  assert.equal(steps.map((s) => s.refused), [own, undefined], "a rewording made plan show the refusal a second time, on the other step");
  assert.equal(blocking, []);
  // No step refusing it: it marks the plugin's steps, as any failing check does.
  assert.equal(markRefused([step("bind 0000:01:00.0 to vfio-pci")], [reported], ["vfio"]).steps[0]!.refused?.reason, "unload-modules: the doctor's other words for it");
  // Words alone pair nothing: a check that only reads like a planner's refusal is another problem, which marks the other steps.
  const alike = { ...fail("iommu", "the planner's words", "turn it on"), plugin: "vfio" };
  const marked = markRefused([step("unload module amdgpu", own), step("bind 0000:01:00.0 to vfio-pci")], [alike], ["vfio"]).steps;
  assert.equal(marked.map((s) => s.refused?.reason), [own.reason, "iommu: the planner's words"], "a check was dropped because its words are in a planner's refusal");
});

// A journal an earlier run of the same domain left (libvirt gone between prepare and QEMU's launch, a
// prepare killed): prepare refuses while a QEMU of it runs, and otherwise gives it back before it plans.
const WIN11 = "0b5c64e3-55a1-4b84-9d2b-4e0a3e7d2f10";
const win11 = `<domain type='kvm'><name>win11</name><uuid>${WIN11}</uuid><memory unit='GiB'>8</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio/></vmhook:hooks></metadata>
  <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices></domain>`;

test("plan of a domain an earlier prepare left changes for lists what prepare gives back first, never steps planned on the host those changes made (NVIDIA single GPU)", async () => {
  const kernel = nvidiaDesktop();
  const sim = kernel.sim;
  assert.is((await runHookEvent(sim, "prepare", "begin", win11, "win11")).code, 0);
  fs.writeFileSync(sim.resolve("/win11.xml"), win11);
  const held = readJournal(sim, WIN11)!.entries.length;
  const before = sim.snapshot();

  const planned = await cli(["plan", sim.resolve("/win11.xml")], sim);
  assert.is(planned.code, 1, "no plan it could show is what prepare runs");
  assert.not.match(planned.stdout, "loaded for another VM");
  assert.match(planned.stderr, `prepare of win11 first gives back the ${held} change(s) an earlier run of it left (its journal ${paths.journal(WIN11)}, phase starting), then plans on the host as that leaves it`);
  assert.match(planned.stderr, "undo: vfio: unload module nvidia");
  assert.match(planned.stderr, "vmhook recover win11 gives them back now; then vmhook plan shows the steps");
  const json = JSON.parse((await cli(["plan", "--json", sim.resolve("/win11.xml")], sim)).stdout);
  assert.equal([json.possible, json.steps], [false, []]);

  const validated = await cli(["validate", sim.resolve("/win11.xml")], sim);
  assert.is(validated.code, 0, "the config is valid all the same");
  assert.match(validated.stdout, "NOT checked against this host: prepare of win11 first gives back");
  assert.equal(sim.snapshot(), before, "plan and validate change nothing");

  // What the plan named: prepare gives the leftover back, then takes every step of a first start.
  assert.is((await cli(["recover", "win11", "--force"], sim)).code, 0);
  assert.is((await plannedSteps(sim, win11)).length, 13);
});

test("plan of a domain whose leftover journal lists no change (a release whose every undo it took, but that could not remove it): the steps, planned on this host, as prepare, which gives nothing back first, will take them; it used to refuse, naming 0 change(s) to give back first", async () => {
  const kernel = nvidiaDesktop();
  const sim = kernel.sim;
  fs.writeFileSync(sim.resolve("/win11.xml"), win11);
  const fresh = await cli(["plan", sim.resolve("/win11.xml")], sim);
  assert.is(fresh.code, 0, fresh.stderr);
  writeJournal(sim, { ...newJournal(sim, { name: "win11", uuid: WIN11 }), phase: "releasing" });
  const before = sim.snapshot();
  const planned = await cli(["plan", sim.resolve("/win11.xml")], sim);
  assert.is(planned.code, 0, planned.stderr);
  assert.is(planned.stdout, fresh.stdout);
  const validated = await cli(["validate", sim.resolve("/win11.xml")], sim);
  assert.not.match(validated.stdout, "NOT checked against this host");
  assert.equal(sim.snapshot(), before, "plan and validate change nothing");
  // What the plan showed: prepare removes the journal, gives nothing back, and takes every step planned.
  await assertPlanIsPrepare(sim, win11, "win11");
  assert.match(fs.readFileSync(sim.resolve(paths.log), "utf8"), "found a journal from an earlier run (phase releasing, 0 change(s)); undoing it first");
});

test("plan of a domain whose leftover journal's QEMU still runs (libvirt lost track of it): prepare's refusal, word for word", async () => {
  const kernel = nvidiaDesktop();
  const sim = kernel.sim;
  assert.is((await runHookEvent(sim, "prepare", "begin", win11, "win11")).code, 0);
  sim.file("/proc/4242/cmdline", `/usr/bin/qemu-system-x86_64\0-name\0guest=win11\0-uuid\0${WIN11}\0`);
  fs.writeFileSync(sim.resolve("/win11.xml"), win11);

  const planned = await cli(["plan", sim.resolve("/win11.xml")], sim);
  const prepared = await runHookEvent(sim, "prepare", "begin", win11, "win11");
  assert.is(prepared.code, 1);
  const refusal = prepared.stderr.split("\n")[0]!.replace(/^vmhook: /, "");
  assert.match(refusal, "a QEMU of this domain still runs (pid 4242");
  assert.is(planned.code, 1);
  assert.match(planned.stderr, refusal);
  assert.match(planned.stderr, "shut that guest down from inside, or kill 4242");
});

test("plan of a domain while it runs says its next prepare cannot be planned until it is shut off; validate says the host was not checked", async () => {
  const kernel = nvidiaDesktop();
  const sim = kernel.sim;
  assert.is((await runHookEvent(sim, "prepare", "begin", win11, "win11")).code, 0);
  // QEMU runs, as libvirt's pid file says
  sim.file("/run/libvirt/qemu/win11.pid", process.pid).file(`/proc/${process.pid}/cmdline`, `/usr/bin/qemu-system-x86_64\0-name\0guest=win11\0-uuid\0${WIN11}\0`);
  assert.is((await runHookEvent(sim, "started", "begin", win11, "win11")).code, 0);
  fs.writeFileSync(sim.resolve("/win11.xml"), win11);

  const planned = await cli(["plan", sim.resolve("/win11.xml")], sim);
  assert.is(planned.code, 1);
  assert.not.match(planned.stderr, "lost track");
  assert.match(planned.stderr, `win11 runs now, holding the ${readJournal(sim, WIN11)!.entries.length} change(s) of its journal ${paths.journal(WIN11)}: its release gives them back`);
  assert.match(planned.stderr, "once win11 is shut off, vmhook plan shows the steps");
  const validated = await cli(["validate", sim.resolve("/win11.xml")], sim);
  assert.is(validated.code, 0);
  assert.match(validated.stdout, "NOT checked against this host: win11 runs now");
});

test("plan marks no vfio step for a <hostdev> vfio leaves to libvirt (devices= names the GPU alone), and prepare takes every step it plans", async () => {
  const kernel = nvidiaDesktop();
  const sim = kernel.sim;
  const xml = win11
    .replace("<vmhook:vfio/>", '<vmhook:vfio devices="0000:01:00.0"/>')
    .replace("</devices>", "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x05' slot='0x00' function='0x0'/></source></hostdev></devices>");
  fs.writeFileSync(sim.resolve("/win11.xml"), xml);
  const planned = await cli(["plan", sim.resolve("/win11.xml")], sim);
  assert.not.match(planned.stdout, "REFUSED");
  assert.is(planned.code, 0, planned.stdout);
  assert.is((await runHookEvent(sim, "prepare", "begin", xml, "win11")).code, 0);
});

test.run();
