// systemd as vmhook asks it: whether it is the running init (sd_booted(3)'s
// test, the directory systemd creates at boot) and whether a unit runs. One
// place, so every plugin agrees.
import { VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import type { BaseContext } from "./plugin.ts";

export const systemdRuns = (host: Host): boolean => host.exists("/run/systemd/system");

/** `systemctl is-active`'s answers: 0 active; 3 inactive or failed; 4 no such unit (older systemd says 3). */
const INACTIVE = [3, 4];

/**
 * Whether the unit is active. Anything but one of is-active's answers (no bus
 * to PID 1, a timeout, systemctl missing) throws, naming what systemctl said:
 * a unit of unknown state is never taken for a stopped one.
 */
export function unitActive(ctx: Pick<BaseContext, "run">, unit: string): boolean {
  const result = ctx.run("systemctl", ["is-active", "--quiet", unit], { allowFailure: true });
  if (result.status === 0) return true;
  if (result.status !== null && INACTIVE.includes(result.status) && !result.timedOut && !result.error) return false;
  const why = result.error ?? (result.timedOut ? "it did not answer in time" : (result.stderr.trim().split("\n")[0] || `exit status ${result.status ?? result.signal}`));
  throw new VmhookError(`systemctl is-active --quiet ${unit} could not tell whether ${unit} runs: ${why}; is systemd (PID 1) answering? (systemctl status)`);
}
