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
import type { XmlElement } from "../lib/xml.ts";
import { howToBootWith } from "../lib/host-advice.ts";
import { boundedProduct, boundedSum } from "../lib/bounded.ts";
import { readAttributes, single } from "../lib/element.ts";
import { formatCpuList, MAX_NODE, parseNodeset } from "../lib/cpuset.ts";
import { describeElement, type Domain } from "../lib/domain.ts";
import { attributeText, ConfigError, reasonAndFix, VmhookError } from "../lib/errors.ts";
import { recoverCommandLine } from "../lib/metadata-text.ts";
import type { Host } from "../lib/host.ts";
import { fail, failedWith, ok, roundMiB, UNREADABLE_FIX, warn, type Finding } from "../lib/diagnostics/findings.ts";
import { HUGEPAGE_DIR, hostNodes, hugepagePool, hugepageSizes, hugetlbfsMounts, meminfo, memoryFacts, NODE_DIR, nodeDir, nodesWithMemory } from "../lib/memory.ts";
import { MOUNTINFO } from "../lib/mounts.ts";
import { hugetlbfsMountSetting, QEMU_CONF } from "../lib/qemu-conf.ts";
import { defineAction, definePlugin, type ApplyContext, type BaseContext, type CheckContext, type PlanContext, type Step, type UndoContext, type UndoRecord } from "../lib/plugin.ts";
import { loadSettings } from "../lib/settings.ts";
import { othersRecords } from "../lib/journal.ts";
import { formatKiB, parseInteger, parseSizeWithSuffix } from "../lib/validate.ts";
import { checkFit, formatMiB, nodeFloorKiB, readHostView, type HostView, type PoolNeed } from "./hugepages/fit.ts";
import { growWithRetries, RETRY_ROUNDS, type GrowResult, type PoolCount, type RetryIo } from "./hugepages/grow.ts";

export type { PoolNeed } from "./hugepages/fit.ts";

export interface HugepagesConfig {
  pools: PoolNeed[];
  /** How long to keep retrying (give back, drop caches, compact) while the kernel grants too few pages. */
  retrySeconds: number;
  /** <memoryBacking><hugepages> is present; without it QEMU does not use the pages. */
  backedByHugepages: boolean;
  /**
   * The page size reserved for guest memory that <memoryBacking><hugepages>
   * gives no <page size>: libvirt backs it with the host's default huge page
   * size, so prepare checks that the two agree.
   */
  hostDefaultSizeKiB?: number;
  /**
   * The mode of <numatune><memory placement='auto'> when it binds the VM's
   * memory to numad's nodes (strict, restrictive): nodes picked after the
   * prepare hook, so on a host of several nodes no pool is known to serve it.
   */
  boundByNumad?: string;
}

/**
 * Journaled per pool. `added`: how much the persistent pool grew and is held
 * now (new pages, plus surplus pages the kernel promoted first); `returned`:
 * how many of them went back already; `writing` (a PoolWrite, read through
 * inFlight: a record's fields are JSON, which has no optional property): a
 * pool write journaled before it is made and not yet read back, only while
 * there is one.
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

/**
 * A write of the persistent count from `from` to `to`. The kernel keeps what
 * it did even when the writer is killed, so until the pool is read back the
 * write is in flight, and an undo counts what it did from the pool (pagesDoneBy).
 */
type PoolWrite = { from: number; to: number };

/** The record's write in flight, if any (checkRecord has checked its shape). */
const inFlight = (record: GrowRecord) => record.writing as PoolWrite | undefined;

const ATTRIBUTES = ["size", "node", "timeout"] as const;
const DEFAULT_SIZE_KIB = 2048;
const DEFAULT_RETRY_SECONDS = 10;
const BASE_PAGE_KIB = 4;

// ---- config: the metadata element plus the domain XML → pools and page counts

function parseConfig(elements: XmlElement[], domain: Domain): HugepagesConfig {
  const element = single(elements);
  const where = describeElement(element);
  const attrs = readAttributes(element, ATTRIBUTES);
  const size = attrs.size === undefined ? undefined : checkPageSize(parseSizeWithSuffix(attrs.size, where, "size"), where, attributeText("size", attrs.size));
  const nodes = attrs.node === undefined ? undefined : parseNodeset(attrs.node, where, "node");
  const retrySeconds = attrs.timeout === undefined ? DEFAULT_RETRY_SECONDS : parseInteger(attrs.timeout, where, "timeout", 0, 3600);
  const backedByHugepages = domain.hugepages !== undefined;
  const leftToLibvirt = backedByHugepages && memoryParts(domain).some((part) => declaredPageSize(part, domain) === undefined);
  const numad = domain.numatuneMemory?.placement === "auto" && BINDING_MODES.includes(domain.numatuneMemory.mode) ? domain.numatuneMemory.mode : undefined;
  return {
    pools: poolNeeds(domain, where, size, nodes),
    retrySeconds,
    backedByHugepages,
    ...(leftToLibvirt ? { hostDefaultSizeKiB: size ?? DEFAULT_SIZE_KIB } : {}),
    ...(numad ? { boundByNumad: numad } : {}),
  };
}

/** <numatune> modes whose memory comes from the nodes named and no other (preferred and interleave fall back to others). */
const BINDING_MODES = ["strict", "restrictive"];

