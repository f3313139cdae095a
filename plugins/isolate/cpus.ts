// CPU sets as the kernel and systemd write them: lists, hex masks.
import { formatCpuList, parseKernelCpuList } from "../../lib/cpuset.ts";
import type { BaseContext } from "../../lib/plugin.ts";

export const CPU_DIR = "/sys/devices/system/cpu";

export function onlineCpus(ctx: BaseContext): number[] {
  return parseKernelCpuList(ctx.host.read(`${CPU_DIR}/online`));
}

/** A CPU list as the kernel ("0-3,8") or older systemd ("0 1 2 3") writes it. */
export function parseCpuText(text: string): number[] {
  return parseKernelCpuList(text.trim().replace(/\s+/g, ","));
}

/** The original CPUs (empty means "all") narrowed to the host set; the whole host set if none is left. */
export function narrow(original: number[], hostCpus: number[]): number[] {
  const kept = intersect(original, hostCpus);
  return kept.length > 0 ? kept : hostCpus;
}

/** Target.want for CPU-list files and properties. */
export const narrowedList = (hostCpus: number[]) => (original: string) => formatCpuList(narrow(parseCpuText(original), hostCpus));
/** Target.want for hex cpumask files. */
export const narrowedMask = (hostCpus: number[]) => (original: string) => formatHexMask(narrow(parseHexMask(original), hostCpus));

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
