// CPU lists as libvirt and the kernel write them: "0-3,8,^2".
import { attributeText, ConfigError, excerpt } from "./errors.ts";

/** What a list holds, for its messages: a node list must not be explained as CPUs. */
interface ListKind {
  item: "CPU" | "node";
  example: string;
  max: number;
}

const CPUS: ListKind = { item: "CPU", example: "0-3,8,^2", max: 8191 };
/** Linux's largest NODES_SHIFT (10) allows 1024 NUMA nodes. */
export const MAX_NODE = 1023;
const NODES: ListKind = { item: "node", example: "0-1,3", max: MAX_NODE };

/**
 * Parses a libvirt cpuset (ranges, single CPUs, ^exclusions) into sorted CPU
 * numbers, as libvirt's virBitmapParse reads it: left to right, so ^N takes
 * away only what the list named before it ("^2,0-3" is 0-3), and a trailing
 * comma is allowed.
 */
export function parseCpuset(text: string, element: string, attribute: string): number[] {
  return parseList(text, element, attribute, CPUS);
}

/** Parses a libvirt nodeset (NUMA nodes, written as a cpuset) into sorted node numbers. */
export function parseNodeset(text: string, element: string, attribute: string): number[] {
  return parseList(text, element, attribute, NODES);
}

/**
 * The union of several cpusets, each read as parseCpuset reads it (its ^N
 * takes away from its own list only): a domain's pins, of which it may have
 * thousands, each over every CPU. Its cost is the text and, per list, one
 * pass over the largest CPU number, never a set per list.
 */
export function parseCpusetUnion(cpusets: { text: string; element: string }[], attribute: string): number[] {
  const union = new Uint8Array(CPUS.max + 1);
  const members = new Uint8Array(CPUS.max + 1);
  for (const { text, element } of cpusets) {
    members.fill(0);
    readList(members, text, element, attribute, CPUS);
    for (let cpu = 0; cpu < members.length; cpu++) union[cpu]! |= members[cpu]!;
  }
  return itemsOf(union);
}

function parseList(text: string, element: string, attribute: string, kind: ListKind): number[] {
  const members = new Uint8Array(kind.max + 1);
  readList(members, text, element, attribute, kind);
  return itemsOf(members);
}

/** The items marked in `members`, in order. */
function itemsOf(members: Uint8Array): number[] {
  const items: number[] = [];
  for (let item = members.indexOf(1); item >= 0; item = members.indexOf(1, item + 1)) items.push(item);
  return items;
}

/** Marks the list's items in `members` (all unmarked), left to right as virBitmapParse reads it. */
function readList(members: Uint8Array, text: string, element: string, attribute: string, kind: ListKind): void {
  const { item } = kind;
  const fail = (why: string) =>
    new ConfigError(element, `${attributeText(attribute, text)} ${why}; write ${item}s as a list like ${kind.example}`);
  if (text.trim() === "") throw fail("is empty");
  for (const rawPart of text.replace(/,\s*$/, "").split(",")) {
    const part = rawPart.trim();
    let match: RegExpExecArray | null;
    if ((match = /^\^(\d+)$/.exec(part))) {
      members[checkItem(Number(match[1]), kind, fail)] = 0;
    } else if ((match = /^(\d+)$/.exec(part))) {
      members[checkItem(Number(match[1]), kind, fail)] = 1;
    } else if ((match = /^(\d+)\s*-\s*(\d+)$/.exec(part))) {
      const first = checkItem(Number(match[1]), kind, fail);
      const last = checkItem(Number(match[2]), kind, fail);
      if (last < first) throw fail(`has a range ${excerpt(part)} that runs backwards`);
      members.fill(1, first, last + 1);
    } else {
      throw fail(`has "${excerpt(part)}", which is not a ${item}, a range or ^${item}`);
    }
  }
  if (members.indexOf(1) < 0) throw fail(`leaves no ${item}`);
}

function checkItem(number: number, kind: ListKind, fail: (why: string) => Error): number {
  if (!Number.isSafeInteger(number) || number > kind.max) throw fail(`names ${kind.item} ${number}, beyond the largest possible (${kind.max})`);
  return number;
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
