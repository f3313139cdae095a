// `vmhook iommu` on simulated hosts shaped like real ones.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { readIommuGroups } from "../../lib/diagnostics/iommu.ts";
import { readPciNames } from "../../lib/diagnostics/pciids.ts";
import { addPciDevice, desktopHost, gvtLaptopHost, iommuOffHost, sharedGroupHost } from "../helpers/pci-hosts.ts";

const BINARY = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../dist/vmhook");

test("desktop: the GPU, its audio function and the root port form one group, isolated (bridges do not count)", () => {
  const sim = desktopHost();
  const report = readIommuGroups(sim);
  assert.ok(report.enabled);
  assert.is(report.namesFrom, "/usr/share/misc/pci.ids");
  assert.equal(report.groups.map((group) => [group.id, group.verdict]), [["0", "bridges-only"], ["1", "isolated"], ["2", "isolated"]]);
  const gpuGroup = report.groups[1]!;
  assert.is(gpuGroup.reason, "one card: pass all 2 functions (01:00.0, 01:00.1) together");
  assert.equal(gpuGroup.devices.map((device) => [device.address, device.bridge, device.driver]), [
    ["0000:00:01.0", true, "pcieport"],
    ["0000:01:00.0", false, "nvidia"],
    ["0000:01:00.1", false, "snd_hda_intel"],
  ]);
  const gpu = gpuGroup.devices[1]!;
  assert.equal([gpu.ids, gpu.classCode, gpu.className, gpu.vendorName, gpu.deviceName], ["10de:2684", "0300", "VGA compatible controller", "NVIDIA Corporation", "AD102 [GeForce RTX 4090]"]);
  assert.is(gpuGroup.devices[2]!.deviceName, "AD102 High Definition Audio Controller");
  assert.is(report.groups[2]!.reason, "02:00.0 can be passed through alone");
  sim.cleanup();
});

test("a device behind Intel VMD (PCI domain 10000) is a PCI device of its group: named, with its driver, judged by viableBeside", () => {
  const sim = desktopHost();
  addPciDevice(sim, { address: "10000:e1:00.0", classCode: "0x010802", vendor: "0x144d", device: "0xa808", driver: "nvme", group: 1 });
  const member = readIommuGroups(sim).groups.find((group) => group.id === "1")!.devices.find((device) => device.address === "10000:e1:00.0")!;
  assert.equal([member.ids, member.driver, member.viableBeside], ["144d:a808", "nvme", false]);
  sim.cleanup();
});

test("laptop with GVT-g: the iGPU is alone in its group; class names come from pci.ids", () => {
  const sim = gvtLaptopHost();
  const report = readIommuGroups(sim);
  const igpu = report.groups.find((group) => group.devices.some((device) => device.address === "0000:00:02.0"))!;
  assert.is(igpu.verdict, "isolated");
  assert.equal(igpu.devices.map((device) => [device.driver, device.deviceName]), [["i915", "WhiskeyLake-U GT2 [UHD Graphics 620]"]]);
  // 0401 is in no built-in table: only the pci.ids scan can name it
  assert.is(report.groups[2]!.devices[0]!.className, "Multimedia audio controller");
  sim.cleanup();
});

test("a group shared behind a root port: not isolated, naming the other card and what passthrough needs of it (as prepare accepts it)", () => {
  const sim = sharedGroupHost();
  const group = readIommuGroups(sim).groups.find((candidate) => candidate.id === "5")!;
  assert.is(group.verdict, "shared");
  assert.is(
    group.reason,
    "2 cards share it: 01:00 (VGA compatible controller, Audio device), 02:00 (Non-Volatile memory controller); a group goes to a VM whole: to pass one card through, give the VM the others too, or leave them with no driver or on vfio-pci/pci-stub (the host cannot use them meanwhile), or move the card to a slot with its own group",
  );
  sim.cleanup();
});

test("a root port on shpchp in the GPU's group: blocked on kernel 6.1 (prepare refuses it), naming the bridge, its driver and the fix; isolated before 5.19", () => {
  const sim = desktopHost("shpchp");
  const blocked = readIommuGroups(sim).groups[1]!;
  assert.is(blocked.verdict, "blocked");
  assert.is(
    blocked.reason,
    "one card: pass all 2 functions (01:00.0, 01:00.1) together; but it holds bridge 00:01.0 on shpchp, which vfio does not accept beside a device passed through: unbind it from shpchp (echo 0000:00:01.0 > /sys/bus/pci/drivers/shpchp/unbind) or let pcieport drive it",
  );
  sim.file("/proc/sys/kernel/osrelease", "5.15.0-91-generic");
  assert.is(readIommuGroups(sim).groups[1]!.verdict, "isolated");
  sim.cleanup();
});

