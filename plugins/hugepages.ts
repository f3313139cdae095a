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
import { boundedProduct, boundedSum } from "../lib/bounded.ts";
import { readAttributes, single } from "../lib/config.ts";
import { parseCpuset } from "../lib/cpuset.ts";
import { describeElement, type Domain } from "../lib/domain.ts";
import { ConfigError, VmhookError } from "../lib/errors.ts";
import type { Host } from "../lib/host.ts";
import { hugepagePool, hugepageSizes, memoryFacts, NODE_DIR, nodeDir } from "../lib/memory.ts";
import { definePlugin, type BaseContext, type PluginContext, type StepHandle, type UndoRecord } from "../lib/plugin.ts";
import { formatKiB, parseInteger, parseSizeWithSuffix } from "../lib/validate.ts";
import { checkFit, formatMiB, nodeFloorKiB, readHostView, refusal, type HostView, type PoolNeed } from "./hugepages/fit.ts";
import { growWithRetries, RETRY_ROUNDS, type PoolCount, type RetryIo } from "./hugepages/grow.ts";

export type { PoolNeed } from "./hugepages/fit.ts";

export interface HugepagesConfig {
  pools: PoolNeed[];
  /** How long to keep retrying (give back, drop caches, compact) while the kernel grants too few pages. */
  retrySeconds: number;
  /** <memoryBacking><hugepages> is present; without it QEMU does not use the pages. */
  backedByHugepages: boolean;
}

/**
 * Journaled per pool. `added`: how much the persistent pool grew and is held
 * now (new pages, plus surplus pages the kernel promoted first); `returned`:
 * how many of them went back already.
 */
