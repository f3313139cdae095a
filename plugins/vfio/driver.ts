// The host driver lets go and vfio-pci takes over: modules unload (users
// first), vfio-pci loads, each device moves with driver_override (taken by
// vfio-pci as it registers, or by drivers_probe); extra modules load last.
// Each undo puts one thing back and checks that it is back.
import { runThroughDriver, writeThroughDriver } from "../../lib/bounded-write.ts";
import { iommuBackendState, kernelRelease, moduleClosure, moduleMissing, normalModule, vfioIdsConfig, type VfioIdsSource } from "../../lib/kernel-modules.ts";
import { claimOriginal, type Claim } from "../../lib/claims.ts";
import { VmhookError } from "../../lib/errors.ts";
import { readForMessage, type ExecResult, type Host } from "../../lib/host.ts";
import { othersRecords } from "../../lib/journal.ts";
import { describeMdevsOn, mdevPath } from "../../lib/mdevs.ts";
import { recoverCommandLine } from "../../lib/metadata-text.ts";
import { checkSriovOrigin, driverModule, goneFromBus, iommuGroupMembers, listPciDevices, moduleDrivers, onVfioDriver, PCI_DRIVERS, pciDriver, pciDriverRegistered, pciExists, pciIommuGroup, pciPath, pciPowerControl, sriovOrigin, type PciDevice, type SriovOrigin } from "../../lib/pci.ts";
import { defineAction, type ApplyContext, type BaseContext, type PlanContext, type Step, type UndoRecord } from "../../lib/plugin.ts";
import { clearForWrite, listStuckWrites, moduleSubject, refuseIfStuck, SOUND_NODE, soundCardHolders, stuckWriteFor, StuckWriteError } from "../../lib/stuck-writes.ts";
import { PATTERNS } from "../../lib/validate.ts";
import { pciDeviceLabels } from "../../lib/diagnostics/pciids.ts";
import type { VfioConfig, VfioSettings } from "./config.ts";
import { describeHolders, isWatched, moduleLoaded, processesHolding, targetWords, VFIO_DRIVER, type HostNeeds, type Survey, type Watched } from "./survey.ts";
import { systemdRuns, unitActive } from "../../lib/systemd.ts";
import { activeOrStarting, unitProcesses } from "./units.ts";
import { nameHomeDriver, restoreOverride, returnToDriver } from "./return-path.ts";
import { missingAdvice, needsVendorReset, setResetMethodStep, VENDOR_RESET_FIX, VENDOR_RESET_MODULE, vendorResetState } from "./vendor-reset.ts";

/**
 * Helper services that hold the driver's modules or the GPU (nvidia-persistenced
 * opens every card): stopped when modules are unloaded, or when one holds the GPU
 * (the host keeps another NVIDIA card, or unload-modules="none").
 */
export function helperServices(ctx: BaseContext, found: Survey, settings: VfioSettings): string[] {
  if (!systemdRuns(ctx.host)) return [];
  const holders = new Set(found.holders.map((holder) => String(holder.pid)));
  const needed = (unit: string) => found.unload.length > 0 || (holders.size > 0 && unitProcesses(ctx, unit).some((pid) => holders.has(pid)));
  return settings.helperServices.filter((unit) => needed(unit) && activeOrStarting(ctx, unit));
}

/** Helper services already stopped for another VM that this handover needs stopped too (it unloads modules). */
export function stoppedHelpers(ctx: BaseContext, found: Survey, settings: VfioSettings, stopping: string[]): string[] {
  if (!systemdRuns(ctx.host) || found.unload.length === 0) return [];
  return settings.helperServices.filter((unit) => !stopping.includes(unit) && !unitActive(ctx, unit));
}

/**
 * vfio-pci loads, in the background: modprobe runs while the consoles and the
 * host's drivers let go of the devices, which the moves wait for. Not at all
 * when no device goes to it (each is on a VFIO driver already, or goes to a
 * variant: variantLoadSteps).
 */
export function loadVfioSteps(ctx: PlanContext<VfioConfig>, found: Survey, settings: VfioSettings): Step[] {
  if (!found.devices.some((device) => device.target?.driver === VFIO_DRIVER)) return [];
  // What modprobe loads is read (modules.dep) only when vfio-pci is to load.
  const step: Step<LoadRecord> | undefined = pciDriverRegistered(ctx.host, VFIO_DRIVER) ? undefined : { ...loadModulesStep(VFIO_DRIVER, settings.bindTimeoutSeconds * 1000, ctx.host), background: true };
  const load = step && refusedIfMissing(ctx.host, vfioLoadStep(ctx.host, step, found.devices.map((device) => device.address)), (release) => `install the modules of kernel ${release}, or boot a kernel built with CONFIG_VFIO_PCI`);
  if (load?.refused) return [load];
  const noBackend = noIommuBackend(ctx.host, step?.record.modules ?? []);
  if (noBackend) {
    const refused = { reason: noBackend, remedies: ["QEMU would fail to open the device (No available IOMMU models) once the display had let go, so the start is refused before anything changes"] };
    return [{ ...(step ?? { ...keepLoadedStep(VFIO_DRIVER), description: `use module ${VFIO_DRIVER} (loaded)` }), refused }];
  }
  return load ? [load] : keepLoadedSteps(ctx, VFIO_DRIVER);
}

/**
 * In `vmhook plan`, its description says what the host's ids= for vfio-pci
 * would have taken (loadModules sets them aside): read there only, a run
 * does not need them.
 */
function vfioLoadStep(host: Host, step: Step<LoadRecord>, handed: string[]): Step<LoadRecord> {
  return { ...step, planNote: () => vfioIdsNote(host, handed) };
}

function vfioIdsNote(host: Host, handed: string[]): string {
  const configured = vfioIdsConfig(host);
  if (configured.length === 0) return "";
  const ids = new Set(configured.flatMap((source) => source.ids));
  const taken = listPciDevices(host).filter((device) => device.driver === undefined && !handed.includes(device.address) && ids.has(pciId(device)));
  const would = taken.length > 0 ? `, which would take ${taken.map((device) => `${device.address} (${pciId(device)}, no driver)`).join(", ")} too` : "";
  return ` (with ids= empty: the host binds ${describeVfioIds(configured)} to vfio-pci${would})`;
}

/** "1002:744c (/etc/modprobe.d/vfio.conf), 10de:2204 (the kernel command line)" */
export const describeVfioIds = (configured: VfioIdsSource[]) => configured.map((source) => `${source.ids.join(", ")} (${source.source})`).join(", ");

/** A device's "vendor:device" as ids= lists it. */
export const pciId = (device: Pick<PciDevice, "vendor" | "device">) => `${device.vendor.replace(/^0x/, "")}:${device.device.replace(/^0x/, "")}`.toLowerCase();

/**
 * Why vfio-pci would leave QEMU no IOMMU backend: none is loaded (or built
 * in), none is among what modprobe vfio-pci loads (`loads`), and the
 * kernel's module tree has none either (iommuBackendState, as vmhook doctor
 * judges it). undefined when one is there.
 */
