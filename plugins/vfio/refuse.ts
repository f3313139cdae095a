// The refusal before single-GPU mode stops anything: every process holding
// the GPU must belong to what prepare is about to stop (see holders.ts).
import type { BaseContext, Refusal } from "../../lib/plugin.ts";
import type { DisplayManager } from "./display.ts";
import { describeClassifiedHolder, holdersOutside } from "./holders.ts";
import type { Survey } from "./survey.ts";
import { unitCgroup } from "./units.ts";

/** What prepare will stop, in words, for the refusal message. */
function whatStops(displayManager: DisplayManager, helpers: string[]): string {
  const parts = [
    ...(displayManager && "units" in displayManager ? [`${displayManager.units.join(", ")} with its graphical sessions`] : []),
    ...(displayManager && "command" in displayManager ? [`the display manager's ${displayManager.command.processes.join("/")} processes`] : []),
    ...helpers,
  ];
  return parts.length > 0 ? `vmhook stops only ${parts.join(", ")}` : "vmhook stops nothing here (no display manager runs)";
}

/** Why waiting until nothing holds the GPU cannot succeed: holders outside what prepare stops; undefined when none. */
export function otherHolders(ctx: BaseContext, found: Survey, displayManager: DisplayManager, helpers: string[]): Refusal | undefined {
  if (found.holders.length === 0) return undefined;
  const units = [...(displayManager && "units" in displayManager ? displayManager.units : []), ...helpers];
  const commands = displayManager && "command" in displayManager ? displayManager.command.processes : [];
  const outside = holdersOutside(
    ctx.host,
    found.holders.filter((holder) => !commands.includes(holder.command)),
    { cgroups: units.map((unit) => unitCgroup(ctx, unit)).filter((cgroup): cgroup is string => cgroup !== undefined), graphicalSessions: displayManager !== undefined },
  );
  if (outside.length === 0) return undefined;
  return {
    reason: `vfio: the GPU is in use: ${outside.map(describeClassifiedHolder).join(", ")}; ${whatStops(displayManager, helpers)}: close those programs (or stop their units) and start the VM again`,
    remedies: [],
  };
}
