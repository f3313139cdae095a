// The return path: a device that leaves vfio-pci must end up on its own
// driver, and vmhook says so only once it has seen it there. When the driver
// does not take the device, the path escalates: the device's own reset (what
// the kernel lists in reset_method), then a PCI remove + bus rescan (the
// kernel enumerates the device afresh: config space read again, resources
// assigned again). Each attempt is bounded by bindTimeoutSeconds and logged;
// when none works, the error lists what was tried and what to do, and the
// journal keeps the change for `vmhook recover`.
import { DriverWriteError, writeThroughDriver } from "../../lib/bounded-write.ts";
import { WaitTimedOut } from "../../lib/deadline.ts";
import { describeError, VmhookError } from "../../lib/errors.ts";
import { isVirtualFunction, PCI_DRIVERS, pciDriver, pciDriverOverride, pciExists, pciPath, pciResetMethod, readPciDevice } from "../../lib/pci.ts";
import type { Host } from "../../lib/host.ts";
import type { BaseContext } from "../../lib/plugin.ts";
import { StuckWriteError } from "../../lib/stuck-writes.ts";
import { VFIO_DRIVER } from "./survey.ts";
import { needsVendorReset } from "./vendor-reset.ts";

export interface ReturnTarget {
  address: string;
  /** The driver the device had before vmhook. */
  driver: string;
  /** The bound of each attempt (bindTimeoutSeconds). */
  timeoutMs: number;
  /** driver_override once it is home: the one it had before vmhook (null: none); absent: the one it has now (it waited under that one). */
  override?: string | null;
}

/** One step of the escalation: what it does to the device before the driver is asked again. */
interface Attempt {
  name: string;
  /** Acts on the device; returns why it was skipped, or undefined when it acted. */
  act?: (ctx: BaseContext, target: ReturnTarget) => Promise<string | undefined>;
}

const ATTEMPTS: Attempt[] = [
  { name: "probe" },
  { name: "reset", act: resetDevice },
  { name: "remove + rescan", act: removeAndRescan },
];

/**
 * Brings the device back to `target.driver` and verifies it; throws, listing
 * every attempt, when the driver never takes it. A device on another driver
 * is left alone: resetting or removing it would take it from that driver.
 */
export async function returnToDriver(ctx: BaseContext, target: ReturnTarget): Promise<void> {
  const { host } = ctx;
  const { address } = target;
  // Each probe names the driver in driver_override (nameHomeDriver); then driver_override is as it was, once the probes are over.
  const override = target.override === undefined ? pciDriverOverride(host, address) : (target.override ?? undefined);
  try {
    await attemptReturn(ctx, target);
  } catch (error) {
    // A write still blocked holds the device's lock, which a write of driver_override would wait for too.
    if (error instanceof StuckWriteError) throw error;
    restoreOverride(ctx, address, override);
    throw error;
  }
  restoreOverride(ctx, address, override);
}

/**
 * driver_override names `driver`, the device's own, while the device has no
 * driver and is on its way back to it (each probe here, and the wait for its
 * module: driver.ts's park): no other driver whose ids match (vfio-pci's ids=,
 * which may have registered before it; nouveau beside nvidia) takes it on a
 * probe, a rescan or a module's load meanwhile.
 */
export function nameHomeDriver(host: Host, address: string, driver: string): void {
  if (pciDriverOverride(host, address) !== driver) host.write(pciPath(address, "driver_override"), driver);
}

/** driver_override as it was before vmhook (null or undefined: none; an empty write clears it), on a device still there. */
export function restoreOverride(ctx: BaseContext, address: string, override: string | null | undefined): void {
  if (pciExists(ctx.host, address) && pciDriverOverride(ctx.host, address) !== (override ?? undefined)) ctx.host.write(pciPath(address, "driver_override"), override ?? "\n");
}

async function attemptReturn(ctx: BaseContext, target: ReturnTarget): Promise<void> {
  const { address, driver } = target;
  const tried: string[] = [];
  for (const [index, attempt] of ATTEMPTS.entries()) {
    const step = `${index + 1}/${ATTEMPTS.length} ${attempt.name}`;
    let outcome: string | undefined;
    try {
      const skipped = await attempt.act?.(ctx, target);
      if (skipped) {
        tried.push(`${attempt.name} (skipped: ${skipped})`);
        ctx.log.info(`vfio: ${address} return attempt ${step}: skipped: ${skipped}`);
        continue;
      }
      outcome = await probe(ctx, target);
    } catch (error) {
      // A write blocked in the kernel: nothing more may touch the device.
      if (error instanceof StuckWriteError) throw error;
      outcome = `failed: ${describeError(error)}`;
    }
    if (outcome === undefined) {
      ctx.log.info(`vfio: ${address} return attempt ${step}: bound to ${driver}`);
      if (index > 0) ctx.log.warn(`vfio: ${address} is back on ${driver} after ${tried.length + 1} attempts: ${[...tried, attempt.name].join(", ")}`);
      return;
    }
    tried.push(`${attempt.name} (${outcome})`);
    ctx.log.warn(`vfio: ${address} return attempt ${step}: ${outcome}`);
    const other = pciDriver(ctx.host, address);
    if (other !== undefined && other !== driver) throw onOtherDriver(address, driver, other);
  }
  throw didNotComeBack(ctx, target, tried);
}

/**
 * Asks the kernel to probe the device, then its driver directly. A driver that
 * refuses (its probe failed) is not waited for; one that accepted, or a probe
 * still running asynchronously, is waited for up to the bound.
 */
