// The hugepages plugin: before QEMU starts, grow the kernel's huge page pools
// by exactly what this VM's memory needs; when it stops, shrink them by
// exactly what was added. Pools are shared by every VM and by whatever the
// admin reserved, so only deltas are ever written, under the host-wide lock.
//
//   <vmhook:hugepages size="2M|1G" node="N[,M]" timeout="SECONDS"/>
//
// Page size: size=, else <memoryBacking><hugepages><page size>, else 2M.
// Count: guest memory rounded up to whole pages, per guest NUMA cell.
// Pools: node=, else <numatune><memnode> per cell, else <numatune><memory
// nodeset>, else the global pool; a nodeset of several nodes gets the pages
// split evenly (the first nodes take the remainder).
import type { Element } from "@xmldom/xmldom";
import { readAttributes, single } from "../lib/element.ts";
import { parseCpuset } from "../lib/cpuset.ts";
import { describeElement, type Domain } from "../lib/domain.ts";
import { ConfigError, VmhookError } from "../lib/errors.ts";
import type { Host } from "../lib/host.ts";
import { fail, ok, roundMiB, warn, type Finding } from "../lib/diagnostics/findings.ts";
import { HUGEPAGE_DIR, hostNodes, hugepagePool, hugepageSizes, meminfo, NODE_DIR, nodeDir } from "../lib/memory.ts";
import { defineAction, definePlugin, type ApplyContext, type BaseContext, type CheckContext, type PlanContext, type Step, type UndoRecord } from "../lib/plugin.ts";
import { formatKiB, parseInteger, parseSizeWithSuffix } from "../lib/validate.ts";

/** Pages of one size to add to one pool: a host NUMA node's, or the global one. */
export interface PoolNeed {
  sizeKiB: number;
  /** undefined: the global pool (the kernel spreads it over the nodes). */
  node?: number;
  pages: number;
}

export interface HugepagesConfig {
  pools: PoolNeed[];
  /** How long to keep dropping caches and compacting memory while the kernel grants too few pages. */
  retrySeconds: number;
  /** <memoryBacking><hugepages> is present; without it QEMU does not use the pages. */
  backedByHugepages: boolean;
}

/**
 * Journaled per pool. `added`: how much the persistent pool grew (new pages,
 * plus surplus pages the kernel promoted first); `returned`: how many of them went back already.
 */
interface GrowRecord extends UndoRecord {
  action: "grow-pool";
  sizeKiB: number;
  node: number | null;
  /** The pages this VM needs from the pool (absent in journals of vmhook 0.1, whose undo does not need it). */
  pages: number;
  added: number;
  returned: number;
}

const ATTRIBUTES = ["size", "node", "timeout"] as const;
const DEFAULT_SIZE_KIB = 2048;
const DEFAULT_RETRY_SECONDS = 10;
const BASE_PAGE_KIB = 4;
const MAX_NODE = 1023;

// ---- config: the metadata element plus the domain XML → pools and page counts

function parseConfig(elements: Element[], domain: Domain): HugepagesConfig {
  const element = single(elements);
  const where = describeElement(element);
  const attrs = readAttributes(element, ATTRIBUTES);
  const size = attrs.size === undefined ? undefined : checkPageSize(parseSizeWithSuffix(attrs.size, where, "size"), where, `size="${attrs.size}"`);
  const nodes = attrs.node === undefined ? undefined : parseCpuset(attrs.node, where, "node", MAX_NODE);
  const retrySeconds = attrs.timeout === undefined ? DEFAULT_RETRY_SECONDS : parseInteger(attrs.timeout, where, "timeout", 0, 3600);
  return { pools: poolNeeds(domain, where, size, nodes), retrySeconds, backedByHugepages: domain.hugepages !== undefined };
}

function checkPageSize(sizeKiB: number, element: string, value: string): number {
  const powerOfTwo = sizeKiB > 0 && (sizeKiB & (sizeKiB - 1)) === 0;
  if (!powerOfTwo || sizeKiB <= BASE_PAGE_KIB) {
    throw new ConfigError(element, `${value} is not a huge page size; on x86-64 use 2M or 1G (ls /sys/kernel/mm/hugepages lists this host's sizes)`);
  }
  return sizeKiB;
}