function noIommuBackend(host: Host, loads: string[]): string | undefined {
  if (iommuBackendState(host, loads) !== "missing") return undefined;
  const release = kernelRelease(host);
  return `vfio: no VFIO IOMMU backend for kernel ${release}: vfio_iommu_type1 (and iommufd) is neither loaded nor in this kernel's ${moduleTree(release)}, so QEMU could not map the VM's memory for the device; install the modules of kernel ${release} (its vfio_iommu_type1.ko), or boot a kernel built with CONFIG_VFIO_IOMMU_TYPE1`;
}

/**
 * A module's modprobe runs once the display has let go (vfio-pci's, and
 * load-modules' after the devices moved): one that is not in the running
 * kernel's module tree is refused now, not found then. Dependencies to load
 * came from its modules.dep line, so only a step without any looks further.
 */
function refusedIfMissing(host: Host, step: Step, remedy: (release: string) => string): Step {
  const module = String(step.record.module);
  if ((step.record.modules as string[]).length > 1 || !moduleMissing(host, module)) return step;
  const release = kernelRelease(host);
  return {
    ...step,
    refused: {
      reason: `vfio: module ${module} is not in this kernel's ${moduleTree(release)}; ${remedy(release)}`,
      remedies: [`modprobe ${module} would fail once the display had let go, so the start is refused before anything changes`],
    },
  };
}

const moduleTree = (release: string) => `modules (/lib/modules/${release}: modules.dep, modules.builtin)`;

/** Why prepare refuses part of an explicit unload-modules list, and the fix: a refused step in the plan, a failing check in vmhook doctor. */
export interface UnloadRefusal {
  /** The same for the refused step and doctor's finding (Refusal.key, Finding.refusal): plan shows the refusal once. */
  key: string;
  modules: string[];
  reason: string;
  fix: string;
}

/**
 * What prepare refuses of an explicit unload-modules list, before anything
 * changes. A name neither loaded nor in the running kernel's module tree is
 * no module at all here: a typo (nvidia_drn) that would leave the module meant
 * loaded (one that is merely not loaded is skipped). Loaded modules that
 * devices the host keeps need (`hostNeeds`, hostNeedsOf): amdgpu, i915, xe,
 * radeon and nouveau drive every card of their make, so unloading one for the
 * VM's card would unbind the host's too, or fail while its display uses it.
 */
export function unloadRefusals(host: Host, config: VfioConfig, hostNeeds: HostNeeds): UnloadRefusal[] {
  if (config.unloadModules === "auto") return [];
  const listed = config.unloadModules;
  const release = kernelRelease(host);
  const unknown = listed
    .filter((module) => !moduleLoaded(host, normalModule(module)) && moduleMissing(host, module))
    .map((module) => ({
      key: unloadRefusalKey([module]),
      modules: [module],
      reason: `<vmhook:vfio> unload-modules names ${module}, which is neither loaded nor in this kernel's ${moduleTree(release)}`,
      fix: `check its spelling (lsmod lists the loaded modules), or, for an out-of-tree (DKMS) module not built for kernel ${release}, build it or remove it from unload-modules`,
    }));
  const { modules, devices } = hostNeeds;
  if (modules.length === 0) return unknown;
  const rest = listed.filter((module) => !modules.includes(normalModule(module)));
  const kept = pciDeviceLabels(host, devices).map((label, index) => `${label} on driver ${devices[index]!.driver}`);
  const [needs, those] = kept.length === 1 ? ["a device the host keeps needs", "that device, and any display on it,"] : ["devices the host keeps need", "those devices, and any display on them,"];
  const named = modules.join(", ");
  return [
    ...unknown,
    {
      key: unloadRefusalKey(modules),
      modules,
      reason: `<vmhook:vfio> unload-modules names ${named}, which ${needs}: ${kept.join(", ")}; unloading ${modules.length === 1 ? "it" : "them"} would take ${those} from the host`,
      fix: `remove ${named} from unload-modules (unload-modules="${rest.join(",") || "none"}"): unbinding alone hands the VM's devices over, which is all amdgpu, i915, xe, nouveau and radeon need`,
    },
  ];
}

const unloadRefusalKey = (modules: string[]) => `unload-modules:${modules.join(",")}`;

/** One refused unload step per refusal: prepare stops before any step acts. */
function refusedUnloadSteps(ctx: PlanContext<VfioConfig>, found: Survey): Step[] {
  return unloadRefusals(ctx.host, ctx.config, found.hostNeeds).map(({ key, modules, reason, fix }) => {
    const record: UnloadRecord = { action: "unload-module", module: modules[0]!, devices: [], bindTimeoutMs: 0, watched: { ...found.watched } };
    return { action: "unload-module", record, description: `unload module${modules.length === 1 ? "" : "s"} ${modules.join(", ")}`, refused: { reason: `vfio: ${reason}; ${fix}`, remedies: [], key } };
  });
}

/** The handover, as steps: modules go (users first), each device moves (once vfio-pci is there), extra modules load. */
export function takeOverSteps(ctx: PlanContext<VfioConfig>, found: Survey, settings: VfioSettings): Step[] {
  const bindTimeoutMs = settings.bindTimeoutSeconds * 1000;
  const reloaded = new Set<string>();
  const steps: Step[] = refusedUnloadSteps(ctx, found);

  for (const module of found.unload) {
    // After reloading the module, these devices must be back on its drivers.
    const devices = found.devices
      .filter((device) => device.driver && driverModule(ctx.host, device.driver) === module)
      .map((device) => ({ address: device.address, driver: device.driver!, override: device.override ?? null }));
    for (const device of devices) reloaded.add(device.address);
    const record: UnloadRecord = { action: "unload-module", module, devices, bindTimeoutMs, watched: { ...found.watched } };
    steps.push({ action: "unload-module", record, description: `unload module ${module}` });
  }

  steps.push(...vendorResetSteps(ctx, found, bindTimeoutMs));
  steps.push(...variantLoadSteps(ctx, found, bindTimeoutMs));

  for (const device of found.devices) {
    const target = device.target;
    if (target === undefined) {
      ctx.log.info(`vfio: ${device.address} is already on ${device.driver}, a VFIO driver: left on it`);
      continue;
    }
    // No driver now may only mean that another VM keeps its driver's module unloaded: then its home is the driver it waits for.
    const home = device.driver === undefined ? waitingHome(ctx, device.address) : undefined;
    const record: BindRecord = {
      action: "bind-vfio",
      address: device.address,
      group: device.iommuGroup!,
      driver: device.driver ?? home?.driver ?? null,
      // A device waiting for its driver has that driver in driver_override (park): its own is the one its entry kept.
      override: (home?.override !== undefined ? home.override : device.override) ?? null,
      powerControl: pciPowerControl(ctx.host, device.address) ?? null,
      moduleReloaded: reloaded.has(device.address),
      homeClaim: home?.claim ?? null,
      sriov: sriovOrigin(ctx.host, device.address),
      target: target.driver ?? null,
      targetModule: target.module,
      bindTimeoutMs,
    };
    const from = device.driver ?? (home ? `no driver; its driver ${home.driver} waits for ${home.claim}` : "no driver");
    const { driver, why } = targetWords(target);
    steps.push({ action: "bind-vfio", record, description: `bind ${device.address} to ${driver} (from ${from}${why ? `; ${why}` : ""})` });
  }

  // A module an earlier step loads or keeps (vfio-pci, vendor-reset) is not planned again: the second
  // record of its claim, undone first, would unload it before the devices are home.
  const handled = new Set([loadedClaim(VFIO_DRIVER), ...steps.filter((step) => step.action === "load-modules").map((step) => String(step.record.claim))]);
  for (const module of ctx.config.loadModules) {
    if (handled.has(loadedClaim(module))) continue;
    handled.add(loadedClaim(module));
    if (moduleLoaded(ctx.host, normalModule(module))) steps.push(...keepLoadedSteps(ctx, module));
    else steps.push(refusedIfMissing(ctx.host, loadModulesStep(module, bindTimeoutMs, ctx.host), (release) => `install ${module} for kernel ${release} (its DKMS package builds it for each kernel), or remove it from load-modules`));
  }
  return steps;
}

