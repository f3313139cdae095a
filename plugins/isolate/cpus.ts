// CPU sets as the kernel and systemd write them: lists, hex masks.
import { formatCpuList, parseKernelCpuList } from "../../lib/cpuset.ts";
import type { Host } from "../../lib/host.ts";
import type { BaseContext } from "../../lib/plugin.ts";

export const CPU_DIR = "/sys/devices/system/cpu";

export function onlineCpus(ctx: BaseContext): number[] {
  return parseKernelCpuList(ctx.host.read(`${CPU_DIR}/online`));
}

/**
 * The CPUs the kernel command line keeps from the host's scheduler: isolcpus=
 * (sysfs "isolated", the CPUs outside every scheduling domain). Host
 * processes never ran there, so vmhook never gives them any: none of them is
 * host capacity. nohz_full= alone is not such a CPU: it moves the tick and
 * kernel work away, but processes are still scheduled there.
 */
export function bootIsolatedCpus(host: Host): number[] {
  return parseKernelCpuList(host.readTrimmed(`${CPU_DIR}/isolated`) ?? "");
}

/** The online CPUs the host may run its work on: all but those isolated at boot. */
export function hostUsableCpus(host: Host, online: number[]): number[] {
  const bootIsolated = bootIsolatedCpus(host);
  return online.filter((cpu) => !bootIsolated.includes(cpu));
}

/** For a message on what the host keeps: the online CPUs isolated at boot, which it does not, or "". */
export function bootIsolatedNote(host: Host, online: number[]): string {
  const isolated = intersect(online, bootIsolatedCpus(host));
  return isolated.length > 0 ? ` (CPU ${formatCpuList(isolated)} isolated at boot by isolcpus=, where the host never runs)` : "";
}

/**
 * The VM's CPUs (`isolated`) whose core has another thread among the CPUs the
 * host keeps (`kept`), and those threads: SMT siblings share the core's
 * execution units and caches, so host work there still slows the VM.
 */
function splitCores(host: Host, isolated: number[], kept: number[]): { vm: number[]; host: number[] } {
  const vm: number[] = [];
  const hostThreads = new Set<number>();
  for (const cpu of isolated) {
    const siblings = parseKernelCpuList(host.readTrimmed(`${CPU_DIR}/cpu${cpu}/topology/thread_siblings_list`) ?? "").filter((sibling) => kept.includes(sibling));
    if (siblings.length > 0) vm.push(cpu);
    for (const sibling of siblings) hostThreads.add(sibling);
  }
  return { vm, host: union([[...hostThreads]]) };
}

/** For a warning: the VM's CPUs on cores whose other thread the host keeps, and the fix; undefined when none. */
export function splitCoresWarning(host: Host, isolated: number[], kept: number[], hostCpusGiven: boolean): { reason: string; fix: string } | undefined {
  const split = splitCores(host, isolated, kept);
  if (split.vm.length === 0) return undefined;
  const [vm, hostThreads] = [formatCpuList(split.vm), formatCpuList(split.host)];
  return {
    reason: `CPU ${vm} of this VM ${split.vm.length > 1 ? "share cores" : "shares a core"} with CPU ${hostThreads}, which the host keeps (SMT threads, ${CPU_DIR}/cpuN/topology/thread_siblings_list): host work there slows the VM on those cores`,
    fix: hostCpusGiven ? `leave CPU ${hostThreads} out of host-cpus too` : `give the VM whole cores: pin it to CPU ${hostThreads} as well (its emulatorpin or more vCPUs)`,
  };
}

/** A CPU list as the kernel ("0-3,8") or older systemd ("0 1 2 3") writes it. */
export function parseCpuText(text: string): number[] {
  return parseKernelCpuList(text.trim().replace(/\s+/g, ","));
}

/** The online CPUs no VM isolates (`free`), and those of them the host runs on (`host`: none isolated at boot). */
export interface HostSet {
  free: number[];
  host: number[];
}

/**
 * The original CPUs (empty means "all") less the VMs' ones: what the admin put
 * on CPUs isolated at boot stays there. When none is left, or for "all"
 * (which would let a group's processes onto the boot-isolated CPUs), the host's.
 */
export function narrow(original: number[], hostSet: HostSet): number[] {
  const kept = intersect(original, hostSet.free);
  return kept.length > 0 ? kept : hostSet.host;
}

/** Target.want for CPU-list files and properties. */
export const narrowedList = (hostSet: HostSet) => (original: string) => formatCpuList(narrow(parseCpuText(original), hostSet));
/** Target.want for hex cpumask files. */
export const narrowedMask = (hostSet: HostSet) => (original: string) => formatHexMask(narrow(parseHexMask(original), hostSet));

export function union(sets: number[][]): number[] {
  return [...new Set(sets.flat())].sort((a, b) => a - b);
}

export function intersect(a: number[], b: number[]): number[] {
  return a.filter((cpu) => b.includes(cpu));
}

/** The kernel's cpumask text: 32-bit hex words, most significant first, comma-separated ("ff,ffffffff"). */
export function parseHexMask(text: string): number[] {
  const cpus: number[] = [];
  const words = text.trim().split(",").reverse();
  words.forEach((word, index) => {
    const value = parseInt(word, 16);
    for (let bit = 0; bit < 32; bit++) if ((value >>> bit) & 1) cpus.push(index * 32 + bit);
  });
  return cpus;
}

export function formatHexMask(cpus: number[]): string {
  const words: number[] = [];
  for (const cpu of cpus) words[cpu >> 5] = ((words[cpu >> 5] ?? 0) | (1 << (cpu & 31))) >>> 0;
  const hex = Array.from({ length: words.length }, (_, i) => (words[i] ?? 0).toString(16));
  return hex
    .map((word, i) => (i === hex.length - 1 ? word : word.padStart(8, "0")))
    .reverse()
    .join(",");
}
