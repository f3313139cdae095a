// A simulated kernel for huge page pools on a SimHost: per-node free memory
// and page cache, nr_hugepages files that grant only what free memory allows
// (as the kernel does: the write succeeds, fewer pages show up), the global
// pool as the sum of the node pools, drop_caches and compaction triggers.
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
  /** Pages already in each pool when the test starts, e.g. reserved at boot: {2048: 100} (global, on node 0). */
  initial?: Record<number, number>;
}

interface NodeState {
  freeKiB: number;
  cacheKiB: number;
  pages: Map<number, number>;
}

export class HugepageKernel {
  readonly nodes: NodeState[];
  readonly sizes: number[];
  dropCaches = 0;
  compactions = 0;

  constructor(
    private readonly sim: SimHost,
    options: HugepageKernelOptions = {},
  ) {
    this.sizes = options.sizes ?? [2048, GiB];
    const free = options.freeKiB ?? 8 * GiB;
    this.nodes = Array.from({ length: options.nodes ?? 1 }, (_, node) => ({
      freeKiB: Array.isArray(free) ? free[node]! : free,
      cacheKiB: options.cacheKiB ?? 0,
      pages: new Map(this.sizes.map((size) => [size, 0])),
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
    });
    this.render();
  }

  /** Pages in a pool: one node's, or the global one (sum of all nodes). */
  pool(sizeKiB: number, node?: number): number {
    if (node !== undefined) return this.nodes[node]!.pages.get(sizeKiB)!;
    return this.nodes.reduce((sum, state) => sum + state.pages.get(sizeKiB)!, 0);
  }

  private setNode(node: number, sizeKiB: number, count: number): void {
    const state = this.nodes[node]!;
    const current = state.pages.get(sizeKiB)!;
    const granted = count > current ? Math.min(count - current, Math.floor(state.freeKiB / sizeKiB)) : count - current;
    state.pages.set(sizeKiB, current + granted);
    state.freeKiB -= granted * sizeKiB;
    this.render();
  }

  /** Like the kernel: the global pool grows and shrinks round-robin over the nodes. */
  private setGlobal(sizeKiB: number, count: number): void {
    let current = this.pool(sizeKiB);
    for (let turn = 0; current !== count; turn++) {
      const candidates = this.nodes.filter((state) => (count > current ? state.freeKiB >= sizeKiB : state.pages.get(sizeKiB)! > 0));
      if (candidates.length === 0) break;
      const state = candidates[turn % candidates.length]!;
      const step = count > current ? 1 : -1;
      state.pages.set(sizeKiB, state.pages.get(sizeKiB)! + step);
      state.freeKiB -= step * sizeKiB;
      current += step;
    }
    this.render();
  }

  /** The files as sysfs and procfs would show them. */
  private render(): void {
    const sim = this.sim;
    let freeKiB = 0;
    this.nodes.forEach((state, node) => {
      const dir = `/sys/devices/system/node/node${node}`;
      sim.file(`${dir}/meminfo`, `Node ${node} MemTotal:       16777216 kB\nNode ${node} MemFree:        ${state.freeKiB} kB\n`);
      sim.file(`${dir}/compact`, "");
      for (const size of this.sizes) sim.file(`${dir}/hugepages/hugepages-${size}kB/nr_hugepages`, state.pages.get(size)!);
      freeKiB += state.freeKiB;
    });
    sim.file("/sys/devices/system/node/online", this.nodes.length === 1 ? "0" : `0-${this.nodes.length - 1}`);
    for (const size of this.sizes) sim.file(`/sys/kernel/mm/hugepages/hugepages-${size}kB/nr_hugepages`, this.pool(size));
    sim.file("/proc/meminfo", `MemTotal:       33554432 kB\nMemFree:        ${freeKiB} kB\nHugepagesize:       2048 kB\n`);
    sim.file("/proc/sys/vm/drop_caches", "0");
    sim.file("/proc/sys/vm/compact_memory", "");
  }
}
