// Single-GPU mode: the host's own display lets go of the GPU before it moves,
// and gets it back after: the display manager and the framebuffer consoles.
// The firmware framebuffers (efifb, simplefb, vesafb) follow the boot GPU.
import { writeThroughDriver } from "../../lib/bounded-write.ts";
import { WaitTimedOut } from "../../lib/deadline.ts";
import { readsAs } from "../../lib/host.ts";
import { VmhookError } from "../../lib/errors.ts";
import { defineAction, type ApplyContext, type BaseContext, type Step, type UndoContext, type UndoRecord } from "../../lib/plugin.ts";
import { HARMLESS_DRIVERS, isDisplayClass, listPciDevices } from "../../lib/pci.ts";
import { processIds } from "../../lib/open-files.ts";
import { endLeftRunning, processInstance } from "../../lib/processes.ts";
import { PATTERNS } from "../../lib/validate.ts";
import { readVfioSettings, type VfioConfig, type VfioSettings } from "./config.ts";
import { boundFirmwareFramebuffers, describeHolders, FIRMWARE_FRAMEBUFFERS, isWatched, processesHolding, type Survey } from "./survey.ts";
import { systemdRuns, unitActive } from "../../lib/systemd.ts";
import { paths } from "../../lib/paths.ts";
import { DISPLAY_MANAGERS } from "../../lib/policy.ts";
import { activeOrStarting, stopUnitStep, unitCgroup } from "./units.ts";

/** What stops the display manager: running systemd units, or the configured commands; undefined: nothing to stop. */
export type DisplayManager = { units: string[] } | { command: NonNullable<VfioSettings["displayManagerCommand"]> } | undefined;

/** The units that are the display manager: the domain's display-manager=, else displayManagerUnits. */
export const displayManagerUnits = (config: VfioConfig, settings: VfioSettings): string[] => config.displayManagerUnits ?? settings.displayManagerUnits;

export function findDisplayManager(ctx: BaseContext, config: VfioConfig, settings: VfioSettings): DisplayManager {
  if (systemdRuns(ctx.host)) {
    const units = displayManagerUnits(config, settings).filter((unit) => activeOrStarting(ctx, unit));
    return units.length > 0 ? { units } : undefined;
  }
  return settings.displayManagerCommand ? { command: settings.displayManagerCommand } : undefined;
}

/**
 * Why single-GPU mode found no display manager to stop, for a refusal: one
 * started by hand, not the one that starts at boot, runs under its own name
 * (gdm.service), not as the display-manager.service alias; named once
 * (gdm3.service is gdm.service's alias: one cgroup).
 */
export function noDisplayManagerFound(ctx: BaseContext, searched: string[]): string {
  const vfioSettings = `under "plugins": {"vfio": …} of ${paths.hostConfig}`;
  if (!systemdRuns(ctx.host)) return `no displayManagerCommand ${vfioSettings} says how to stop the display manager`;
  const running: string[] = [];
  const cgroups = new Set<string>();
  for (const unit of DISPLAY_MANAGERS.filter((name) => !searched.includes(name) && unitActive(ctx, name))) {
    const cgroup = unitCgroup(ctx, unit) ?? unit;
    if (!cgroups.has(cgroup)) running.push(unit);
    cgroups.add(cgroup);
  }
  if (running.length === 0) {
    // None at all: most often a desktop started from a console login, which runs in no unit vmhook stops.
    const known = DISPLAY_MANAGERS.filter((name) => !searched.includes(name));
    const nor = known.length > 0 ? `, nor as ${known.slice(0, -1).join(", ")}${known.length > 1 ? " or " : ""}${known.at(-1)}` : "";
    return `no display manager runs as ${searched.join(", ")}${nor}: a desktop started from a console login (startx, a compositor run from its shell) has none, and vmhook does not end it: quit it, then start the VM from that console or over ssh; a display manager under another name: name it in display-manager="UNIT" of <vmhook:vfio> or in "displayManagerUnits" ${vfioSettings}`;
  }
  const named = running.join(", ");
  const found = `, but ${named} runs (started by hand: display-manager.service is the alias of the display manager that starts at boot, set by systemctl enable or, on Debian, dpkg-reconfigure)`;
  return `no display manager runs as ${searched.join(", ")}${found}: name it in display-manager="${named}" of <vmhook:vfio> or in "displayManagerUnits" ${vfioSettings}`;
}