/**
 * The modules of the vfio-pci variants devices go to (xe_vfio_pci): loaded
 * before the moves, which need their driver's name for driver_override (a
 * module not loaded does not tell it); kept, when another VM loaded one.
 */
function variantLoadSteps(ctx: PlanContext<VfioConfig>, found: Survey, bindTimeoutMs: number): Step[] {
  const variants = new Map(found.devices.flatMap((device) => (device.target && device.target.module !== "vfio_pci" ? [[device.target.module, device.target]] : [])));
  return [...variants.values()].flatMap((target) =>
    moduleLoaded(ctx.host, target.module) || (target.driver !== undefined && pciDriverRegistered(ctx.host, target.driver))
      ? keepLoadedSteps(ctx, target.module)
      : [refusedIfMissing(ctx.host, loadModulesStep(target.module, bindTimeoutMs, ctx.host), (release) => `install it for kernel ${release}, or have vfio-pci take the device: <driver model='vfio-pci'/> in its <hostdev>`)],
  );
}

/**
 * AMD GPUs that reset only through vendor-reset: the module loads when it is
 * installed but not loaded, then each one's reset_method becomes
 * device_specific (both undone at release). Without the module: a warning.
 */
function vendorResetSteps(ctx: BaseContext, found: Survey, bindTimeoutMs: number): Step[] {
  const needing = found.devices.filter((device) => !device.onVfio && needsVendorReset(device));
  if (needing.length === 0) return [];
  const state = vendorResetState(ctx.host, () => ctx.run("modinfo", ["-n", VENDOR_RESET_MODULE], { allowFailure: true, timeoutMs: 5_000 }).status === 0);
  if (state === "missing") {
    for (const device of needing) ctx.log.warn(`vfio: ${missingAdvice(device.address)}; ${VENDOR_RESET_FIX}`);
    return [];
  }
  const load = state === "installed" ? [loadModulesStep(VENDOR_RESET_MODULE, bindTimeoutMs, ctx.host)] : keepLoadedSteps(ctx, VENDOR_RESET_MODULE);
  return [...load, ...needing.flatMap((device) => setResetMethodStep(ctx.host, device.address) ?? [])];
}

interface UnloadRecord extends UndoRecord {
  action: "unload-module";
  module: string;
  /** This VM's devices on the module's drivers: they must be back once it is loaded again. */
  devices: Waiting[];
  bindTimeoutMs: number;
  /** Whose users to name when the module will not go. */
  watched: Watched;
}

/**
 * rmmod or modprobe of modules (a module's init or exit may block in the
 * kernel), one of whose driver drives `devices`, runs its remove() or
 * probe() for each of them: in a helper noted while it runs
 * (lib/bounded-write.ts). Its bound is the one these commands always had
 * (a driver's probe may load firmware for seconds: NVIDIA's GSP), or
 * bindTimeoutSeconds when that is longer.
 */
function moduleChange(ctx: BaseContext, command: "rmmod" | "modprobe", modules: string[], devices: { address: string; driver: string }[], bindTimeoutMs: number, loads?: string[], options?: string[]): Promise<ExecResult> {
  const usual = command === "rmmod" ? 30_000 : 60_000;
  const bound = devices.length > 0 ? { timeoutMs: Math.max(usual, bindTimeoutMs), setting: "plugins.vfio.bindTimeoutSeconds" } : { timeoutMs: usual };
  return runThroughDriver(ctx, { command, modules, devices, ...bound, ...(loads ? { loads } : {}), ...(options ? { options } : {}) });
}

/**
 * vfio-pci's options as vmhook loads it: ids= empty, whatever the host's
 * modprobe.d or kernel command line says (the last value wins), so that its
 * load binds only the devices whose driver_override names it: not a device
 * of those ids that the host leaves without a driver (a second identical
 * GPU), which nothing would give back.
 */
export const VFIO_LOAD_OPTIONS = ["ids="];

/** modprobe through moduleChange, or an error naming the module and modprobe's first line. */
async function modprobe(ctx: BaseContext, module: string, devices: { address: string; driver: string }[], bindTimeoutMs: number, loads?: string[]): Promise<void> {
  const result = await moduleChange(ctx, "modprobe", [module], devices, bindTimeoutMs, loads, module === VFIO_DRIVER ? VFIO_LOAD_OPTIONS : undefined);
  if (result.error || result.status !== 0) throw new VmhookError(`modprobe ${module} failed: ${(result.error || result.stderr).trim().split("\n")[0] || `exit status ${result.status ?? result.signal}`}`);
}

/** Claimed before it goes: a device of another VM that needs it back waits for the last holder. */
async function unloadModule(record: UnloadRecord, ctx: ApplyContext<unknown>): Promise<void> {
  const { module } = record;
  // rmmod runs remove() for each device still bound: one blocked there already, or an earlier rmmod of it, would block rmmod too.
  // Refused so, nothing changed: no claim, and no entry whose undo would wait for that helper too.
  try {
    refuseIfStuck(ctx.host, [moduleSubject(module), ...record.devices.map((device) => device.address)]);
  } catch (error) {
    ctx.nothingToUndo();
    throw error;
  }
  ctx.claims.take(moduleClaim(module), { drivers: moduleDrivers(ctx.host, module) });
  const result = await moduleChange(ctx, "rmmod", [module], record.devices, record.bindTimeoutMs);
  if (moduleLoaded(ctx.host, module)) {
    const users = [...ctx.host.list(`/sys/module/${module}/holders`).map((holder) => `module ${holder}`), describeHolders(processesHolding(ctx.host, isWatched(record.watched)))].filter(Boolean);
    throw new VmhookError(
      `vfio: cannot unload module ${module}: ${(result.error || result.stderr || result.stdout).trim().split("\n")[0] || "still loaded"}; in use by ${users.join(", ") || `something (refcnt ${readForMessage(ctx.host, `/sys/module/${module}/refcnt`, "?")})`}; stop what uses the GPU, or leave the module loaded (unload-modules="none")`,
    );
  }
}