/** One part of guest memory: a guest NUMA cell, or all of it when the guest has no cells. */
interface MemoryPart {
  cell?: number;
  memoryKiB: number;
}

function memoryParts(domain: Domain): MemoryPart[] {
  if (domain.numaCells.length > 0) return domain.numaCells.map((cell) => ({ cell: cell.id, memoryKiB: cell.memoryKiB }));
  if (domain.memoryKiB <= 0) throw new ConfigError("<domain>", "has no <memory>, so there is nothing to back with huge pages; add <memory unit='GiB'>N</memory>");
  return [{ memoryKiB: domain.memoryKiB }];
}

function pageSizeOf(part: MemoryPart, domain: Domain, sizeAttribute: number | undefined, where: string): number {
  const pages = domain.hugepages?.pages ?? [];
  if (sizeAttribute !== undefined) {
    const other = pages.find((page) => page.sizeKiB !== sizeAttribute);
    if (other) {
      throw new ConfigError(where, `size="${formatKiB(sizeAttribute)}" disagrees with <memoryBacking><hugepages><page size="${other.sizeKiB}" unit="KiB">; remove size= or make both the same`);
    }
    return sizeAttribute;
  }
  const inCell = (nodeset: string) =>
    part.cell !== undefined && parseCpuset(nodeset, "<memoryBacking><hugepages><page>", "nodeset", MAX_NODE).includes(part.cell);
  const page = pages.find((p) => p.nodeset !== undefined && inCell(p.nodeset)) ?? pages.find((p) => p.nodeset === undefined);
  return page ? checkPageSize(page.sizeKiB, "<memoryBacking><hugepages><page>", `size="${page.sizeKiB}" (KiB)`) : DEFAULT_SIZE_KIB;
}

function hostNodesOf(part: MemoryPart, domain: Domain, nodeAttribute: number[] | undefined): number[] | undefined {
  if (nodeAttribute) return nodeAttribute;
  const memnode = part.cell === undefined ? undefined : domain.memnodes.find((m) => m.cellid === part.cell);
  return memnode?.nodeset ?? domain.numatuneMemory?.nodeset;
}

/** The pages each pool must grow by, merged per (size, node). */
function poolNeeds(domain: Domain, where: string, sizeAttribute: number | undefined, nodeAttribute: number[] | undefined): PoolNeed[] {
  for (const memnode of domain.memnodes) {
    if (!domain.numaCells.some((cell) => cell.id === memnode.cellid)) {
      throw new ConfigError("<numatune><memnode>", `cellid="${memnode.cellid}" names no guest NUMA cell in <cpu><numa>; fix cellid or add the <cell>`);
    }
  }
  // Pages per (size, nodeset) first, so a nodeset's total is split once, evenly.
  const byNodeset = new Map<string, { sizeKiB: number; nodes?: number[]; pages: number }>();
  for (const part of memoryParts(domain)) {
    const sizeKiB = pageSizeOf(part, domain, sizeAttribute, where);
    const nodes = hostNodesOf(part, domain, nodeAttribute);
    const key = `${sizeKiB}/${nodes?.join(",") ?? "global"}`;
    const group = byNodeset.get(key) ?? { sizeKiB, nodes, pages: 0 };
    group.pages += Math.ceil(part.memoryKiB / sizeKiB);
    byNodeset.set(key, group);
  }
  const byPool = new Map<string, PoolNeed>();
  const add = (sizeKiB: number, node: number | undefined, pages: number) => {
    const key = `${sizeKiB}/${node ?? "global"}`;
    const need = byPool.get(key) ?? { sizeKiB, ...(node === undefined ? {} : { node }), pages: 0 };
    need.pages += pages;
    byPool.set(key, need);
  };
  for (const { sizeKiB, nodes, pages } of byNodeset.values()) {
    if (!nodes) add(sizeKiB, undefined, pages);
    else nodes.forEach((node, index) => add(sizeKiB, node, Math.floor(pages / nodes.length) + (index < pages % nodes.length ? 1 : 0)));
  }
  return [...byPool.values()].filter((need) => need.pages > 0);
}