const VTCONSOLES = "/sys/class/vtconsole";

/** The steps that stop the display manager (started again at release); none when there is none to stop. */
export function displayManagerSteps(ctx: BaseContext, displayManager: DisplayManager, settings: VfioSettings): Step[] {
  const timeoutMs = settings.stopTimeoutSeconds * 1000;
  if (displayManager && "units" in displayManager) return displayManager.units.map((unit) => stopUnitStep(unit, timeoutMs));
  if (displayManager) {
    const { command } = displayManager;
    return [{ action: "stop-display-manager", record: { action: "stop-display-manager", command: command.start, process: null }, description: `stop the display manager: ${command.stop.join(" ")}` }];
  }
  ctx.log.info("vfio: single-GPU mode, no display manager to stop (no running display-manager unit, no displayManagerCommand)");
  return [];
}

interface StopCommandRecord extends UndoRecord {
  action: "stop-display-manager";
  /** The start command, as displayManagerCommand.start said at prepare. */
  command: string[];
  /**
   * The stop or start command running now, "PID:STARTTIME", journaled before
   * it acts: a hook killed meanwhile leaves it running (an init script's stop
   * may take seconds), and the undo ends it before it starts the display
   * manager, which it would otherwise stop again after. null once it returned.
   */
  process: string | null;
}

/**
 * A display manager command through runAsync, its process journaled while it
 * runs (StopCommandRecord.process); one a killed hook left running is ended
 * first, with what it started.
 */
async function runCommand(ctx: UndoContext, record: StopCommandRecord, command: string[], timeoutMs: number): Promise<void> {
  if (record.process !== null) {
    const ended = endLeftRunning(ctx, record.process, (pid) => `vfio: the display manager command pid ${pid}, left running by a vmhook that was killed, is still there after SIGKILL (blocked in the kernel); once it is gone, run vmhook recover ${ctx.domain.name}`);
    if (ended) ctx.log.warn(`vfio: the display manager command pid ${record.process.split(":")[0]}, left running by a vmhook that was killed, is killed (with what it started) before ${command.join(" ")} runs`);
  }
  const started = (pid: number) => {
    const instance = processInstance(ctx.host, pid);
    if (instance) ctx.update({ ...record, process: instance });
  };
  try {
    await ctx.runAsync(command[0]!, command.slice(1), { timeoutMs, started });
  } finally {
    ctx.update({ ...record, process: null });
  }
}

/** Without systemd: the configured stop command, then wait until its processes are gone. */
async function stopByCommand(record: StopCommandRecord, ctx: ApplyContext<unknown>): Promise<void> {
  const { command, stopTimeoutSeconds } = configuredCommand(ctx);
  const timeoutMs = stopTimeoutSeconds * 1000;
  await runCommand(ctx, record, command.stop, timeoutMs);
  ctx.waitFor(`no ${command.processes.join("/")} process runs`, () => runningCommands(ctx).every((name) => !command.processes.includes(name)), { timeoutMs });
}

function configuredCommand(ctx: BaseContext): { command: NonNullable<VfioSettings["displayManagerCommand"]>; stopTimeoutSeconds: number } {
  const settings = readVfioSettings(ctx.settings);
  if (!settings.displayManagerCommand) throw new VmhookError(`vfio: no displayManagerCommand in /etc/vmhook/vmhook.json any more; start the display manager by hand`);
  return { command: settings.displayManagerCommand, stopTimeoutSeconds: settings.stopTimeoutSeconds };
}

