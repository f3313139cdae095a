// CPU lists as libvirt and the kernel write them: "0-3,8,^2".
import { ConfigError } from "./errors.ts";

/** Parses a libvirt cpuset (ranges, single CPUs, ^exclusions) into sorted CPU numbers. */
export function parseCpuset(text: string, element: string, attribute: string, maxCpu = 8191): number[] {
  const include = new Set<number>();
  const exclude = new Set<number>();
  const fail = (why: string) =>
    new ConfigError(element, `${attribute}="${text}" ${why}; write CPUs as a list like 0-3,8,^2`);
  if (text.trim() === "") throw fail("is empty");
  for (const rawPart of text.split(",")) {
    const part = rawPart.trim();
    let match: RegExpExecArray | null;
    if ((match = /^\^(\d+)$/.exec(part))) {
      exclude.add(checkCpu(Number(match[1]), maxCpu, fail));
    } else if ((match = /^(\d+)$/.exec(part))) {
      include.add(checkCpu(Number(match[1]), maxCpu, fail));
    } else if ((match = /^(\d+)\s*-\s*(\d+)$/.exec(part))) {
      const first = checkCpu(Number(match[1]), maxCpu, fail);
      const last = checkCpu(Number(match[2]), maxCpu, fail);
      if (last < first) throw fail(`has a range ${part} that runs backwards`);
      for (let cpu = first; cpu <= last; cpu++) include.add(cpu);
    } else {
      throw fail(`has "${part}", which is not a CPU, a range or ^CPU`);
    }
  }
  const cpus = [...include].filter((cpu) => !exclude.has(cpu)).sort((a, b) => a - b);
  if (cpus.length === 0) throw fail("leaves no CPU");
  return cpus;
}

function checkCpu(cpu: number, maxCpu: number, fail: (why: string) => Error): number {
  if (!Number.isSafeInteger(cpu) || cpu > maxCpu) throw fail(`names CPU ${cpu}, beyond the largest possible (${maxCpu})`);
  return cpu;
}

/** Parses a kernel CPU list (/sys/devices/system/cpu/online, cpuset.cpus); "" is the empty set. */
export function parseKernelCpuList(text: string): number[] {
  const cpus: number[] = [];
  for (const part of text.trim().split(",")) {
    if (part === "") continue;
    const [first, last] = part.split("-").map(Number);
    for (let cpu = first!; cpu <= (last ?? first!); cpu++) cpus.push(cpu);
  }
  return cpus;
}

/** Formats CPU numbers the way the kernel does: "0-3,8". */
export function formatCpuList(cpus: Iterable<number>): string {
  const sorted = [...new Set(cpus)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; i++) {
    const first = sorted[i]!;
    while (i + 1 < sorted.length && sorted[i + 1] === sorted[i]! + 1) i++;
    parts.push(first === sorted[i] ? `${first}` : `${first}-${sorted[i]}`);
  }
  return parts.join(",");
}
