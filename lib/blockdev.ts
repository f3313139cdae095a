// The host's own storage behind a PCI device: the disks below it in sysfs
// (NVMe, SATA, SAS controllers) and whether the host uses any of them —
// mounted, swap, held by LVM, mdraid or dm-crypt, or in an imported ZFS pool. Such a device never goes
// to a VM, whatever the policy says: pulling a controller from under a
// mounted filesystem or the root disk takes the host down with it.
import type { Host } from "./host.ts";
import { MOUNTINFO, readMounts } from "./mounts.ts";
import { pciPath } from "./pci.ts";

const BLOCK = "/sys/class/block";
const SWAPS = "/proc/swaps";
const BTRFS = "/sys/fs/btrfs";
const UDEV_DATA = "/run/udev/data";
const ZFS_POOLS = "/proc/spl/kstat/zfs";
/** zpool's rule for a pool name (spaces allowed); no slash, so it is one path component. */
const ZFS_POOL_NAME = /^[A-Za-z][A-Za-z0-9_.: -]*$/;

/**
 * The imported ZFS pool this block device (major:minor) is a member of, if
 * any. ZFS opens its vdevs with no sysfs holder and mountinfo names its
 * datasets, not devices: the member is known from udev's blkid record, the
 * pool imported from /proc/spl/kstat/zfs/POOL. Only while the zfs module is
 * loaded (no pool is imported otherwise); an unreadable record cannot tell.
 */
function importedZfsPool(host: Host, name: string, device: string | undefined, address: string): string | undefined {
  if (!host.exists("/sys/module/zfs")) return undefined;
  const record = device === undefined ? undefined : host.readTrimmed(`${UDEV_DATA}/b${device}`);
  if (record === undefined) throw new Error(`cannot tell whether ${name} behind ${address} is part of an imported ZFS pool: ${UDEV_DATA}/b${device ?? "?"} cannot be read`);
  if (!/^E:ID_FS_TYPE=zfs_member$/m.test(record)) return undefined;
  // ID_FS_LABEL has spaces made "_"; ID_FS_LABEL_ENC keeps them as \x20.
  const pool = (/^E:ID_FS_LABEL_ENC=(.*)$/m.exec(record)?.[1] ?? "").replace(/\\x([0-9a-fA-F]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
  return ZFS_POOL_NAME.test(pool) && host.exists(`${ZFS_POOLS}/${pool}`) ? pool : undefined;
}

/** With native NVMe multipath the controller holds path nodes nvme0c0n1; the disk the host uses is the head nvme0n1. */
const multipathHead = (name: string) => name.replace(/^nvme(\d+)c\d+n(\d+)$/, "nvme$1n$2");

/** Disks whose sysfs path runs through the PCI device, as the host names them. */
function disksBelow(host: Host, address: string): string[] {
  const throughDevice = host.list(BLOCK).filter((name) => (host.readlink(`${BLOCK}/${name}`) ?? "").split("/").includes(address));
  const nvmePaths = host.list(pciPath(address, "nvme")).flatMap((controller) => host.list(pciPath(address, `nvme/${controller}`)).filter((entry) => /^nvme\d+c\d+n\d+$/.test(entry)));
  const disks = [...throughDevice, ...nvmePaths].map(multipathHead).filter((name) => !host.exists(`${BLOCK}/${name}/partition`));
  return [...new Set(disks)].sort();
}

/** A disk and its partitions. */
function withPartitions(host: Host, disk: string): string[] {
  return [disk, ...host.list(`${BLOCK}/${disk}`).filter((entry) => host.exists(`${BLOCK}/${disk}/${entry}/partition`))];
}

/** "LVM volume vg0-root (dm-0)", "mdraid array md0", "dm-crypt mapping cryptroot (dm-1)". */
function describeHolder(host: Host, holder: string): string {
  const dmName = host.readTrimmed(`${BLOCK}/${holder}/dm/name`);
  if (dmName === undefined) return holder.startsWith("md") ? `mdraid array ${holder}` : holder;
  const dmUuid = host.readTrimmed(`${BLOCK}/${holder}/dm/uuid`) ?? "";
  const kind = dmUuid.startsWith("LVM-") ? "LVM volume" : dmUuid.startsWith("CRYPT-") ? "dm-crypt mapping" : "device-mapper device";
  return `${kind} ${dmName} (${holder})`;
}

const baseName = (devicePath: string) => devicePath.split("/").pop() ?? "";

/**
 * Why the host needs the storage behind this PCI device (one line per disk
 * in use), [] when nothing of it is in use. Throws when it cannot tell.
 */
export function storageInUse(host: Host, address: string): string[] {
  const disks = disksBelow(host, address);
  if (disks.length === 0) return [];
  const mountText = host.readTrimmed(MOUNTINFO);
  const swapText = host.readTrimmed(SWAPS);
  if (mountText === undefined || swapText === undefined) {
    throw new Error(`cannot tell whether ${disks.join(", ")} behind ${address} ${disks.length === 1 ? "is" : "are"} in use: ${mountText === undefined ? MOUNTINFO : SWAPS} cannot be read`);
  }
  const mounts = readMounts(mountText);
  const swaps = swapText.split("\n").slice(1).map((line) => baseName(line.split(/\s+/)[0] ?? ""));
  // A btrfs filesystem over several devices shows only one of them in mountinfo; sysfs lists them all while it is mounted.
  const btrfsMembers = host.list(BTRFS).flatMap((filesystem) => host.list(`${BTRFS}/${filesystem}/devices`));
  const uses: string[] = [];
  for (const disk of disks) {
    const found = withPartitions(host, disk).flatMap((name) => {
      const device = host.readTrimmed(`${BLOCK}/${name}/dev`);
      const pool = importedZfsPool(host, name, device, address);
      return [
        ...mounts.filter((mount) => mount.device === device || baseName(mount.source) === name).map((mount) => `${name} is mounted on ${mount.mountPoint}`),
        ...(swaps.includes(name) ? [`${name} is swap`] : []),
        ...(btrfsMembers.includes(name) ? [`${name} is part of a mounted btrfs filesystem`] : []),
        ...(pool ? [`${name} is part of imported ZFS pool ${pool}`] : []),
        ...host.list(`${BLOCK}/${name}/holders`).map((holder) => `${name} is part of ${describeHolder(host, holder)}`),
      ];
    });
    if (found.length > 0) uses.push(`disk ${disk}: ${[...new Set(found)].join(", ")}`);
  }
  return uses;
}