/** The ledger key of a module vmhook keeps unloaded (lib/claims.ts). */
const moduleClaim = (module: string) => `module:${module}`;

/**
 * The driver a device without one waits for in a module claim (released from
 * a VM while another VM keeps the module unloaded), that claim, and the
 * driver_override its entry keeps (Waiting.override); undefined when it waits
 * nowhere (it had no driver before vmhook).
 */
function waitingHome(ctx: BaseContext, address: string): { driver: string; claim: string; override?: string | null } | undefined {
  for (const [claim, { waiting }] of Object.entries(ctx.claims.list("module:"))) {
    for (const item of Array.isArray(waiting) ? waiting : []) {
      const entry = (item ?? {}) as UndoRecord;
      if (entry.address !== address) continue;
      const driver = checkedDriver(entry.driver);
      if (driver !== null) return { driver, claim, ...("override" in entry ? { override: checkedOverride(entry.override) } : {}) };
    }
  }
  return undefined;
}

/**
 * A device that goes back to `driver` once a module claim's last holder
 * loads the module again, as that claim keeps it. `override`: its
 * driver_override before vmhook (null: none), put back once it is home;
 * absent in an entry of an earlier vmhook, which left the device under it.
 */
type Waiting = {
  address: string;
  driver: string;
  override?: string | null;
};

/** The devices waiting in `claim`, checked. */
function waitingIn(ctx: BaseContext, claim: string): Waiting[] {
  return (ctx.claims.get(claim)?.waiting ?? []).map((item) => {
    const entry = (item ?? {}) as UndoRecord;
    return { address: checkedAddress(entry), driver: checkedDriver(entry.driver)!, ...("override" in entry ? { override: checkedOverride(entry.override) } : {}) };
  });
}

/**
 * A device waits in `claim` for its driver, without one until the module is
 * loaded again: driver_override names the driver meanwhile, as on every
 * probe of the return path (nameHomeDriver), so that no other driver whose
 * ids match takes it first; the entry keeps the override to put back once
 * it is home. A device whose own override is not known (a journal of an
 * earlier vmhook) waits under the one it has. One already waiting keeps its
 * entry: the first one made, from its bind record. One whose unbind from
 * vfio-pci is still blocked (its bind's undo failed on it) is not named: that
 * write holds the device's lock, which driver_override waits for; the retry
 * of that undo (rebindDevice) names it.
 */
function park(ctx: BaseContext, claim: string, device: Waiting): void {
  const { host } = ctx;
  if (!waitingIn(ctx, claim).some((entry) => entry.address === device.address)) ctx.claims.addWaiting(claim, device);
  if (device.override !== undefined && pciExists(host, device.address) && !stuckWriteFor(host, device.address)?.running) nameHomeDriver(host, device.address, device.driver);
}

/** The claim of the unloaded module that registers `driver`, if any VM holds one. */
export function claimProviding(ctx: BaseContext, driver: string): string | undefined {
  // Every claim is checked, not only those before the match: a malformed ledger is refused whole, as on reading.
  const claims = Object.entries(ctx.claims.list("module:")).map(([resource, claim]) => ({ resource, drivers: originalNames(resource, claim, "drivers") }));
  return claims.find(({ drivers }) => drivers.includes(driver))?.resource;
}

/**
 * What a module claim's first taker recorded: the drivers the module
 * registered ("module:…"), or the modules modprobe loaded ("loaded:…", null
 * for one a VM joined). Of any other shape the ledger is refused.
 */
function originalNames(resource: string, claim: Claim, field: "drivers" | "modules"): string[] {
  const expected = field === "drivers" ? `{"drivers": [driver names]}` : `null or {"modules": [module names]}`;
  return claimOriginal(resource, claim, expected, (original) => {
    if (original === null && field === "modules") return [];
    const names = (original as Record<string, unknown> | null)?.[field];
    return Array.isArray(names) && names.every((name) => typeof name === "string" && PATTERNS.moduleName.test(name)) ? (names as string[]) : undefined;
  });
}

const loadedModules = (host: Host) => host.read("/proc/modules").split("\n").map((line) => line.split(" ")[0]!).filter(Boolean);

interface LoadRecord extends UndoRecord {
  action: "load-modules";
  /** What modprobe is asked for; "" when this VM only shares modules loaded for another VM. */
  module: string;
  /** What modprobe loaded (the module and the dependencies it pulled in). */
  modules: string[];
  /** The ledger key the VMs that use these modules share. */
  claim: string;
  bindTimeoutMs: number;
}

/** The ledger key of a module vmhook loaded and VMs share (lib/claims.ts). */
const loadedClaim = (module: string) => `loaded:${normalModule(module)}`;

/**
 * What `modprobe module` may load that is not loaded yet (lib/kernel-modules.ts:
 * the module, its modules.dep dependencies and their soft dependencies), as
 * /proc/modules names them.
 */
function modulesToLoad(host: Host, module: string): string[] {
  return moduleClosure(host, module).filter((each) => !moduleLoaded(host, each));
}

function loadModulesStep(module: string, bindTimeoutMs: number, host: Host): Step<LoadRecord> {
  // Journaled before modprobe runs: all it may load, so that a hook killed
  // meanwhile leaves a journal that unloads all of it (what is not loaded is
  // skipped); after modprobe, what it did load.
  const record: LoadRecord = { action: "load-modules", module, modules: modulesToLoad(host, module), claim: loadedClaim(module), bindTimeoutMs };
  return { action: "load-modules", record, description: `load module ${module}` };
}

/** A module vmhook loaded for another VM: this VM shares it, so it stays until the last of them is released. */
function keepLoadedSteps(ctx: BaseContext, module: string): Step<LoadRecord>[] {
  const claim = loadedClaim(module);
  if (!ctx.claims.get(claim)) return []; // loaded by someone else than vmhook: theirs to keep
  return [keepLoadedStep(module)];
}

const keepLoadedStep = (module: string): Step<LoadRecord> => ({
  action: "load-modules",
  record: { action: "load-modules", module: "", modules: [], claim: loadedClaim(module), bindTimeoutMs: 0 },
  description: `keep module ${module} loaded (loaded for another VM)`,
});

/**
 * modprobe, journaling exactly the modules it loaded, claimed in the ledger:
 * a VM that finds the module loaded for another one joins the claim, and the
 * last VM released unloads what the first one loaded.
 */
