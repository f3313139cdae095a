// systemd units the handover stops and starts again: the display manager in
// single-GPU mode, helper services such as nvidia-persistenced.
import { CommandTimedOut, VmhookError } from "../../lib/errors.ts";
import { WaitTimedOut } from "../../lib/deadline.ts";
import { paths } from "../../lib/paths.ts";
import { defineAction, type BaseContext, type Step, type UndoRecord } from "../../lib/plugin.ts";
import { PATTERNS } from "../../lib/validate.ts";
import { cgroupProcesses, jobQueued, unitActive, unitUp } from "../../lib/systemd.ts";

/** A unit name from the journal: it becomes an argument of systemctl, so it must look like one (and not like an option). */
export function checkedUnit(value: unknown): string {
  if (typeof value !== "string" || !PATTERNS.unitName.test(value) || value.startsWith("-")) {
    throw new VmhookError(`vfio: the journal names unit ${JSON.stringify(value)}, which is not a systemd unit name; inspect the journal`);
  }
  return value;
}

/**
 * Whether the unit runs, or is inactive with a start job waiting (a VM
 * started at boot, before the unit's turn): the display manager would start
 * on the GPU the VM takes, a helper service (nvidia-persistenced) would take
 * the modules being unloaded back or fail, and nothing would start either at
 * release. Its stop cancels the job, and release starts it.
 */
export function activeOrStarting(ctx: BaseContext, unit: string): boolean {
  if (unitActive(ctx, unit)) return true;
  if (!jobQueued(ctx, unit)) return false;
  ctx.log.info(`vfio: ${unit} is about to start (its start job waits, as at boot): vmhook cancels it now and starts ${unit} at release`);
  return true;
}

/** The unit's cgroup path as systemd reports it (aliases resolved), undefined when it has none (not running). */
export function unitCgroup(ctx: BaseContext, unit: string): string | undefined {
  const cgroup = ctx.run("systemctl", ["show", "--property=ControlGroup", "--value", unit]).stdout.trim();
  return cgroup.startsWith("/") ? cgroup : undefined;
}

/** The unit's processes, from its cgroup. */
export function unitProcesses(ctx: BaseContext, unit: string): string[] {
  const cgroup = unitCgroup(ctx, unit);
  return cgroup ? cgroupProcesses(ctx.host, cgroup) : [];
}

interface StopUnitRecord extends UndoRecord {
  action: "stop-unit";
  unit: string;
  timeoutMs: number;
  /** Stopped already for another VM: this VM only shares the claim, so the unit stays stopped until the last of them is released. */
  alreadyStopped: boolean;
}

/** The ledger key of a unit vmhook keeps stopped (lib/claims.ts). */
const unitClaim = (unit: string) => `unit:${unit}`;

/** A running unit to stop: started again at release (by the last VM that needed it stopped). */
export function stopUnitStep(unit: string, timeoutMs: number): Step<StopUnitRecord> {
  return { action: "stop-unit", record: { action: "stop-unit", unit, timeoutMs, alreadyStopped: false }, description: `stop ${unit}` };
}

/** Units vmhook stopped for another VM that this VM needs stopped too: it joins their claims. */
export function keepStoppedSteps(ctx: BaseContext, units: string[]): Step<StopUnitRecord>[] {
  return units
    .filter((unit) => ctx.claims.get(unitClaim(unit)))
    .map((unit) => ({ action: "stop-unit", record: { action: "stop-unit", unit, timeoutMs: 0, alreadyStopped: true }, description: `keep ${unit} stopped (stopped for another VM)` }));
}

/** Stops the unit and waits until its processes are gone; claimed first, so the last VM released starts it again. */
function stopUnit(record: StopUnitRecord, ctx: BaseContext): void {
  const { unit, timeoutMs } = record;
  ctx.claims.take(unitClaim(unit), "active");
  if (record.alreadyStopped) return;
  try {
    ctx.run("systemctl", ["stop", unit], { timeoutMs });
    ctx.waitFor(`the processes of ${unit} are gone`, () => unitProcesses(ctx, unit).length === 0, { timeoutMs });
  } catch (error) {
    if (!(error instanceof CommandTimedOut || error instanceof WaitTimedOut)) throw error;
    // systemd goes on stopping it, for up to the unit's own TimeoutStopSec=: the bound to raise is vmhook's.
    throw new VmhookError(
      `vfio: ${unit} did not stop within ${timeoutMs / 1000} s; raise "stopTimeoutSeconds" under "plugins": {"vfio": …} in ${paths.hostConfig} if it only stops slowly (systemd allows it TimeoutStopSec=, 90 s unless the unit sets another: systemctl show --property=TimeoutStopUSec ${unit}): ${error.message}`,
    );
  }
}

function startUnit(record: StopUnitRecord, ctx: BaseContext): void {
  const { unit } = record;
  const claim = unitClaim(unit);
  const others = ctx.claims.others(claim);
  if (others.length > 0) {
    ctx.claims.drop(claim);
    ctx.log.info(`vfio: ${unit} stays stopped: ${others.length} other VM(s) need it so`);
    return;
  }
  // A unit still deactivating (its stop outlived systemctl's timeout at prepare) finishes stopping: it needs the start.
  if (!unitUp(ctx, unit)) {
    startWaitingForStop(ctx, unit);
    if (!unitUp(ctx, unit)) throw new VmhookError(`${unit} did not start again; see systemctl status ${unit}`);
  }
  ctx.claims.drop(claim);
}

/**
 * systemctl start, which waits for a stop still running (one that outlasted
 * stopTimeoutSeconds at prepare): when that stop outlasts the start's bound
 * too, the start job stays queued in systemd once systemctl is killed, and
 * the unit comes back by itself when the stop ends; the error says so (the
 * entry stays for vmhook recover, which finds it running).
 */
function startWaitingForStop(ctx: BaseContext, unit: string): void {
  try {
    ctx.run("systemctl", ["start", unit], { timeoutMs: 60_000 });
  } catch (error) {
    if (!(error instanceof CommandTimedOut) || !jobQueued(ctx, unit)) throw error;
    throw new VmhookError(
      `vfio: ${unit} is not back yet: its start waits for its stop, which systemd lets run up to the unit's TimeoutStopSec=; systemd starts it once that stop ends: wait until it runs (systemctl status ${unit}), then run vmhook recover`,
    );
  }
}

/** vmhook 0.1 named the record by its undo (start-unit) and kept no timeout. */
function checkStopUnit(record: UndoRecord): StopUnitRecord {
  if (record.action !== "stop-unit" && record.action !== "start-unit") throw new VmhookError(`vfio: not a stop-unit record: ${record.action}`);
  const timeoutMs = Number.isSafeInteger(record.timeoutMs) && (record.timeoutMs as number) >= 0 ? (record.timeoutMs as number) : 20_000;
  return { action: "stop-unit", unit: checkedUnit(record.unit), timeoutMs, alreadyStopped: record.alreadyStopped === true };
}

/** vmhook recover: the undo that gives back a unit claim of a domain whose journal is gone, as its release would have. */
export function orphanedUnitClaim(resource: string): Step<StopUnitRecord> | undefined {
  if (!resource.startsWith("unit:")) return undefined;
  const record = checkStopUnit({ action: "stop-unit", unit: resource.slice("unit:".length) });
  return { action: "stop-unit", record, description: `start ${record.unit} again once no other VM needs it stopped` };
}

export const stopUnitAction = defineAction<StopUnitRecord>({ check: checkStopUnit, apply: stopUnit, undo: startUnit });
