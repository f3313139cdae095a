// Where the kernel keeps memory facts: huge page pools (global and per NUMA
// node) and meminfo. Shared by the hugepages plugin and `vmhook doctor`.
import type { Host } from "./host.ts";

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

/** /proc/meminfo, or a node's meminfo ("Node 0 MemFree: 123 kB"), as KiB by field name. */
export function meminfo(host: Host, node?: number): Record<string, number> {
  const fields: Record<string, number> = {};
  const text = host.readTrimmed(node === undefined ? "/proc/meminfo" : `${nodeDir(node)}/meminfo`) ?? "";
  for (const match of text.matchAll(/^(?:Node \d+ )?(\w+):\s+(\d+)/gm)) fields[match[1]!] = Number(match[2]);
  return fields;
}

/** The host's NUMA node numbers, in order. */
export const hostNodes = (host: Host) => host.list(NODE_DIR).filter((entry) => /^node\d+$/.test(entry)).map((entry) => Number(entry.slice(4))).sort((a, b) => a - b);