// ---- the kernel's pools

const poolFile = (sizeKiB: number, node: number | undefined, file = "nr_hugepages") => `${hugepagePool(sizeKiB, node)}/${file}`;

/** "the 2M pool", "the 1G pool of node 1": for messages. */
const poolName = (sizeKiB: number, node: number | undefined) => `the ${formatKiB(sizeKiB)} pool${node === undefined ? "" : ` of node ${node}`}`;

function readCount(host: Host, file: string): number {
  const text = host.readTrimmed(file);
  const count = Number(text);
  if (text === undefined || text === "" || !Number.isSafeInteger(count) || count < 0) {
    throw new VmhookError(`hugepages: cannot read the pool size from ${file} (got ${JSON.stringify(text ?? null)})`);
  }
  return count;
}

/**
 * A pool as mm/hugetlb.c counts it: nr_hugepages shows all pages, surplus ones
 * (nr_overcommit_hugepages, or in use when a pool shrank) included, while a
 * write sets the persistent count, all minus surplus (for a node's pool: on
 * Linux 6.7 and later; older kernels also count other nodes' surplus in).
 */
function readPool(host: Host, sizeKiB: number, node: number | undefined): { total: number; persistent: number } {
  const total = readCount(host, poolFile(sizeKiB, node));
  const surplusFile = poolFile(sizeKiB, node, "surplus_hugepages");
  return { total, persistent: total - (host.exists(surplusFile) ? readCount(host, surplusFile) : 0) };
}

function writeCount(host: Host, file: string, count: number): void {
  try {
    host.write(file, `${count}\n`);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    throw new VmhookError(`hugepages: the kernel refused ${count} in ${file} (${code}); check dmesg`);
  }
}

/** Checks that change nothing, before the first step: the node and the pool exist. */
function checkPoolExists(host: Host, need: PoolNeed): void {
  if (need.node !== undefined && !host.exists(nodeDir(need.node))) {
    const online = host.readTrimmed(`${NODE_DIR}/online`) || "0";
    throw new VmhookError(
      `hugepages: host NUMA node ${need.node} does not exist (this host has node(s) ${online}); fix node= on <vmhook:hugepages> or the nodeset in <numatune>`,
    );
  }
  if (!host.exists(poolFile(need.sizeKiB, need.node))) {
    const sizes = hugepageSizes(host);
    throw new VmhookError(
      sizes.length === 0
        ? "hugepages: this kernel has no huge page support (/sys/kernel/mm/hugepages is missing or empty); remove <vmhook:hugepages>"
        : `hugepages: this host has no ${formatKiB(need.sizeKiB)} huge page pool${need.node === undefined ? "" : ` on node ${need.node}`}; it has ${sizes.map(formatKiB).join(", ")}: set size= on <vmhook:hugepages> to one of them`,
      need.sizeKiB === 1024 * 1024 ? ["1G pages need a CPU with the pdpe1gb flag (grep pdpe1gb /proc/cpuinfo)"] : [],
    );
  }
}

function freeMemory(host: Host, node: number | undefined): string {
  const kib = meminfo(host, node).MemFree;
  return kib === undefined ? "unknown" : `${Math.round(kib / 1024)} MiB`;
}

/** Frees what the kernel can give up and defragments, so a retry can find contiguous memory. */
function reclaim(host: Host, node: number | undefined): void {
  host.write("/proc/sys/vm/drop_caches", "3\n");
  // compact files exist only with CONFIG_COMPACTION
  const compact = node === undefined ? "/proc/sys/vm/compact_memory" : `${nodeDir(node)}/compact`;
  if (host.exists(compact)) host.write(compact, "1\n");
}

// ---- prepare: grow each pool by this VM's need

/** Checks that change nothing, then one grow-pool step per pool. */
function planPrepare(ctx: PlanContext<HugepagesConfig>): Step<GrowRecord>[] {
  const { config, host } = ctx;
  for (const need of config.pools) checkPoolExists(host, need);
  if (!config.backedByHugepages) {
    ctx.log.warn("hugepages: the domain has no <memoryBacking><hugepages/>, so QEMU will not use the pages reserved for it");
  }
  return config.pools.map((need) => ({
    action: "grow-pool",
    record: { action: "grow-pool", sizeKiB: need.sizeKiB, node: need.node ?? null, pages: need.pages, added: 0, returned: 0 },
    description: `grow ${poolName(need.sizeKiB, need.node)} by ${need.pages} pages`,
  }));
}

