// Writes that call into a driver (a device's driver/unbind, drivers_probe, a
// driver's bind, a device's remove, the bus rescan) run a driver's probe()
// or remove(), which may never return. They run in a helper process that
// vmhook waits for only so long: libvirt waits for the hook without any
// timeout, so a hook blocked in the kernel would wedge libvirt. A helper
// still blocked then is left (no signal reaches a process in D state) and
// the write fails. Each helper is noted in /run/vmhook/stuck
// (lib/stuck-writes.ts) from its start until it returns: a hook killed
// meanwhile leaves the note, so whoever undoes its changes next knows the
// device may still be held. Writes that call no driver (driver_override)
// stay in-process.
import type { Deadline } from "./deadline.ts";
import { VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import { clearForWrite, forgetWrite, noteWrite, STUCK_ADVICE, StuckWriteError } from "./stuck-writes.ts";

export interface DriverWrite {
  /** The device the write acts on; while a write into it is stuck, no other is made. */
  device: string;
  /** The driver whose code runs: named when it does not return. */
  driver: string;
  file: string;
  value: string;
  timeoutMs: number;
  /** The setting that sets timeoutMs, named in the message (e.g. "plugins.vfio.bindTimeoutSeconds"). */
  setting: string;
}

export interface WriteContext {
  host: Host;
  domain: { name: string; uuid: string };
  deadline: Deadline;
}

/** Writes `value` to `file` through the device's driver, waiting at most timeoutMs (and the deadline). */
export async function writeThroughDriver(ctx: WriteContext, write: DriverWrite): Promise<void> {
  const { host } = ctx;
  const { device, driver, file, value } = write;
  clearForWrite(host, device);
  ctx.deadline.check(`writing ${file}`);
  const timeoutMs = ctx.deadline.clamp(write.timeoutMs);
  const since = new Date(host.now()).toISOString();
  const noted = (pid: number) => noteWrite(host, { pid, device, driver, file, value, since, domain: ctx.domain });
  const result = await host.writeInHelper(file, value, timeoutMs, noted);
  if (result.done) {
    forgetWrite(host, device);
    if (result.error) throw new DriverWriteError(`writing "${value}" to ${file} failed: ${result.error}`, result.error);
    return;
  }
  const seconds = Math.round(timeoutMs / 100) / 10;
  throw new StuckWriteError(`${device}: driver ${driver} did not return within ${seconds} s from writing "${value}" to ${file}; vmhook left its helper (pid ${result.pid}) blocked in the kernel and gave up`, [
    STUCK_ADVICE,
    `vmhook status shows the helper; once it is gone, vmhook recover finishes the undo (if the driver is just slow, raise ${write.setting} in /etc/vmhook/vmhook.json)`,
  ]);
}

/** A write the driver answered with an error: `reason` is the kernel's answer as the helper reported it. */
export class DriverWriteError extends VmhookError {
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(message);
  }
}
