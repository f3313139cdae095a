// What the host policy (lib/policy.ts, "isolate") asks the host to keep:
// enough CPUs, one on every NUMA node, more than the boot console's CPU. The
// policy rule holds one domain's request against it (plugins/policy-rules.ts);
// prepare, under the host lock, holds the host as every running VM leaves it
// (index.ts).
import { formatCpuList, parseKernelCpuList } from "../../lib/cpuset.ts";
import type { Host } from "../../lib/host.ts";
import { NODE_DIR } from "../../lib/memory.ts";
import type { HostPolicy } from "../../lib/policy.ts";

/** How the host falls short: a refusal reads "… leaves the host only CPU 0-1, REASON; REMEDY, or to allow it, CHANGE in /etc/vmhook/policy.json". */
export interface Shortfall {
  reason: string;
  remedy: string;
  /** The policy change that would allow it (for allowHint). */
  change: string;
}

/** The usable CPUs per NUMA node that has any. */
function numaNodes(host: Host, usable: number[]): { node: string; cpus: number[] }[] {
  return host
    .list(NODE_DIR)
    .filter((entry) => /^node\d+$/.test(entry))
    .map((node) => ({ node: node.slice(4), cpus: parseKernelCpuList(host.readTrimmed(`${NODE_DIR}/${node}/cpulist`) ?? "").filter((cpu) => usable.includes(cpu)) }))
    .filter((node) => node.cpus.length > 0);
}

/**
 * Where isolate's shared state keeps the boot console's CPUs as the host had
 * them, saved with the first IRQ original (retune.ts): while a VM's irqs="yes"
 * holds the IRQs elsewhere, the policy is held against the host's own placement.
 */
export const BOOT_CONSOLE = "boot-console-cpus";

/**
 * The CPUs that take the boot console's IRQs (serial port, i8042 keyboard),
 * from /proc/interrupts and each IRQ's effective affinity; when none is
 * listed, the boot CPU 0, where the kernel routes the legacy IRQs.
 */
export function bootConsoleCpus(host: Host): number[] {
  const irqs = (host.readTrimmed("/proc/interrupts") ?? "")
    .split("\n")
    .filter((line) => /\b(ttyS\d+|ttyAMA\d+|serial|i8042)\b/.test(line))
    .map((line) => /^\s*(\d+):/.exec(line)?.[1])
    .filter((irq): irq is string => irq !== undefined);
  const cpus = irqs.flatMap((irq) => parseKernelCpuList(host.readTrimmed(`/proc/irq/${irq}/effective_affinity_list`) ?? host.readTrimmed(`/proc/irq/${irq}/smp_affinity_list`) ?? ""));
  return cpus.length > 0 ? [...new Set(cpus)].sort((a, b) => a - b) : [0];
}

/**
 * How the host, keeping `kept` of the `usable` CPUs (online, not isolated at
 * boot: a node with none is not the host's), falls short of the policy's
 * isolate rules; undefined when it does not. The boot console's CPUs
 * are the host's own: those saved in isolate's shared state (`originals`, as
 * retune.ts keeps them, read only when the rule needs them), else where its
 * IRQs go now.
 */
export function hostShortfall(rules: HostPolicy["isolate"], host: Host, usable: number[], kept: number[], originals: () => { [BOOT_CONSOLE]?: number[] } | undefined): Shortfall | undefined {
  const { minHostCpus, everyNumaNode, allowBootConsoleCpuAlone } = rules;
  if (kept.length < minHostCpus) {
    return { reason: `but the host policy keeps at least ${minHostCpus} CPU(s) for the host`, remedy: "give the host more CPUs", change: `lower "isolate.minHostCpus"` };
  }
  const bare = everyNumaNode ? numaNodes(host, usable).find((node) => !node.cpus.some((cpu) => kept.includes(cpu))) : undefined;
  if (bare) {
    return { reason: `none on NUMA node ${bare.node} (CPUs ${formatCpuList(bare.cpus)})`, remedy: "keep one of them for the host", change: `set "isolate.everyNumaNode": false` };
  }
  if (!allowBootConsoleCpuAlone && kept.length === 1 && (originals()?.[BOOT_CONSOLE] ?? bootConsoleCpus(host)).includes(kept[0]!)) {
    return {
      reason: "the CPU that takes the boot console's IRQs: the host would answer slowly on its console",
      remedy: "keep another CPU for the host",
      change: `set "isolate.allowBootConsoleCpuAlone": true`,
    };
  }
  return undefined;
}