function grow(ctx: ApplyContext<HugepagesConfig>, record: GrowRecord): void {
  const { host } = ctx;
  const need: PoolNeed = { sizeKiB: record.sizeKiB, ...(record.node === null ? {} : { node: record.node }), pages: record.pages };
  const file = poolFile(need.sizeKiB, need.node);
  let fresh = 0;
  // One attempt: ask for what is still missing on top of all the pool holds
  // now (the kernel promotes surplus pages before it adds new ones), and
  // journal how much the persistent pool grew before anything else, so a
  // rollback gives back exactly that.
  const attempt = (): boolean => {
    const before = readPool(host, need.sizeKiB, need.node);
    writeCount(host, file, before.total + need.pages - fresh);
    const after = readPool(host, need.sizeKiB, need.node);
    fresh += Math.max(0, after.total - before.total);
    if (after.persistent > before.persistent) {
      record.added += after.persistent - before.persistent;
      ctx.update({ ...record });
    }
    return fresh >= need.pages;
  };
  if (attempt()) return;
  // Errors inside the poll end it at once and are rethrown as they are; only
  // running out of time becomes the shortfall message.
  let failure: unknown;
  const retry = (): boolean => {
    try {
      reclaim(host, need.node);
      return attempt();
    } catch (error) {
      failure = error;
      return true;
    }
  };
  try {
    ctx.waitFor(`the kernel grants ${need.pages} pages to ${poolName(need.sizeKiB, need.node)}`, retry, {
      timeoutMs: ctx.config.retrySeconds * 1000,
      intervalMs: 100,
    });
  } catch {
    throw shortfall(host, need, fresh, ctx.config.retrySeconds);
  }
  if (failure !== undefined) throw failure;
}

function shortfall(host: Host, need: PoolNeed, got: number, retrySeconds: number): VmhookError {
  const size = formatKiB(need.sizeKiB);
  const where = need.node === undefined ? "" : ` on node ${need.node}`;
  const bootOption = need.node === undefined ? `hugepagesz=${size} hugepages=${need.pages}` : `hugepagesz=${size} hugepages=${need.node}:${need.pages}`;
  return new VmhookError(
    `hugepages: got ${got} of ${need.pages} pages of ${size}${where}; free memory ${freeMemory(host, need.node)}; free memory on the host, use smaller pages, or reserve them at boot`,
    [
      `after dropping caches and compacting memory for ${retrySeconds} s the kernel found no more contiguous ${size} blocks${where}`,
      "remedies: stop other VMs or services; raise timeout= on <vmhook:hugepages>",
      need.sizeKiB > DEFAULT_SIZE_KIB ? `2M pages need far less contiguous memory than ${size} pages: size="2M" (and the same in <memoryBacking>)` : "give the VM less <memory>",
      `reserve the pages at boot (kernel command line: ${bootOption}) and drop <vmhook:hugepages>`,
    ],
  );
}

// ---- release: shrink each pool by exactly what this VM added

function undo(grown: GrowRecord, ctx: BaseContext): void {
  const node = grown.node ?? undefined;
  const remaining = grown.added - grown.returned;
  if (remaining <= 0) return;
  // The persistent count, not nr_hugepages: surplus pages are not ours to give back.
  const target = Math.max(0, readPool(ctx.host, grown.sizeKiB, node).persistent - remaining);
  writeCount(ctx.host, poolFile(grown.sizeKiB, node), target);
  // Kept in the journal if anything below fails, so a second undo gives nothing back twice.
  grown.returned = grown.added;
  const after = readPool(ctx.host, grown.sizeKiB, node).persistent;
  if (after !== target) ctx.log.warn(`hugepages: ${poolName(grown.sizeKiB, node)} holds ${after} persistent pages after shrinking to ${target}`);
}

