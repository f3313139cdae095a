// Simulated hosts for the diagnostics, shaped like real machines: sysfs PCI
// devices with their IOMMU groups and drivers, procfs, kernel modules,
// hugepage pools, cgroup v2, an installed hook. Each builder returns a
// SimHost; tests change what they examine.
import * as fs from "node:fs";
import { SimHost } from "./simhost.ts";

export interface PciSpec {
  address: string;
  /** "0x030000" */
  classCode: string;
  vendor: string;
  device: string;
  driver?: string;
  group?: number;
  /** mdev types this device offers, with their available instances. */
  mdevTypes?: Record<string, number>;
}

/** A pci.ids excerpt in the real file's format (vendors, devices, subsystems, then classes). */
export const PCI_IDS_EXCERPT = `#
#	List of PCI ID's (excerpt for tests)
#
1022  Advanced Micro Devices, Inc. [AMD]
	1482  Starship/Matisse PCIe Dummy Host Bridge
	1483  Starship/Matisse GPP Bridge
10de  NVIDIA Corporation
	2684  AD102 [GeForce RTX 4090]
		1043 889d  ROG Strix GeForce RTX 4090
	22ba  AD102 High Definition Audio Controller
144d  Samsung Electronics Co Ltd
	a808  NVMe SSD Controller SM981/PM981/PM983
8086  Intel Corporation
	1901  6th-10th Gen Core Processor PCIe Controller (x16)
	3e30  8th/9th Gen Core 8-core Desktop Processor Host Bridge/DRAM Registers [Coffee Lake S]
	3ea0  WhiskeyLake-U GT2 [UHD Graphics 620]
	9a14  11th Gen Core Processor Host Bridge/DRAM Registers
	9a49  TigerLake-LP GT2 [Iris Xe Graphics]
	a0c8  Tiger Lake-LP Smart Sound Technology Audio Controller

# List of known device classes, subclasses and programming interfaces
C 01  Mass storage controller
	08  Non-Volatile memory controller
		02  NVM Express
C 03  Display controller
	00  VGA compatible controller
		00  VGA controller
C 04  Multimedia controller
	01  Multimedia audio controller
	03  Audio device
C 06  Bridge
	00  Host bridge
	04  PCI bridge
		00  Normal decode
`;

export const KERNEL_RELEASE = "6.1.0-18-amd64";

export function addPciDevice(sim: SimHost, spec: PciSpec): void {
  const dir = `/sys/bus/pci/devices/${spec.address}`;
  sim.file(`${dir}/class`, spec.classCode).file(`${dir}/vendor`, spec.vendor).file(`${dir}/device`, spec.device);
  if (spec.driver) {
    sim.dir(`/sys/bus/pci/drivers/${spec.driver}`);
    sim.link(`${dir}/driver`, `../../../../bus/pci/drivers/${spec.driver}`);
  }
  if (spec.group !== undefined) {
    sim.link(`${dir}/iommu_group`, `../../../../kernel/iommu_groups/${spec.group}`);
    sim.link(`/sys/kernel/iommu_groups/${spec.group}/devices/${spec.address}`, `../../../../devices/pci0000:00/${spec.address}`);
  }
  for (const [type, available] of Object.entries(spec.mdevTypes ?? {})) {
    const typeDir = `${dir}/mdev_supported_types/${type}`;
    sim.file(`${typeDir}/available_instances`, available).file(`${typeDir}/device_api`, "vfio-pci").file(`${typeDir}/name`, type);
    sim.link(`/sys/class/mdev_bus/${spec.address}`, `../../bus/pci/devices/${spec.address}`);
  }
}

/** The module that registers a PCI driver (its driver's module link, the module's drivers/pci:DRIVER link) and the modules it uses (each lists it as a holder), as sysfs shows them. */
export function addDriverModule(sim: SimHost, driver: string, module: string, uses: string[]): void {
  sim.dir(`/sys/module/${module}/holders`).link(`/sys/bus/pci/drivers/${driver}/module`, `../../../../module/${module}`);
  sim.link(`/sys/module/${module}/drivers/pci:${driver}`, `../../../bus/pci/drivers/${driver}`);
  for (const used of uses) sim.link(`/sys/module/${used}/holders/${module}`, `../../${module}`);
}