async function probe(ctx: BaseContext, target: ReturnTarget): Promise<string | undefined> {
  const { host } = ctx;
  const { address, driver, timeoutMs } = target;
  if (pciDriver(host, address) === driver) return undefined;
  if (pciDriver(host, address) !== undefined) return `it is on ${pciDriver(host, address)}`;
  nameHomeDriver(host, address, driver);
  await deviceWrite(ctx, target, "/sys/bus/pci/drivers_probe", address);
  if (pciDriver(host, address) === undefined) {
    try {
      await deviceWrite(ctx, target, `${PCI_DRIVERS}/${driver}/bind`, address);
    } catch (error) {
      if (error instanceof StuckWriteError) throw error;
      if (pciDriver(host, address) === driver) return undefined;
      return `${driver} refused it: ${errorCode(error)}`;
    }
  }
  try {
    ctx.waitFor(`${address} is bound to ${driver}`, () => pciDriver(host, address) === driver, { timeoutMs });
    return undefined;
  } catch (error) {
    // A driver link that cannot be read is no reason to try a reset: only the timeout is.
    if (!(error instanceof WaitTimedOut)) throw error;
    return `not bound to ${driver} after ${timeoutMs / 1000} s`;
  }
}

/** The reset the kernel offers for the device (flr, pm, bus, device_specific, ...); skipped when it offers none. */
async function resetDevice(ctx: BaseContext, target: ReturnTarget): Promise<string | undefined> {
  const { address } = target;
  const method = pciResetMethod(ctx.host, address);
  if (!method || !ctx.host.exists(pciPath(address, "reset"))) return "the kernel offers no reset method for it (no reset_method)";
  ctx.log.info(`vfio: ${address}: resetting it (reset_method: ${method})`);
  await deviceWrite(ctx, target, pciPath(address, "reset"), "1");
  return undefined;
}

/**
 * Removes the device from the PCI bus and rescans the bus: the kernel reads it
 * afresh and probes it. driver_override does not survive the removal: the
 * rescan's probe may give the device to another driver whose ids match
 * (vfio-pci by its ids=, radeon for a card amdgpu drives too) registered
 * before its own, which then lets go of it; the probe after this attempt
 * names the driver in driver_override again. Only the device's own bus
 * is rescanned: the whole tree's rescan would bring back every device a user
 * removed on purpose. A kernel without the bus's rescan file gets that one.
 * Skipped for an SR-IOV virtual function.
 */
async function removeAndRescan(ctx: BaseContext, target: ReturnTarget): Promise<string | undefined> {
  const { host } = ctx;
  const { address, timeoutMs } = target;
  // A scan finds only what config space shows; a VF exists while its PF's driver keeps sriov_numvfs: removed, it would be gone for good.
  if (isVirtualFunction(host, address)) return "it is an SR-IOV virtual function, which no rescan finds again (only its physical function's driver creates it)";
  const bus = address.slice(0, address.lastIndexOf(":"));
  const busRescan = `/sys/class/pci_bus/${bus}/rescan`;
  const rescan = host.exists(busRescan)
    ? { file: busRescan, what: `its bus ${bus} (${busRescan})` }
    : { file: "/sys/bus/pci/rescan", what: `the whole PCI tree (/sys/bus/pci/rescan; there is no ${busRescan}): devices removed on purpose come back too` };
  ctx.log.info(`vfio: ${address}: removing it from the PCI bus and rescanning ${rescan.what}`);
  if (pciExists(host, address)) await deviceWrite(ctx, target, pciPath(address, "remove"), "1");
  await deviceWrite(ctx, target, rescan.file, "1");
  ctx.waitFor(`${address} is back on the PCI bus`, () => pciExists(host, address), { timeoutMs });
  const taken = pciDriver(host, address);
  if (taken !== undefined && taken !== target.driver) {
    ctx.log.info(`vfio: ${address}: the rescan's probe gave it to ${taken} (its ids match too), which lets go of it now`);
    await deviceWrite(ctx, target, `${PCI_DRIVERS}/${taken}/unbind`, address);
  }
  return undefined;
}

/**
 * Every write of the return path that runs kernel code for the device (a
 * driver's probe or remove, a reset, the bus rescan) goes through here, into
 * a helper process bounded by bindTimeoutSeconds (lib/bounded-write.ts).
 */
function deviceWrite(ctx: BaseContext, { address, driver, timeoutMs }: ReturnTarget, file: string, value: string): Promise<void> {
  return writeThroughDriver(ctx, { device: address, driver, file, value, timeoutMs, setting: "plugins.vfio.bindTimeoutSeconds" });
}

/** The kernel's answer to a write, without the write itself. */
function errorCode(error: unknown): string {
  return error instanceof DriverWriteError ? error.reason : describeError(error);
}

function onOtherDriver(address: string, driver: string, other: string): VmhookError {
  const hint = other === VFIO_DRIVER ? "another VM may have taken it; " : "";
  return new VmhookError(`vfio: ${address} went to ${other}, not back to ${driver}; ${hint}unbind it from ${other} (echo ${address} > ${PCI_DRIVERS}/${other}/unbind), then run vmhook recover`);
}

/** What the user sees when a GPU stays away: every attempt, then the remedy (the journal keeps only the message). */
function didNotComeBack(ctx: BaseContext, { address, driver }: ReturnTarget, tried: string[]): VmhookError {
  const remedy = needsVendorReset(readPciDevice(ctx.host, address))
    ? "this AMD GPU resets only through the vendor-reset module: install it (vendor-reset-dkms) and load it, or reboot the host"
    : `dmesg says why ${driver} refused it; a GPU that cannot be reset often comes back only after a host reboot`;
  return new VmhookError(`vfio: ${address} did not come back to ${driver}: tried ${tried.join(", ")}; ${remedy}; vmhook keeps the change: run vmhook recover to try again`);
}