interface GrowRecord extends UndoRecord {
  action: "grow-pool";
  sizeKiB: number;
  node: number | null;
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

const backedMemory = (sizeKiB: number) => `the guest memory to back with ${formatKiB(sizeKiB)} pages (KiB)`;

/** The pages each pool must grow by, merged per (size, node); their memory stays below 2^53 KiB. */
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
    group.pages = boundedSum(group.pages, Math.ceil(part.memoryKiB / sizeKiB), backedMemory(sizeKiB));
    byNodeset.set(key, group);
  }
  const byPool = new Map<string, PoolNeed>();
  const add = (sizeKiB: number, node: number | undefined, pages: number) => {
    const key = `${sizeKiB}/${node ?? "global"}`;
    const need = byPool.get(key) ?? { sizeKiB, ...(node === undefined ? {} : { node }), pages: 0 };
    need.pages = boundedSum(need.pages, pages, backedMemory(sizeKiB));
    boundedProduct(need.pages, sizeKiB, backedMemory(sizeKiB));
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
function readPool(host: Host, sizeKiB: number, node: number | undefined): PoolCount {
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

/** Shrinks the persistent pool by `pages` (never below 0) and returns the target; surplus pages are not ours to give back. */
function shrinkPool(host: Host, sizeKiB: number, node: number | undefined, pages: number): number {
  const target = Math.max(0, readPool(host, sizeKiB, node).persistent - pages);
  writeCount(host, poolFile(sizeKiB, node), target);
  return target;
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

/** Frees what the kernel can give up and defragments, so a retry can find contiguous memory. */
function reclaim(host: Host, node: number | undefined): void {
  host.write("/proc/sys/vm/drop_caches", "3\n");
  // compact files exist only with CONFIG_COMPACTION
  const compact = node === undefined ? "/proc/sys/vm/compact_memory" : `${nodeDir(node)}/compact`;
  if (host.exists(compact)) host.write(compact, "1\n");
}

// ---- prepare: check that every pool fits, then grow each by this VM's need

async function prepare(ctx: PluginContext<HugepagesConfig>): Promise<void> {
  const { config, host } = ctx;
  for (const need of config.pools) checkPoolExists(host, need);
  const view = readHostView(host, config.pools, ctx.settings);
  const fits = checkFit(config.pools, view);
  const refused = refusal(fits);
  // Refused before the first page is taken; a dry run lists the steps marked instead.
  if (refused && !ctx.dryRun) throw refused;
  if (!config.backedByHugepages) {
    ctx.log.warn("hugepages: the domain has no <memoryBacking><hugepages/>, so QEMU will not use the pages reserved for it");
  }
  for (const fit of fits) {
    const need = fit.need;
    const record: GrowRecord = { action: "grow-pool", sizeKiB: need.sizeKiB, node: need.node ?? null, added: 0, returned: 0 };
    await ctx.step(`grow ${poolName(need.sizeKiB, need.node)} by ${need.pages} pages`, record, (handle) => grow(ctx, view, need, record, handle), { refused: fit.refused });
  }
}

/** The kernel and the journal as the retry policy sees them, for one pool. */
function poolIo(ctx: PluginContext<HugepagesConfig>, view: HostView, need: PoolNeed, record: GrowRecord, handle: StepHandle): RetryIo {
  const { host } = ctx;
  const { sizeKiB, node } = need;
  const nodeFloor = node === undefined ? 0 : nodeFloorKiB(view.floorKiB, view.host, view.nodes.get(node)!);
  return {
    read: () => readPool(host, sizeKiB, node),
    write: (count) => writeCount(host, poolFile(sizeKiB, node), count),
    headroomKiB() {
      const hostRoom = memoryFacts(host).availableKiB - view.floorKiB;
      return node === undefined ? hostRoom : Math.min(hostRoom, memoryFacts(host, node).availableKiB - nodeFloor);
    },
    holding(pages) {
      record.added = pages;
      handle.update({ ...record });
    },
    giveBack: (pages) => void shrinkPool(host, sizeKiB, node, pages),
    reclaim: () => ctx.outsideHostLock(() => reclaim(host, node)),
    memory: () => memoryFacts(host, node),
    now: () => host.now(),
  };
}

function grow(ctx: PluginContext<HugepagesConfig>, view: HostView, need: PoolNeed, record: GrowRecord, handle: StepHandle): void {
  // Also the last step the watchdog names, should the kernel stall a write.
  ctx.log.info(`hugepages: growing ${poolName(need.sizeKiB, need.node)} by ${need.pages} pages, keeping ${formatMiB(view.floorKiB)} free`);
  const retryMs = Math.min(ctx.config.retrySeconds * 1000, ctx.deadline.remainingMs());
  const result = growWithRetries(poolIo(ctx, view, need, record, handle), need.pages, need.sizeKiB, { maxRounds: RETRY_ROUNDS, retryMs });
  if (!result.ok) throw shortfall(need, result, view.floorKiB, ctx.config.retrySeconds);
  if (result.rounds > 1) ctx.log.info(`hugepages: ${poolName(need.sizeKiB, need.node)} grew by ${need.pages} pages in round ${result.rounds}`);
}

function shortfall(need: PoolNeed, result: Extract<ReturnType<typeof growWithRetries>, { ok: false }>, floorKiB: number, retrySeconds: number): VmhookError {
  const size = formatKiB(need.sizeKiB);
  const where = need.node === undefined ? "" : ` on node ${need.node}`;
  const bootOption = need.node === undefined ? `hugepagesz=${size} hugepages=${need.pages}` : `hugepagesz=${size} hugepages=${need.node}:${need.pages}`;
  const { availableKiB, freeKiB } = result.after;
  const why =
    result.stop === "floor"
      ? `growing further would have taken${where === "" ? " the host" : ` node ${need.node}`} below the free-memory floor (${formatMiB(floorKiB)} for the host)`
      : `the kernel found no more contiguous ${size} blocks${where}, even after dropping caches and compacting memory`;
  return new VmhookError(
    `hugepages: got ${result.best} of ${need.pages} pages of ${size}${where}; after giving them back ${formatMiB(availableKiB)} available, ${formatMiB(freeKiB)} free; free memory on the host, use smaller pages, or reserve them at boot`,
    [
      `${why}; ${result.rounds} round(s), each giving back before reclaiming (at most ${RETRY_ROUNDS}; none starts after timeout=${retrySeconds} s)`,
      "remedies: stop other VMs or services; raise timeout= on <vmhook:hugepages>",
      need.sizeKiB > DEFAULT_SIZE_KIB ? `2M pages need far less contiguous memory than ${size} pages: size="2M" (and the same in <memoryBacking>)` : "give the VM less <memory>",
      `reserve the pages at boot (kernel command line: ${bootOption}) and drop <vmhook:hugepages>`,
    ],
  );
}

// ---- release: shrink each pool by exactly what this VM added

function undo(record: UndoRecord, ctx: BaseContext): void {
  const grown = checkRecord(record);
  const node = grown.node ?? undefined;
  const remaining = grown.added - grown.returned;
  if (remaining <= 0) return;
  const target = shrinkPool(ctx.host, grown.sizeKiB, node, remaining);
  // Kept in the journal if anything below fails, so a second undo gives nothing back twice.
  grown.returned = grown.added;
  const after = readPool(ctx.host, grown.sizeKiB, node).persistent;
  if (after !== target) ctx.log.warn(`hugepages: ${poolName(grown.sizeKiB, node)} holds ${after} persistent pages after shrinking to ${target}`);
}

/** Journal records are root-owned, but they still become paths: check the numbers. */
function checkRecord(record: UndoRecord): GrowRecord {
  const { action, sizeKiB, node, added, returned } = record;
  const count = (value: unknown) => typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
  const valid =
    action === "grow-pool" && count(sizeKiB) && count(added) && count(returned) && (node === null || (count(node) && (node as number) <= MAX_NODE));
  if (!valid) throw new VmhookError(`hugepages: cannot undo journal record ${JSON.stringify(record)}; fix the pool by hand, then run vmhook recover`);
  return record as GrowRecord;
}

// ---- reconnect: the daemon restarted; say so if a pool lost pages meanwhile

function reconnect(ctx: PluginContext<HugepagesConfig>): void {
  for (const grown of ctx.records.map(checkRecord)) {
    const node = grown.node ?? undefined;
    const held = grown.added - grown.returned;
    const count = readPool(ctx.host, grown.sizeKiB, node).persistent;
    if (count < held) ctx.log.warn(`hugepages: ${poolName(grown.sizeKiB, node)} holds ${count} pages, fewer than the ${held} this VM added`);
  }
}

export default definePlugin<HugepagesConfig>({
  name: "hugepages",
  summary: "reserves the huge pages a VM's memory needs while it runs",
  usage: '<vmhook:hugepages size="2M|1G" node="N[,M]" timeout="SECONDS"/>',
  shared: true,
  parse: parseConfig,
  prepare,
  reconnect,
  undo,
});
