// Where the kernel keeps memory facts: huge page pools (global and per NUMA
// node) and meminfo. Shared by the hugepages plugin and `vmhook doctor`.
import { VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import { parseKernelCpuList } from "./cpuset.ts";
import { MOUNTINFO, readMounts } from "./mounts.ts";

export const NODE_DIR = "/sys/devices/system/node";
export const HUGEPAGE_DIR = "/sys/kernel/mm/hugepages";

export const nodeDir = (node: number) => `${NODE_DIR}/node${node}`;

/** The directory of a pool: the global one, or a NUMA node's. */
export function hugepagePool(sizeKiB: number, node: number | undefined): string {
  return `${node === undefined ? HUGEPAGE_DIR : `${nodeDir(node)}/hugepages`}/hugepages-${sizeKiB}kB`;
}

/** The huge page sizes this kernel has pools for, in KiB, smallest first. */
export function hugepageSizes(host: Host): number[] {
  return host
    .list(HUGEPAGE_DIR)
    .map((entry) => Number(/^hugepages-(\d+)kB$/.exec(entry)?.[1]))
    .filter((size) => size > 0)
    .sort((a, b) => a - b);
}

const meminfoFile = (node: number | undefined) => (node === undefined ? "/proc/meminfo" : `${nodeDir(node)}/meminfo`);

/** /proc/meminfo, or a node's meminfo ("Node 0 MemFree: 123 kB"), as KiB by field name ("Inactive(file)" included). */
export function meminfo(host: Host, node?: number): Record<string, number> {
  const fields: Record<string, number> = {};
  const text = host.readTrimmed(meminfoFile(node)) ?? "";
  for (const match of text.matchAll(/^(?:Node \d+ )?([\w()]+):\s+(\d+)/gm)) fields[match[1]!] = Number(match[2]);
  return fields;
}

/** What a scope (the host, or one NUMA node) has and could give, in KiB. */
export interface MemoryFacts {
  totalKiB: number;
  /**
   * The host: the kernel's MemAvailable. A node has no such field: free
   * memory plus its file cache and reclaimable slab, capped by the host's.
   */
  availableKiB: number;
  freeKiB: number;
}

/** meminfo of the host or a node as MemoryFacts; fails closed when a field is missing or not an exact count. */
export function memoryFacts(host: Host, node?: number): MemoryFacts {
  const fields = meminfo(host, node);
  const field = (name: string, from = fields, scope = node): number => {
    const value = from[name];
    if (value === undefined || !Number.isSafeInteger(value)) {
      throw new VmhookError(`cannot read ${name} from ${meminfoFile(scope)} (got ${value ?? "nothing"}); vmhook does not take huge pages without knowing the free memory`);
    }
    return value;
  };
  const totalKiB = field("MemTotal");
  const freeKiB = field("MemFree");
  if (node === undefined) return { totalKiB, freeKiB, availableKiB: field("MemAvailable") };
  const reclaimable = ["Active(file)", "Inactive(file)", "SReclaimable"].reduce((sum, name) => sum + (fields[name] ?? 0), 0);
  const hostAvailable = field("MemAvailable", meminfo(host), undefined);
  return { totalKiB, freeKiB, availableKiB: Math.min(freeKiB + reclaimable, hostAvailable) };
}

/** The host's NUMA node numbers, in order. */
export const hostNodes = (host: Host) => host.list(NODE_DIR).filter((entry) => /^node\d+$/.test(entry)).map((entry) => Number(entry.slice(4))).sort((a, b) => a - b);

/**
 * The nodes that have memory (has_memory, the kernel's N_MEMORY), or
 * undefined when the kernel does not say. A node missing from it (CPUs only,
 * or all its memory taken offline) has no huge pages to give: Linux 6.1 gives
 * it pools that never grow, older kernels no pools at all.
 */
export function nodesWithMemory(host: Host): number[] | undefined {
  const text = host.readTrimmed(`${NODE_DIR}/has_memory`);
  return text === undefined ? undefined : parseKernelCpuList(text);
}

/**
 * The hugetlbfs mounts and the page size of each, or undefined when the
 * mount table cannot be read. The kernel shows the size as pagesize=NK or
 * pagesize=NM (a 1G mount: pagesize=1024M).
 */
export function hugetlbfsMounts(host: Host): { mountPoint: string; sizeKiB: number }[] | undefined {
  const text = host.readTrimmed(MOUNTINFO);
  if (text === undefined) return undefined;
  const unit: Record<string, number> = { K: 1, M: 1024, G: 1024 * 1024 };
  return readMounts(text)
    .filter((mount) => mount.type === "hugetlbfs")
    .flatMap(({ mountPoint, superOptions }) => {
      const size = superOptions.map((option) => /^pagesize=(\d+)([KMG])$/.exec(option)).find(Boolean);
      return size ? [{ mountPoint, sizeKiB: Number(size[1]) * unit[size[2]!]! }] : [];
    });
}
