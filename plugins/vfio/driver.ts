// The host driver lets go and vfio-pci takes over: modules unload (users
// first), vfio-pci loads, each device moves with
// driver_override + drivers_probe; extra modules load last. Each undo puts
// one thing back and checks that it is back.
import { VmhookError } from "../../lib/errors.ts";
import type { Host } from "../../lib/host.ts";
import { PCI_DRIVERS, pciDriver, pciDriverRegistered, pciExists, pciPath, pciResetMethod } from "../../lib/pci.ts";
import type { BaseContext, PluginContext, UndoRecord } from "../../lib/plugin.ts";
import { PATTERNS } from "../../lib/validate.ts";
import type { VfioConfig, VfioSettings } from "./config.ts";
import { describeHolders, moduleLoaded, processesHolding, VFIO_DRIVER, type Survey } from "./survey.ts";
import { systemdRuns, unitActive, unitProcesses } from "./units.ts";

interface RebindRecord extends UndoRecord {
  action: "rebind-device";
  address: string;
  /** The driver to return to; null: the device had none. */
  driver: string | null;
  /** driver_override before vmhook; null: none. */
  override: string | null;
  /** The driver's module is unloaded here and loaded again by a later undo, which brings the device back. */
  moduleReloaded: boolean;
  bindTimeoutMs: number;
}

/** The module a PCI driver comes from (nvidia → nvidia), when it is a loadable one. */
function driverModule(host: Host, driver: string): string | undefined {
  return host.readlink(`${PCI_DRIVERS}/${driver}/module`)?.split("/").pop();
}

/**
 * Helper services that hold the driver's modules or the GPU (nvidia-persistenced
 * opens every card): stopped when modules are unloaded, or when one holds the GPU
 * (the host keeps another NVIDIA card, or unload-modules="none").
 */
export function helperServices(ctx: BaseContext, found: Survey, settings: VfioSettings): string[] {
  if (!systemdRuns(ctx)) return [];
  const holders = new Set(found.holders.map((holder) => String(holder.pid)));
  const needed = (unit: string) => found.unload.length > 0 || (holders.size > 0 && unitProcesses(ctx, unit).some((pid) => holders.has(pid)));
  return settings.helperServices.filter((unit) => needed(unit) && unitActive(ctx, unit));
}

export async function takeOverDevices(ctx: PluginContext<VfioConfig>, found: Survey, settings: VfioSettings): Promise<void> {
  const bindTimeoutMs = settings.bindTimeoutSeconds * 1000;
  const reloaded = new Set<string>();

  for (const module of found.unload) {
    // After reloading the module, these devices must be back on its drivers.
    const devices = found.devices
      .filter((device) => device.driver && driverModule(ctx.host, device.driver) === module)
      .map((device) => ({ address: device.address, driver: device.driver! }));
    for (const device of devices) reloaded.add(device.address);
    await ctx.step(`unload module ${module}`, { action: "load-module", module, devices, bindTimeoutMs }, () => {
      const result = ctx.run("rmmod", [module], { allowFailure: true });
      if (moduleLoaded(ctx.host, module)) {
        const users = [...ctx.host.list(`/sys/module/${module}/holders`).map((holder) => `module ${holder}`), describeHolders(processesHolding(ctx.host, found.watched))].filter(Boolean);
        throw new VmhookError(
          `vfio: cannot unload module ${module}: ${(result.error || result.stderr || result.stdout).trim().split("\n")[0] || "still loaded"}; in use by ${users.join(", ") || `something (refcnt ${ctx.host.readTrimmed(`/sys/module/${module}/refcnt`)})`}; stop what uses the GPU, or leave the module loaded (unload-modules="none")`,
        );
      }
    });
  }

  if (!pciDriverRegistered(ctx.host, VFIO_DRIVER)) {
    await loadModuleStep(ctx, VFIO_DRIVER, () =>
      ctx.waitFor("the vfio-pci driver is registered", () => pciDriverRegistered(ctx.host, VFIO_DRIVER), { timeoutMs: bindTimeoutMs }),
    );
  }

  for (const device of found.devices) {
    if (device.driver === VFIO_DRIVER) {
      ctx.log.info(`vfio: ${device.address} is already on vfio-pci`);
      continue;
    }
    const record: RebindRecord = { action: "rebind-device", address: device.address, driver: device.driver ?? null, override: device.override ?? null, moduleReloaded: reloaded.has(device.address), bindTimeoutMs };
    await ctx.step(`bind ${device.address} to vfio-pci (from ${device.driver ?? "no driver"})`, record, () => bindToVfio(ctx, device.address, device.iommuGroup!, bindTimeoutMs));
  }

  for (const module of ctx.config.loadModules) await loadModuleStep(ctx, module);
}