/** The journal's command runs only if it is the start command root configured (displayManagerCommand.start). */
function checkStopCommand(record: UndoRecord): StopCommandRecord {
  const command = record.command;
  if ((record.action !== "stop-display-manager" && record.action !== "run-start-command") || !Array.isArray(command) || !command.every((word) => typeof word === "string")) {
    throw new VmhookError(`vfio: the journal holds a display manager record that is not one vmhook writes: ${JSON.stringify(record).slice(0, 120)}`);
  }
  const process = record.process === undefined || record.process === null ? null : record.process;
  if (process !== null && (typeof process !== "string" || !/^[1-9]\d*:\d+$/.test(process))) throw new VmhookError(`vfio: the journal names display manager process ${JSON.stringify(process).slice(0, 40)}, which is not PID:STARTTIME`);
  return { action: "stop-display-manager", command: command as string[], process };
}

/** Runs the start command, then waits until one of the display manager's processes runs again: started is not assumed. */
async function runStartCommand(record: StopCommandRecord, ctx: UndoContext): Promise<void> {
  const settings = readVfioSettings(ctx.settings);
  const configured = settings.displayManagerCommand?.start;
  if (!configured || JSON.stringify(record.command) !== JSON.stringify(configured)) {
    throw new VmhookError(`vfio: the journal asks to run ${JSON.stringify(record.command)}, which is not the displayManagerCommand.start of /etc/vmhook/vmhook.json; start the display manager by hand`);
  }
  await runCommand(ctx, record, configured, 60_000);
  const processes = settings.displayManagerCommand!.processes;
  if (processes.length === 0) return;
  try {
    ctx.waitFor(`a ${processes.join("/")} process runs`, () => runningCommands(ctx).some((name) => processes.includes(name)), { timeoutMs: settings.stopTimeoutSeconds * 1000 });
  } catch (error) {
    // Only the timeout means "did not come back": a process whose name cannot be read fails with its own error.
    if (!(error instanceof WaitTimedOut)) throw error;
    throw new VmhookError(`vfio: the display manager did not come back: ${configured.join(" ")} ran, but no ${processes.join("/")} process runs; see its log, start it by hand, then run vmhook recover`);
  }
}

export const stopDisplayManagerAction = defineAction<StopCommandRecord>({ check: checkStopCommand, apply: stopByCommand, undo: runStartCommand });

interface WaitRecord extends UndoRecord {
  action: "wait-gpu-free";
  files: string[];
  framebuffers: boolean;
  nvidia: boolean;
  timeoutMs: number;
}

/** A session may outlive its display manager by a moment: a step that waits until no one holds the GPU (it changes nothing). */
export function waitGpuFreeStep(found: Survey, settings: VfioSettings): Step<WaitRecord> {
  return { action: "wait-gpu-free", record: { action: "wait-gpu-free", ...found.watched, timeoutMs: settings.stopTimeoutSeconds * 1000 }, description: "wait until nothing holds the GPU" };
}

function waitUntilGpuFree(record: WaitRecord, ctx: ApplyContext<unknown>): void {
  ctx.nothingToUndo();
  const watched = isWatched(record);
  try {
    ctx.waitFor("nothing holds the GPU", () => processesHolding(ctx.host, watched).length === 0, { timeoutMs: record.timeoutMs });
  } catch (error) {
    // Only the timeout means "still in use": a process whose files cannot be read fails with its own error.
    if (!(error instanceof WaitTimedOut)) throw error;
    const holders = processesHolding(ctx.host, watched);
    if (holders.length === 0) throw error; // freed just after the timeout
    throw new VmhookError(`vfio: the GPU is still in use after stopping the display manager: ${describeHolders(holders)}; end those programs (or the sessions) and start the VM again`);
  }
}

function checkWait(record: UndoRecord): WaitRecord {
  const { files, framebuffers, keptFramebuffers = [], nvidia, timeoutMs } = record;
  const devicePaths = (list: unknown) => Array.isArray(list) && list.every((file) => typeof file === "string" && file.startsWith("/dev/"));
  if (!devicePaths(files) || !devicePaths(keptFramebuffers) || typeof framebuffers !== "boolean" || typeof nvidia !== "boolean" || !Number.isSafeInteger(timeoutMs)) {
    throw new VmhookError(`vfio: not a wait-gpu-free record: ${JSON.stringify(record).slice(0, 120)}`);
  }
  return record as WaitRecord;
}

