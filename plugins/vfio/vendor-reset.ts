// AMD GPUs that do not reset (Polaris, Vega, Navi 10/12/14): the out-of-tree
// vendor-reset module knows how to reset them, but since Linux 5.15 the
// kernel uses it only when the device's reset_method says device_specific.
// At prepare vmhook loads the module when it is installed and not loaded,
// sets reset_method to device_specific (journaled; the original value comes
// back at release), and warns (log and doctor) when an AMD GPU that needs it
// has no vendor-reset on the host.
import { VmhookError } from "../../lib/errors.ts";
import { readsAs, type Host } from "../../lib/host.ts";
import type { Finding } from "../../lib/diagnostics/findings.ts";
import { warn, ok } from "../../lib/diagnostics/findings.ts";
import { pciPath, pciResetMethod, type PciDevice } from "../../lib/pci.ts";
import { defineAction, type ApplyContext, type BaseContext, type Step, type UndoRecord } from "../../lib/plugin.ts";
import { PATTERNS } from "../../lib/validate.ts";
import { moduleLoaded } from "./survey.ts";

export const VENDOR_RESET_MODULE = "vendor-reset";
const AMD = "0x1002";

/** The device ids vendor-reset handles (its device table, src/device-db.h): Polaris 10/11/12, Vega 10/20, Navi 10/12/14, Arcturus; no APU's iGPU. */
const VENDOR_RESET_IDS = new Set(
  [
    "67c0 67c1 67c2 67c4 67c7 67c8 67c9 67ca 67cc 67cf 67d0 67df 6fdf", // Polaris 10
    "67e0 67e1 67e3 67e7 67e8 67e9 67eb 67ef 67ff", // Polaris 11
    "6980 6981 6985 6986 6987 6995 6997 699f", // Polaris 12
    "6860 6861 6862 6863 6864 6867 6868 6869 686a 686b 686c 686d 686e 686f 687f", // Vega 10
    "66a0 66a1 66a2 66a3 66a4 66a7 66af 738c", // Vega 20, Arcturus
    "7310 7312 7318 7319 731a 731b 731e 731f", // Navi 10
    "7340 7341 7347 734f 7360 7362", // Navi 14, Navi 12
  ].flatMap((line) => line.split(" ").map((id) => `0x${id}`)),
);

/** An AMD GPU of the kinds that do not reset without vendor-reset. */
export function needsVendorReset(device: Pick<PciDevice, "vendor" | "device">): boolean {
  return device.vendor.toLowerCase() === AMD && VENDOR_RESET_IDS.has(device.device.toLowerCase());
}

/** Whether vendor-reset is loaded, installed (modinfo finds it), or missing. */
export function vendorResetState(host: Host, modinfo: () => boolean): "loaded" | "installed" | "missing" {
  if (moduleLoaded(host, VENDOR_RESET_MODULE.replace(/-/g, "_"))) return "loaded";
  return modinfo() ? "installed" : "missing";
}

const MISSING_FIX = "install vendor-reset (e.g. the vendor-reset-dkms package or github.com/gnif/vendor-reset), then start the VM again: vmhook loads it and sets reset_method to device_specific";

export function missingAdvice(address: string): string {
  return `${address} is an AMD GPU that does not reset on its own, and the vendor-reset module is not installed: after the VM it may not come back to the host (a reboot would be needed)`;
}

interface ResetMethodRecord extends UndoRecord {
  action: "set-reset-method";
  address: string;
  /** reset_method before vmhook, written back at release ("" when the kernel listed none). */
  original: string;
}

/** The step that makes the kernel reset the device through vendor-reset. */
export function setResetMethodStep(host: Host, address: string): Step<ResetMethodRecord> | undefined {
  const original = pciResetMethod(host, address) ?? "";
  if (!host.exists(pciPath(address, "reset_method")) || original === "device_specific") return undefined;
  return {
    action: "set-reset-method",
    record: { action: "set-reset-method", address, original },
    description: `set the reset method of ${address} to device_specific (vendor-reset; was ${original || "none"})`,
  };
}

/** The kernel accepts device_specific only when a device-specific reset exists for the card: vendor-reset must handle it. */
function setResetMethod(record: ResetMethodRecord, ctx: ApplyContext<unknown>): void {
  const file = pciPath(record.address, "reset_method");
  const refused = (why: string) =>
    new VmhookError(`vfio: the kernel did not take reset_method device_specific for ${record.address} (${why}): the loaded vendor-reset does not handle this card; update vendor-reset, or unload it (rmmod vendor_reset) to start without it`);
  try {
    ctx.host.write(file, "device_specific");
  } catch (error) {
    throw refused((error as NodeJS.ErrnoException).code ?? String(error));
  }
  const now = ctx.host.readTrimmed(file);
  if (now !== "device_specific") throw refused(`it reads "${now}"`);
}

/** Writes the original order back; an empty list is written as a newline, which the kernel reads as "none". */
function restoreResetMethod(record: ResetMethodRecord, ctx: BaseContext): void {
  const file = pciPath(record.address, "reset_method");
  if (!ctx.host.exists(file)) throw new VmhookError(`vfio: ${record.address} has no reset_method to restore (is it on the PCI bus?); run vmhook recover once it is back`);
  if ((ctx.host.readTrimmed(file) ?? "") === record.original) return;
  ctx.host.write(file, record.original === "" ? "\n" : record.original);
  const now = ctx.host.readTrimmed(file) ?? "";
  if (now !== record.original) throw new VmhookError(`vfio: the reset method of ${record.address} is "${now}", not "${record.original}" as before the VM; write it: echo ${record.original || "default"} > ${file}`);
}

const RESET_METHODS = /^(?:(?:device_specific|acpi|flr|af|pm|bus|cxl_bus)(?: |$))*$/;

function checkResetMethod(record: UndoRecord): ResetMethodRecord {
  const address = String(record.address);
  const original = String(record.original ?? "");
  if (!PATTERNS.pciAddress.test(address)) throw new VmhookError(`vfio: the journal names "${address}", which is not a PCI address`);
  if (!RESET_METHODS.test(original)) throw new VmhookError(`vfio: the journal names reset method "${original}", which is not a list of kernel reset methods`);
  return { action: "set-reset-method", address, original };
}

/** Refused, and the order reads as before: nothing to restore. One that changed it, or cannot be read, keeps the record. */
const resetMethodAsBefore = (record: ResetMethodRecord, ctx: BaseContext) => readsAs(ctx.host, pciPath(record.address, "reset_method"), record.original);

export const setResetMethodAction = defineAction<ResetMethodRecord>({ check: checkResetMethod, apply: setResetMethod, unchangedAfterFailure: resetMethodAsBefore, undo: restoreResetMethod });

/** `vmhook doctor`: each AMD GPU of the VM that needs vendor-reset, and whether the host has it. */
export function vendorResetFindings(host: Host, devices: PciDevice[], modinfo: () => boolean): Finding[] {
  const needing = devices.filter(needsVendorReset);
  if (needing.length === 0) return [];
  const state = vendorResetState(host, modinfo);
  return needing.map((device) => {
    const check = `vendor-reset ${device.address}`;
    if (state === "missing") return warn(check, missingAdvice(device.address), MISSING_FIX);
    return ok(check, `vendor-reset is ${state}; at prepare vmhook sets reset_method of ${device.address} to device_specific (now: ${pciResetMethod(host, device.address) ?? "none"})`);
  });
}

export { MISSING_FIX as VENDOR_RESET_FIX };
