// <vmhook:isolate> → which CPUs are the VM's and what to keep off them.
import type { XmlElement } from "../../lib/xml.ts";
import { formatCpuList, parseCpuset } from "../../lib/cpuset.ts";
import { describeElement, type Domain } from "../../lib/domain.ts";
import { readAttributes, single } from "../../lib/element.ts";
import { attributeText, ConfigError } from "../../lib/errors.ts";
import { parseYesNo } from "../../lib/validate.ts";
import { intersect, union } from "./cpus.ts";

export const PLUGIN_ID = "isolate";
export const ATTRIBUTES = ["host-cpus", "governor", "workqueues", "irqs", "required", "allow-overlap"] as const;

export interface IsolateConfig {
  /** host-cpus as written; undefined: all online CPUs minus the pinned ones. */
  hostCpus?: number[];
  /** Every CPU the domain pins a thread to (pinnedCpus). */
  pinned: number[];
  governor?: string;
  workqueues: boolean;
  irqs: boolean;
  /** no: a host that cannot isolate (cgroup v1, no cpufreq, ...) gets a warning and the VM starts. */
  required: boolean;
  allowOverlap: boolean;
  /** The element as written, for messages: <vmhook:isolate host-cpus="0-1">. */
  element: string;
}

/** Where messages say the domain pins its CPUs. */
export const PINS = "<cputune> or <vcpu cpuset>";

/**
 * Every CPU the domain pins a thread to: <cputune>'s vcpupin, emulatorpin and
 * iothreadpin, and <vcpu cpuset>, where libvirt runs each thread without a pin
 * of its own (the emulator's, an unpinned vCPU's or I/O thread's).
 */
export function pinnedCpus(domain: Domain): number[] {
  return union([domain.cputune.pinned, domain.vcpuCpuset ?? []]);
}

export function parse(elements: XmlElement[], domain: Domain): IsolateConfig {
  const element = single(elements);
  const where = describeElement(element);
  const attrs = readAttributes(element, ATTRIBUTES);
  const pinned = pinnedCpus(domain);
  const hostCpus = attrs["host-cpus"] !== undefined ? parseCpuset(attrs["host-cpus"], where, "host-cpus") : undefined;

  if (!hostCpus && pinned.length === 0) {
    throw new ConfigError(where, `has no host-cpus and the domain pins no CPUs (${PINS}), so vmhook cannot tell which CPUs are the VM's; pin them with <vcpupin> in <cputune>, or set host-cpus (vmhook doctor VM suggests CPUs that exist on this host)`);
  }
  const shared = hostCpus ? intersect(hostCpus, pinned) : [];
  if (shared.length > 0) {
    throw new ConfigError(where, `${attributeText("host-cpus", attrs["host-cpus"]!)} includes CPU ${formatCpuList(shared)}, which the domain pins the VM to (${PINS}); keep the VM's CPUs out of host-cpus`);
  }
  const governor = attrs.governor?.trim();
  if (governor !== undefined && !/^[a-z][a-z0-9_]{0,31}$/.test(governor)) {
    throw new ConfigError(where, `${attributeText("governor", attrs.governor!)} is not a cpufreq governor name; use one from /sys/devices/system/cpu/cpu0/cpufreq/scaling_available_governors, e.g. performance`);
  }
  return {
    hostCpus,
    pinned,
    governor,
    workqueues: parseYesNo(attrs.workqueues, where, "workqueues", false),
    irqs: parseYesNo(attrs.irqs, where, "irqs", false),
    required: parseYesNo(attrs.required, where, "required", true),
    allowOverlap: parseYesNo(attrs["allow-overlap"], where, "allow-overlap", false),
    element: where,
  };
}

/** The CPUs kept from the host: every online CPU outside host-cpus, or the pinned ones; empty when host-cpus keeps them all. */
export function isolatedCpus(hostCpus: number[] | undefined, pinned: number[], online: number[]): number[] {
  return hostCpus ? online.filter((cpu) => !hostCpus.includes(cpu)) : pinned;
}

/** Why a host-cpus that isolates nothing is refused (prepare) or fails (doctor), and the fix. */
export const nothingIsolated = (hostCpus: number[], online: number[]) => ({
  reason: `host-cpus="${formatCpuList(hostCpus)}" keeps every online CPU (${formatCpuList(online)}) for the host, so nothing is isolated`,
  fix: "leave the VM's CPUs out of host-cpus",
});
