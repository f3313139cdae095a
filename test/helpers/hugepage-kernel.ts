// A simulated kernel for huge page pools on a SimHost: per-node free memory,
// page cache and fragmented memory, nr_hugepages files that grant only what
// free, unfragmented memory allows (as the kernel does: the write succeeds,
// fewer pages show up), the global pool as the sum of the node pools,
// drop_caches and compaction, and meminfo with MemAvailable (free memory
// plus page cache), whose lowest value since the start is kept.
// Pages in use and surplus pages as mm/hugetlb.c keeps them: nr_hugepages
// shows all pages, surplus included, while a write sets the persistent count
// (all minus surplus); growing promotes surplus pages first, shrinking frees
// free pages and turns pages still in use into surplus.
import type { SimHost } from "./simhost.ts";

export const MiB = 1024;
export const GiB = 1024 * 1024;

export interface HugepageKernelOptions {
  /** Host NUMA nodes (default 1). */
  nodes?: number;
  /** Pool sizes in KiB (default 2M and 1G). */
  sizes?: number[];
  /** Free memory per node, KiB: one value for all nodes, or one per node (default 8 GiB). */
  freeKiB?: number | number[];
  /** Page cache per node that drop_caches frees (default 0). */
  cacheKiB?: number;
  /** Free memory per node in blocks too small for a huge page until compaction: one value for all nodes, or one per node (default 0). */
  fragmentedKiB?: number | number[];
  /** Compaction joins the fragmented blocks (default true). */
  compactionHelps?: boolean;
  /** MemTotal per node (default 16 GiB). */
  totalKiB?: number;
  /** The default huge page size, meminfo's Hugepagesize (default 2M; default_hugepagesz=1G makes it 1G). */
  defaultSizeKiB?: number;
  /** Pages already in each pool when the test starts, e.g. reserved at boot: {2048: 100} (global, on node 0). */
  initial?: Record<number, number>;
  /**
   * Nodes without memory (CPUs only, or all of it taken offline): MemTotal 0,
   * left out of has_memory, with pools that never grow, as Linux 6.1 gives
   * every online node ("pools": false, as older kernels, which registered
   * pools only for nodes with memory: no hugepages directory).
   */
  memoryless?: { nodes: number[]; pools?: boolean };
  /** Page sizes with a hugetlbfs mount in /proc/self/mountinfo, the default size at /dev/hugepages as systemd mounts it (default: all sizes). */
  mounted?: number[];
}

interface NodeState {
  freeKiB: number;
  cacheKiB: number;
  fragmentedKiB: number;
  /** All pages per size, surplus included: what nr_hugepages shows. */
  pages: Map<number, number>;
  surplus: Map<number, number>;
  used: Map<number, number>;
}

export class HugepageKernel {
  readonly nodes: NodeState[];
  readonly sizes: number[];
  dropCaches = 0;
  compactions = 0;
  /** The lowest MemAvailable of the host since the kernel was created. */
  lowestAvailableKiB = Infinity;
  readonly totalKiB: number;
  readonly defaultSizeKiB: number;
  private readonly memoryless: { nodes: number[]; pools?: boolean };
  /** Pages reserved by mappings and not faulted yet, per size (the kernel keeps one count for all nodes). */
  private readonly reserved: Map<number, number>;

  constructor(
    private readonly sim: SimHost,
    options: HugepageKernelOptions = {},
  ) {
    this.sizes = options.sizes ?? [2048, GiB];
    this.totalKiB = options.totalKiB ?? 16 * GiB;
    this.defaultSizeKiB = options.defaultSizeKiB ?? 2048;
    const free = options.freeKiB ?? 8 * GiB;
    this.memoryless = options.memoryless ?? { nodes: [] };
    this.reserved = new Map(this.sizes.map((size) => [size, 0]));
    this.nodes = Array.from({ length: options.nodes ?? 1 }, (_, node) => ({
      freeKiB: this.memoryless.nodes.includes(node) ? 0 : Array.isArray(free) ? free[node]! : free,
      cacheKiB: options.cacheKiB ?? 0,
      fragmentedKiB: Array.isArray(options.fragmentedKiB) ? options.fragmentedKiB[node]! : (options.fragmentedKiB ?? 0),
      pages: new Map(this.sizes.map((size) => [size, 0])),
      surplus: new Map(this.sizes.map((size) => [size, 0])),
      used: new Map(this.sizes.map((size) => [size, 0])),
    }));
    for (const [size, count] of Object.entries(options.initial ?? {})) this.setNode(0, Number(size), count);
    sim.onWrite(/^\/sys\/kernel\/mm\/hugepages\/hugepages-(\d+)kB\/nr_hugepages$/, (data, path) => {
      this.setGlobal(Number(/hugepages-(\d+)kB/.exec(path)![1]), Number(data));
    });
    sim.onWrite(/^\/sys\/devices\/system\/node\/node(\d+)\/hugepages\/hugepages-(\d+)kB\/nr_hugepages$/, (data, path) => {
      const [, node, size] = /node(\d+)\/hugepages\/hugepages-(\d+)kB/.exec(path)!;
      this.setNode(Number(node), Number(size), Number(data));
    });
    sim.onWrite("/proc/sys/vm/drop_caches", () => {
      this.dropCaches++;
      for (const node of this.nodes) {
        node.freeKiB += node.cacheKiB;
        node.cacheKiB = 0;
      }
      this.render();
    });
    sim.onWrite(/^(\/proc\/sys\/vm\/compact_memory|\/sys\/devices\/system\/node\/node\d+\/compact)$/, () => {
      this.compactions++;
      if (options.compactionHelps ?? true) for (const node of this.nodes) node.fragmentedKiB = 0;
    });
    this.render();
    sim.file("/proc/self/mountinfo", mountinfo(options.mounted ?? this.sizes, this.defaultSizeKiB));
  }

