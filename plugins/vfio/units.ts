// systemd units the handover stops and starts again: the display manager in
// single-GPU mode, helper services such as nvidia-persistenced.
import { VmhookError } from "../../lib/errors.ts";
import type { BaseContext, PluginContext, UndoRecord } from "../../lib/plugin.ts";

export const systemdRuns = (ctx: BaseContext) => ctx.host.exists("/run/systemd/system");

export const unitActive = (ctx: BaseContext, unit: string) => ctx.run("systemctl", ["is-active", "--quiet", unit], { allowFailure: true }).status === 0;

/** The unit's cgroup v2 path as systemd reports it (aliases resolved), undefined when it has none (not running). */
export function unitCgroup(ctx: BaseContext, unit: string): string | undefined {
  const cgroup = ctx.run("systemctl", ["show", "--property=ControlGroup", "--value", unit]).stdout.trim();
  return cgroup.startsWith("/") ? cgroup : undefined;
}

/** The unit's processes, from its cgroup. */
export function unitProcesses(ctx: BaseContext, unit: string): string[] {
  const cgroup = unitCgroup(ctx, unit);
  if (!cgroup) return [];
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
  const unit = String(record.unit);
  if (unitActive(ctx, unit)) return;
  ctx.run("systemctl", ["start", unit], { timeoutMs: 60_000 });
  if (!unitActive(ctx, unit)) throw new VmhookError(`${unit} did not start again; see systemctl status ${unit}`);
}