const loadedModules = (host: Host) => host.read("/proc/modules").split("\n").map((line) => line.split(" ")[0]!).filter(Boolean);

/** modprobe, journaling exactly the modules it loaded (the module and the dependencies it pulled in). */
async function loadModuleStep(ctx: PluginContext<VfioConfig>, module: string, verify?: () => void): Promise<void> {
  const name = module.replace(/-/g, "_");
  if (moduleLoaded(ctx.host, name)) return;
  // Until modprobe has run, the module itself is the best guess of what it loads.
  await ctx.step(`load module ${module}`, { action: "unload-modules", modules: [name] }, (handle) => {
    const before = new Set(loadedModules(ctx.host));
    try {
      ctx.run("modprobe", [module]);
      verify?.();
    } finally {
      handle.update({ action: "unload-modules", modules: loadedModules(ctx.host).filter((name) => !before.has(name)) });
    }
  });
}

function bindToVfio(ctx: BaseContext, address: string, group: string, timeoutMs: number): void {
  const { host } = ctx;
  host.write(pciPath(address, "driver_override"), VFIO_DRIVER);
  if (pciDriver(host, address) !== undefined) host.write(pciPath(address, "driver/unbind"), address);
  host.write("/sys/bus/pci/drivers_probe", address);
  ctx.waitFor(`${address} is bound to vfio-pci`, () => pciDriver(host, address) === VFIO_DRIVER, { timeoutMs });
  ctx.waitFor(`/dev/vfio/${group} exists`, () => host.exists(`/dev/vfio/${group}`), { timeoutMs });
}

function checkedAddress(record: { [key: string]: unknown }): string {
  const address = String(record.address);
  if (!PATTERNS.pciAddress.test(address)) throw new VmhookError(`vfio: the journal names "${address}", which is not a PCI address`);
  return address;
}

function checkedDriver(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== "string" || !PATTERNS.moduleName.test(value)) throw new VmhookError(`vfio: the journal names driver "${String(value)}", which is not a driver name`);
  return value;
}

/** What the user sees when a GPU stays away: a black screen, the reset method, the remedy. */
function didNotComeBack(host: Host, address: string, driver: string): VmhookError {
  const reset = pciResetMethod(host, address);
  return new VmhookError(
    `vfio: ${address} did not come back to ${driver} (reset method: ${reset ?? "none reported"}); try: echo 1 > ${pciPath(address, "remove")}; echo 1 > /sys/bus/pci/rescan; then vmhook recover`,
    [`a GPU that cannot be reset (no flr/bus reset) often needs the vendor-reset module or a host reboot`],
  );
}

/** Back from vfio-pci: unbind, restore driver_override, reprobe (or bind the recorded driver), verify. */
export function rebindDevice(ctx: BaseContext, record: UndoRecord): void {
  const { host } = ctx;
  const address = checkedAddress(record);
  const driver = checkedDriver(record.driver);
  const override = record.override === null || record.override === undefined ? null : String(record.override);
  const timeoutMs = Number(record.bindTimeoutMs) || 10_000;
  if (!pciExists(host, address)) {
    throw new VmhookError(`vfio: ${address} is gone from the PCI bus; run echo 1 > /sys/bus/pci/rescan, then vmhook recover`);
  }
  if (pciDriver(host, address) === VFIO_DRIVER) host.write(`${PCI_DRIVERS}/${VFIO_DRIVER}/unbind`, address);
  // An empty write clears driver_override.
  host.write(pciPath(address, "driver_override"), override ?? "\n");
  if (driver === null || pciDriver(host, address) === driver) return;
  if (!pciDriverRegistered(host, driver)) {
    // A record without moduleReloaded (an older journal): as before, a later undo reloads the module.
    if (record.moduleReloaded !== false) {
      ctx.log.info(`vfio: ${address} waits for driver ${driver}, whose module is loaded again later`);
      return;
    }
    // Unloaded by someone else and reloaded by no later undo: returning would drop the record, leaving the device on no driver.
    throw new VmhookError(`vfio: ${address} cannot go back to ${driver}: that driver is no longer registered (its module was unloaded); load it (modprobe), then run vmhook recover`);
  }
  if (pciDriver(host, address) === undefined) host.write("/sys/bus/pci/drivers_probe", address);
  try {
    // The probe did not take it: ask the recorded driver directly (the kernel refuses with ENODEV when the device does not answer).
    if (pciDriver(host, address) === undefined) host.write(`${PCI_DRIVERS}/${driver}/bind`, address);
    ctx.waitFor(`${address} is bound to ${driver}`, () => pciDriver(host, address) === driver, { timeoutMs });
  } catch {
    throw didNotComeBack(host, address, driver);
  }
}