export const waitGpuFreeAction = defineAction<WaitRecord>({ check: checkWait, apply: waitUntilGpuFree, undo: () => {} });

/**
 * Unbinds the framebuffer consoles bound now, each bound again at release. A
 * framebuffer console that shows only on another GPU's framebuffers (fbcon on
 * the iGPU the host keeps, the dGPU to the VM) stays: it never holds the GPU
 * that goes.
 */
export async function consoleSteps(ctx: BaseContext, found: Survey): Promise<Step[]> {
  const steps: Step[] = [];
  // The GPUs whose driver brings the console back at release (bindVtconsole): not one left on a VFIO driver.
  const gpus = found.devices.filter((device) => isDisplayClass(device.classCode) && !device.onVfio).map((device) => device.address);
  // Asked once, at the first bound framebuffer console: the map is fbcon's, the same for each.
  let elsewhere: Promise<string | undefined> | undefined;
  for (const vtconsole of ctx.host.list(VTCONSOLES)) {
    const name = ctx.host.readTrimmed(`${VTCONSOLES}/${vtconsole}/name`) ?? "";
    if (!/frame buffer/i.test(name) || ctx.host.readTrimmed(`${VTCONSOLES}/${vtconsole}/bind`) !== "1") continue;
    if (await (elsewhere ??= consoleOnlyOnKeptGpus(ctx, found))) {
      ctx.log.info(`vfio: console ${vtconsole} (${name}) stays: it shows on ${await elsewhere}, which the host keeps`);
      continue;
    }
    steps.push({ action: "unbind-vtconsole", record: { action: "unbind-vtconsole", vtconsole, gpus }, description: `unbind console ${vtconsole} (${name})` });
  }
  return steps;
}

/** Unbinds the firmware framebuffers bound now when they go with the devices (Survey.firmwareFramebuffers), each bound again at release. */
export function firmwareFramebufferSteps(ctx: BaseContext, found: Survey): Step[] {
  if (found.firmwareFramebuffers !== "go") return [];
  return boundFirmwareFramebuffers(ctx.host).map(({ driver, device }) => ({
    action: "unbind-framebuffer",
    record: { action: "unbind-framebuffer", driver, device },
    description: `unbind ${device} from ${driver}`,
  }));
}

/** linux/fb.h: which framebuffer a console (1-based) shows on, -1 for none; MAX_NR_CONSOLES consoles. */
const FBIOGET_CON2FBMAP = 0x460f;
const MAX_NR_CONSOLES = 63;

/**
 * The framebuffers fbcon shows on (FBIOGET_CON2FBMAP of every console), when
 * each is a framebuffer of a display device the host keeps on its driver, or
 * a firmware framebuffer on a display device the host keeps; undefined
 * when one is the VM's, or a firmware framebuffer that goes, or the map
 * cannot be read: then the console lets go, as on a host with one GPU.
 */
