// Disks on a simulated host as sysfs and procfs show them: a disk below its
// controller's PCI device, its partitions, device-mapper holders (LVM,
// dm-crypt), mounts and swap.
import type { SimHost } from "./simhost.ts";

export interface DiskSpec {
  /** The controller's PCI address. */
  controller: string;
  /** Path from the PCI device to the disk's parent, e.g. "nvme/nvme0" or "ata1/host0/target0:0:0/0:0:0:0/block". */
  via: string;
  disk: string;
  major: number;
  partitions?: string[];
}

/** Adds the disk and its partitions under the controller, each listed in /sys/class/block. */
export function addDisk(sim: SimHost, spec: DiskSpec): void {
  const diskDir = `/sys/devices/pci0000:00/${spec.controller}/${spec.via}/${spec.disk}`;
  // udev's record of each block device (blkid's findings), as every host with udev has.
  sim.file(`${diskDir}/dev`, `${spec.major}:0`).dir(`${diskDir}/holders`).file(`/run/udev/data/b${spec.major}:0`, "E:DEVTYPE=disk\n");
  sim.link(`/sys/class/block/${spec.disk}`, `../../devices/pci0000:00/${spec.controller}/${spec.via}/${spec.disk}`);
  (spec.partitions ?? []).forEach((partition, index) => {
    sim.file(`${diskDir}/${partition}/dev`, `${spec.major}:${index + 1}`).file(`${diskDir}/${partition}/partition`, index + 1).dir(`${diskDir}/${partition}/holders`);
    sim.file(`/run/udev/data/b${spec.major}:${index + 1}`, "E:DEVTYPE=partition\n");
    sim.link(`/sys/class/block/${partition}`, `../../devices/pci0000:00/${spec.controller}/${spec.via}/${spec.disk}/${partition}`);
  });
}

/** A device-mapper device (LVM volume, dm-crypt mapping) built on `member`. */
export function addDeviceMapper(sim: SimHost, dm: string, name: string, uuid: string, member: string): void {
  sim.file(`/sys/devices/virtual/block/${dm}/dm/name`, name).file(`/sys/devices/virtual/block/${dm}/dm/uuid`, uuid).file(`/sys/devices/virtual/block/${dm}/dev`, `254:${dm.slice(3)}`);
  sim.link(`/sys/class/block/${dm}`, `../../devices/virtual/block/${dm}`);
  sim.link(`/sys/class/block/${member}/holders/${dm}`, `../../../../virtual/block/${dm}`);
}

/** /proc/self/mountinfo from (major:minor, source, mount point) triples, and /proc/swaps from swap devices. */
export function mountsAndSwaps(sim: SimHost, mounts: [string, string, string][], swaps: string[] = []): void {
  sim.file("/proc/self/mountinfo", mounts.map(([device, source, point], index) => `${20 + index} 1 ${device} / ${point} rw,relatime shared:1 - ext4 ${source} rw`).join("\n"));
  sim.file("/proc/swaps", ["Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority", ...swaps.map((swap) => `${swap}\tpartition\t8388604\t\t0\t\t-2`)].join("\n"));
}

/** A member of ZFS pool `pool` as udev's blkid record shows it (ZFS registers no sysfs holder); the zfs module loaded, the pool imported or not. */
export function addZfsMember(sim: SimHost, device: string, pool: string, imported: boolean): void {
  const record = `E:ID_FS_LABEL=${pool.replace(/ /g, "_")}\nE:ID_FS_LABEL_ENC=${pool.replace(/ /g, "\\x20")}\nE:ID_FS_TYPE=zfs_member\nE:ID_FS_USAGE=filesystem\n`;
  sim.dir("/sys/module/zfs").file(`/run/udev/data/b${device}`, record);
  if (imported) sim.file(`/proc/spl/kstat/zfs/${pool}/state`, "ONLINE");
}
