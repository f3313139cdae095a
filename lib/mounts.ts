// The mount table as the kernel shows this process's mount namespace (the
// hook's is libvirt's): block devices in use, hugetlbfs mounts for libvirt.

export const MOUNTINFO = "/proc/self/mountinfo";

export interface Mount {
  /** major:minor */
  device: string;
  mountPoint: string;
  type: string;
  source: string;
  /** The filesystem's own options (hugetlbfs: pagesize=2M). */
  superOptions: string[];
}

/** /proc/self/mountinfo: "36 1 259:2 / / rw shared:1 - ext4 /dev/nvme0n1p2 rw" (octal escapes kept; only compared). */
export function readMounts(text: string): Mount[] {
  return text
    .split("\n")
    .filter(Boolean)
    .map((line) => {
      const fields = line.split(" ");
      const separator = fields.indexOf("-");
      return {
        device: fields[2] ?? "",
        mountPoint: fields[4] ?? "",
        type: fields[separator + 1] ?? "",
        source: fields[separator + 2] ?? "",
        superOptions: (fields[separator + 3] ?? "").split(","),
      };
    });
}