async function loadModules(record: LoadRecord, ctx: ApplyContext<unknown>): Promise<void> {
  if (record.module === "") {
    ctx.claims.take(record.claim, null);
    return;
  }
  // An earlier modprobe or rmmod of a module it may load, still blocked, refuses it before it starts: nothing
  // changed, so no claim and no entry to undo (whose undo would wait for that other helper too).
  try {
    for (const module of [record.module, ...record.modules]) clearForWrite(ctx.host, moduleSubject(module));
  } catch (error) {
    ctx.nothingToUndo();
    throw error;
  }
  // Claimed before modprobe runs, with all it may load, as the record is journaled: a hook killed
  // meanwhile leaves the modules to the last VM that uses them, not to a VM that finds them loaded.
  const first = ctx.claims.take(record.claim, { modules: record.modules });
  // What appears in /proc/modules meanwhile is this modprobe's: the runner never runs two loads at once.
  const before = new Set(loadedModules(ctx.host));
  let stillLoading = false;
  try {
    // vfio-pci's probe() runs in it for each device whose override names it (and any module's init): bounded and noted as a driver write.
    await modprobe(ctx, record.module, [], record.bindTimeoutMs, record.modules);
    if (record.module === VFIO_DRIVER) {
      ctx.waitFor("the vfio-pci driver is registered", () => pciDriverRegistered(ctx.host, VFIO_DRIVER), { timeoutMs: record.bindTimeoutMs });
    }
  } catch (error) {
    stillLoading = error instanceof StuckWriteError;
    throw error;
  } finally {
    // A modprobe left blocked may load the rest yet: the record keeps all it may load.
    const loaded = loadedModules(ctx.host).filter((name) => !before.has(name));
    const modules = stillLoading ? [...new Set([...record.modules, ...loaded])] : loaded;
    ctx.update({ ...record, modules });
    if (first) ctx.claims.setOriginal(record.claim, { modules });
  }
}

interface BindRecord extends UndoRecord {
  action: "bind-vfio";
  address: string;
  group: string;
  /** The driver to return to; null: the device had none. */
  driver: string | null;
  /** driver_override before vmhook; null: none. */
  override: string | null;
  /** power/control before vmhook; null: unreadable (or a journal from before it), left as the kernel leaves it. */
  powerControl: "on" | "auto" | null;
  /** The driver's module is unloaded here and loaded again by a later undo, which brings the device back. */
  moduleReloaded: boolean;
  /**
   * The module claim in whose waiting list `driver` was found: the device had
   * no driver at prepare only because another VM keeps that module unloaded.
   * This record carries it from then on (it leaves the waiting list); its undo
   * waits in the claim again while the module is unloaded, or binds the driver.
   * null: `driver` is the one the device was on.
   */
  homeClaim: string | null;
  /** For an SR-IOV virtual function: what creates it again should it vanish (no rescan does). */
  sriov: SriovOrigin | null;
  /** The VFIO driver it goes to (vfio-pci, a variant); null: the one targetModule registers, known once it is loaded. */
  target: string | null;
  targetModule: string;
  bindTimeoutMs: number;
}

/**
 * A device (or its IOMMU group) that another VM's journal moved to vfio-pci
 * goes to no second VM: libvirt would refuse the start with its own words,
 * and vfio hands a group to one VM. Refused before anything changes, naming
 * the VM; a journal that cannot be read refuses too (ctx.journals).
 */
export function refuseDevicesOfOtherVms(ctx: Pick<BaseContext, "host" | "domain" | "journals">, addresses: string[]): void {
  const held = othersRecords(ctx.journals(), ctx.domain.uuid, "vfio", (record) => (isBindRecord(record) ? checkBind(record) : undefined)).flatMap(({ domain, record }) => (record ? [{ vm: domain.name, ...record }] : []));
  const remedy = (vm: string) => `shut ${vm} down first, or, if it is not running, run ${recoverCommandLine(vm)} (it gives ${vm}'s devices back)`;
  for (const address of addresses) {
    const device = held.find((record) => record.address === address);
    if (device) throw new VmhookError(`vfio: ${address} is held by VM ${device.vm} (vmhook moved it to vfio-pci for it); a device goes to one VM at a time: ${remedy(device.vm)}`);
    const group = pciIommuGroup(ctx.host, address);
    const member = held.find((record) => record.group !== "" && record.group === group);
    if (member) throw new VmhookError(`vfio: ${address} is in IOMMU group ${group}, held by VM ${member.vm} (vmhook moved ${member.address} to vfio-pci for it); a group goes to one VM at a time: ${remedy(member.vm)}`);
  }
}

/**
 * A device that parents mdevs (GVT-g's iGPU, an NVIDIA card under a vGPU
 * manager before 17): its driver's remove() removes every one of them, and
 * blocks while a VM uses one, so it goes to no VM while it has any, nor does
 * a device of its IOMMU group (vfio takes the group whole). Refused before
 * anything changes, naming each and the VM vmhook made it for.
 */
export function refuseMdevParents(ctx: BaseContext, addresses: string[]): void {
  const remedy = `stop the VMs that use them (the release of a VM vmhook made one for removes it), remove the others (mdevctl stop --uuid UUID, or echo 1 > ${mdevPath("UUID", "remove")}), then start this VM again`;
  for (const address of addresses) {
    const mdevs = describeMdevsOn(ctx.host, ctx.journals, address);
    if (mdevs.length > 0) throw new VmhookError(`vfio: ${address} is the parent of mdev ${mdevs.join(", ")}: unbinding its driver removes its mdevs, and blocks while a VM uses one; ${remedy}`);
  }
  // vfio takes an IOMMU group whole: a member that parents mdevs would have to leave its driver too, whichever device the domain names.
  for (const address of addresses) {
    const group = pciIommuGroup(ctx.host, address);
    for (const member of group === undefined ? [] : iommuGroupMembers(ctx.host, group)) {
      if (addresses.includes(member)) continue;
      const mdevs = describeMdevsOn(ctx.host, ctx.journals, member);
      if (mdevs.length === 0) continue;
      throw new VmhookError(
        `vfio: ${member} shares IOMMU group ${group} with ${address}, which goes to the VM, and is the parent of mdev ${mdevs.join(", ")}: vfio takes a group whole, and unbinding its driver removes its mdevs (and blocks while a VM uses one); give the VM a device of another IOMMU group, or stop the VMs that use the mdevs and remove them (mdevctl stop --uuid UUID), then add ${member} to devices=`,
      );
    }
  }
}

/** A write that runs `driver`'s code for the device (remove() or probe()), in a helper bounded by bindTimeoutSeconds (lib/bounded-write.ts); `waitsFor`: its sound card's nodes. */
function throughDriver(ctx: BaseContext, address: string, driver: string, file: string, timeoutMs: number, waitsFor?: string[]): Promise<void> {
  return writeThroughDriver(ctx, { device: address, driver, file, value: address, timeoutMs, setting: "plugins.vfio.bindTimeoutSeconds", waitsFor });
}