async function consoleOnlyOnKeptGpus(ctx: BaseContext, found: Survey): Promise<string | undefined> {
  // The survey found the kept GPUs' framebuffers already (a program on one does not hold the VM's GPU).
  const kept = new Set((found.watched.keptFramebuffers ?? []).map((node) => Number(node.slice("/dev/fb".length))));
  if (kept.size === 0) return undefined;
  const shown = new Set<number>();
  const mapping = new Int32Array(2);
  const device = `/dev/fb${[...kept][0]}`;
  try {
    for (let console = 1; console <= MAX_NR_CONSOLES; console++) {
      mapping.set([console, -1]);
      await ctx.host.ioctl(device, FBIOGET_CON2FBMAP, new Uint8Array(mapping.buffer));
      if (mapping[1]! >= 0) shown.add(mapping[1]!);
    }
  } catch (error) {
    ctx.log.info(`vfio: which framebuffer the console shows on is unknown (${(error as Error).message}): it lets go`);
    return undefined;
  }
  if (shown.size === 0 || ![...shown].every((index) => kept.has(index))) return undefined;
  // Only now, for the log line: which kept GPU each framebuffer is on.
  const ours = new Set(found.devices.map((device) => device.address));
  const owners = new Map<number, string>();
  for (const device of listPciDevices(ctx.host).filter((device) => isDisplayClass(device.classCode) && !ours.has(device.address))) {
    for (const framebuffer of ctx.host.list(`/sys/bus/pci/devices/${device.address}/graphics`).filter((name) => /^fb\d+$/.test(name))) {
      owners.set(Number(framebuffer.slice(2)), `${device.address} (${device.driver ?? "no driver"})`);
    }
  }
  // The firmware framebuffers on a GPU the host keeps (efifb, its driver registering no fbdev) show the host's console.
  const { firmwareFramebuffers } = found;
  if (typeof firmwareFramebuffers === "object") {
    for (const { device, nodes } of boundFirmwareFramebuffers(ctx.host)) {
      for (const node of nodes) owners.set(Number(node.slice(2)), `${device} (the firmware framebuffer on ${firmwareFramebuffers.keptBy})`);
    }
  }
  return [...shown].map((index) => `fb${index} of ${owners.get(index)}`).join(", ");
}

const vtconsoleBind = (record: UndoRecord) => `${VTCONSOLES}/${record.vtconsole}/bind`;

/** A console that still reads bound, as it was planned. */
const vtconsoleBound = (record: UndoRecord, ctx: BaseContext) => readsAs(ctx.host, vtconsoleBind(record), "1");

function unbindVtconsole(record: UndoRecord, ctx: ApplyContext<unknown>): void {
  ctx.host.write(vtconsoleBind(record), "0");
  if (vtconsoleBound(record, ctx)) throw new VmhookError(`vfio: console ${record.vtconsole} stays bound to the framebuffer`);
}

/** A firmware framebuffer's unbind or bind runs the driver's remove() or probe(): in a helper bounded by bindTimeoutSeconds (lib/bounded-write.ts). */
function throughFramebufferDriver(ctx: BaseContext, driver: string, device: string, file: "bind" | "unbind"): Promise<void> {
  const timeoutMs = readVfioSettings(ctx.settings).bindTimeoutSeconds * 1000;
  return writeThroughDriver(ctx, { device, driver, file: `/sys/bus/platform/drivers/${driver}/${file}`, value: device, timeoutMs, setting: "plugins.vfio.bindTimeoutSeconds" });
}

/** A framebuffer still bound to its driver. */
const framebufferBound = (record: UndoRecord, ctx: BaseContext) => ctx.host.exists(`/sys/bus/platform/drivers/${record.driver}/${record.device}`);

async function unbindFramebuffer(record: UndoRecord, ctx: ApplyContext<unknown>): Promise<void> {
  const [driver, device] = [String(record.driver), String(record.device)];
  await throughFramebufferDriver(ctx, driver, device, "unbind");
  if (framebufferBound(record, ctx)) throw new VmhookError(`vfio: ${device} stays bound to ${driver}`);
}

function checkVtconsole(record: UndoRecord): UndoRecord {
  if (typeof record.vtconsole !== "string" || !/^vtcon\d+$/.test(record.vtconsole)) throw new VmhookError(`vfio: the journal names console ${JSON.stringify(record.vtconsole)}, which is not a vtconsole`);
  // gpus: absent in journals of before it (any display device then counts).
  if (record.gpus === undefined) return { action: "unbind-vtconsole", vtconsole: record.vtconsole };
  if (!Array.isArray(record.gpus) || !record.gpus.every((gpu) => typeof gpu === "string" && PATTERNS.pciAddress.test(gpu))) {
    throw new VmhookError(`vfio: the journal names GPUs ${JSON.stringify(record.gpus)} for console ${record.vtconsole}, which are not PCI addresses`);
  }
  return { action: "unbind-vtconsole", vtconsole: record.vtconsole, gpus: record.gpus };
}