  /** Pages in a pool, surplus included (as nr_hugepages shows them): one node's, or the global one (sum of all nodes). */
  pool(sizeKiB: number, node?: number): number {
    return this.sum(node, (state) => state.pages.get(sizeKiB)!);
  }

  /** Surplus pages in a pool: one node's, or all of them. */
  surplus(sizeKiB: number, node?: number): number {
    return this.sum(node, (state) => state.surplus.get(sizeKiB)!);
  }

  /** A process maps `count` pages on a node: free pool pages first, then new surplus pages (nr_overcommit_hugepages). */
  use(sizeKiB: number, node: number, count: number): void {
    const state = this.nodes[node]!;
    const fromPool = Math.min(count, state.pages.get(sizeKiB)! - state.used.get(sizeKiB)!);
    const overcommitted = count - fromPool;
    add(state.pages, sizeKiB, overcommitted);
    add(state.surplus, sizeKiB, overcommitted);
    add(state.used, sizeKiB, count);
    state.freeKiB -= overcommitted * sizeKiB;
    this.render();
  }

  /**
   * A process maps `count` pages without touching them yet (QEMU before its
   * guest does): the kernel reserves them from the free pages, which still
   * count in free_hugepages, and shows the reservation in resv_hugepages.
   */
  reserve(sizeKiB: number, count: number): void {
    add(this.reserved, sizeKiB, count);
    this.render();
  }

  /** It unmaps them: a freed page goes back to the buddy allocator while the node has surplus pages. */
  unuse(sizeKiB: number, node: number, count: number): void {
    const state = this.nodes[node]!;
    add(state.used, sizeKiB, -count);
    const dissolved = Math.min(count, state.surplus.get(sizeKiB)!);
    add(state.surplus, sizeKiB, -dissolved);
    add(state.pages, sizeKiB, -dissolved);
    state.freeKiB += dissolved * sizeKiB;
    this.render();
  }

  private sum(node: number | undefined, of: (state: NodeState) => number): number {
    return (node === undefined ? this.nodes : [this.nodes[node]!]).reduce((total, state) => total + of(state), 0);
  }

  private persistent(sizeKiB: number, nodes: NodeState[]): number {
    return nodes.reduce((total, state) => total + state.pages.get(sizeKiB)! - state.surplus.get(sizeKiB)!, 0);
  }

  /** A node's file sets that node's persistent count (Linux 6.7 and later; older kernels count other nodes' surplus in). */
  private setNode(node: number, sizeKiB: number, count: number): void {
    this.resize(sizeKiB, [this.nodes[node]!], count);
  }

  /** The global file sets the persistent count of all nodes; pages are added and freed round-robin over the nodes. */
  private setGlobal(sizeKiB: number, count: number): void {
    this.resize(sizeKiB, this.nodes, count);
  }