/** A module unloaded at prepare: load it again; its driver's devices must come back. */
export function loadModule(ctx: BaseContext, record: UndoRecord): void {
  const module = checkedDriver(record.module);
  if (!module) return;
  if (!moduleLoaded(ctx.host, module)) ctx.run("modprobe", [module], { timeoutMs: 60_000 });
  const devices = (record.devices as { address: string; driver: string }[] | undefined) ?? [];
  for (const device of devices) {
    const address = checkedAddress(device);
    const driver = checkedDriver(device.driver)!;
    // Still on vfio-pci: its own undo failed and says so; do not report it twice.
    if (pciDriver(ctx.host, address) === VFIO_DRIVER) continue;
    if (pciDriver(ctx.host, address) === undefined) ctx.host.write("/sys/bus/pci/drivers_probe", address);
    try {
      ctx.waitFor(`${address} is bound to ${driver}`, () => pciDriver(ctx.host, address) === driver, { timeoutMs: Number(record.bindTimeoutMs) || 10_000 });
    } catch {
      throw didNotComeBack(ctx.host, address, driver);
    }
  }
}

/**
 * Modules vmhook loaded: unload them, users first; one that something else
 * uses now stays (e.g. vfio-pci while another VM's device is on it, or
 * vfio_iommu_type1 while another VM's QEMU holds a container: a use that only
 * refcnt shows, not holders/).
 */
export function unloadModules(ctx: BaseContext, record: UndoRecord): void {
  let remaining = ((record.modules as string[] | undefined) ?? []).map((module) => checkedDriver(module)!).filter((module) => moduleLoaded(ctx.host, module));
  const stillUsed = (module: string) =>
    Number(ctx.host.readTrimmed(`/sys/module/${module}/refcnt`) ?? 0) > 0 ||
    (module === "vfio_pci" && ctx.host.list(`${PCI_DRIVERS}/${VFIO_DRIVER}`).some((entry) => PATTERNS.pciAddress.test(entry)));
  // One rmmod for all, users first: each removal frees what it used, so the
  // usual chain (vfio_pci, vfio_pci_core, vfio_iommu_type1, vfio) costs one
  // process. Then each round unloads what nothing uses any more (busybox's
  // rmmod stops at its first failure). A module taken meanwhile (a VM
  // starting) just stays loaded.
  const unused = remaining.filter((module) => !(module === "vfio_pci" && stillUsed(module)));
  if (unused.length > 1) ctx.run("rmmod", usersFirst(ctx.host, unused), { allowFailure: true });
  remaining = remaining.filter((module) => moduleLoaded(ctx.host, module));
  for (let unloaded = true; unloaded && remaining.length > 0; ) {
    for (const module of remaining.filter((module) => !stillUsed(module))) ctx.run("rmmod", [module], { allowFailure: true });
    const before = remaining.length;
    remaining = remaining.filter((module) => moduleLoaded(ctx.host, module));
    unloaded = remaining.length < before;
  }
  if (remaining.length > 0) ctx.log.info(`vfio: leaving module(s) ${remaining.join(", ")} loaded: still in use`);
}

/** The modules ordered so that each comes after every module of the list that uses it. */
function usersFirst(host: Host, modules: string[]): string[] {
  const order: string[] = [];
  const rest = [...modules];
  while (rest.length > 0) {
    const next = rest.findIndex((module) => host.list(`/sys/module/${module}/holders`).every((holder) => !rest.includes(holder) || holder === module));
    order.push(...rest.splice(next === -1 ? 0 : next, 1));
  }
  return order;
}