/** The device nodes of the sound cards a PCI device has (an HDMI audio function's): /dev/snd/controlC1, pcmC1D3p, ... */
function soundNodes(host: Host, address: string): string[] {
  return host.list(pciPath(address, "sound")).flatMap((card) => (/^card\d+$/.test(card) ? host.list(pciPath(address, `sound/${card}`)).map((name) => `/dev/snd/${name}`).filter((node) => SOUND_NODE.test(node)) : []));
}

/**
 * A sound card's remove() (snd_card_free) disconnects the card, then waits,
 * uninterruptibly, until every program has closed it: PipeWire and
 * PulseAudio close it at once, a program that keeps a node open holds the
 * unbind until it exits. An unbind that does not return names them, since
 * closing them, not a reboot, frees the card. The nodes are read before:
 * the disconnect removes them, and the holders' descriptors then end in
 * " (deleted)".
 */
async function unbindHostDriver(ctx: BaseContext, address: string, driver: string, timeoutMs: number): Promise<void> {
  const nodes = soundNodes(ctx.host, address);
  try {
    await throughDriver(ctx, address, driver, pciPath(address, "driver/unbind"), timeoutMs, nodes);
  } catch (error) {
    if (!(error instanceof StuckWriteError) || nodes.length === 0) throw error;
    let holders: string[];
    try {
      holders = soundCardHolders(ctx.host, nodes);
    } catch {
      throw error; // a process whose files cannot be read: the stuck write still says what happened
    }
    if (holders.length === 0) throw error;
    throw new StuckWriteError(`${error.message}; its sound card's remove() waits until every program has closed the card, and ${holders.join(", ")}: close it (or end it) and the unbind finishes`, error.lines);
  }
}

async function bindToVfio(record: BindRecord, ctx: ApplyContext<unknown>): Promise<void> {
  const { host } = ctx;
  const { address, group, bindTimeoutMs: timeoutMs } = record;
  refuseIfStuck(host, [address]);
  if (!pciExists(host, address)) {
    // Unplugged since the plan: nothing of it changed, so no record of it may block the VM's next start.
    ctx.nothingToUndo();
    throw new VmhookError(`vfio: ${goneFromBus(host, address, record.sriov)}, or take it out of the domain; then start the VM again (it left the bus after the plan: nothing of it was changed)`);
  }
  // A variant's module was loaded by an earlier step: its driver tells its name now.
  const target = record.target ?? moduleDrivers(host, record.targetModule)[0];
  if (target === undefined) {
    ctx.nothingToUndo();
    throw new VmhookError(`vfio: module ${record.targetModule}, the VFIO driver for ${address}, registers no PCI driver; have vfio-pci take the device instead: <driver model='vfio-pci'/> in its <hostdev>`);
  }
  if (record.target === null) ctx.update({ ...record, target });
  if (record.homeClaim !== null) {
    // Journaled with its home before this runs: from here on this VM's release brings it back, not the claim's last holder.
    ctx.claims.removeWaiting(record.homeClaim, (item) => (item as UndoRecord | null)?.address === address);
    ctx.log.info(`vfio: ${address} no longer waits for ${record.homeClaim}: ${ctx.domain.name}'s release brings it back to ${record.driver}`);
  }
  const driver = pciDriver(host, address);
  if (driver !== undefined) await unbindHostDriver(ctx, address, driver, timeoutMs);
  // The override once the device's own remove() has returned, never before:
  // vfio-pci, registering in the background, locks every device its
  // override names, and a remove() that never returned would hold modprobe
  // too. From here on no other driver can take the device, and vfio-pci
  // binds it as it registers; only a driver already registered needs the probe.
  host.write(pciPath(address, "driver_override"), target);
  await ctx.afterBackgroundSteps();
  if (pciDriver(host, address) !== target) await throughDriver(ctx, address, target, "/sys/bus/pci/drivers_probe", timeoutMs);
  ctx.waitFor(`${address} is bound to ${target}`, () => pciDriver(host, address) === target, { timeoutMs });
  ctx.waitFor(`/dev/vfio/${group} exists`, () => host.exists(`/dev/vfio/${group}`), { timeoutMs });
}

function checkedAddress(record: { [key: string]: unknown }): string {
  const address = String(record.address);
  if (!PATTERNS.pciAddress.test(address)) throw new VmhookError(`vfio: the journal names "${address}", which is not a PCI address`);
  return address;
}

/** A driver_override as journaled: null for none. */
function checkedOverride(value: unknown): string | null {
  const override = value === null || value === undefined ? null : String(value);
  if (override !== null && !PATTERNS.moduleName.test(override)) throw new VmhookError(`vfio: the journal names driver_override "${override}", which is not a driver name`);
  return override;
}

function checkedDriver(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== "string" || !PATTERNS.moduleName.test(value)) throw new VmhookError(`vfio: the journal names driver "${String(value)}", which is not a driver name`);
  return value;
}

/** Back from vfio-pci: unbind, reprobe (or bind the recorded driver) named in driver_override, verify, restore driver_override; or wait for the driver's module. */
async function rebindDevice(record: BindRecord, ctx: BaseContext): Promise<void> {
  const { host } = ctx;
  const { address, driver, override, bindTimeoutMs: timeoutMs } = record;
  // A write into the device still blocked in its driver holds the device's lock: a write now would block too.
  refuseIfStuck(host, [address]);
  if (!pciExists(host, address)) {
    throw new VmhookError(`vfio: ${goneFromBus(host, address, record.sriov)}, then run vmhook recover`);
  }
  // Off the VFIO driver it went to (vfio-pci, a variant), whichever it is on now.
  const current = pciDriver(host, address);
  if (current !== undefined && current !== driver && onVfioDriver(host, address, current)) await throughDriver(ctx, address, current, `${PCI_DRIVERS}/${current}/unbind`, timeoutMs);
  if (driver === null || pciDriver(host, address) === driver) {
    restoreOverride(ctx, address, override);
    return restorePowerControl(ctx, record);
  }
  if (!pciDriverRegistered(host, driver)) {
    // Its module is unloaded for a VM (this one or another): the last of them brings the device back with it.
    const claim = (record.homeClaim !== null && ctx.claims.get(record.homeClaim) ? record.homeClaim : undefined) ?? claimProviding(ctx, driver);
    if (claim) {
      park(ctx, claim, { address, driver, override });
      ctx.log.info(`vfio: ${address} waits for driver ${driver}: ${claim} is loaded again when the last VM that needs it unloaded is released`);
      // A driver that manages runtime PM may change power/control again as it probes the device then.
      return restorePowerControl(ctx, record);
    }
    // A record without moduleReloaded (a journal from before the claims ledger): a later undo reloads the module.
    // Its unload record does not keep driver_override, so the device waits under its own.
    if (record.moduleReloaded !== false) {
      restoreOverride(ctx, address, override);
      ctx.log.info(`vfio: ${address} waits for driver ${driver}, whose module is loaded again later`);
      return restorePowerControl(ctx, record);
    }
    // Unloaded by someone else and reloaded by no later undo: returning would drop the record, leaving the device on no driver.
    // Named for its driver meanwhile, the modprobe asked for gives it the device; recover puts driver_override back.
    nameHomeDriver(host, address, driver);
    throw new VmhookError(`vfio: ${address} cannot go back to ${driver}: that driver is no longer registered (its module was unloaded); load it (modprobe), then run vmhook recover`);
  }
  await returnToDriver(ctx, { address, driver, timeoutMs, override });
  await restorePowerControl(ctx, record);
}