  private resize(sizeKiB: number, nodes: NodeState[], count: number): void {
    let current = this.persistent(sizeKiB, nodes);
    const oneEach = (can: (state: NodeState) => boolean, change: (state: NodeState) => void, more: () => boolean) => {
      for (let turn = 0; more(); turn++) {
        const candidates = nodes.filter(can);
        if (candidates.length === 0) return;
        change(candidates[turn % candidates.length]!);
      }
    };
    // Growing: surplus pages become persistent first, then new pages come from free memory.
    oneEach((state) => state.surplus.get(sizeKiB)! > 0, (state) => (add(state.surplus, sizeKiB, -1), current++), () => current < count);
    oneEach((state) => state.freeKiB - state.fragmentedKiB >= sizeKiB, (state) => (add(state.pages, sizeKiB, 1), (state.freeKiB -= sizeKiB), current++), () => current < count);
    // Shrinking: free pages go back to memory, pages in use become surplus.
    const free = (state: NodeState) => state.pages.get(sizeKiB)! - state.used.get(sizeKiB)! > 0;
    oneEach(free, (state) => (add(state.pages, sizeKiB, -1), (state.freeKiB += sizeKiB), current--), () => current > count);
    oneEach((state) => state.surplus.get(sizeKiB)! < state.pages.get(sizeKiB)!, (state) => (add(state.surplus, sizeKiB, 1), current--), () => current > count);
    this.render();
  }

  /** The files as sysfs and procfs would show them. */
  private render(): void {
    const sim = this.sim;
    let freeKiB = 0;
    const withMemory = this.nodes.map((_, node) => node).filter((node) => !this.memoryless.nodes.includes(node));
    this.nodes.forEach((state, node) => {
      const dir = `/sys/devices/system/node/node${node}`;
      const totalKiB = withMemory.includes(node) ? this.totalKiB : 0;
      sim.file(`${dir}/meminfo`, `Node ${node} MemTotal:       ${totalKiB} kB\nNode ${node} MemFree:        ${state.freeKiB} kB\nNode ${node} Inactive(file): ${state.cacheKiB} kB\n`);
      sim.file(`${dir}/compact`, "");
      if (withMemory.includes(node) || this.memoryless.pools) for (const size of this.sizes) this.renderPool(`${dir}/hugepages/hugepages-${size}kB`, size, node);
      freeKiB += state.freeKiB;
    });
    sim.file("/sys/devices/system/node/online", this.nodes.length === 1 ? "0" : `0-${this.nodes.length - 1}`);
    sim.file("/sys/devices/system/node/has_memory", nodeList(withMemory));
    for (const size of this.sizes) {
      this.renderPool(`/sys/kernel/mm/hugepages/hugepages-${size}kB`, size);
      sim.file(`/sys/kernel/mm/hugepages/hugepages-${size}kB/resv_hugepages`, this.reserved.get(size)!);
    }
    const availableKiB = freeKiB + this.sum(undefined, (state) => state.cacheKiB);
    this.lowestAvailableKiB = Math.min(this.lowestAvailableKiB, availableKiB);
    const totalKiB = this.totalKiB * withMemory.length;
    sim.file("/proc/meminfo", `MemTotal:       ${totalKiB} kB\nMemFree:        ${freeKiB} kB\nMemAvailable:   ${availableKiB} kB\nHugepagesize:       ${this.defaultSizeKiB} kB\n`);
    sim.file("/proc/sys/vm/drop_caches", "0");
    sim.file("/proc/sys/vm/compact_memory", "");
  }

  private renderPool(dir: string, sizeKiB: number, node?: number): void {
    const pages = this.pool(sizeKiB, node);
    this.sim.file(`${dir}/nr_hugepages`, pages);
    this.sim.file(`${dir}/surplus_hugepages`, this.surplus(sizeKiB, node));
    this.sim.file(`${dir}/free_hugepages`, pages - this.sum(node, (state) => state.used.get(sizeKiB)!));
  }
}

/** hugetlbfs mounts as the kernel shows them (hugetlbfs_show_options prints the size in K or M: 1G is pagesize=1024M). */
function mountinfo(sizes: number[], defaultSizeKiB: number): string {
  const root = "21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw";
  const hugetlbfs = sizes.map((size, index) => {
    const point = size === defaultSizeKiB ? "/dev/hugepages" : `/dev/hugepages${size >= GiB ? `${size / GiB}G` : `${size / MiB}M`}`;
    const shown = size >= MiB ? `${size / MiB}M` : `${size}K`;
    return `${40 + index} 22 0:${40 + index} / ${point} rw,relatime shared:${20 + index} - hugetlbfs hugetlbfs rw,pagesize=${shown}`;
  });
  return [root, ...hugetlbfs].join("\n") + "\n";
}

/** Node numbers as the kernel prints a nodemask (%*pbl): "0-1,3". */
const nodeList = (nodes: number[]) =>
  nodes
    .reduce<number[][]>((runs, node) => (runs.at(-1)?.at(-1) === node - 1 ? runs.at(-1)!.push(node) : runs.push([node]), runs), [])
    .map((run) => (run.length === 1 ? `${run[0]}` : `${run[0]}-${run.at(-1)}`))
    .join(",");

const add = (map: Map<number, number>, key: number, delta: number) => map.set(key, map.get(key)! + delta);
