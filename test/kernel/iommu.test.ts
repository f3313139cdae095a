// `vmhook iommu` and `vmhook doctor` on a real kernel: the bench guest
// (q35 + intel-iommu under TCG) has the std VGA alone in its IOMMU group.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import type { Finding } from "../../lib/diagnostics/doctor.ts";
import type { IommuGroup, IommuReport } from "../../lib/diagnostics/iommu.ts";
import { bootGuest, skipReason, type Guest } from "./guest.ts";

const diagnostics = suite<{ guest?: Guest }>("kernel diagnostics");
const skip = skipReason();
if (skip) console.log(`kernel diagnostics: skipped: ${skip}`);

diagnostics.before(async (context) => {
  if (!skip) context.guest = await bootGuest({ smp: 2, memoryMiB: 1024 });
});
diagnostics.after(async (context) => {
  await context.guest?.shutdown();
});

const it = skip ? diagnostics.skip : diagnostics;

it("vmhook iommu --json lists the std VGA 1234:1111 alone in its group, on bochs-drm", async ({ guest }) => {
  const report = JSON.parse(await guest!.ok("vmhook iommu --json")) as IommuReport;
  assert.ok(report.enabled);
  const vgaGroup = report.groups.find((group: IommuGroup) => group.devices.some((device) => device.address === "0000:00:01.0"));
  assert.ok(vgaGroup, "a group holds 0000:00:01.0");
  assert.equal(
    vgaGroup!.devices.map((device) => [device.address, device.ids, device.classCode, device.driver, device.bridge]),
    [["0000:00:01.0", "1234:1111", "0300", "bochs-drm", false]],
  );
  assert.is(vgaGroup!.verdict, "isolated");
  // Every PCI device of the guest is in exactly one group.
  const listed = report.groups.flatMap((group) => group.devices.map((device) => device.address)).sort();
  assert.equal(listed, (await guest!.ok("ls /sys/bus/pci/devices")).trim().split(/\s+/).sort());
});

it("vmhook iommu prints the group as text, and vmhook doctor finds the IOMMU on and VFIO available", async ({ guest }) => {
  assert.match(await guest!.ok("vmhook iommu"), /IOMMU group \d+ \(isolated\): 00:01\.0 can be passed through alone\n  0000:00:01\.0  VGA compatible controller \[0300\]: 1234:1111[^\n]*  driver: bochs-drm\n/);
  const doctor = await guest!.sh("vmhook doctor --json");
  const host = (JSON.parse(doctor.stdout) as { host: Finding[] }).host;
  const status = (check: string) => host.find((finding) => finding.check === check)?.status;
  assert.is(status("iommu"), "ok");
  assert.is(status("vfio modules"), "ok");
  assert.is(status("cgroup v2 cpuset"), "ok");
});

diagnostics.run();
