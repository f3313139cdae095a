// Single-GPU mode: the host's own display lets go of the GPU before it moves,
// and gets it back after: the display manager, the framebuffer consoles and
// the firmware framebuffers (efifb, simplefb, vesafb).
import { VmhookError } from "../../lib/errors.ts";
import type { BaseContext, PluginContext, UndoRecord } from "../../lib/plugin.ts";
import type { VfioConfig, VfioSettings } from "./config.ts";
import { describeHolders, processesHolding, type Survey } from "./survey.ts";
import { stopUnit, systemdRuns, unitActive } from "./units.ts";

/** What stops the display manager: running systemd units, or the configured commands; undefined: nothing to stop. */
export type DisplayManager = { units: string[] } | { command: NonNullable<VfioSettings["displayManagerCommand"]> } | undefined;

export function findDisplayManager(ctx: BaseContext, config: VfioConfig, settings: VfioSettings): DisplayManager {
  if (systemdRuns(ctx)) {
    const units = (config.displayManagerUnits ?? settings.displayManagerUnits).filter((unit) => unitActive(ctx, unit));
    return units.length > 0 ? { units } : undefined;
  }
  return settings.displayManagerCommand ? { command: settings.displayManagerCommand } : undefined;
}

const VTCONSOLES = "/sys/class/vtconsole";
const FIRMWARE_FRAMEBUFFERS = ["efi-framebuffer", "simple-framebuffer", "vesa-framebuffer"];

/** Stops the display manager (journaled: it starts again) and waits until its processes are gone. */
export async function stopDisplayManager(ctx: PluginContext<VfioConfig>, displayManager: DisplayManager, settings: VfioSettings): Promise<void> {
  const timeoutMs = settings.stopTimeoutSeconds * 1000;
  if (displayManager && "units" in displayManager) {
    for (const unit of displayManager.units) await stopUnit(ctx, unit, timeoutMs);
  } else if (displayManager) {
    const { command } = displayManager;
    await ctx.step(`stop the display manager: ${command.stop.join(" ")}`, { action: "run-start-command", command: command.start }, () => {
      ctx.run(command.stop[0]!, command.stop.slice(1), { timeoutMs });
      ctx.waitFor(`no ${command.processes.join("/")} process runs`, () => runningCommands(ctx).every((name) => !command.processes.includes(name)), { timeoutMs });
    });
  } else {
    ctx.log.info("vfio: single-GPU mode, no display manager to stop (no running display-manager unit, no displayManagerCommand)");
  }
}

/** A session may outlive its display manager by a moment: wait until no one holds the GPU, else name who does. */
export function waitUntilGpuFree(ctx: PluginContext<VfioConfig>, found: Survey, settings: VfioSettings): void {
  if (ctx.dryRun) return;
  try {
    ctx.waitFor("nothing holds the GPU", () => processesHolding(ctx.host, found.watched).length === 0, { timeoutMs: settings.stopTimeoutSeconds * 1000 });
  } catch {
    const holders = processesHolding(ctx.host, found.watched);
    throw new VmhookError(`vfio: the GPU is still in use after stopping the display manager: ${describeHolders(holders)}; end those programs (or the sessions) and start the VM again`);
  }
}

