// Whether a VM's huge pages can fit before a single page is taken, and the
// free-memory floor that growing a pool never crosses. Pure functions on
// facts read beforehand (readHostView), so `vmhook plan`, `validate`,
// `doctor` and host policy ask the same question prepare does.
import { boundedProduct, boundedSum } from "../../lib/bounded.ts";
import { jsonText, VmhookError } from "../../lib/errors.ts";
import type { Host } from "../../lib/host.ts";
import { hugepagePool, memoryFacts, type MemoryFacts } from "../../lib/memory.ts";
import { paths } from "../../lib/paths.ts";
import { formatKiB } from "../../lib/validate.ts";

/** Pages of one size to add to one pool: a host NUMA node's, or the global one. */
export interface PoolNeed {
  sizeKiB: number;
  /** undefined: the global pool (the kernel spreads it over the nodes). */
  node?: number;
  pages: number;
}

const GiB = 1024 * 1024;
/** The largest floor setting taken: 2^32 MiB (4 PiB), far beyond any host. */
const MAX_FLOOR_MIB = 2 ** 32;
export const FLOOR_SETTING = "minFreeMiB";

/**
 * The host setting plugins.hugepages.minFreeMiB, or undefined when unset.
 * A bad value is an error naming the file, the key and the value.
 */
export function floorSetting(settings: Record<string, unknown>): number | undefined {
  const value = settings[FLOOR_SETTING];
  if (value === undefined) return undefined;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0 || value > MAX_FLOOR_MIB) {
    throw new VmhookError(
      `${paths.hostConfig}: "plugins": {"hugepages": {"${FLOOR_SETTING}": ${jsonText(value)}}} is not a whole number of MiB from 0 to ${MAX_FLOOR_MIB}; e.g. 2048 keeps 2 GiB free`,
    );
  }
  return value;
}

/** The memory that growing a pool must leave available: the setting, else the larger of 5 % of RAM and 1 GiB. */
export function freeMemoryFloorKiB(totalKiB: number, minFreeMiB: number | undefined): number {
  return minFreeMiB !== undefined ? minFreeMiB * 1024 : Math.max(Math.ceil(totalKiB / 20), GiB);
}

/** A node keeps its share of the host's floor, in proportion to its memory. */
export function nodeFloorKiB(hostFloorKiB: number, host: MemoryFacts, node: MemoryFacts): number {
  return host.totalKiB > 0 ? Math.ceil(hostFloorKiB * Math.min(1, node.totalKiB / host.totalKiB)) : hostFloorKiB;
}

/** What one scope could give now without crossing its floor. */
const grantable = (facts: MemoryFacts, floorKiB: number) => Math.max(0, facts.availableKiB - floorKiB);

/** Everything the fit check reads, read once. */
export interface HostView {
  host: MemoryFacts;
  floorKiB: number;
  nodes: Map<number, MemoryFacts>;
  /** Free pages already in each needed pool that no mapping has reserved, keyed "sizeKiB/node". */
  poolFree: Map<string, number>;
}

const poolKey = (need: PoolNeed) => `${need.sizeKiB}/${need.node ?? "global"}`;

export function readHostView(host: Host, needs: PoolNeed[], settings: Record<string, unknown>): HostView {
  const facts = memoryFacts(host);
  const nodes = new Map<number, MemoryFacts>();
  const poolFree = new Map<string, number>();
  for (const need of needs) {
    if (need.node !== undefined && !nodes.has(need.node)) nodes.set(need.node, memoryFacts(host, need.node));
    // free_hugepages still counts pages a process mapped and has not touched yet (another VM's QEMU);
    // the kernel keeps their count, resv_hugepages, for the global pool only, so a node's pool is
    // charged all of it: never more pages offered than are really unclaimed.
    const free = Number(host.readTrimmed(`${hugepagePool(need.sizeKiB, need.node)}/free_hugepages`));
    const reserved = Number(host.readTrimmed(`${hugepagePool(need.sizeKiB, undefined)}/resv_hugepages`));
    poolFree.set(poolKey(need), Number.isSafeInteger(free) && Number.isSafeInteger(reserved) ? Math.max(0, free - reserved) : 0);
  }
  return { host: facts, floorKiB: freeMemoryFloorKiB(facts.totalKiB, floorSetting(settings)), nodes, poolFree };
}

