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

test.run();