/**
 * power/control as before the VM, once the device is home: vfio-pci forbids
 * runtime PM as it lets a device go (on: an idle laptop dGPU stays powered),
 * a driver that manages runtime PM allows it as it probes (auto: a user's
 * "on" against its runtime-PM hangs is gone), and a rescan enumerates the
 * device with on. "on" resumes the device through its driver: bounded.
 */
async function restorePowerControl(ctx: BaseContext, record: BindRecord): Promise<void> {
  const { address, powerControl } = record;
  if (powerControl === null || pciPowerControl(ctx.host, address) === powerControl) return;
  const driver = pciDriver(ctx.host, address) ?? "the PCI core (no driver)";
  await writeThroughDriver(ctx, { device: address, driver, file: pciPath(address, "power/control"), value: powerControl, timeoutMs: record.bindTimeoutMs, setting: "plugins.vfio.bindTimeoutSeconds" });
  ctx.log.info(`vfio: ${address}: power/control back to ${powerControl}, as before the VM (runtime PM ${powerControl === "auto" ? "allowed" : "forbidden"})`);
}

/**
 * A module unloaded at prepare: load it again once no other VM needs it
 * unloaded; then its driver's devices must come back, this VM's and those
 * of VMs released meanwhile (they wait in the claim).
 */
async function loadModule(record: UnloadRecord, ctx: BaseContext): Promise<void> {
  const { module, devices: ownDevices } = record;
  const claim = moduleClaim(module);
  const others = ctx.claims.others(claim);
  if (others.length > 0) {
    for (const device of ownDevices) park(ctx, claim, device);
    ctx.claims.drop(claim);
    ctx.log.info(`vfio: module ${module} stays unloaded: ${others.length} other VM(s) need it so`);
    return;
  }
  const waiting = waitingIn(ctx, claim);
  // This VM's own devices wait in the claim too once their own undo ran (their entry keeps driver_override, which a journal of an earlier vmhook did not).
  const returning = [...ownDevices.map((own) => waiting.find((device) => device.address === own.address) ?? own), ...waiting.filter((device) => !ownDevices.some((own) => own.address === device.address))];
  // A module whose rmmod is still blocked is loaded only in name: refused, as is a device held by a write into its driver.
  refuseIfStuck(ctx.host, [moduleSubject(module), ...returning.map((device) => device.address)]);
  if (!moduleLoaded(ctx.host, module)) await modprobe(ctx, module, returning, record.bindTimeoutMs);
  const own = new Set(ownDevices.map((device) => device.address));
  const unreturned: string[] = [];
  for (const { address, driver, override } of returning) {
    if (!pciExists(ctx.host, address)) continue;
    if (onVfioDriver(ctx.host, address, pciDriver(ctx.host, address))) {
      // This VM's own device: its own undo failed and says so; do not report it twice.
      if (own.has(address)) continue;
      // Another VM's now: it may leave the claim only for a journal that brings it back to its driver.
      const carrier = journalCarrying(ctx, address, driver);
      if (carrier) ctx.log.info(`vfio: ${address} is on vfio-pci for ${carrier}, whose release brings it back to ${driver}`);
      else unreturned.push(address);
      continue;
    }
    await returnToDriver(ctx, { address, driver, timeoutMs: record.bindTimeoutMs, ...(override !== undefined ? { override } : {}) });
  }
  if (unreturned.length > 0) {
    // The claim stays (with this record) holding only what is still owed: vmhook recover returns it once it has left vfio-pci.
    ctx.claims.removeWaiting(claim, (item) => !unreturned.includes(String((item as UndoRecord | null)?.address)));
    throw new VmhookError(
      `vfio: ${unreturned.join(", ")} ${unreturned.length === 1 ? "waits" : "wait"} for module ${module} but ${unreturned.length === 1 ? "is" : "are"} on vfio-pci, and no VM's journal brings ${unreturned.length === 1 ? "it" : "them"} back; once ${unreturned.length === 1 ? "it has" : "they have"} left vfio-pci (the VM using ${unreturned.length === 1 ? "it" : "them"} stopped, or virsh nodedev-reattach), run vmhook recover`,
    );
  }
  ctx.claims.drop(claim);
}

/** The domain whose journal holds the device's move to vfio-pci with `driver` as its home, if any. */
function journalCarrying(ctx: BaseContext, address: string, driver: string): string | undefined {
  const carries = (record: UndoRecord) => (record.action === "bind-vfio" || record.action === "rebind-device") && record.address === address && record.driver === driver;
  return ctx.journals().find((journal) => journal.entries.some((entry) => entry.plugin === "vfio" && carries(entry.undo)))?.domain.name;
}

/**
 * Modules vmhook loaded: unload them, users first; one that something else
 * uses now stays (e.g. vfio-pci while another VM's device is on it, or
 * vfio_iommu_type1 while another VM's QEMU holds a container: a use that only
 * refcnt shows, not holders/).
 */
async function unloadModules(record: LoadRecord, ctx: BaseContext): Promise<void> {
  // A modprobe of it still blocked may load more yet: the record stays until it has returned (a note of one that has, goes).
  if (record.module !== "") clearForWrite(ctx.host, moduleSubject(record.module));
  let modules = record.modules;
  const claim = record.claim === "" ? undefined : record.claim;
  if (claim) {
    const others = ctx.claims.others(claim);
    if (others.length > 0) {
      ctx.claims.drop(claim);
      ctx.log.info(`vfio: leaving module(s) ${modules.join(", ") || claim.slice("loaded:".length)} loaded: ${others.length} other VM(s) use them`);
      return;
    }
    const held = ctx.claims.get(claim);
    const claimed = held ? originalNames(claim, held, "modules") : [];
    modules = [...new Set([...modules, ...claimed])];
  }
  await unloadUnused(ctx, modules);
  if (claim) ctx.claims.drop(claim);
}