export interface PoolFit {
  need: PoolNeed;
  /** Why this pool cannot be grown: the first line of the refusal. */
  refused?: string;
  /** What to do about it. */
  remedies: string[];
}

const poolName = (need: PoolNeed) => `the ${formatKiB(need.sizeKiB)} pool${need.node === undefined ? "" : ` of node ${need.node}`}`;

/**
 * Checks every pool's need against what its scope can give without crossing
 * the floor: the host (MemAvailable, MemTotal) and, for a node's pool, that
 * node too. Pools sharing a scope are counted together, in order, so the
 * pool where the sum stops fitting is the one refused.
 */
export function checkFit(needs: PoolNeed[], view: HostView): PoolFit[] {
  let hostNeedKiB = 0;
  const nodeNeedKiB = new Map<number, number>();
  return needs.map((need) => {
    const needKiB = boundedProduct(need.pages, need.sizeKiB, `${need.pages} pages of ${formatKiB(need.sizeKiB)}`);
    hostNeedKiB = boundedSum(hostNeedKiB, needKiB, "the huge page memory of this VM");
    const scopes = [{ name: "the host", facts: view.host, floorKiB: view.floorKiB, needKiB: hostNeedKiB }];
    if (need.node !== undefined) {
      const facts = view.nodes.get(need.node)!;
      const onNode = boundedSum(nodeNeedKiB.get(need.node) ?? 0, needKiB, `the huge page memory of this VM on node ${need.node}`);
      nodeNeedKiB.set(need.node, onNode);
      scopes.unshift({ name: `node ${need.node}`, facts, floorKiB: nodeFloorKiB(view.floorKiB, view.host, facts), needKiB: onNode });
    }
    const short = scopes.find((scope) => scope.needKiB > grantable(scope.facts, scope.floorKiB));
    if (!short) return { need, remedies: [] };
    const { name, facts, floorKiB } = short;
    const wanted = `${need.pages} pages of ${formatKiB(need.sizeKiB)} (${formatMiB(needKiB)})`;
    const refused = `hugepages: ${wanted} for ${poolName(need)} cannot fit: ${name} has ${formatMiB(facts.availableKiB)} available and keeps ${formatMiB(floorKiB)} free, so it can give ${formatMiB(grantable(facts, floorKiB))}`;
    return { need, refused, remedies: remediesFor(need, short, view) };
  });
}

function remediesFor(need: PoolNeed, scope: { name: string; facts: MemoryFacts; floorKiB: number; needKiB: number }, view: HostView): string[] {
  const size = formatKiB(need.sizeKiB);
  const ever = Math.max(0, scope.facts.totalKiB - scope.floorKiB);
  const remedies: string[] = [];
  if (scope.needKiB > ever) {
    remedies.push(`${scope.name} has ${formatMiB(scope.facts.totalKiB)} in all and can never give this: give the VM less <memory> (at most ${formatMiB(ever)} here)`);
  } else {
    remedies.push("free memory first (stop other VMs or services), then start the VM again");
    const perNode = need.node === undefined ? "" : `${need.node}:`;
    remedies.push(`or reserve the pages at boot (kernel command line: hugepagesz=${size} hugepages=${perNode}${need.pages}) and drop <vmhook:hugepages>`);
  }
  remedies.push(`the floor is plugins.hugepages.${FLOOR_SETTING} in ${paths.hostConfig} (default: the larger of 5 % of RAM and 1 GiB)`);
  const inPool = view.poolFree.get(poolKey(need)) ?? 0;
  if (inPool >= need.pages) {
    remedies.push(`${poolName(need)} already holds ${inPool} free pages: if they were reserved for this VM, drop <vmhook:hugepages> and QEMU uses them`);
  }
  return remedies;
}

/** The refusal of the first pool that cannot fit, or undefined when all fit. */
export function refusal(fits: PoolFit[]): VmhookError | undefined {
  const refused = fits.find((fit) => fit.refused);
  return refused && new VmhookError(refused.refused!, refused.remedies);
}

export function formatMiB(kib: number): string {
  return `${Math.floor(kib / 1024)} MiB`;
}