function checkFramebuffer(record: UndoRecord): UndoRecord {
  const [driver, device] = [String(record.driver), String(record.device)];
  if (!FIRMWARE_FRAMEBUFFERS.includes(driver) || !/^[a-z-]+\.\d+$/.test(device)) throw new VmhookError(`vfio: journal names an unexpected framebuffer ${driver}/${device}`);
  return { action: "unbind-framebuffer", driver, device };
}

function runningCommands(ctx: BaseContext): string[] {
  return processIds(ctx.host).map((pid) => ctx.host.readTrimmed(`/proc/${pid}/comm`) ?? "");
}

/**
 * Rebinds the console; when its number changed (fbcon came back under
 * another), the framebuffer console found now. The kernel's vtconsole bind
 * takes consoles back only from a built-in console driver: where the other
 * one is modular too (a "(M) dummy device"), writing 1 does nothing, and
 * fbcon comes back only through a framebuffer. One that registers again (the
 * GPU's driver, after the VM) does it by itself; when the GPU never left its
 * driver (a prepare that failed after this step), its framebuffer is mapped
 * to the first console, which makes fbcon take the consoles over again.
 */
async function bindVtconsole(record: UndoRecord, ctx: BaseContext): Promise<void> {
  const isFramebuffer = (vtconsole: string) => /frame buffer/i.test(ctx.host.readTrimmed(`${VTCONSOLES}/${vtconsole}/name`) ?? "");
  const recorded = String(record.vtconsole);
  const findConsole = () => (isFramebuffer(recorded) ? recorded : ctx.host.list(VTCONSOLES).find(isFramebuffer));
  let vtconsole = findConsole();
  if (!vtconsole) {
    const home = gpusHome(ctx, record.gpus);
    // The whole grace, or no verdict: a deadline nearly spent must not pass for a driver that never registers one.
    if (home.length === 0 || ctx.deadline.remainingMs() <= FRAMEBUFFER_GRACE_MS) {
      throw new VmhookError(`vfio: no framebuffer console is back (was ${recorded}): no framebuffer is registered; ${NO_FRAMEBUFFER_FIX}`);
    }
    vtconsole = waitForConsole(ctx, findConsole);
    if (!vtconsole) {
      // The GPU is home and its driver makes no framebuffer (NVIDIA without fbdev): nothing vmhook can do brings the console back,
      // and an entry kept for recover would refuse every later start.
      ctx.log.warn(`vfio: console ${recorded} stays unbound: ${home.map((device) => `${device.driver} (${device.address})`).join(", ")} registered no framebuffer, and the firmware framebuffer does not come back once vfio-pci took the GPU; the text console returns after a reboot, or with a driver that registers one (NVIDIA: nvidia-drm.fbdev=1)`);
      return;
    }
  }
  const bind = `${VTCONSOLES}/${vtconsole}/bind`;
  const bound = () => ctx.host.readTrimmed(bind) === "1";
  if (!bound()) ctx.host.write(bind, "1");
  if (bound()) return;
  const framebuffer = consoleFramebuffer(ctx, record.gpus);
  if (!framebuffer) throw new VmhookError(`vfio: console ${vtconsole} cannot bind: no framebuffer is registered; ${NO_FRAMEBUFFER_FIX}`);
  const index = Number(framebuffer.slice(2));
  const mapping = new Uint32Array([FIRST_CONSOLE, index]);
  try {
    await ctx.host.ioctl(`/dev/${framebuffer}`, FBIOPUT_CON2FBMAP, new Uint8Array(mapping.buffer));
  } catch (error) {
    throw new VmhookError(`vfio: console ${vtconsole} did not bind again: writing 1 to ${bind} did nothing, and mapping tty${FIRST_CONSOLE} to /dev/${framebuffer} failed (${(error as Error).message}); run con2fbmap ${FIRST_CONSOLE} ${index}, then vmhook recover`);
  }
  if (!bound()) throw new VmhookError(`vfio: console ${vtconsole} did not bind again: writing 1 to ${bind} and mapping tty${FIRST_CONSOLE} to /dev/${framebuffer} did nothing; see dmesg, then run vmhook recover`);
  ctx.log.info(`vfio: console ${vtconsole} bound again by mapping tty${FIRST_CONSOLE} to /dev/${framebuffer} (its bind file does nothing while the only other console driver is modular)`);
}