/** What every host has besides its PCI devices: a healthy vmhook host unless a test breaks it. */
function basics(sim: SimHost, cpu: "GenuineIntel" | "AuthenticAMD", cmdline: string): SimHost {
  sim.dir("/var/log").dir("/run/vmhook");
  sim.file("/proc/cpuinfo", `processor\t: 0\nvendor_id\t: ${cpu}\ncpu family\t: 6\n`);
  sim.file("/proc/cmdline", `BOOT_IMAGE=/boot/vmlinuz-${KERNEL_RELEASE} root=UUID=0 ro quiet ${cmdline}`.trim());
  sim.file("/proc/sys/kernel/osrelease", KERNEL_RELEASE);
  sim.file(
    `/lib/modules/${KERNEL_RELEASE}/modules.dep`,
    [
      "kernel/drivers/vfio/vfio.ko: kernel/drivers/iommu/iommufd/iommufd.ko",
      "kernel/drivers/vfio/vfio_iommu_type1.ko: kernel/drivers/vfio/vfio.ko",
      "kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko kernel/drivers/vfio/vfio.ko",
      "kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko",
      "kernel/net/dccp/dccp.ko:",
      "kernel/drivers/tty/n_hdlc.ko:",
      // Out-of-tree modules, as DKMS installs them for the running kernel.
      "updates/dkms/kvmfr.ko:",
      "updates/dkms/vendor-reset.ko:",
      "updates/dkms/nvidia.ko:",
      "updates/dkms/nvidia-modeset.ko: updates/dkms/nvidia.ko",
      "updates/dkms/nvidia-drm.ko: updates/dkms/nvidia-modeset.ko updates/dkms/nvidia.ko",
    ].join("\n"),
  );
  sim.file(`/lib/modules/${KERNEL_RELEASE}/modules.builtin`, "kernel/drivers/pci/pcieport.ko\n");
  sim.dir("/sys/module/vfio");
  sim.file("/proc/meminfo", "MemTotal:       32768000 kB\nMemFree:        20000000 kB\nMemAvailable:   26000000 kB\nHugepagesize:       2048 kB\n");
  sim.file("/sys/devices/system/node/node0/meminfo", "Node 0 MemTotal:       32768000 kB\nNode 0 MemFree:        20000000 kB\nNode 0 Inactive(file):  6000000 kB\n");
  for (const size of [2048, 1048576]) {
    sim.file(`/sys/kernel/mm/hugepages/hugepages-${size}kB/nr_hugepages`, 0).file(`/sys/kernel/mm/hugepages/hugepages-${size}kB/free_hugepages`, 0);
  }
  // hugetlbfs of the default size as systemd mounts it, and one of 1G pages for libvirt (the kernel shows 1G as 1024M)
  sim.file("/proc/self/mountinfo", "24 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n40 22 0:40 / /dev/hugepages rw,relatime shared:20 - hugetlbfs hugetlbfs rw,pagesize=2M\n41 22 0:41 / /dev/hugepages1G rw,relatime shared:21 - hugetlbfs none rw,pagesize=1024M\n");
  sim.file("/sys/devices/system/cpu/online", "0-7");
  sim.file("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc");
  // The installed hook: found by the marker every vmhook binary carries.
  sim.file("/etc/libvirt/hooks/qemu", "\x7fELF...vmhook-binary-marker:c0ffee-1...");
  fs.chmodSync(sim.resolve("/etc/libvirt/hooks/qemu"), 0o755);
  sim.file("/usr/share/misc/pci.ids", PCI_IDS_EXCERPT);
  return sim;
}