function checkPageSize(sizeKiB: number, element: string, value: string): number {
  const powerOfTwo = sizeKiB > 0 && (sizeKiB & (sizeKiB - 1)) === 0;
  if (!powerOfTwo || sizeKiB <= BASE_PAGE_KIB) {
    throw new ConfigError(element, `${value} is not a huge page size; on x86-64 use 2M or 1G (ls /sys/kernel/mm/hugepages lists this host's sizes)`);
  }
  return sizeKiB;
}

/** One part of guest memory: a guest NUMA cell, a memory device, or all of it when the guest has no cells. */
interface MemoryPart {
  cell?: number;
  memoryKiB: number;
  /** A memory device's own <source><pagesize> and <source><nodemask>, and its element for messages. */
  pageSizeKiB?: number;
  hostNodes?: number[];
  source?: string;
}

function memoryParts(domain: Domain): MemoryPart[] {
  if (domain.numaCells.length > 0) {
    // <memory> is the cells plus the memory devices, and QEMU backs each device with huge pages as it does its target cell;
    // a virtio-mem device up to its whole <size>: the guest plugs blocks at run time, when no hook runs.
    const devices = domain.memoryDevices.map(({ model, sizeKiB, node, pageSizeKiB, nodemask }) => ({
      cell: node,
      memoryKiB: sizeKiB,
      pageSizeKiB,
      hostNodes: nodemask,
      source: `<devices><memory model='${model}'><source>`,
    }));
    return [...domain.numaCells.map((cell) => ({ cell: cell.id, memoryKiB: cell.memoryKiB })), ...devices];
  }
  if (domain.memoryKiB <= 0) throw new ConfigError("<domain>", "has no <memory>, so there is nothing to back with huge pages; add <memory unit='GiB'>N</memory>");
  return [{ memoryKiB: domain.memoryKiB }];
}

/** A page size the domain declares: a huge page size, or the base page size, libvirt's way of backing that memory without huge pages. */
const checkDeclaredSize = (sizeKiB: number, element: string, value: string) => (sizeKiB === BASE_PAGE_KIB ? sizeKiB : checkPageSize(sizeKiB, element, value));

/** The page size the domain gives this part of memory, if any: without one, libvirt backs it with the host's default huge page size. */
function declaredPageSize(part: MemoryPart, domain: Domain): number | undefined {
  if (part.pageSizeKiB !== undefined) return checkDeclaredSize(part.pageSizeKiB, `${part.source}<pagesize>`, `${part.pageSizeKiB} (KiB)`);
  const pages = domain.hugepages?.pages ?? [];
  const inCell = (nodeset: string) => {
    const cells = parseNodeset(nodeset, "<memoryBacking><hugepages><page>", "nodeset");
    // Without guest cells libvirt takes a <page nodeset='0'> as the page of all memory (and drops the nodeset once defined).
    return part.cell === undefined ? domain.numaCells.length === 0 && cells.every((cell) => cell === 0) : cells.includes(part.cell);
  };
  const page = pages.find((p) => p.nodeset !== undefined && inCell(p.nodeset)) ?? pages.find((p) => p.nodeset === undefined);
  return page && checkDeclaredSize(page.sizeKiB, "<memoryBacking><hugepages><page>", `size="${page.sizeKiB}" (KiB)`);
}

/** The page size of this part of memory; BASE_PAGE_KIB: none of it is backed by huge pages. */
function pageSizeOf(part: MemoryPart, domain: Domain, sizeAttribute: number | undefined, where: string): number {
  const declared = declaredPageSize(part, domain);
  if (sizeAttribute === undefined || declared === BASE_PAGE_KIB) return declared ?? DEFAULT_SIZE_KIB;
  const other = (domain.hugepages?.pages ?? []).find((page) => page.sizeKiB !== sizeAttribute && page.sizeKiB !== BASE_PAGE_KIB);
  if (other) {
    throw new ConfigError(where, `size="${formatKiB(sizeAttribute)}" disagrees with <memoryBacking><hugepages><page size="${other.sizeKiB}" unit="KiB">; remove size= or make both the same`);
  }
  if (part.pageSizeKiB !== undefined && part.pageSizeKiB !== sizeAttribute) {
    throw new ConfigError(where, `size="${formatKiB(sizeAttribute)}" disagrees with ${part.source}<pagesize unit="KiB">${part.pageSizeKiB}</pagesize>; remove size= or make both the same`);
  }
  return sizeAttribute;
}

