// The vfio plugin: hands a domain's PCI devices (typically a GPU and the other
// functions of its slot) from their host drivers to vfio-pci before the VM
// starts, and back when it stops. In single-GPU mode the host's display lets
// go first (display manager, framebuffer consoles, firmware framebuffers).
// Everything it changes is journaled, so release, rollback and `vmhook
// recover` put back exactly what was taken. User docs: docs/vfio.md.
//
// libvirt's managed='yes' hostdevs: libvirt detaches them after prepare; a
// device already on vfio-pci is left as it is and not marked as bound by
// libvirt (virPCIDeviceBindToStub), so at shutdown libvirt skips its reattach
// and release brings it back. Each undo still checks what is already back
// (virsh nodedev-reattach may have run).
import { VmhookError } from "../../lib/errors.ts";
import { pciDriver } from "../../lib/pci.ts";
import { definePlugin, type UndoRecord, type BaseContext } from "../../lib/plugin.ts";
import { parseVfioConfig, readVfioSettings, type VfioConfig } from "./config.ts";
import { bindFramebuffer, bindVtconsole, findDisplayManager, runStartCommand, stopDisplayManager, unbindConsoles, waitUntilGpuFree } from "./display.ts";
import { helperServices, loadModule, rebindDevice, takeOverDevices, unloadModules } from "./driver.ts";
import { refuseOtherHolders } from "./refuse.ts";
import { survey, VFIO_DRIVER } from "./survey.ts";
import { startUnit, stopUnit } from "./units.ts";

const UNDO: Record<string, (ctx: BaseContext, record: UndoRecord) => void> = {
  "start-unit": startUnit,
  "run-start-command": runStartCommand,
  "bind-vtconsole": bindVtconsole,
  "bind-framebuffer": bindFramebuffer,
  "load-module": loadModule,
  "unload-modules": unloadModules,
  "rebind-device": rebindDevice,
};

export default definePlugin<VfioConfig>({
  name: "vfio",
  summary: "hand PCI devices (a GPU and its slot's functions) to vfio-pci and back; single-GPU passthrough",
  usage:
    '<vmhook:vfio devices="0000:01:00.0,..." include-slot="yes|no" single-gpu="auto|yes|no" unload-modules="auto|none|mod,..." load-modules="mod,..." display-manager="unit,..."/>',
  parse: parseVfioConfig,
  // vfio-pci, the display manager and the GPU drivers' modules are host-wide:
  // two VMs starting (or one starting while another releases) take turns, so
  // vfio-pci is loaded once and never unloaded under a VM that is binding to it.
  shared: true,

  async prepare(ctx) {
    const settings = readVfioSettings(ctx.settings);
    const found = survey(ctx.host, ctx.config);
    const displayManager = found.singleGpu ? findDisplayManager(ctx, ctx.config, settings) : undefined;
    const helpers = helperServices(ctx, found, settings);
    // Users of the GPU fail the start now, before anything stops, unless they belong to what is stopped first.
    refuseOtherHolders(ctx, found, displayManager, helpers);
    ctx.log.info(`vfio: devices ${found.devices.map((device) => `${device.address} (${device.driver ?? "no driver"})`).join(", ")}; single-GPU mode ${found.singleGpu ? "on" : "off"}`);

    if (found.singleGpu) await stopDisplayManager(ctx, displayManager, settings);
    for (const unit of helpers) await stopUnit(ctx, unit, settings.stopTimeoutSeconds * 1000);
    if (found.holders.length > 0) waitUntilGpuFree(ctx, found, settings);
    if (found.singleGpu) await unbindConsoles(ctx);
    await takeOverDevices(ctx, found, settings);
  },

  /** libvirtd restarted while the VM runs: the devices the journal moved must still be on vfio-pci. */
  reconnect(ctx) {
    for (const record of ctx.records.filter((record) => record.action === "rebind-device")) {
      const driver = pciDriver(ctx.host, String(record.address));
      if (driver !== VFIO_DRIVER) ctx.log.warn(`vfio: ${record.address} should be on vfio-pci while ${ctx.domain.name} runs, but is on ${driver ?? "no driver"}`);
    }
  },

  undo(record, ctx) {
    const undo = UNDO[record.action];
    if (!undo) throw new VmhookError(`vfio: the journal holds an unknown change "${record.action}"; was it written by a newer vmhook?`);
    undo(ctx, record);
  },
});