/** Intel desktop, one NVIDIA GPU in the x16 slot: the root port (on rootPortDriver), the GPU and its audio function in group 1. */
export function desktopHost(rootPortDriver = "pcieport"): SimHost {
  const sim = basics(new SimHost(), "GenuineIntel", "intel_iommu=on iommu=pt");
  addPciDevice(sim, { address: "0000:00:00.0", classCode: "0x060000", vendor: "0x8086", device: "0x3e30", group: 0 });
  addPciDevice(sim, { address: "0000:00:01.0", classCode: "0x060400", vendor: "0x8086", device: "0x1901", driver: rootPortDriver, group: 1 });
  addPciDevice(sim, { address: "0000:01:00.0", classCode: "0x030000", vendor: "0x10de", device: "0x2684", driver: "nvidia", group: 1 });
  addPciDevice(sim, { address: "0000:01:00.1", classCode: "0x040300", vendor: "0x10de", device: "0x22ba", driver: "snd_hda_intel", group: 1 });
  addPciDevice(sim, { address: "0000:02:00.0", classCode: "0x010802", vendor: "0x144d", device: "0xa808", driver: "nvme", group: 2 });
  return sim;
}

/** Intel laptop with GVT-g (Whiskey Lake, Gen9.5): i915 at 00:02.0 offering two mdev types. */
export function gvtLaptopHost(): SimHost {
  const sim = basics(new SimHost(), "GenuineIntel", "intel_iommu=on i915.enable_gvt=1");
  addPciDevice(sim, { address: "0000:00:00.0", classCode: "0x060000", vendor: "0x8086", device: "0x9a14", group: 0 });
  addPciDevice(sim, {
    address: "0000:00:02.0",
    classCode: "0x030000",
    vendor: "0x8086",
    device: "0x3ea0",
    driver: "i915",
    group: 1,
    mdevTypes: { "i915-GVTg_V5_4": 1, "i915-GVTg_V5_8": 2 },
  });
  addPciDevice(sim, { address: "0000:00:1f.3", classCode: "0x040100", vendor: "0x8086", device: "0xa0c8", driver: "snd_hda_intel", group: 2 });
  return sim;
}

/** AMD host without ACS below the root port: GPU, its audio and an NVMe drive share group 5 behind 00:01.1. */
export function sharedGroupHost(): SimHost {
  const sim = basics(new SimHost(), "AuthenticAMD", "iommu=pt");
  addPciDevice(sim, { address: "0000:00:01.0", classCode: "0x060000", vendor: "0x1022", device: "0x1482", group: 4 });
  addPciDevice(sim, { address: "0000:00:01.1", classCode: "0x060400", vendor: "0x1022", device: "0x1483", driver: "pcieport", group: 5 });
  addPciDevice(sim, { address: "0000:01:00.0", classCode: "0x030000", vendor: "0x10de", device: "0x2684", driver: "nvidia", group: 5 });
  addPciDevice(sim, { address: "0000:01:00.1", classCode: "0x040300", vendor: "0x10de", device: "0x22ba", driver: "snd_hda_intel", group: 5 });
  addPciDevice(sim, { address: "0000:02:00.0", classCode: "0x010802", vendor: "0x144d", device: "0xa808", driver: "nvme", group: 5 });
  return sim;
}

/** The desktop booted without intel_iommu=on: devices, but no IOMMU groups. */
export function iommuOffHost(cpu: "GenuineIntel" | "AuthenticAMD" = "GenuineIntel", cmdline = ""): SimHost {
  const sim = basics(new SimHost(), cpu, cmdline);
  addPciDevice(sim, { address: "0000:00:00.0", classCode: "0x060000", vendor: "0x8086", device: "0x3e30" });
  addPciDevice(sim, { address: "0000:01:00.0", classCode: "0x030000", vendor: "0x10de", device: "0x2684", driver: "nvidia" });
  addPciDevice(sim, { address: "0000:01:00.1", classCode: "0x040300", vendor: "0x10de", device: "0x22ba", driver: "snd_hda_intel" });
  return sim;
}