function hostNodesOf(part: MemoryPart, domain: Domain, nodeAttribute: number[] | undefined): number[] | undefined {
  if (nodeAttribute) return nodeAttribute;
  if (part.hostNodes) return part.hostNodes;
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
    if (sizeKiB === BASE_PAGE_KIB) continue;
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

/**
 * Shrinks the persistent pool by `pages` (never below 0) and returns the
 * target; surplus pages are not ours to give back. `journal` gets the write
 * before it is made.
 */
function shrinkPool(host: Host, sizeKiB: number, node: number | undefined, pages: number, journal: (write: PoolWrite) => void): number {
  const from = readPool(host, sizeKiB, node).persistent;
  const target = Math.max(0, from - pages);
  journal({ from, to: target });
  writeCount(host, poolFile(sizeKiB, node), target);
  return target;
}

/**
 * What a write that was cut off before it was read back did, from the pool's
 * persistent count now: the part of from → to the pool shows (positive: pages
 * taken, negative: pages given back), never more than the write asked for.
 * Exact when nothing else wrote the pool since: other VMs write no pool of
 * its size meanwhile (refuseWhileCutOff).
 */
function pagesDoneBy(write: PoolWrite, persistent: number): number {
  const low = Math.min(write.from, write.to);
  const high = Math.max(write.from, write.to);
  return Math.min(high, Math.max(low, persistent)) - write.from;
}

/** Another domain's pool write of this page size that its journal has not settled: its hook was killed, or could not read the pool back. */
function cutOffWrite(ctx: BaseContext, sizeKiB: number): { domain: string; pool: string; write: PoolWrite } | undefined {
  // Every record checked before any is judged: one of this size could hide behind a field vmhook cannot read.
  for (const { domain, record } of othersRecords(ctx.journals(), ctx.domain.uuid, "hugepages", checkRecord)) {
    const write = record.sizeKiB === sizeKiB ? inFlight(record) : undefined;
    if (write) return { domain: domain.name, pool: poolName(sizeKiB, record.node ?? undefined), write };
  }
  return undefined;
}

/**
 * Writing a pool while another domain's write of that page size is cut off
 * would make its undo count our change as its own: a grow as pages it took,
 * a shrink as pages it gave back, which then stay reserved for no VM (a
 * node's pool and the global pool hold the same pages, so any pool of the
 * size counts). `then`: what to run once that journal is undone.
 */
function cutOffRefusal(ctx: BaseContext, sizeKiB: number, then: string): { reason: string; remedies: string[] } | undefined {
  const cut = cutOffWrite(ctx, sizeKiB);
  if (!cut) return undefined;
  return {
    reason: `hugepages: a write of ${cut.domain} to ${cut.pool} (persistent count ${cut.write.from} to ${cut.write.to}) was cut off before its journal said what the kernel did, so no ${formatKiB(sizeKiB)} pool is written until ${cut.domain}'s journal is undone; run ${recoverCommandLine(cut.domain)}, then ${then}`,
    remedies: [`${cut.domain}'s hook was killed or could not read the pool back; its undo counts what the write did from the pool, which is exact only while no other VM writes a pool of this size (vmhook status shows its journal)`],
  };
}

const START_AGAIN = "start this VM again";

function refuseWhileCutOff(ctx: BaseContext, sizeKiB: number, then: string): void {
  const refused = cutOffRefusal(ctx, sizeKiB, then);
  if (refused) throw new VmhookError(refused.reason, refused.remedies);
}

const NODE_FIX = "fix node= on <vmhook:hugepages> or the nodeset in <numatune>";

/** Why a node that exists cannot hold huge pages: it has no memory (the kernel's pools there are missing, or never grow). */
function memorylessNode(host: Host, node: number): string | undefined {
  const withMemory = nodesWithMemory(host);
  if (!withMemory || withMemory.includes(node)) return undefined;
  return `host NUMA node ${node} has no memory (it is not in ${NODE_DIR}/has_memory, which lists ${formatCpuList(withMemory) || "none"}: a node of CPUs only, or its memory was taken offline), so it has no huge pages to give`;
}

/** Checks that change nothing, before the first step: the node and the pool exist. */
function checkPoolExists(host: Host, need: PoolNeed): void {
  if (need.node !== undefined && !host.exists(nodeDir(need.node))) {
    // a kernel built without NUMA has no node directory at all, and so no per-node pools
    const online = host.readTrimmed(`${NODE_DIR}/online`);
    throw new VmhookError(
      online
        ? `hugepages: host NUMA node ${need.node} does not exist (this host has node(s) ${online}); ${NODE_FIX}`
        : `hugepages: this kernel has no NUMA nodes (${NODE_DIR} is missing), so node="${need.node}" has no per-node pool; remove node= from <vmhook:hugepages> and the nodeset in <numatune>`,
    );
  }
  const memoryless = need.node === undefined ? undefined : memorylessNode(host, need.node);
  if (memoryless) throw new VmhookError(`hugepages: ${memoryless}; take them from a node with memory: ${NODE_FIX}`);
  if (!host.exists(poolFile(need.sizeKiB, need.node))) {
    const sizes = hugepageSizes(host);
    throw new VmhookError(
      sizes.length === 0
        ? "hugepages: this kernel has no huge page support (/sys/kernel/mm/hugepages is missing or empty); remove <vmhook:hugepages>"
        : `hugepages: this host has no ${formatKiB(need.sizeKiB)} huge page pool${need.node === undefined ? "" : ` on node ${need.node}`}; it has ${sizes.map(formatKiB).join(", ")}: use one of them, in size= on <vmhook:hugepages> and in <memoryBacking><hugepages><page size> where the domain gives one`,
      need.sizeKiB === 1024 * 1024 ? ["1G pages need a CPU with the pdpe1gb flag (grep pdpe1gb /proc/cpuinfo)"] : [],
    );
  }
}

/**
 * libvirt backs guest memory without a <page size> with the page size of its
 * default hugetlbfs mount: among the mounts it finds, the host's default huge
 * page size (default_hugepagesz=); with hugetlbfs_mount set, a path it names
 * (qemu_conf.c marks the first as the default in older libvirt, those after
 * the first since, and takes the first when none is). Reserving another size
 * would leave QEMU without pages, or have it take pages reserved for others.
 */
function hostDefaultMismatch(host: Host, sizeKiB: number): { reason: string; fixes: string[] } | undefined {
  const pageSizeFix = `add <page size="${sizeKiB}" unit="KiB"/> to <memoryBacking><hugepages> (virsh edit)`;
  const named = namedMountSizes(host);
  if (named === "unreadable") return undefined;
  if (named) {
    const sizes = [...new Set(named.map((mount) => mount.sizeKiB))];
    // None named is on hugetlbfs: the mount check says so.
    if (sizes.length === 0 || (sizes.length === 1 && sizes[0] === sizeKiB)) return undefined;
    const mounts = named.map((mount) => `${mount.mountPoint} of ${formatKiB(mount.sizeKiB)} pages`).join(", ");
    const unnamedSize = "guest memory that <memoryBacking><hugepages> gives no <page size>";
    return {
      reason:
        sizes.length === 1
          ? `hugetlbfs_mount in ${QEMU_CONF} names only mounts of ${formatKiB(sizes[0]!)} pages (${mounts}), and libvirt backs ${unnamedSize} with that size, while vmhook would reserve ${formatKiB(sizeKiB)} pages for it`
          : `hugetlbfs_mount in ${QEMU_CONF} names mounts of different page sizes (${mounts}), and which one backs ${unnamedSize} depends on the libvirt version (the first named, or the second), so vmhook cannot tell which pool to grow`,
      fixes: [pageSizeFix, ...(sizes.length === 1 ? [`or reserve pages of that size: size="${formatKiB(sizes[0]!)}" on <vmhook:hugepages>`] : [])],
    };
  }
  const hostDefault = meminfo(host).Hugepagesize;
  if (hostDefault === sizeKiB) return undefined;
  const found = hostDefault === undefined ? "cannot read this host's default huge page size" : `this host's default huge page size is ${formatKiB(hostDefault)}`;
  return {
    reason: `${found} (Hugepagesize in /proc/meminfo), which libvirt uses for guest memory that <memoryBacking><hugepages> gives no <page size>, while vmhook would reserve ${formatKiB(sizeKiB)} pages for it`,
    fixes: [
      pageSizeFix,
      ...(hostDefault === undefined ? [] : [`or reserve pages of the default size: size="${formatKiB(hostDefault)}" on <vmhook:hugepages>`]),
      `a <page size> other than the default needs a hugetlbfs mount of that size for libvirt: mkdir -p /dev/hugepages${formatKiB(sizeKiB)} && mount -t hugetlbfs -o pagesize=${formatKiB(sizeKiB)} none /dev/hugepages${formatKiB(sizeKiB)}, then restart libvirtd (or virtqemud)`,
    ],
  };
}

/**
 * The hugetlbfs mounts hugetlbfs_mount names, each with its page size;
 * undefined when it is not set; "unreadable" when it or the mounts cannot be
 * read, which the mount check refuses, naming why.
 */
function namedMountSizes(host: Host): { mountPoint: string; sizeKiB: number }[] | "unreadable" | undefined {
  const mounts = hugetlbfsMounts(host);
  let named: string[] | undefined;
  try {
    named = hugetlbfsMountSetting(host);
  } catch {
    return "unreadable";
  }
  if (named === undefined) return undefined;
  return mounts ? named.flatMap((path) => mountHolding(mounts, path) ?? []) : "unreadable";
}

/**
 * libvirt asks numad for placement='auto' nodes only after the prepare hook,
 * and the XML never names them: with several host nodes, pages grown in any
 * pool may sit on nodes the VM is not allowed to take them from.
 */
function numadRefusal(host: Host, mode: string): { reason: string; fixes: string[] } | undefined {
  const nodes = hostNodes(host);
  if (nodes.length <= 1) return undefined;
  return {
    reason: `<numatune><memory placement='auto'>: numad picks the host NUMA nodes for this VM only after the prepare hook, so vmhook cannot know which node's pool must hold its pages, and with mode='${mode}' the VM takes none from the other nodes (this host has nodes ${nodes.join(", ")})`,
    fixes: [
      `name the nodes: <numatune><memory mode='${mode}' nodeset='${nodes[0]}'/> (virsh edit)`,
      "or mode='preferred' or 'interleave', which may take pages from any node: vmhook then grows the global pool",
      "or reserve the pages at boot on the nodes numad may pick and drop <vmhook:hugepages>",
    ],
  };
}

/**
 * libvirt takes guest memory of a page size only from a hugetlbfs mount of
 * that size, found when the daemon starts or, when hugetlbfs_mount is set in
 * qemu.conf, only from the paths it names; it fails the start without one
 * only after this hook has grown the pool: so no mount, no page taken.
 */
function missingMount(host: Host, sizeKiB: number): { reason: string; fixes: string[] } | undefined {
  const size = formatKiB(sizeKiB);
  const mounts = hugetlbfsMounts(host);
  if (!mounts) return { reason: `cannot read ${MOUNTINFO}, so vmhook cannot tell whether libvirt has a hugetlbfs mount of ${size} pages to back the guest memory with`, fixes: [] };
  let named: string[] | undefined;
  try {
    named = hugetlbfsMountSetting(host);
  } catch (error) {
    const { reason, fix } = reasonAndFix(error);
    return { reason: `${reason}, so vmhook cannot tell which hugetlbfs mounts libvirt takes ${size} pages from`, fixes: fix ? [fix] : [] };
  }
  const describe = (list: { mountPoint: string; sizeKiB: number }[]) => list.map((mount) => `${mount.mountPoint} of ${formatKiB(mount.sizeKiB)} pages`).join(", ");
  const usable = named === undefined ? mounts : named.flatMap((path) => mountHolding(mounts, path) ?? []);
  if (usable.some((mount) => mount.sizeKiB === sizeKiB)) return undefined;
  // systemd mounts /dev/hugepages with the default size; another size gets a directory of its own
  const point = sizeKiB === meminfo(host).Hugepagesize ? "/dev/hugepages" : `/dev/hugepages${size}`;
  const mountOne = `mount one: mkdir -p ${point} && mount -t hugetlbfs -o pagesize=${size} none ${point}`;
  const atBoot = `to mount it at every boot: "none ${point} hugetlbfs pagesize=${size} 0 0" in /etc/fstab`;
  if (named === undefined) {
    const found = mounts.length === 0 ? "no hugetlbfs is mounted" : `hugetlbfs mounts: ${describe(mounts)}`;
    return {
      reason: `libvirt backs guest memory with ${size} pages only from a hugetlbfs mount of that size, and this host has none (${found})`,
      fixes: [`${mountOne}, then restart libvirt (systemctl restart libvirtd, or virtqemud): it finds hugetlbfs mounts when it starts`, atBoot],
    };
  }
  const describeNamed = (path: string) => {
    const mount = mountHolding(mounts, path);
    return mount ? describe([mount]) : `${path}, no hugetlbfs mount`;
  };
  const namedFound = named.length === 0 ? "no path" : named.map(describeNamed).join(", ");
  const unnamed = mounts.find((mount) => mount.sizeKiB === sizeKiB);
  const add = unnamed?.mountPoint ?? point;
  const setting = `hugetlbfs_mount = [${[...named, add].map((path) => `"${path}"`).join(", ")}] in ${QEMU_CONF}, then restart libvirt (systemctl restart libvirtd, or virtqemud): it reads qemu.conf when it starts`;
  return {
    reason: `libvirt backs guest memory with ${size} pages only from a hugetlbfs mount of that size, and hugetlbfs_mount in ${QEMU_CONF}, which libvirt uses in place of the mounts it finds, names none (it names ${namedFound}; mounted: ${describe(mounts) || "no hugetlbfs"})`,
    fixes: unnamed ? [`add ${add} to it: ${setting}`] : [`${mountOne} and add it there: ${setting}`, atBoot],
  };
}

/** The hugetlbfs mount a path lies in (libvirt takes a named path's page size from the filesystem holding it), as that path. */
function mountHolding(mounts: { mountPoint: string; sizeKiB: number }[], path: string): { mountPoint: string; sizeKiB: number } | undefined {
  const trimmed = path.replace(/(.)\/+$/, "$1");
  const holder = mounts.filter((mount) => trimmed === mount.mountPoint || trimmed.startsWith(`${mount.mountPoint}/`)).sort((a, b) => b.mountPoint.length - a.mountPoint.length)[0];
  return holder && { mountPoint: trimmed, sizeKiB: holder.sizeKiB };
}

function checkMounts(host: Host, pools: PoolNeed[]): void {
  for (const sizeKiB of new Set(pools.map((need) => need.sizeKiB))) {
    const missing = missingMount(host, sizeKiB);
    if (missing) throw new VmhookError([`hugepages: ${missing.reason}`, ...missing.fixes.slice(0, 1)].join("; "), missing.fixes.slice(1));
  }
}

function checkHostDefaultSize(host: Host, sizeKiB: number): void {
  const mismatch = hostDefaultMismatch(host, sizeKiB);
  if (mismatch) throw new VmhookError(`hugepages: ${mismatch.reason}; ${mismatch.fixes[0]}`, mismatch.fixes.slice(1));
}

/** A reclaim write that failed: what it was for, the file, the data and the errno. */
interface ReclaimFailure {
  what: string;
  file: string;
  data: string;
  code: string;
}

const describeReclaimFailure = ({ what, file, code }: ReclaimFailure) => `${what} (writing ${file} failed: ${code})`;

/**
 * Frees what the kernel can give up and defragments, so a retry can find
 * contiguous memory; returns what it could not do (a read-only /proc/sys, as
 * in a container). It only makes room: the next round runs without it.
 */
function reclaim(host: Host, node: number | undefined): ReclaimFailure[] {
  // compact files exist only with CONFIG_COMPACTION
  const compact = node === undefined ? "/proc/sys/vm/compact_memory" : `${nodeDir(node)}/compact`;
  const writes = [{ what: "drop caches", file: "/proc/sys/vm/drop_caches", data: "3" }, ...(host.exists(compact) ? [{ what: "compact memory", file: compact, data: "1" }] : [])];
  const failed: ReclaimFailure[] = [];
  for (const write of writes) {
    try {
      host.write(write.file, `${write.data}\n`);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (typeof code !== "string") throw error;
      failed.push({ ...write, code });
    }
  }
  return failed;
}

// ---- prepare: check that every pool fits above the floor, then grow each by this VM's need

/**
 * Checks that change nothing, then one grow-pool step per pool; a pool that
 * cannot fit above the free-memory floor is a refused step, so `vmhook plan`
 * shows it and the runner refuses before the first page is taken.
 */
function planPrepare(ctx: PlanContext<HugepagesConfig>): Step<GrowRecord>[] {
  const { config, host } = ctx;
  const numad = config.boundByNumad === undefined ? undefined : numadRefusal(host, config.boundByNumad);
  if (numad) throw new VmhookError(`hugepages: ${numad.reason}; ${numad.fixes[0]}`, numad.fixes.slice(1));
  for (const need of config.pools) checkPoolExists(host, need);
  if (config.hostDefaultSizeKiB !== undefined) checkHostDefaultSize(host, config.hostDefaultSizeKiB);
  // Without <memoryBacking><hugepages> QEMU takes no huge pages and libvirt needs no mount (warned below).
  if (config.backedByHugepages) checkMounts(host, config.pools);
  const fits = checkFit(config.pools, readHostView(host, config.pools, ctx.settings));
  if (!config.backedByHugepages) {
    ctx.log.warn("hugepages: the domain has no <memoryBacking><hugepages/>, so QEMU will not use the pages reserved for it");
  }
  return fits.map(({ need, refused, remedies }) => {
    const cutOff = cutOffRefusal(ctx, need.sizeKiB, START_AGAIN);
    return {
      action: "grow-pool",
      record: { action: "grow-pool", sizeKiB: need.sizeKiB, node: need.node ?? null, pages: need.pages, added: 0, returned: 0 },
      description: `grow ${poolName(need.sizeKiB, need.node)} by ${need.pages} pages`,
      ...(cutOff ? { refused: cutOff } : refused ? { refused: { reason: refused, remedies } } : {}),
    };
  });
}

/**
 * The kernel and the journal as the retry policy sees them, for one pool.
 * Every pool write is journaled before it is made (record.writing) and
 * settled once read back (holding), so a hook killed or a read failing in
 * between leaves a journal whose undo gives back what the kernel granted.
 */
function poolIo(ctx: ApplyContext<HugepagesConfig>, view: HostView, need: PoolNeed, record: GrowRecord, reclaimFailures: Map<string, ReclaimFailure>): RetryIo {
  const { host } = ctx;
  const { sizeKiB, node } = need;
  const nodeFloor = node === undefined ? 0 : nodeFloorKiB(view.floorKiB, view.host, view.nodes.get(node)!);
  const journal = (writing: PoolWrite) => ctx.update({ ...record, writing });
  return {
    read: () => readPool(host, sizeKiB, node),
    write(count, before) {
      // Checked before every write: while reclaiming, the lock was let go.
      refuseWhileCutOff(ctx, sizeKiB, START_AGAIN);
      journal({ from: before.persistent, to: count });
      writeCount(host, poolFile(sizeKiB, node), count);
    },
    headroomKiB() {
      const hostRoom = memoryFacts(host).availableKiB - view.floorKiB;
      return node === undefined ? hostRoom : Math.min(hostRoom, memoryFacts(host, node).availableKiB - nodeFloor);
    },
    holding(pages) {
      record.added = pages;
      ctx.update({ ...record });
    },
    giveBack: (pages) => void shrinkPool(host, sizeKiB, node, pages, journal),
    // Slow, and needs no lock: other VMs may start or stop meanwhile; the next round reads everything again.
    reclaim() {
      for (const failure of ctx.outsideHostLock(() => reclaim(host, node))) {
        const described = describeReclaimFailure(failure);
        if (!reclaimFailures.has(described)) ctx.log.warn(`hugepages: cannot ${described}; it only makes room for the next round, which runs without it`);
        reclaimFailures.set(described, failure);
      }
    },
    memory: () => memoryFacts(host, node),
    monotonicMs: () => host.monotonicMs(),
  };
}

/**
 * After a failed grow: the write it failed on (still in flight in the record)
 * left the pool as it was, and the step holds no page (every earlier write's
 * pages given back): nothing to give back. A pool that reads otherwise, or
 * cannot be read (the runner takes that for a change), is settled by the undo.
 */
function poolAsBefore(record: GrowRecord, ctx: BaseContext): boolean {
  const write = inFlight(record);
  return write !== undefined && record.added === 0 && record.returned === 0 && readPool(ctx.host, record.sizeKiB, record.node ?? undefined).persistent === write.from;
}

/** The apply of grow-pool: in steps above the floor, giving back before each reclaim, in bounded rounds. */
function grow(ctx: ApplyContext<HugepagesConfig>, record: GrowRecord): void {
  const need: PoolNeed = { sizeKiB: record.sizeKiB, ...(record.node === null ? {} : { node: record.node }), pages: record.pages };
  // The floor and the node's share as the planner computed them, read again under the same lock.
  const view = readHostView(ctx.host, [need], ctx.settings);
  // Also the last step the watchdog names, should the kernel stall a write.
  ctx.log.info(`hugepages: growing ${poolName(need.sizeKiB, need.node)} by ${need.pages} pages, keeping ${formatMiB(view.floorKiB)} free`);
  const retryMs = Math.min(ctx.config.retrySeconds * 1000, ctx.deadline.remainingMs());
  const reclaimFailures = new Map<string, ReclaimFailure>();
  const result = growWithRetries(poolIo(ctx, view, need, record, reclaimFailures), need.pages, need.sizeKiB, { maxRounds: RETRY_ROUNDS, retryMs });
  if (!result.ok) throw shortfall(ctx.host, need, result, view.floorKiB, ctx.config.retrySeconds, [...reclaimFailures.values()]);
  if (result.rounds > 1) ctx.log.info(`hugepages: ${poolName(need.sizeKiB, need.node)} grew by ${need.pages} pages in round ${result.rounds}`);
}

function shortfall(host: Host, need: PoolNeed, result: Extract<GrowResult, { ok: false }>, floorKiB: number, retrySeconds: number, reclaimFailures: ReclaimFailure[]): VmhookError {
  const size = formatKiB(need.sizeKiB);
  const where = need.node === undefined ? "" : ` on node ${need.node}`;
  const bootOption = need.node === undefined ? `hugepagesz=${size} hugepages=${need.pages}` : `hugepagesz=${size} hugepages=${need.node}:${need.pages}`;
  const { availableKiB, freeKiB } = result.after;
  const why =
    result.stop === "floor"
      ? `growing further would have taken${where === "" ? " the host" : ` node ${need.node}`} below the free-memory floor (${formatMiB(floorKiB)} for the host)`
      : `the kernel found no more contiguous ${size} blocks${where}${reclaimFailures.length === 0 ? ", even after dropping caches and compacting memory" : ""}`;
  const unreclaimed = reclaimFailures.length === 0 ? "" : `, and vmhook could not ${reclaimFailures.map(describeReclaimFailure).join(" nor ")}`;
  const byHand = reclaimFailures.map(({ file, data }) => `${file === "/proc/sys/vm/drop_caches" ? "sync; " : ""}echo ${data} > ${file}`).join("; ");
  return new VmhookError(
    `hugepages: got ${result.best} of ${need.pages} pages of ${size}${where}; after giving them back ${formatMiB(availableKiB)} available, ${formatMiB(freeKiB)} free; free memory on the host, use smaller pages, or reserve them at boot`,
    [
      `${why}${unreclaimed}; ${result.rounds} round(s), each giving back before reclaiming (at most ${RETRY_ROUNDS}; none starts after timeout=${retrySeconds} s)`,
      ...(byHand ? [`where those files are read-only (a container), run on the host: ${byHand}; then start the VM again`] : []),
      "remedies: stop other VMs or services; raise timeout= on <vmhook:hugepages>",
      need.sizeKiB > DEFAULT_SIZE_KIB ? `2M pages need far less contiguous memory than ${size} pages: size="2M" (and the same in <memoryBacking>)` : "give the VM less <memory>",
      `or reserve the pages at boot and drop <vmhook:hugepages>: ${howToBootWith(host, bootOption)}`,
    ],
  );
}

// ---- release: shrink each pool by exactly what this VM added

/**
 * Gives back what the record holds. A write it names as in flight (the hook
 * was killed, or could not read the pool back) is settled from the pool
 * first: pages it took count as added, pages it gave back as returned. The
 * shrink is journaled before it is made, so an undo cut off in turn is
 * settled the same way by the next one and gives nothing back twice.
 */
function undo(grown: GrowRecord, ctx: UndoContext): void {
  const node = grown.node ?? undefined;
  const cutOff = inFlight(grown);
  if (cutOff) {
    const persistent = readPool(ctx.host, grown.sizeKiB, node).persistent;
    const done = pagesDoneBy(cutOff, persistent);
    if (done > 0) grown.added += done;
    else grown.returned += -done;
    delete grown.writing;
    const what = `a write of ${poolName(grown.sizeKiB, node)} from ${cutOff.from} to ${cutOff.to} persistent pages was cut off; counted as ${done >= 0 ? `${done} taken` : `${-done} given back`}`;
    if (persistent === cutOff.from + done) ctx.log.info(`hugepages: ${what}`);
    else ctx.log.warn(`hugepages: ${what}, though the pool holds ${persistent}: something else changed it since, and what that changed stays`);
  }
  const remaining = grown.added - grown.returned;
  if (remaining <= 0) return;
  // Kept in the journal (undo-failed) until then: vmhook recover gives the pages back.
  refuseWhileCutOff(ctx, grown.sizeKiB, recoverCommandLine(ctx.domain.name));
  // What was settled above reaches the journal with the shrink's own write, in one.
  const target = shrinkPool(ctx.host, grown.sizeKiB, node, remaining, (writing) => ctx.update(Object.assign(grown, { writing })));
  // Kept in the journal if anything below fails, so a second undo gives nothing back twice.
  grown.returned = grown.added;
  delete grown.writing;
  const after = readPool(ctx.host, grown.sizeKiB, node).persistent;
  if (after !== target) ctx.log.warn(`hugepages: ${poolName(grown.sizeKiB, node)} holds ${after} persistent pages after shrinking to ${target}`);
}

/** Journal records are root-owned, but they still become paths: check the numbers. */
function checkRecord(record: UndoRecord): GrowRecord {
  const { action, sizeKiB, node, pages, added, returned, writing } = record;
  const count = (value: unknown) => typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
  const write = writing as Partial<PoolWrite> | null | undefined;
  const valid =
    action === "grow-pool" &&
    count(sizeKiB) &&
    count(added) &&
    count(returned) &&
    (pages === undefined || count(pages)) &&
    (node === null || (count(node) && (node as number) <= MAX_NODE)) &&
    (write === undefined || (typeof write === "object" && write !== null && !Array.isArray(write) && count(write.from) && count(write.to)));
  if (!valid) throw new VmhookError(`hugepages: cannot undo journal record ${JSON.stringify(record)}; fix the pool by hand, then run vmhook recover`);
  return record as GrowRecord;
}

// ---- reconnect: the daemon restarted; say so if a pool lost pages meanwhile

function reconnect(ctx: PlanContext<unknown>): Step[] {
  for (const grown of ctx.records.map(checkRecord)) {
    const node = grown.node ?? undefined;
    const held = grown.added - grown.returned;
    const count = readPool(ctx.host, grown.sizeKiB, node).persistent;
    if (count < held) ctx.log.warn(`hugepages: ${poolName(grown.sizeKiB, node)} holds ${count} pages, fewer than the ${held} this VM added`);
  }
  return [];
}

/** `vmhook doctor`: whether each pool exists and can grow by this VM's pages now, by the fit check prepare runs, against the same floor. */
function check({ host, domain, elements }: CheckContext): Finding[] {
  // The plugin's own reading: pools and counts per guest cell, size and host node as prepare derives them.
  let config: HugepagesConfig;
  try {
    config = parseConfig(elements, domain);
  } catch {
    return []; // reported by the config check
  }
  const { pools, hostDefaultSizeKiB, boundByNumad } = config;
  const checkName = (node: number | undefined) => (node === undefined ? "hugepages" : `hugepages node ${node}`);
  const findings: Finding[] = [];
  const numad = boundByNumad === undefined ? undefined : numadRefusal(host, boundByNumad);
  if (numad) findings.push(fail("hugepages NUMA placement", numad.reason, numad.fixes.join("; ")));
  const mismatch = hostDefaultSizeKiB === undefined ? undefined : hostDefaultMismatch(host, hostDefaultSizeKiB);
  if (mismatch) findings.push(fail("hugepages page size", mismatch.reason, mismatch.fixes.join("; ")));
  if (config.backedByHugepages) {
    for (const sizeKiB of new Set(pools.map((need) => need.sizeKiB))) {
      const missing = missingMount(host, sizeKiB);
      // No fix: mountinfo or qemu.conf could not be read, as the reason says.
      if (missing) findings.push(fail("hugepages mount", missing.reason, missing.fixes.join("; ") || UNREADABLE_FIX));
    }
  }
  const present = pools.filter(({ sizeKiB, node }) => {
    const pool = hugepagePool(sizeKiB, node);
    const memoryless = node === undefined ? undefined : memorylessNode(host, node);
    if (node !== undefined && !host.exists(nodeDir(node))) {
      findings.push(fail(checkName(node), `host NUMA node ${node} does not exist (nodes: ${hostNodes(host).join(", ") || "none"})`, NODE_FIX));
    } else if (memoryless) {
      findings.push(fail(checkName(node), memoryless, `take the pages from a node with memory: ${NODE_FIX}`));
    } else if (!host.exists(pool)) {
      findings.push(fail(checkName(node), `the kernel has no pool of ${formatKiB(sizeKiB)} pages (${pool})`, sizeKiB === 1024 * 1024 ? 'use size="2M": 1G pages need a CPU with pdpe1gb' : `use one of the sizes in ${HUGEPAGE_DIR}`));
    } else return true;
    return false;
  });
  let view: HostView;
  try {
    view = readHostView(host, present, hugepagesSettings(host));
  } catch (error) {
    return [...findings, failedWith("hugepages", error, "vmhook needs /proc/meminfo (and the nodes' meminfo) to size huge page pools")];
  }
  for (const { need, refused, remedies } of checkFit(present, view)) {
    const { sizeKiB, node, pages } = need;
    if (refused) {
      findings.push(fail(checkName(node), refused.replace(/^hugepages: /, ""), remedies.join("; ")));
      continue;
    }
    const size = formatKiB(sizeKiB);
    const needKiB = pages * sizeKiB;
    const where = node === undefined ? "on the host" : `on node ${node}`;
    const free = (node === undefined ? view.host : view.nodes.get(node)!).freeKiB;
    const wanted = `${pages} × ${size} pages (${formatKiB(needKiB)})`;
    if (free >= needKiB) {
      findings.push(ok(checkName(node), `${wanted} fit in the free memory ${where} (${formatKiB(roundMiB(free))})`));
    } else {
      const bootFix = `reserve them at boot instead: ${howToBootWith(host, `hugepagesz=${size} hugepages=${node === undefined ? "" : `${node}:`}${pages}`)}`;
      findings.push(warn(checkName(node), `${wanted} need more than the free memory ${where} (${formatKiB(roundMiB(free))}): the page cache must be dropped first, and fragmented memory may still fall short`, `start the VM early, or ${bootFix}`));
    }
  }
  return findings;
}

/** plugins.hugepages of the host settings (the floor); with an unreadable file the default floor (the hook itself refuses to run). */
function hugepagesSettings(host: Host): Record<string, unknown> {
  try {
    return loadSettings(host).plugins.hugepages ?? {};
  } catch {
    return {};
  }
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
    "grow-pool": defineAction<GrowRecord, HugepagesConfig>({ check: checkRecord, apply: (record, ctx) => grow(ctx, record), unchangedAfterFailure: poolAsBefore, undo }),
  },
});
