// The refusal before single-GPU mode stops anything: every process holding
// the GPU must belong to what prepare is about to stop (see holders.ts). The
// graphical session units found on the way are stopped through their user's
// manager (user-units.ts).
import type { BaseContext, Refusal } from "../../lib/plugin.ts";
import { systemdRuns } from "../../lib/systemd.ts";
import { noDisplayManagerFound, type DisplayManager } from "./display.ts";
import type { VfioSettings } from "./config.ts";
import { classifyHolders, describeClassifiedHolder, type SessionUnit } from "./holders.ts";
import type { Survey } from "./survey.ts";
import { unitCgroup } from "./units.ts";

/**
 * What prepare will stop, in words, for the refusal message: with single-GPU
 * mode off, why the display manager stays; in single-GPU mode (`searched`:
 * the display manager's units), why no display manager is among it.
 */
function whatStops(ctx: BaseContext, displayManager: DisplayManager, helpers: string[], sessionUnits: SessionUnit[], searched: string[] | undefined, singleGpuOff: string | undefined): string {
  const parts = [
    ...sessionUnits.map((unit) => `${unit.unit} of ${unit.user}`),
    ...(displayManager && "units" in displayManager ? [`${displayManager.units.join(", ")} with its graphical sessions`] : []),
    ...(displayManager && "command" in displayManager ? [commandStops(displayManager.command)] : []),
    ...helpers,
  ];
  const stops = parts.length > 0 ? `vmhook stops only ${parts.join(", ")}` : "vmhook stops nothing here";
  if (singleGpuOff) return `${stops} (single-GPU mode is off: ${singleGpuOff}; with single-gpu="yes" vmhook stops the display manager too)`;
  return searched && !displayManager ? `${stops}; ${noDisplayManagerFound(ctx, searched)}` : stops;
}

/** Without systemd: the processes displayManagerCommand names, or, naming none, its stop command (which ends no holder vmhook knows). */
function commandStops(command: NonNullable<VfioSettings["displayManagerCommand"]>): string {
  if (command.processes.length > 0) return `the display manager's ${command.processes.join("/")} processes`;
  return `the display manager (${command.stop.join(" ")}; "displayManagerCommand.processes" names none of its processes)`;
}

export interface GpuHolders {
  /** Why waiting until nothing holds the GPU cannot succeed: holders outside what prepare stops; undefined when none. */
  refusal?: Refusal;
  /** Graphical session units to stop through their user's manager (single-GPU mode under systemd). */
  sessionUnits: SessionUnit[];
}

/** `searched`: in single-GPU mode, the units that are the display manager (displayManagerUnits or display-manager=). */
export function gpuHolders(ctx: BaseContext, found: Survey, displayManager: DisplayManager, helpers: string[], searched: string[] | undefined): GpuHolders {
  if (found.holders.length === 0) return { sessionUnits: [] };
  const cgroups = (units: string[]) => units.map((unit) => unitCgroup(ctx, unit)).filter((cgroup): cgroup is string => cgroup !== undefined);
  const displayManagerCgroups = cgroups(displayManager && "units" in displayManager ? displayManager.units : []);
  const commands = displayManager && "command" in displayManager ? displayManager.command.processes : [];
  const { refused, sessionUnits } = classifyHolders(
    ctx.host,
    found.holders.filter((holder) => !commands.includes(holder.command)),
    {
      cgroups: [...displayManagerCgroups, ...cgroups(helpers)],
      displayManagerCgroups,
      graphicalSessions: displayManager !== undefined,
      sessionUnits: found.singleGpu && systemdRuns(ctx.host),
    },
  );
  if (refused.length === 0) return { sessionUnits };
  return {
    sessionUnits,
    refusal: {
      reason: `vfio: the GPU is in use: ${refused.map(describeClassifiedHolder).join(", ")}; ${whatStops(ctx, displayManager, helpers, sessionUnits, searched, found.singleGpuOff)}: close those programs (or stop their units) and start the VM again`,
      remedies: [],
    },
  };
}
