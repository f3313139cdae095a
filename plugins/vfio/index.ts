// The vfio plugin: hands a domain's PCI devices (typically a GPU and the other
// functions of its slot) from their host drivers to vfio-pci before the VM
// starts, and back when it stops. In single-GPU mode the host's display lets
// go first (display manager, framebuffer consoles, firmware framebuffers).
// Everything it changes is journaled, so release, rollback and `vmhook
// recover` put back exactly what was taken. User docs: docs/vfio.md.
//
// libvirt's managed='yes' hostdevs: libvirt detaches them after prepare; a
// device already on the VFIO driver libvirt chooses (vfio-pci, or the variant
// modules.alias matches best: survey.ts's VfioTarget chooses the same) is left
// as it is and not marked as bound by libvirt (virPCIDeviceBindToStub), so at
// shutdown libvirt skips its reattach and release brings it back. Each undo still checks what is already back
// (virsh nodedev-reattach may have run).
import { definePlugin, type CheckContext, type PlanContext, type Step } from "../../lib/plugin.ts";
import { parseVfioConfig, readVfioSettings, type VfioConfig } from "./config.ts";
import { consoleSteps, displayManagerSteps, firmwareFramebufferSteps, displayManagerUnits, findDisplayManager, stopDisplayManagerAction, unbindFramebufferAction, unbindVtconsoleAction, waitGpuFreeAction, waitGpuFreeStep } from "./display.ts";
import { bindVfioAction, describeVfioIds, helperServices, pciId, loadModulesAction, loadVfioSteps, orphanedModuleClaim, refuseDevicesOfOtherVms, refuseMdevParents, stoppedHelpers, takeOverSteps, unloadModuleAction, unloadRefusals } from "./driver.ts";
import { gpuHolders } from "./refuse.ts";
import { handedOverAddresses, handedOverHere, hostNeedsOf, readableVfioConfig, survey, VFIO_DRIVER } from "./survey.ts";
import { refuseIfStuck } from "../../lib/stuck-writes.ts";
import { keepStoppedSteps, orphanedUnitClaim, stopUnitAction, stopUnitStep } from "./units.ts";
import { lingerUserAction, orphanedLingerClaim, sessionUnitSteps, stopUserUnitAction } from "./user-units.ts";
import { verifyReturnAction, verifyReturnStep } from "./verify-return.ts";
import { setResetMethodAction, VENDOR_RESET_MODULE, vendorResetFindings } from "./vendor-reset.ts";
import { pciDriver, readPciDevice, type PciDevice } from "../../lib/pci.ts";
import { PATTERNS } from "../../lib/validate.ts";
import { fail, ok, type Finding } from "../../lib/diagnostics/findings.ts";
import type { Host } from "../../lib/host.ts";
import { vfioIdsConfig } from "../../lib/kernel-modules.ts";

/**
 * Reads the host and refuses what cannot work (IOMMU groups, users of the GPU
 * outside what is stopped first), then the steps in order: vfio-pci starts
 * loading (in the background, while the rest lets go), the graphical
 * session's user units (through the user's manager), the display manager and
 * helper services stop, the GPU becomes free, consoles and firmware
 * framebuffers let go, modules go, devices move.
 */
async function planPrepare(ctx: PlanContext<VfioConfig>): Promise<Step[]> {
  const settings = readVfioSettings(ctx.settings);
  // Before the survey reads them: a device whose driver is stuck in remove() is not handed anywhere.
  const addresses = handedOverAddresses(ctx.host, ctx.config);
  refuseIfStuck(ctx.host, addresses);
  // A device another VM holds: refused naming that VM, before libvirt would refuse in its own words.
  refuseDevicesOfOtherVms(ctx, addresses);
  refuseMdevParents(ctx, addresses);
  const found = survey(ctx.host, ctx.config);
  const displayManager = found.singleGpu ? findDisplayManager(ctx, ctx.config, settings) : undefined;
  const helpers = helperServices(ctx, found, settings);
  // Users of the GPU outside what is stopped first: the wait for a free GPU is refused, so the start fails before any step.
  const { refusal: refused, sessionUnits } = gpuHolders(ctx, found, displayManager, helpers, found.singleGpu ? displayManagerUnits(ctx.config, settings) : undefined);
  ctx.log.info(`vfio: devices ${found.devices.map((device) => `${device.address} (${device.driver ?? "no driver"})`).join(", ")}; single-GPU mode ${found.singleGpu ? "on" : "off"}`);

  return [
    // modprobe takes long and changes nothing the host shows: it runs while the display lets go.
    ...loadVfioSteps(ctx, found, settings),
    // Its undo runs once every other change but vfio-pci's load is undone: the display is checked then.
    ...verifyReturnStep(ctx.host, found.devices, settings.bindTimeoutSeconds * 1000),
    ...sessionUnitSteps(ctx, sessionUnits, settings.stopTimeoutSeconds * 1000),
    ...(found.singleGpu ? displayManagerSteps(ctx, displayManager, settings) : []),
    ...helpers.map((unit) => stopUnitStep(unit, settings.stopTimeoutSeconds * 1000)),
    ...keepStoppedSteps(ctx, stoppedHelpers(ctx, found, settings, helpers)),
    ...(found.holders.length > 0 ? [{ ...waitGpuFreeStep(found, settings), ...(refused ? { refused } : {}) }] : []),
    ...(found.singleGpu ? await consoleSteps(ctx, found) : []),
    ...firmwareFramebufferSteps(ctx, found),
    ...takeOverSteps(ctx, found, settings),
  ];
}