/** Journal records are root-owned, but they still become paths: check the numbers. */
function checkRecord(record: UndoRecord): GrowRecord {
  const { action, sizeKiB, node, pages, added, returned } = record;
  const count = (value: unknown) => typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
  const valid =
    action === "grow-pool" && count(sizeKiB) && count(added) && count(returned) && (pages === undefined || count(pages)) && (node === null || (count(node) && (node as number) <= MAX_NODE));
  if (!valid) throw new VmhookError(`hugepages: cannot undo journal record ${JSON.stringify(record)}; fix the pool by hand, then run vmhook recover`);
  return record as GrowRecord;
}

// ---- reconnect: the daemon restarted; say so if a pool lost pages meanwhile

function reconnect(ctx: PlanContext<HugepagesConfig>): Step[] {
  for (const grown of ctx.records.map(checkRecord)) {
    const node = grown.node ?? undefined;
    const held = grown.added - grown.returned;
    const count = readPool(ctx.host, grown.sizeKiB, node).persistent;
    if (count < held) ctx.log.warn(`hugepages: ${poolName(grown.sizeKiB, node)} holds ${count} pages, fewer than the ${held} this VM added`);
  }
  return [];
}

/** `vmhook doctor`: whether each pool can grow by this VM's pages now. */
function check({ host, domain, elements }: CheckContext): Finding[] {
  // The plugin's own reading: pools and counts per guest cell, size and host node as prepare derives them.
  let pools: PoolNeed[];
  try {
    pools = parseConfig(elements, domain).pools;
  } catch {
    return []; // reported by the config check
  }
  return pools.map(({ sizeKiB, node, pages }) => {
    const check = node === undefined ? "hugepages" : `hugepages node ${node}`;
    const size = formatKiB(sizeKiB);
    const pool = hugepagePool(sizeKiB, node);
    if (node !== undefined && !host.exists(nodeDir(node))) {
      return fail(check, `host NUMA node ${node} does not exist (nodes: ${hostNodes(host).join(", ") || "none"})`, "fix node= on <vmhook:hugepages> or the nodeset in <numatune>");
    }
    if (!host.exists(pool)) {
      return fail(check, `the kernel has no pool of ${size} pages (${pool})`, sizeKiB === 1024 * 1024 ? 'use size="2M": 1G pages need a CPU with pdpe1gb' : `use one of the sizes in ${HUGEPAGE_DIR}`);
    }
    const needKiB = pages * sizeKiB;
    const where = node === undefined ? "on the host" : `on node ${node}`;
    const info = meminfo(host, node);
    const free = info.MemFree ?? 0;
    const reclaimable = node === undefined ? (info.MemAvailable ?? free) : free + (info.FilePages ?? 0);
    const wanted = `${pages} × ${size} pages (${formatKiB(needKiB)})`;
    if (free >= needKiB) return ok(check, `${wanted} fit in the free memory ${where} (${formatKiB(roundMiB(free))})`);
    const bootFix = `reserve them at boot instead: hugepagesz=${size} hugepages=${node === undefined ? "" : `${node}:`}${pages} on the kernel command line`;
    if (reclaimable >= needKiB) {
      return warn(check, `${wanted} need more than the free memory ${where} (${formatKiB(roundMiB(free))}): the page cache must be dropped first, and fragmented memory may still fall short`, `start the VM early, or ${bootFix}`);
    }
    return fail(check, `${wanted} cannot fit: only ${formatKiB(roundMiB(reclaimable))} can be freed ${where}`, `give the VM less <memory>, stop other VMs, or ${bootFix}`);
  });
}

export default definePlugin<HugepagesConfig>({
  name: "hugepages",
  summary: "reserves the huge pages a VM's memory needs while it runs",
  usage: '<vmhook:hugepages size="2M|1G" node="N[,M]" timeout="SECONDS"/>',
  shared: true,
  parse: parseConfig,
  plan: { prepare: planPrepare, reconnect },
  check,
  actions: {
    "grow-pool": defineAction<GrowRecord, HugepagesConfig>({ check: checkRecord, apply: (record, ctx) => grow(ctx, record), undo }),
  },
});