/**
 * The framebuffer to map the console back to: one of the VM's GPUs (the
 * console let go because it showed there; on a host with two, the first one
 * registered may be the other GPU's), else the first registered (a journal
 * of before, or the console on a firmware framebuffer).
 */
function consoleFramebuffer(ctx: BaseContext, gpus: unknown): string | undefined {
  const isFramebuffer = (name: string) => /^fb\d+$/.test(name);
  const ours = Array.isArray(gpus) ? (gpus as string[]) : [];
  return ours.flatMap((address) => ctx.host.list(`/sys/bus/pci/devices/${address}/graphics`).filter(isFramebuffer))[0] ?? ctx.host.list(GRAPHICS).find(isFramebuffer);
}

/**
 * The VM's GPUs (journaled with the console; every display device for a
 * journal of before) that are back on a host driver, not vfio-pci or pci-stub.
 */
function gpusHome(ctx: BaseContext, gpus: unknown) {
  const ours = Array.isArray(gpus) ? (gpus as string[]) : undefined;
  return listPciDevices(ctx.host).filter(
    (device) => isDisplayClass(device.classCode) && (!ours || ours.includes(device.address)) && device.driver !== undefined && !HARMLESS_DRIVERS.includes(device.driver),
  );
}

/** How long a display driver back on its device may take to register its framebuffer console. */
const FRAMEBUFFER_GRACE_MS = 2_000;

/** The framebuffer console, once a driver back on its GPU registers one within the grace; undefined when none did (it never will). */
function waitForConsole(ctx: BaseContext, findConsole: () => string | undefined): string | undefined {
  try {
    ctx.waitFor("a framebuffer console is back", () => findConsole() !== undefined, { timeoutMs: FRAMEBUFFER_GRACE_MS });
  } catch (error) {
    if (error instanceof WaitTimedOut) return undefined;
    throw error;
  }
  return findConsole();
}

/** vfio-pci removes a firmware framebuffer (efifb, simplefb) for good when it takes the GPU: only a GPU driver brings one back. */
const NO_FRAMEBUFFER_FIX = "the GPU's driver has not registered one, and a firmware framebuffer (efifb) does not come back once vfio-pci took the GPU; load the GPU's driver (modprobe), then run vmhook recover";
const GRAPHICS = "/sys/class/graphics";
/** linux/fb.h: maps a console (1-based) to a framebuffer; fbcon takes the consoles over when it holds none. */
const FBIOPUT_CON2FBMAP = 0x4610;
const FIRST_CONSOLE = 1;

/** Rebinds a firmware framebuffer, unless the GPU's driver removed it meanwhile (it does when it takes over). */
async function bindFramebuffer(record: UndoRecord, ctx: BaseContext): Promise<void> {
  const [driver, device] = [String(record.driver), String(record.device)];
  if (!ctx.host.exists(`/sys/bus/platform/devices/${device}`)) {
    ctx.log.info(`vfio: ${device} is gone (the GPU's driver replaced it); nothing to rebind`);
    return;
  }
  const driverDir = `/sys/bus/platform/drivers/${driver}`;
  if (!ctx.host.exists(`${driverDir}/${device}`)) await throughFramebufferDriver(ctx, driver, device, "bind");
  if (!ctx.host.exists(`${driverDir}/${device}`)) throw new VmhookError(`vfio: ${device} did not bind to ${driver} again`);
}

// Still bound after a failed unbind (refused, or it did nothing): nothing changed, nothing to bind again.
// An unbind whose helper has not returned may yet let go: the runner keeps its entry (StuckWriteError).
export const unbindVtconsoleAction = defineAction({ check: checkVtconsole, apply: unbindVtconsole, unchangedAfterFailure: vtconsoleBound, undo: bindVtconsole });
export const unbindFramebufferAction = defineAction({ check: checkFramebuffer, apply: unbindFramebuffer, unchangedAfterFailure: framebufferBound, undo: bindFramebuffer });
