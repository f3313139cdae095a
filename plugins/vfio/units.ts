// systemd units the handover stops and starts again: the display manager in
// single-GPU mode, helper services such as nvidia-persistenced.
import { VmhookError } from "../../lib/errors.ts";
import type { BaseContext, PluginContext, UndoRecord } from "../../lib/plugin.ts";
import { PATTERNS } from "../../lib/validate.ts";

/** A unit name from the journal: it becomes an argument of systemctl, so it must look like one (and not like an option). */
export function checkedUnit(value: unknown): string {
  if (typeof value !== "string" || !PATTERNS.unitName.test(value) || value.startsWith("-")) {
    throw new VmhookError(`vfio: the journal names unit ${JSON.stringify(value)}, which is not a systemd unit name; inspect the journal`);
  }
  return value;
}

export const systemdRuns = (ctx: BaseContext) => ctx.host.exists("/run/systemd/system");

export const unitActive = (ctx: BaseContext, unit: string) => ctx.run("systemctl", ["is-active", "--quiet", unit], { allowFailure: true }).status === 0;

/** The unit's processes, from its cgroup (cgroup v2 path that systemd reports). */
export function unitProcesses(ctx: BaseContext, unit: string): string[] {
  const cgroup = ctx.run("systemctl", ["show", "--property=ControlGroup", "--value", unit]).stdout.trim();
  if (!cgroup.startsWith("/")) return [];
  return (ctx.host.readTrimmed(`/sys/fs/cgroup${cgroup}/cgroup.procs`) ?? "").split("\n").filter(Boolean);
}

/** Stops a running unit, journaled so it is started again, and waits until its processes are gone. */
export async function stopUnit(ctx: PluginContext<unknown>, unit: string, timeoutMs: number): Promise<void> {
  await ctx.step(`stop ${unit}`, { action: "start-unit", unit }, () => {
    ctx.run("systemctl", ["stop", unit], { timeoutMs });
    ctx.waitFor(`the processes of ${unit} are gone`, () => unitProcesses(ctx, unit).length === 0, { timeoutMs });
  });
}

export function startUnit(ctx: BaseContext, record: UndoRecord): void {
  const unit = checkedUnit(record.unit);
  if (unitActive(ctx, unit)) return;
  ctx.run("systemctl", ["start", unit], { timeoutMs: 60_000 });
  if (!unitActive(ctx, unit)) throw new VmhookError(`${unit} did not start again; see systemctl status ${unit}`);
}