test("IOMMU off: no groups, and the kernel parameter that turns it on, by CPU vendor and command line", () => {
  const cases: [ReturnType<typeof iommuOffHost>, RegExp][] = [
    [iommuOffHost("GenuineIntel").file("/etc/default/grub", "GRUB_CMDLINE_LINUX_DEFAULT=quiet\n").file("/usr/sbin/update-grub"), /boot with intel_iommu=on iommu=pt: add intel_iommu=on iommu=pt to GRUB_CMDLINE_LINUX_DEFAULT in \/etc\/default\/grub, run update-grub and reboot/],
    [iommuOffHost("GenuineIntel").file("/etc/default/grub").dir("/boot/grub2"), /run grub2-mkconfig -o \/boot\/grub2\/grub.cfg and reboot/],
    [iommuOffHost("GenuineIntel").file("/usr/bin/kernelstub"), /boot with intel_iommu=on iommu=pt: run kernelstub -a "intel_iommu=on iommu=pt" and reboot/],
    [iommuOffHost("GenuineIntel").file("/boot/efi/loader/loader.conf"), /add intel_iommu=on iommu=pt to the options line of the entries in \/boot\/efi\/loader\/entries\/ and reboot/],
    [iommuOffHost("GenuineIntel").file("/efi/loader/loader.conf").file("/etc/kernel/cmdline"), /add intel_iommu=on iommu=pt to \/etc\/kernel\/cmdline, run kernel-install/],
    [iommuOffHost("GenuineIntel"), /add intel_iommu=on iommu=pt to the kernel command line in your boot loader's configuration and reboot/],
    [iommuOffHost("GenuineIntel", "intel_iommu=on"), /enable VT-d .* in the firmware setup/],
    [iommuOffHost("AuthenticAMD"), /enable the IOMMU \(AMD-Vi\) in the firmware setup and boot with iommu=pt \(amd_iommu=on/],
    [iommuOffHost("AuthenticAMD", "iommu=off"), /remove iommu=off from the kernel command line/],
    [iommuOffHost("AuthenticAMD", "iommu=off").file("/usr/bin/kernelstub"), /run kernelstub -d "iommu=off" and reboot/],
  ];
  for (const [sim, fix] of cases) {
    const report = readIommuGroups(sim);
    assert.is(report.enabled, false);
    assert.equal(report.groups, []);
    assert.match(report.advice!.fix, fix);
    sim.cleanup();
  }
});

test("pci.ids: only the entries asked for are kept; without the file, common classes are still named", () => {
  const sim = desktopHost();
  const names = readPciNames(sim, [{ vendor: "10de", device: "2684", classCode: "0300" }]);
  assert.is(names.device("10de", "2684"), "AD102 [GeForce RTX 4090]");
  assert.is(names.device("10de", "22ba"), undefined, "not asked for");
  assert.is(names.vendor("144d"), undefined, "not asked for");
  fs.rmSync(sim.resolve("/usr/share/misc/pci.ids"));
  const report = readIommuGroups(sim);
  assert.is(report.namesFrom, undefined);
  assert.is(report.groups[1]!.devices[1]!.className, "VGA compatible controller");
  assert.is(report.groups[1]!.devices[1]!.deviceName, undefined);
  sim.cleanup();
});

test("the binary: vmhook iommu prints each group with its verdict; --json; IOMMU off says how to turn it on", () => {
  const run = (root: string, ...args: string[]) => spawnSync(BINARY, ["iommu", "--root", root, ...args], { encoding: "utf8", timeout: 30_000 });
  const sim = sharedGroupHost();
  const text = run(sim.root);
  assert.is(text.status, 0, text.stderr);
  assert.match(text.stdout, "IOMMU group 5 (NOT isolated): 2 cards share it");
  assert.match(text.stdout, "  0000:01:00.0  VGA compatible controller [0300]: 10de:2684 NVIDIA Corporation AD102 [GeForce RTX 4090]  driver: nvidia");
  assert.match(text.stdout, "  0000:00:01.1  PCI bridge [0604]: 1022:1483 Advanced Micro Devices, Inc. [AMD] Starship/Matisse GPP Bridge  driver: pcieport  (bridge)");
  const json = JSON.parse(run(sim.root, "--json").stdout);
  assert.equal(json.groups.map((group: { id: string; verdict: string }) => `${group.id}:${group.verdict}`), ["4:bridges-only", "5:shared"]);
  sim.cleanup();

  const off = iommuOffHost();
  const offText = run(off.root);
  assert.is(offText.status, 0);
  assert.match(offText.stdout, "No IOMMU groups: the IOMMU is off (Intel CPU, no intel_iommu=on on the kernel command line).\nFix: boot with intel_iommu=on iommu=pt");
  off.cleanup();
});

test.run();