/** libvirtd restarted while the VM runs: the devices the journal moved must still be on their VFIO driver. */
function planReconnect(ctx: PlanContext<unknown>): Step[] {
  for (const record of ctx.records.filter((record) => record.action === "bind-vfio" || record.action === "rebind-device")) {
    // Only read: the record is checked when it is undone.
    const address = String(record.address);
    const driver = PATTERNS.pciAddress.test(address) ? pciDriver(ctx.host, address) : undefined;
    const target = typeof record.target === "string" ? record.target : VFIO_DRIVER;
    if (driver !== target) ctx.log.warn(`vfio: ${address} should be on ${target} while ${ctx.domain.name} runs, but is on ${driver ?? "no driver"}`);
  }
  return [];
}

/**
 * `vmhook doctor`: what prepare refuses of an explicit unload-modules list, in
 * its words (plan shows the refused step itself), and an AMD GPU of the domain
 * that resets only through vendor-reset, and whether the host has the module.
 */
function checkVfio(ctx: CheckContext): Finding[] {
  const config = readableVfioConfig(ctx.elements, ctx.domain);
  // undefined: doctor reports the config error itself
  if (!config) return [];
  const devices = handedOverHere(ctx.host, config).map((address) => readPciDevice(ctx.host, address));
  return [
    ...unloadRefusals(ctx.host, config, hostNeedsOf(ctx.host, config, devices)).map((refusal) => ({ ...fail("unload-modules", refusal.reason, refusal.fix), refusal: refusal.key })),
    ...vendorResetFindings(ctx.host, devices, () => ctx.host.exec("modinfo", ["-n", VENDOR_RESET_MODULE], { timeoutMs: 5_000 }).status === 0),
    ...vfioIdsFindings(ctx.host, devices),
  ];
}

/** The host's ids= for vfio-pci, and that they change nothing vmhook does with this domain's devices. */
function vfioIdsFindings(host: Host, devices: PciDevice[]): Finding[] {
  const configured = vfioIdsConfig(host);
  if (configured.length === 0) return [];
  const ids = new Set(configured.flatMap((source) => source.ids));
  const matching = devices.filter((device) => ids.has(pciId(device))).map((device) => `${device.address} (${pciId(device)}) goes to vfio-pci and back to its driver by driver_override, whichever driver registered first`);
  const reason = `the host binds ${describeVfioIds(configured)} to vfio-pci; vmhook loads vfio-pci with ids= empty (its load takes only the devices handed over) and names the driver in driver_override for every move${matching.length > 0 ? `: ${matching.join("; ")}` : ""}`;
  return [ok("vfio-pci ids", reason)];
}

export default definePlugin<VfioConfig>({
  name: "vfio",
  summary: "hands PCI devices (a GPU and its slot's functions) to vfio-pci and back; single-GPU passthrough",
  usage:
    '<vmhook:vfio devices="0000:01:00.0,..." include-slot="yes|no" single-gpu="auto|yes|no" unload-modules="auto|none|mod,..." load-modules="none|mod,..." display-manager="unit,..."/>',
  parse: parseVfioConfig,
  // vfio-pci, the display manager and the GPU drivers' modules are host-wide:
  // two VMs starting (or one starting while another releases) take turns, so
  // vfio-pci is loaded once and never unloaded under a VM that is binding to it.
  shared: true,
  plan: { prepare: planPrepare, reconnect: planReconnect },
  check: checkVfio,
  orphanedClaim: (resource) => orphanedModuleClaim(resource) ?? orphanedUnitClaim(resource) ?? orphanedLingerClaim(resource),
  actions: {
    "stop-unit": stopUnitAction,
    "linger-user": lingerUserAction,
    "stop-user-unit": stopUserUnitAction,
    "stop-display-manager": stopDisplayManagerAction,
    "wait-gpu-free": waitGpuFreeAction,
    "unbind-vtconsole": unbindVtconsoleAction,
    "unbind-framebuffer": unbindFramebufferAction,
    "unload-module": unloadModuleAction,
    "load-modules": loadModulesAction,
    "bind-vfio": bindVfioAction,
    "set-reset-method": setResetMethodAction,
    "verify-return": verifyReturnAction,
    // vmhook 0.1 named each record by its undo; its journals still undo.
    "start-unit": stopUnitAction,
    "run-start-command": stopDisplayManagerAction,
    "bind-vtconsole": unbindVtconsoleAction,
    "bind-framebuffer": unbindFramebufferAction,
    "load-module": unloadModuleAction,
    "unload-modules": loadModulesAction,
    "rebind-device": bindVfioAction,
  },
});
