// Claims: what each running VM isolates, one journal record per kind of
// setting, read from every journal (which fail closed when one is unreadable).
import { VmhookError } from "../../lib/errors.ts";
import { othersRecords, type Journal } from "../../lib/journal.ts";
import type { BaseContext, UndoRecord } from "../../lib/plugin.ts";
import { PLUGIN_ID } from "./config.ts";

/** The kinds of host setting isolation changes, in the order prepare applies them. */
export const ACTIONS = ["systemd-allowed-cpus", "cgroup-cpuset", "workqueue-mask", "irq-affinity", "governor"] as const;
export type Action = (typeof ACTIONS)[number];

/** One journal record: this VM's claim on one kind of host setting. */
export interface Claim extends UndoRecord {
  action: Action;
  /** CPUs kept from the host: online minus host-cpus, or the pinned ones. */
  isolated: number[];
  /** CPUs the VM runs on: the pinned ones, or all isolated ones when it pins nothing. */
  own: number[];
  governor: string | null;
  /** The VM's allow-overlap; a record without it (an older vmhook's) is read as false, which refuses an overlap. */
  allowOverlap: boolean;
}

export interface OtherVm {
  name: string;
  isolated: number[];
  own: number[];
  allowOverlap: boolean;
}

/** Every claim of this kind in every journal, except those of `exceptDomain` (the one being released). */
export function claimsOf(ctx: BaseContext, action: Action, exceptDomain?: string): Claim[] {
  return othersRecords(ctx.journals(), exceptDomain ?? "", PLUGIN_ID, checkClaim)
    .map(({ record }) => record)
    .filter((claim) => claim.action === action);
}

/** The other running VMs that isolate CPUs, whatever settings they changed. */
export function otherVms(journals: Journal[], self: string): OtherVm[] {
  const vms = new Map<string, OtherVm>();
  for (const { domain, record } of othersRecords(journals, self, PLUGIN_ID, checkClaim)) {
    const earlier = vms.get(domain.uuid);
    // A VM allows overlap only when every claim of it says so; its CPUs are its first claim's.
    if (earlier) earlier.allowOverlap &&= record.allowOverlap;
    else vms.set(domain.uuid, { name: domain.name, isolated: record.isolated, own: record.own, allowOverlap: record.allowOverlap });
  }
  return [...vms.values()];
}

export const isCpuList = (value: unknown) => Array.isArray(value) && value.every((cpu) => Number.isSafeInteger(cpu) && (cpu as number) >= 0 && (cpu as number) < 8192);

/** A claim from a journal: its CPU lists and governor become file contents, paths and unit properties. */
export function checkClaim(record: UndoRecord): Claim {
  const { action, isolated, own, governor, allowOverlap } = record;
  const wrong = (
    [
      ["action", ACTIONS.includes(action as Action), "not an isolate setting"],
      ["isolated", isCpuList(isolated), "not a list of CPU numbers 0 to 8191"],
      ["own", isCpuList(own), "not a list of CPU numbers 0 to 8191"],
      ["governor", governor === null || (typeof governor === "string" && /^[a-z][a-z0-9_]{0,31}$/.test(governor)), "not a governor name or null"],
      ["allowOverlap", allowOverlap === undefined || typeof allowOverlap === "boolean", "not true or false"],
    ] as const
  ).find(([, valid]) => !valid);
  if (wrong) throw new VmhookError(`isolate: the journal holds a claim that is not one vmhook writes: "${wrong[0]}" is ${JSON.stringify(record[wrong[0]]) ?? "missing"}, ${wrong[2]}; restore the CPU settings by hand`);
  return { ...record, allowOverlap: allowOverlap ?? false } as Claim;
}
