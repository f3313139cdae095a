// The nosleep plugin: the host does not suspend or hibernate while the VM
// runs (a passed-through GPU or USB controller rarely survives a host sleep).
// It holds a logind inhibitor lock ("sleep" and "handle-lid-switch", mode
// block) from a transient systemd unit, so no process of the hook keeps it or
// any of libvirt's pipes, and stops that unit at release.
//
//   <vmhook:nosleep/>
import type { XmlElement } from "../lib/xml.ts";
import type { Domain } from "../lib/domain.ts";
import { readAttributes, single } from "../lib/element.ts";
import { WaitTimedOut } from "../lib/deadline.ts";
import { VmhookError } from "../lib/errors.ts";
import { defineAction, definePlugin, type ApplyContext, type BaseContext, type CheckContext, type PlanContext, type Step, type UndoRecord } from "../lib/plugin.ts";
import { fail, ok, type Finding } from "../lib/diagnostics/findings.ts";
import { systemdRuns, unitActive } from "../lib/systemd.ts";

export interface NosleepConfig {
  /** The transient unit that holds the lock: one per domain (its UUID). */
  unit: string;
  why: string;
}

interface HoldRecord extends UndoRecord {
  action: "hold-inhibitor";
  unit: string;
}

const WHO = "vmhook";
/**
 * logind ignores "sleep" locks when the lid closes (LidSwitchIgnoreInhibited=yes
 * by default): without "handle-lid-switch" closing a laptop's lid suspends the
 * host all the same. With it logind leaves the lid alone while the VM runs.
 */
const WHAT = "sleep:handle-lid-switch";
const UNIT = /^vmhook-nosleep-[0-9a-f-]{36}\.service$/;
const LOCK_WAIT_MS = 5_000;
const NO_SYSTEMD = "the host does not run systemd, so there is no logind to hold a sleep inhibitor lock";

function parseConfig(elements: XmlElement[], domain: Domain): NosleepConfig {
  readAttributes(single(elements), []);
  // The UUID was validated when the domain was read; the name only goes into argv, never a path or a shell.
  return { unit: `vmhook-nosleep-${domain.uuid}.service`, why: `VM ${domain.name} runs with devices passed through` };
}


/**
 * Does logind list a sleep lock of ours taken by this unit's process? By its
 * pid (`systemd-inhibit --list`: WHO UID USER PID COMM WHAT WHY MODE): a
 * reason names the VM, and another VM's name can contain this one's.
 */
function lockHeld(ctx: BaseContext, unit: string): boolean {
  const pid = ctx.run("systemctl", ["show", "--property=MainPID", "--value", unit], { allowFailure: true }).stdout.trim();
  if (!/^[1-9]\d*$/.test(pid)) return false;
  const list = ctx.run("systemd-inhibit", ["--list", "--no-pager", "--no-legend"], { allowFailure: true }).stdout;
  return list.split("\n").some((line) => {
    const [who, , , lockPid, , what] = line.trim().split(/\s+/);
    return who === WHO && lockPid === pid && what !== undefined && what.split(":").includes("sleep");
  });
}

/** One step, marked refused when the lock cannot be taken here (so `vmhook plan` shows it and prepare changes nothing). */
function planPrepare(ctx: PlanContext<NosleepConfig>): Step<HoldRecord>[] {
  const { unit } = ctx.config;
  const step: Step<HoldRecord> = { action: "hold-inhibitor", record: { action: "hold-inhibitor", unit }, description: `hold a sleep inhibitor lock in ${unit}` };
  if (!systemdRuns(ctx.host)) return [{ ...step, refused: { reason: `nosleep: ${NO_SYSTEMD}`, remedies: ["remove <vmhook:nosleep/> or disable sleep another way"] } }];
  if (unitActive(ctx, unit)) {
    return [{ ...step, refused: { reason: `nosleep: ${unit} already runs, so another start of this VM holds the lock`, remedies: [`stop it (systemctl stop ${unit}) if that VM is gone`] } }];
  }
  return [step];
}

/** reconnect: the units the journal holds must still run (from the records: the config may no longer read). */
function planReconnect(ctx: PlanContext<unknown>): Step[] {
  for (const { unit } of ctx.records.map(checkHoldRecord)) {
    if (!unitActive(ctx, unit)) ctx.log.warn(`nosleep: ${unit} should hold the sleep inhibitor while ${ctx.domain.name} runs, but is not running`);
  }
  return [];
}

function holdInhibitor(record: HoldRecord, ctx: ApplyContext<NosleepConfig>): void {
  const { why } = ctx.config;
  ctx.run("systemd-run", [
    `--unit=${record.unit}`, "--collect", "--quiet", `--description=vmhook: no sleep while ${ctx.domain.name} runs`,
    // systemd expands "${NAME}" and "$$" in the command it runs (as in ExecStart=), and the domain name is anyone's text: every "$" goes as "$$".
    "systemd-inhibit", `--what=${WHAT}`, `--who=${WHO}`, `--why=${why.replace(/\$/g, "$$$$")}`, "--mode=block", "sleep", "infinity",
  ], { timeoutMs: 30_000 });
  try {
    ctx.waitFor(`logind lists the sleep inhibitor of ${record.unit}`, () => lockHeld(ctx, record.unit), { timeoutMs: LOCK_WAIT_MS });
  } catch (error) {
    if (!(error instanceof WaitTimedOut)) throw error;
    // systemd-inhibit's own error went to the unit's journal, not to the hook.
    const state = unitActive(ctx, record.unit) ? "still runs" : "has ended";
    throw new VmhookError(
      `nosleep: logind does not list the sleep inhibitor lock of ${record.unit} (the unit ${state}): journalctl -u ${record.unit} shows what systemd-inhibit said; is systemd-logind running? (systemctl status systemd-logind)`,
    );
  }
}

function stopInhibitor(record: HoldRecord, ctx: BaseContext): void {
  const { unit } = record;
  if (!unitActive(ctx, unit)) return;
  ctx.run("systemctl", ["stop", unit], { timeoutMs: 30_000 });
  if (unitActive(ctx, unit)) throw new VmhookError(`nosleep: ${unit} is still running after systemctl stop; the host cannot sleep until it ends (systemctl kill ${unit})`);
}

function checkHoldRecord(record: UndoRecord): HoldRecord {
  if (record.action !== "hold-inhibitor") throw new VmhookError(`nosleep: not a hold-inhibitor record: ${record.action}`);
  const unit = String(record.unit);
  if (!UNIT.test(unit)) throw new VmhookError(`nosleep: the journal names unit "${unit}", which is not one of vmhook's inhibitor units`);
  return { action: "hold-inhibitor", unit };
}

const holdInhibitorAction = defineAction<HoldRecord, NosleepConfig>({ check: checkHoldRecord, apply: holdInhibitor, undo: stopInhibitor });

/** `vmhook doctor`: a sleep inhibitor needs logind, so systemd. */
function check({ host }: CheckContext): Finding[] {
  return [systemdRuns(host) ? ok("nosleep", "systemd runs: logind can hold the sleep inhibitor lock") : fail("nosleep", NO_SYSTEMD, "remove <vmhook:nosleep/> or disable sleep another way")];
}

export default definePlugin<NosleepConfig>({
  name: "nosleep",
  summary: "keeps the host from suspending or hibernating while the VM runs (a logind inhibitor lock)",
  usage: "<vmhook:nosleep/>",
  parse: parseConfig,
  plan: { prepare: planPrepare, reconnect: planReconnect },
  check,
  actions: { "hold-inhibitor": holdInhibitorAction },
});
