// Writes that call into a driver (a device's driver/unbind, drivers_probe, a
// driver's bind, a device's remove, the bus rescan, an mdev's create and
// remove, a VF's vGPU type) run a driver's probe() or remove(), which may
// never return. They run in a helper process that
// vmhook waits for only so long: libvirt waits for the hook without any
// timeout, so a hook blocked in the kernel would wedge libvirt. A helper
// still blocked then is left (no signal reaches a process in D state) and
// the write fails. Each helper is noted in /run/vmhook/stuck
// (lib/stuck-writes.ts) from its start until it returns: a hook killed
// meanwhile leaves the note, so whoever undoes its changes next knows the
// device may still be held. A helper acts only once its note is in place
// (Host.writeInHelper): one whose hook was killed before that ends having
// done nothing, so there is never a note missing, nor one without a pid. Writes that call no driver (driver_override)
// stay in-process. rmmod and modprobe of a driver's module run its remove()
// or probe() for each device it drives, and rmmod its exit: they run the same
// way, noted for each module and for each of those devices.
import type { Deadline } from "./deadline.ts";
import { describeError, VmhookError } from "./errors.ts";
import type { ExecResult, Host } from "./host.ts";
import { moduleClosure } from "./kernel-modules.ts";
import { clearForWrite, forgetWrite, moduleSubject, noteWrite, STUCK_ADVICE, type StuckWrite, StuckWriteError } from "./stuck-writes.ts";

export interface DriverWrite {
  /** The device the write acts on; while a write into it is stuck, no other is made. */
  device: string;
  /** The driver whose code runs: named when it does not return. */
  driver: string;
  file: string;
  value: string;
  timeoutMs: number;
  /** The setting that sets timeoutMs, named in the message (e.g. "plugins.vfio.bindTimeoutSeconds"); none for a fixed bound. */
  setting?: string;
  /** A sound card's nodes whose programs the driver's remove() waits for: noted, so vmhook status can name them. */
  waitsFor?: string[];
}

export interface WriteContext {
  host: Host;
  domain: { name: string; uuid: string };
  deadline: Deadline;
}

/** Writes `value` to `file` through the device's driver, waiting at most timeoutMs (and the deadline). */
export async function writeThroughDriver(ctx: WriteContext, write: DriverWrite): Promise<void> {
  const { host } = ctx;
  const { device, driver, file, value, waitsFor } = write;
  clearForWrite(host, device);
  ctx.deadline.check(`writing ${file}`);
  const timeoutMs = ctx.deadline.clamp(write.timeoutMs);
  const since = new Date(host.wallClockMs()).toISOString();
  const notes: StuckWrite[] = [];
  const noted = (pid: number) => notes.push(noteWrite(host, { pid, device, driver, file, value, ...(waitsFor?.length ? { waitsFor } : {}), since, domain: ctx.domain }));
  const result = await host.writeInHelper(file, value, timeoutMs, noted);
  if (result.done) {
    for (const note of notes) forgetWrite(host, note);
    if (result.error) throw new DriverWriteError(`writing "${value}" to ${file} failed: ${result.error}`, result.error);
    return;
  }
  throw new StuckWriteError(`${device}: driver ${driver} did not return within ${seconds(timeoutMs)} s from writing "${value}" to ${file}; vmhook left its helper (pid ${result.pid}) blocked in the kernel and gave up`, stuckAdvice(write.setting));
}

export interface ModuleRun {
  command: "rmmod" | "modprobe";
  /** The module modprobe loads; or those rmmod removes, in this order (one rmmod for a stack, users first). */
  modules: string[];
  /** The devices the module's driver drives: their remove() (rmmod) or probe() (modprobe) runs in the program. */
  devices: { address: string; driver: string }[];
  timeoutMs: number;
  /** The setting that sets timeoutMs, named in the message; none for a fixed bound. */
  setting?: string;
  /** For modprobe: what it may load, when the caller knows it already (read from modules.dep at planning: 500 KB not read twice). */
  loads?: string[];
  /** For modprobe: module options after the name (they win over modprobe.d's). */
  options?: string[];
}

/**
 * `rmmod module…` or `modprobe module`, waiting at most timeoutMs (and the
 * deadline): its result, or a StuckWriteError for a program left blocked in
 * the kernel. Refused while an earlier one of a module (for modprobe: of a
 * module it may load; the kernel would make it wait), or a write into one of
 * the devices, is blocked.
 */
export async function runThroughDriver(ctx: WriteContext, run: ModuleRun): Promise<ExecResult> {
  const { host } = ctx;
  const { command, modules, devices } = run;
  const waitsFor = command === "modprobe" ? (run.loads ?? moduleClosure(host, modules[0]!)) : modules;
  const subjects = [...modules.map(moduleSubject), ...devices.map((device) => device.address)];
  for (const subject of new Set([...waitsFor.map(moduleSubject), ...subjects])) clearForWrite(host, subject);
  const args = [...modules, ...(command === "modprobe" ? (run.options ?? []) : [])];
  const cmdline = [command, ...args].join(" ");
  ctx.deadline.check(`starting ${cmdline}`);
  const timeoutMs = ctx.deadline.clamp(run.timeoutMs);
  const since = new Date(host.wallClockMs()).toISOString();
  const notes: StuckWrite[] = [];
  const noted = (pid: number) => {
    for (const module of modules) notes.push(noteWrite(host, { pid, device: moduleSubject(module), driver: module, command: cmdline, since, domain: ctx.domain }));
    for (const { address, driver } of devices) notes.push(noteWrite(host, { pid, device: address, driver, command: cmdline, since, domain: ctx.domain }));
  };
  const result = await host.runInHelper(command, args, timeoutMs, noted);
  if (result.done) {
    for (const note of notes) forgetWrite(host, note);
    return result.result;
  }
  const driven = devices.length > 0 ? `: module ${modules.join(", ")} is the driver of ${devices.map((device) => device.address).join(", ")} (its ${command === "rmmod" ? "remove()" : "probe()"} runs in ${command})` : "";
  throw new StuckWriteError(`${cmdline} did not return within ${seconds(timeoutMs)} s${driven}; vmhook left ${command} (pid ${result.pid}) blocked in the kernel and gave up`, stuckAdvice(run.setting));
}

const seconds = (ms: number) => Math.round(ms / 100) / 10;

function stuckAdvice(setting: string | undefined): string[] {
  const slow = setting ? ` (if the driver is just slow, raise ${setting} in /etc/vmhook/vmhook.json)` : "";
  return [STUCK_ADVICE, `vmhook status shows the helper; once it is gone, vmhook recover finishes the undo${slow}`];
}

/** Why a write that returned failed: the kernel's answer without the write itself, or what kept it from being made. */
export const kernelAnswer = (error: unknown) => (error instanceof DriverWriteError ? error.reason : describeError(error));

/** A write the driver answered with an error: `reason` is the kernel's answer as the helper reported it. */
export class DriverWriteError extends VmhookError {
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(message);
  }
}