async function unloadUnused(ctx: BaseContext, modules: string[]): Promise<void> {
  // rmmod of a driver whose remove() is blocked would block as well (and vmhook with it): such a module stays.
  const stuckDrivers = new Set(listStuckWrites(ctx.host).flatMap((write) => (write.running ? [write.driver] : [])));
  const blocked = modules.filter((module) => moduleDrivers(ctx.host, module).some((driver) => stuckDrivers.has(driver)));
  let remaining = modules.filter((module) => !blocked.includes(module) && moduleLoaded(ctx.host, module));
  // vfio-pci or a variant with a device bound (another VM's, or one bound by hand): its rmmod would take the device away.
  const bindsDevices = (module: string) =>
    (module === "vfio_pci" || ctx.host.exists(`/sys/module/vfio_pci_core/holders/${module}`)) &&
    moduleDrivers(ctx.host, module).some((driver) => ctx.host.list(`${PCI_DRIVERS}/${driver}`).some((entry) => PATTERNS.pciAddress.test(entry)));
  const stillUsed = (module: string) => Number(ctx.host.readTrimmed(`/sys/module/${module}/refcnt`) ?? 0) > 0 || bindsDevices(module);
  // One rmmod for all, users first: each removal frees what it used, so the
  // usual chain (vfio_pci, vfio_pci_core, vfio_iommu_type1, vfio) costs one
  // process. Then each round unloads what nothing uses any more (busybox's
  // rmmod stops at its first failure). A module taken meanwhile (a VM
  // starting) just stays loaded. A module's exit that blocks leaves rmmod
  // behind, noted: the record stays for vmhook recover.
  const rmmod = (names: string[]) => moduleChange(ctx, "rmmod", names, [], 0);
  const unused = remaining.filter((module) => !bindsDevices(module));
  if (unused.length > 1) await rmmod(usersFirst(ctx.host, unused));
  remaining = remaining.filter((module) => moduleLoaded(ctx.host, module));
  for (let unloaded = true; unloaded && remaining.length > 0; ) {
    for (const module of remaining.filter((module) => !stillUsed(module))) await rmmod([module]);
    const before = remaining.length;
    remaining = remaining.filter((module) => moduleLoaded(ctx.host, module));
    unloaded = remaining.length < before;
  }
  if (remaining.length > 0) ctx.log.info(`vfio: leaving module(s) ${remaining.join(", ")} loaded: still in use`);
  // Not undone yet: the record stays for vmhook recover, once the driver has let go.
  const kept = blocked.filter((module) => moduleLoaded(ctx.host, module));
  if (kept.length > 0) throw new VmhookError(`vfio: module(s) ${kept.join(", ")} stay loaded: a write into their driver has not returned (vmhook status); once it has, vmhook recover unloads them`);
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

// ---- records from the journal, checked before any undo (vmhook 0.1 named them by their undo) ----

const timeout = (value: unknown) => (Number.isSafeInteger(value) && (value as number) > 0 ? (value as number) : 10_000);

function checkUnload(record: UndoRecord): UnloadRecord {
  if (record.action !== "unload-module" && record.action !== "load-module") throw new VmhookError(`vfio: not an unload-module record: ${record.action}`);
  const devices = Array.isArray(record.devices) ? record.devices : [];
  const watched = (record.watched ?? { files: [], framebuffers: false, nvidia: false }) as unknown as Watched;
  return {
    action: "unload-module",
    module: checkedDriver(record.module) ?? "",
    devices: devices.map((device) => {
      const entry = device as UndoRecord;
      // Absent in a journal of an earlier vmhook.
      return { address: checkedAddress(entry), driver: checkedDriver(entry.driver)!, ...("override" in entry ? { override: checkedOverride(entry.override) } : {}) };
    }),
    bindTimeoutMs: timeout(record.bindTimeoutMs),
    watched,
  };
}

function checkLoad(record: UndoRecord): LoadRecord {
  if (record.action !== "load-modules" && record.action !== "unload-modules") throw new VmhookError(`vfio: not a load-modules record: ${record.action}`);
  const claim = record.claim === undefined ? "" : String(record.claim);
  if (claim !== "" && !/^loaded:[a-z0-9_]{1,64}$/.test(claim)) throw new VmhookError(`vfio: the journal names claim ${JSON.stringify(record.claim)}, which is not a loaded-module claim`);
  const module = record.module === undefined || record.module === "" ? "" : checkedDriver(record.module)!;
  const modules = (Array.isArray(record.modules) ? record.modules : []).map((name) => checkedDriver(name)!);
  return { action: "load-modules", module, modules, claim, bindTimeoutMs: timeout(record.bindTimeoutMs) };
}

const isBindRecord = (record: UndoRecord) => record.action === "bind-vfio" || record.action === "rebind-device";

function checkBind(record: UndoRecord): BindRecord {
  if (!isBindRecord(record)) throw new VmhookError(`vfio: not a bind-vfio record: ${record.action}`);
  const override = checkedOverride(record.override);
  const group = record.group === undefined ? "" : String(record.group);
  if (!/^\d{0,6}$/.test(group)) throw new VmhookError(`vfio: the journal names IOMMU group "${group}", which is not a group number`);
  const powerControl = record.powerControl === null || record.powerControl === undefined ? null : record.powerControl;
  if (powerControl !== null && powerControl !== "on" && powerControl !== "auto") throw new VmhookError(`vfio: the journal names power/control ${JSON.stringify(powerControl).slice(0, 40)}, which is neither on nor auto`);
  const homeClaim = record.homeClaim === null || record.homeClaim === undefined ? null : String(record.homeClaim);
  if (homeClaim !== null && !/^module:[a-z0-9_]{1,64}$/.test(homeClaim)) throw new VmhookError(`vfio: the journal names claim ${JSON.stringify(record.homeClaim)}, which is not a module claim`);
  return {
    action: "bind-vfio",
    address: checkedAddress(record),
    group,
    driver: checkedDriver(record.driver),
    override,
    powerControl,
    // A record without moduleReloaded (a journal from before it): a later undo reloads the module.
    moduleReloaded: record.moduleReloaded !== false,
    homeClaim,
    sriov: checkSriovOrigin(record.sriov),
    // A record without them (a journal from before variants): vfio-pci.
    target: record.target === undefined ? VFIO_DRIVER : checkedDriver(record.target),
    targetModule: checkedDriver(record.targetModule) ?? "vfio_pci",
    bindTimeoutMs: timeout(record.bindTimeoutMs),
  };
}

/**
 * vmhook recover: the undo that gives back a module claim of a domain whose
 * journal is gone, as its release would have. Its own devices went with its
 * journal; those waiting in the claim come back with the module.
 */
export function orphanedModuleClaim(resource: string): Step | undefined {
  if (resource.startsWith("module:")) {
    const record = checkUnload({ action: "unload-module", module: resource.slice("module:".length), devices: [] });
    return { action: "unload-module", record, description: `load module ${record.module} again, with the devices waiting for it, once no other VM needs it unloaded` };
  }
  if (!resource.startsWith("loaded:")) return undefined;
  const record = checkLoad({ action: "load-modules", module: "", modules: [], claim: resource });
  return { action: "load-modules", record, description: `unload the modules loaded with ${resource.slice("loaded:".length)} that nothing uses, once no other VM uses them` };
}

export const unloadModuleAction = defineAction<UnloadRecord>({ check: checkUnload, apply: unloadModule, undo: loadModule });
export const loadModulesAction = defineAction<LoadRecord>({ check: checkLoad, apply: loadModules, undo: unloadModules });
export const bindVfioAction = defineAction<BindRecord>({ check: checkBind, apply: bindToVfio, undo: rebindDevice });