/** Unbinds the framebuffer consoles and the firmware framebuffers, each journaled to be bound again. */
export async function unbindConsoles(ctx: PluginContext<VfioConfig>): Promise<void> {
  for (const vtconsole of ctx.host.list(VTCONSOLES)) {
    const name = ctx.host.readTrimmed(`${VTCONSOLES}/${vtconsole}/name`) ?? "";
    if (!/frame buffer/i.test(name) || ctx.host.readTrimmed(`${VTCONSOLES}/${vtconsole}/bind`) !== "1") continue;
    await ctx.step(`unbind console ${vtconsole} (${name})`, { action: "bind-vtconsole", vtconsole }, () => {
      ctx.host.write(`${VTCONSOLES}/${vtconsole}/bind`, "0");
      if (ctx.host.readTrimmed(`${VTCONSOLES}/${vtconsole}/bind`) === "1") throw new VmhookError(`vfio: console ${vtconsole} stays bound to the framebuffer`);
    });
  }

  for (const driver of FIRMWARE_FRAMEBUFFERS) {
    const driverDir = `/sys/bus/platform/drivers/${driver}`;
    for (const device of ctx.host.list(driverDir).filter((entry) => entry.startsWith(`${driver}.`))) {
      await ctx.step(`unbind ${device} from ${driver}`, { action: "bind-framebuffer", driver, device }, () => {
        ctx.host.write(`${driverDir}/unbind`, device);
        if (ctx.host.exists(`${driverDir}/${device}`)) throw new VmhookError(`vfio: ${device} stays bound to ${driver}`);
      });
    }
  }
}

function runningCommands(ctx: BaseContext): string[] {
  return ctx.host
    .list("/proc")
    .filter((name) => /^\d+$/.test(name))
    .map((pid) => ctx.host.readTrimmed(`/proc/${pid}/comm`) ?? "");
}

export function runStartCommand(ctx: BaseContext, record: UndoRecord): void {
  const command = record.command as string[];
  ctx.run(command[0]!, command.slice(1), { timeoutMs: 60_000 });
}

/** Rebinds the console; when its number changed (fbcon came back under another), the framebuffer console found now. */
export function bindVtconsole(ctx: BaseContext, record: UndoRecord): void {
  const isFramebuffer = (vtconsole: string) => /frame buffer/i.test(ctx.host.readTrimmed(`${VTCONSOLES}/${vtconsole}/name`) ?? "");
  const recorded = String(record.vtconsole);
  if (!/^vtcon\d+$/.test(recorded)) throw new VmhookError(`vfio: the journal names console "${recorded}", which is not a vtconsole`);
  const vtconsole = isFramebuffer(recorded) ? recorded : ctx.host.list(VTCONSOLES).find(isFramebuffer);
  if (!vtconsole) {
    // vfio-pci removes a firmware framebuffer (efifb, simplefb) for good when it takes the GPU: only a GPU driver brings one back.
    throw new VmhookError(
      `vfio: no framebuffer console is back (was ${recorded}): no framebuffer is registered; the GPU's driver has not registered one, and a firmware framebuffer (efifb) does not come back once vfio-pci took the GPU; load the GPU's driver (modprobe), then run vmhook recover`,
    );
  }
  const bind = `${VTCONSOLES}/${vtconsole}/bind`;
  if (ctx.host.readTrimmed(bind) !== "1") ctx.host.write(bind, "1");
  if (ctx.host.readTrimmed(bind) !== "1") throw new VmhookError(`vfio: console ${vtconsole} did not bind to the framebuffer again`);
}

/** Rebinds a firmware framebuffer, unless the GPU's driver removed it meanwhile (it does when it takes over). */
export function bindFramebuffer(ctx: BaseContext, record: UndoRecord): void {
  const [driver, device] = [String(record.driver), String(record.device)];
  if (!FIRMWARE_FRAMEBUFFERS.includes(driver) || !/^[a-z-]+\.\d+$/.test(device)) throw new VmhookError(`vfio: journal names an unexpected framebuffer ${driver}/${device}`);
  if (!ctx.host.exists(`/sys/bus/platform/devices/${device}`)) {
    ctx.log.info(`vfio: ${device} is gone (the GPU's driver replaced it); nothing to rebind`);
    return;
  }
  const driverDir = `/sys/bus/platform/drivers/${driver}`;
  if (!ctx.host.exists(`${driverDir}/${device}`)) ctx.host.write(`${driverDir}/bind`, device);
  if (!ctx.host.exists(`${driverDir}/${device}`)) throw new VmhookError(`vfio: ${device} did not bind to ${driver} again`);
}
