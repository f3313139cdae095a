// Claims: what each running VM isolates, one journal record per kind of
// setting, read from every journal (which fail closed when one is unreadable).
import { VmhookError } from "../../lib/errors.ts";
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
}

export interface OtherVm {
  name: string;
  isolated: number[];
  own: number[];
}

/** Every claim of this kind in every journal, except those of `exceptDomain` (the one being released). */
export function claimsOf(ctx: BaseContext, action: Action, exceptDomain?: string): Claim[] {
  return ctx
    .journals()
    .filter((journal) => journal.domain.uuid !== exceptDomain)
    .flatMap((journal) => journal.entries)
    .filter((entry) => entry.plugin === PLUGIN_ID && entry.undo.action === action)
    .map((entry) => entry.undo as Claim);
}

/** The other running VMs that isolate CPUs, whatever settings they changed. */
export function otherVms(ctx: BaseContext): OtherVm[] {
  const vms: OtherVm[] = [];
  for (const journal of ctx.journals()) {
    if (journal.domain.uuid === ctx.domain.uuid) continue;
    const claim = journal.entries.find((entry) => entry.plugin === PLUGIN_ID)?.undo as Claim | undefined;
    if (claim) vms.push({ name: journal.domain.name, isolated: claim.isolated, own: claim.own });
  }
  return vms;
}

/** A claim from a journal: its CPU lists and governor become file contents and unit properties. */
export function checkClaim(record: UndoRecord): Claim {
  const cpus = (value: unknown) => Array.isArray(value) && value.every((cpu) => Number.isSafeInteger(cpu) && (cpu as number) >= 0 && (cpu as number) < 8192);
  const { action, isolated, own, governor } = record;
  if (!ACTIONS.includes(action as Action) || !cpus(isolated) || !cpus(own) || !(governor === null || (typeof governor === "string" && /^[a-z][a-z0-9_]{0,31}$/.test(governor)))) {
    throw new VmhookError(`isolate: the journal holds a claim that is not one vmhook writes: ${JSON.stringify(record).slice(0, 160)}; restore the CPU settings by hand`);
  }
  return record as Claim;
}
