// The checks before anything changes: which devices go, whether their IOMMU
// groups let them go, who uses them, which modules must go first. Reads only,
// so a refusal leaves the host exactly as it was (and `vmhook plan` shows it).
import { VmhookError } from "../../lib/errors.ts";
import { iommuOffAdvice } from "../../lib/diagnostics/iommu.ts";
import { kernelRelease, modulesAlias, normalModule, vfioVariantModule } from "../../lib/kernel-modules.ts";
import type { Host } from "../../lib/host.ts";
import { PATTERNS } from "../../lib/validate.ts";
import { openFiles, processIds, processName } from "../../lib/open-files.ts";
import {
  driverModule,
  freeBridge,
  HARMLESS_DRIVERS,
  iommuGroupMembers,
  isBridgeClass,
  isComputeOnlyClass,
  isDisplayClass,
  isVfioPciVariant,
  listPciDevices,
  moduleDrivers,
  onVfioDriver,
  PCI_DEVICES,
  pciDeviceNodes,
  pciDriver,
  pciDriverOverride,
  pciExists,
  pciIommuGroup,
  pciPath,
  readPciDevice,
  slotFunctions,
  viableBeside,
  virtualFunctions,
  type PciDevice,
} from "../../lib/pci.ts";
import { parseVfioConfig, type VfioConfig } from "./config.ts";
import type { Domain } from "../../lib/domain.ts";
import type { XmlElement } from "../../lib/xml.ts";

export const VFIO_DRIVER = "vfio-pci";
/** NVIDIA's proprietary stack, users first. amdgpu, radeon and nouveau stay loaded: unbinding suffices. */
const NVIDIA_MODULES = ["nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia"];

export interface Device extends PciDevice {
  /** driver_override before vmhook, undefined when none. */
  override?: string;
  /** On a VFIO driver already (vfio-pci or a variant of it: onVfioDriver): QEMU opens it as it is, so it stays there. */
  onVfio: boolean;
  /** The VFIO driver it goes to; undefined when it is on one already. */
  target?: VfioTarget;
}

/**
 * The VFIO driver a device goes to, as libvirt (>= 10.0) binds a managed
 * hostdev: the one its <hostdev><driver model='…'/> names, else the vfio-pci
 * variant modules.alias matches best (vfioVariantModule), else vfio-pci.
 */
export interface VfioTarget {
  /** What modprobe loads: vfio_pci, or the variant's module. */
  module: string;
  /** The PCI driver's name (vfio-pci, xe-vfio-pci); undefined: a variant's module not loaded yet, whose driver says it once it is. */
  driver?: string;
  /** Where the choice came from, for the plan's words. */
  chosenBy: "default" | "modules.alias" | "driver model";
}

const VFIO_PCI_TARGET: VfioTarget = { module: "vfio_pci", driver: "vfio-pci", chosenBy: "default" };

function vfioTarget(host: Host, address: string, model: string | undefined, aliases: () => string): VfioTarget {
  if (model !== undefined) return { module: normalModule(model), driver: model, chosenBy: "driver model" };
  const variant = vfioVariantModule(aliases(), host.readTrimmed(pciPath(address, "modalias")));
  return variant === undefined ? VFIO_PCI_TARGET : { module: variant, driver: moduleDrivers(host, variant)[0], chosenBy: "modules.alias" };
}

/**
 * Where prepare moves a device of `config` on its driver now: its VfioTarget,
 * or undefined when that is a VFIO driver already (onVfioDriver), where it
 * stays. modules.alias (over 1 MB) is read once, when a device first needs it.
 */
export function vfioTargets(host: Host, config: VfioConfig): (address: string, driver: string | undefined) => VfioTarget | undefined {
  let aliases: string | undefined;
  const modulesAliasText = () => (aliases ??= modulesAlias(host));
  return (address, driver) => (onVfioDriver(host, address, driver) ? undefined : vfioTarget(host, address, config.driverModels[address], modulesAliasText));
}

/** A target as plan and doctor name it: its driver ("module M's driver" while a variant's module is not loaded), and why that one unless by default. */
export function targetWords(target: VfioTarget): { driver: string; why?: string } {
  const why = { default: undefined, "modules.alias": "the vfio-pci variant modules.alias matches best", "driver model": "its <hostdev><driver model> names it" }[target.chosenBy];
  return { driver: target.driver ?? `module ${target.module}'s driver`, ...(why ? { why } : {}) };
}

export interface Holder {
  pid: number;
  command: string;
  file: string;
}

export interface Survey {
  /** Every device to hand over (configured + slot functions), in address order. */
  devices: Device[];
  singleGpu: boolean;
  /** Why single-GPU mode is off (the display manager stays), for a refusal's words; undefined when it is on. */
  singleGpuOff?: string;
  /** The device files whose users block the handover. */
  watched: Watched;
  /** Processes holding them now. */
  holders: Holder[];
  /** Loaded modules to unload, users before what they use. */
  unload: string[];
  /** Loaded modules of an explicit unload-modules list that devices the host keeps need (modulesTheHostNeeds), and those devices: refused. */
  hostNeeds: HostNeeds;
  /** Whose the firmware framebuffers are (firmwareFramebuffersOwner). */
  firmwareFramebuffers: FirmwareFramebuffers;
}

export function survey(host: Host, config: VfioConfig): Survey {
  const devices = expandDevices(host, config);
  refusePhysicalFunctionsWithVfs(host, devices);
  checkIommuGroups(host, devices, config);
  refuseGroupsInUse(host, devices);
  const { singleGpu, singleGpuOff } = singleGpuMode(host, config, devices);
  const wanted = modulesToUnload(host, config, devices);
  const hostNeeds = hostNeedsOf(host, config, devices);
  const unload = unloadOrder(host, wanted, config.unloadModules === "auto", hostNeeds.modules);
  const firmwareFramebuffers = firmwareFramebuffersOwner(host, devices, singleGpu);
  const watched = watchedFiles(host, devices, singleGpu, unload.includes("nvidia"), firmwareFramebuffers);
  // Nothing to watch (a GPU without DRM or fbdev nodes, e.g. already on vfio-pci): no process can hold it, so no /proc scan.
  const holders = watchesSomething(watched) ? processesHolding(host, isWatched(watched)) : [];
  return { devices, singleGpu, singleGpuOff, watched, holders, unload, hostNeeds, firmwareFramebuffers };
}

/** The firmware framebuffers' platform drivers: efifb, simplefb (and, on 6.x, simpledrm), vesafb. */
export const FIRMWARE_FRAMEBUFFERS = ["efi-framebuffer", "simple-framebuffer", "vesa-framebuffer"];

/** The firmware framebuffer platform devices bound now, with their driver and the fbdev nodes they registered (fb0). */
export function boundFirmwareFramebuffers(host: Host): { driver: string; device: string; nodes: string[] }[] {
  return FIRMWARE_FRAMEBUFFERS.flatMap((driver) =>
    host
      .list(`/sys/bus/platform/drivers/${driver}`)
      .filter((entry) => entry.startsWith(`${driver}.`))
      .map((device) => ({ driver, device, nodes: host.list(`/sys/bus/platform/devices/${device}/graphics`).filter((name) => /^fb\d+$/.test(name)) })),
  );
}

/** "go": with the devices; "stay": the host keeps them (or none is bound); or the display device the host keeps, whose they are. */
export type FirmwareFramebuffers = "go" | "stay" | { keptBy: string };

/**
 * The display device the kernel found a firmware framebuffer on: Linux >= 6.9
 * makes it the platform device's sysfs parent (sysfb_parent_dev: the device
 * whose BAR holds the framebuffer, boot_vga or not); undefined before.
 */
function framebufferGpu(host: Host, device: string): string | undefined {
  const parent = host.readlink(`/sys/bus/platform/devices/${device}`)?.split("/").at(-2);
  return parent !== undefined && PATTERNS.pciAddress.test(parent) ? parent : undefined;
}

/**
 * The firmware set its framebuffer up on the boot VGA device (the kernel's
 * vga_default_device(), which boot_vga shows and whose framebuffer vfio-pci's
 * aperture removal takes down, on Linux >= 6.0 only: before, one left bound
 * holds the BARs and QEMU fails with "can't reserve"). So the firmware
 * framebuffers go when that device is handed over and stay when the host
 * keeps it, whatever single-GPU mode says. In single-GPU mode beside a GPU
 * the host keeps, the device Linux >= 6.9 names decides first (no boot_vga
 * file: non-x86, a display controller of class 0380); with neither, whose
 * they are is unknown: single-GPU mode lets go of them.
 */
function firmwareFramebuffersOwner(host: Host, devices: Device[], singleGpu: boolean): FirmwareFramebuffers {
  const ours = new Set(devices.map((device) => device.address));
  const bootVgaOurs = devices.some((device) => isDisplayClass(device.classCode) && device.bootVga);
  // Which device the host keeps is read only when it decides something: the other cards' sysfs reads cost (docs/bench.md).
  if (!singleGpu) return bootVgaOurs ? "go" : "stay";
  const bound = boundFirmwareFramebuffers(host);
  if (bound.length === 0) return bootVgaOurs ? "go" : "stay";
  const named = bound.map(({ device }) => framebufferGpu(host, device));
  if (named.some((gpu) => gpu !== undefined && ours.has(gpu))) return "go";
  const keptNamed = named.find((gpu) => gpu !== undefined);
  if (keptNamed && named.every((gpu) => gpu !== undefined)) return { keptBy: keptNamed };
  if (bootVgaOurs) return "go";
  const kept = host.list(PCI_DEVICES).find((address) => !ours.has(address) && host.readTrimmed(pciPath(address, "boot_vga")) === "1" && isDisplayClass(host.readTrimmed(pciPath(address, "class")) ?? ""));
  return kept ? { keptBy: kept } : "go";
}

function expandDevices(host: Host, config: VfioConfig): Device[] {
  const missing = config.devices.filter((address) => !pciExists(host, address));
  if (missing.length > 0) {
    throw new VmhookError(
      `vfio: ${missing.map((address) => `PCI device ${address}`).join(", ")} ${missing.length === 1 ? "does" : "do"} not exist on this host; fix the <hostdev> address or devices= (lspci -D lists the devices)`,
    );
  }
  const targetOf = vfioTargets(host, config);
  return handedOverAddresses(host, config).map((address) => {
    const device = readPciDevice(host, address);
    const target = targetOf(address, device.driver);
    return { ...device, override: pciDriverOverride(host, address), onVfio: target === undefined, ...(target ? { target } : {}) };
  });
}

/**
 * What `<vmhook:vfio>` elements would move to vfio-pci on this host, of the
 * devices it has (doctor's view: a missing one is its own finding); undefined
 * when they do not parse (doctor reports that as the config's).
 */
export function handedOverByElements(host: Host, elements: XmlElement[], domain: Domain): string[] | undefined {
  const config = readableVfioConfig(elements, domain);
  return config && handedOverHere(host, config);
}

/** The config of `<vmhook:vfio>` elements; undefined when they do not parse (doctor reports that as the config's). */
export function readableVfioConfig(elements: XmlElement[], domain: Domain): VfioConfig | undefined {
  try {
    return parseVfioConfig(elements, domain);
  } catch {
    return undefined;
  }
}

/** What `config` would move to vfio-pci, of the devices this host has. */
export function handedOverHere(host: Host, config: VfioConfig): string[] {
  return handedOverAddresses(host, { ...config, devices: config.devices.filter((address) => pciExists(host, address)) });
}

/**
 * What moves to vfio-pci: the configured devices and, for a GPU, the other
 * functions of its slot in its IOMMU group (they must leave the host's
 * drivers for the group anyway); sorted. A function of the slot in another
 * group stays: an APU's iGPU shares its slot with the host's USB
 * controllers, PSP and audio, each in its own group, which the VM does not
 * get unless the domain names them.
 */
export function handedOverAddresses(host: Host, config: VfioConfig): string[] {
  const addresses = new Set(config.devices);
  for (const address of config.devices) {
    // Only the class: this runs three times a prepare (policy, stuck check, survey).
    if (config.includeSlot && isDisplayClass(host.readTrimmed(pciPath(address, "class")) ?? "")) {
      const group = pciIommuGroup(host, address);
      for (const sibling of slotFunctions(host, address)) if (pciIommuGroup(host, sibling) === group) addresses.add(sibling);
    }
  }
  return [...addresses].sort();
}

/**
 * An SR-IOV physical function's driver disables SR-IOV in its remove(): every
 * VF goes with the unbind (and the unbind waits while a VM holds one). A PF is
 * handed over only without VFs.
 */
function refusePhysicalFunctionsWithVfs(host: Host, devices: Device[]): void {
  for (const { address } of devices) {
    const vfs = virtualFunctions(host, address);
    if (vfs.length === 0) continue;
    throw new VmhookError(
      `vfio: ${address} is an SR-IOV physical function with ${vfs.length} virtual function${vfs.length === 1 ? "" : "s"} (${vfs.join(", ")}): unbinding its driver destroys them; echo 0 > ${pciPath(address, "sriov_numvfs")} first (once nothing uses them), or pass one of its VFs instead`,
    );
  }
}

function describeDevice(device: PciDevice): string {
  return `${device.address} (class ${device.classCode}, ${device.driver ? `driver ${device.driver}` : "no driver"})`;
}

/**
 * vfio hands over whole IOMMU groups: every other member must be free, or on a
 * driver vfio accepts (viableBeside), or the VM's too, on its way to vfio-pci
 * through libvirt (`libvirtManaged`: a VF given as <interface type='hostdev'>).
 * One the domain lists without managed='yes' is refused with that advice.
 */
function checkIommuGroups(host: Host, devices: Device[], { libvirtManaged, libvirtUnmanaged }: VfioConfig): void {
  const ours = new Set([...devices.map((device) => device.address), ...libvirtManaged]);
  const release = kernelRelease(host);
  const problems: string[] = [];
  for (const device of devices) {
    if (device.iommuGroup === undefined) {
      const advice = iommuOffAdvice(host);
      throw new VmhookError(`vfio: ${device.address} has no IOMMU group: ${advice.reason}; ${advice.fix}`);
    }
  }
  for (const group of new Set(devices.map((device) => device.iommuGroup!))) {
    const blocking = iommuGroupMembers(host, group)
      .filter((address) => !ours.has(address))
      .map((address) => readPciDevice(host, address))
      .filter((other) => !viableBeside(host, other, release));
    if (blocking.length > 0) {
      const members = devices.filter((device) => device.iommuGroup === group).map((device) => device.address);
      // vfio-pci takes no bridge: one stays in the group, on no driver or one that vfio accepts.
      const bridges = blocking.filter((other) => isBridgeClass(other.classCode)).map((bridge) => `${bridge.address} is a bridge, which vfio-pci does not take: ${freeBridge(bridge.address, bridge.driver!)}`);
      // The domain lists it, yet nothing moves it: libvirt would, told to.
      const unmanaged = blocking.filter((other) => libvirtUnmanaged[other.address] !== undefined).map(({ address }) => {
        const element = libvirtUnmanaged[address]!;
        return `${address} is the domain's own ${element === "interface" ? "<interface type='hostdev'>" : "<hostdev>"} without managed='yes': set managed='yes' on that <${element}> so libvirt moves it to vfio-pci as the VM starts, or bind it to vfio-pci yourself`;
      });
      problems.push([`IOMMU group ${group} holds ${members.join(", ")} and also ${blocking.map(describeDevice).join(", ")}`, ...bridges, ...unmanaged].join("; "));
    }
  }
  if (problems.length > 0) {
    throw new VmhookError(`vfio: ${problems[0]}; a group goes to the VM whole: add those devices to devices=, move the card to a slot with its own group, or use a kernel with the ACS override patch`, problems.slice(1));
  }
}

/**
 * vfio gives a group to one user at a time. A VM that vmhook does not serve
 * (libvirt's managed='yes' moved its device to vfio-pci; no journal says so)
 * holds the group's /dev/vfio/N, or with iommufd a member's
 * /dev/vfio/devices/vfioN: libvirt would refuse this start only after prepare
 * changed the host, so it is refused here. Looked for only while a member is
 * on a vfio driver: no one else can hold the group otherwise.
 */
function refuseGroupsInUse(host: Host, devices: Device[]): void {
  for (const group of new Set(devices.map((device) => device.iommuGroup!))) {
    const inUse = groupInUse(host, group, devices.filter((device) => device.iommuGroup === group).map((device) => device.address));
    if (inUse) throw new VmhookError(`vfio: ${inUse.reason}; ${inUse.fix}`);
  }
}

/** Why IOMMU group `group`, which `ours` (its members to pass through) are in, is another VM's now; undefined when no process holds it. The rule prepare refuses by, and doctor reports by. */
export function groupInUse(host: Host, group: string, ours: string[]): { reason: string; fix: string } | undefined {
  const onVfio = iommuGroupMembers(host, group).flatMap((address) => {
    const driver = pciDriver(host, address);
    return onVfioDriver(host, address, driver) ? [{ address, driver: driver! }] : [];
  });
  if (onVfio.length === 0) return undefined;
  const cdevs = onVfio.flatMap(({ address }) => host.list(pciPath(address, "vfio-dev")).filter((name) => /^vfio\d+$/.test(name)).map((name) => `/dev/vfio/devices/${name}`));
  const files = [`/dev/vfio/${group}`, ...cdevs];
  const holders = processesHolding(host, (file) => files.includes(file));
  if (holders.length === 0) return undefined;
  const others = onVfio.filter(({ address }) => !ours.includes(address)).map(({ address, driver }) => `${address} on ${driver}`);
  return {
    reason: `IOMMU group ${group} (${ours.join(", ")}) is in use by another VM: ${describeHolders(holders)}${others.length > 0 ? `, with ${others.join(", ")}` : ""}`,
    fix: "a group goes to one VM at a time: shut that VM down first",
  };
}

/** Whether single-GPU mode is on, and when it is off, why. */
function singleGpuMode(host: Host, config: VfioConfig, devices: Device[]): { singleGpu: boolean; singleGpuOff?: string } {
  if (config.singleGpu !== "auto") return config.singleGpu === "yes" ? { singleGpu: true } : { singleGpu: false, singleGpuOff: 'single-gpu="no"' };
  const ours = new Set(devices.map((device) => device.address));
  // A boot GPU already on vfio-pci (vfio-pci.ids=...) or a variant shows no host display to release.
  const bootGpu = devices.some((device) => isDisplayClass(device.classCode) && device.bootVga && !device.onVfio);
  // A GPU with no driver, on vfio-pci/pci-stub or a vfio-pci variant (another VM's), or compute-only shows nothing on the host.
  const otherDisplays = listPciDevices(host).filter(
    (device) =>
      isDisplayClass(device.classCode) && !isComputeOnlyClass(device.classCode) && !ours.has(device.address) && device.driver !== undefined && !HARMLESS_DRIVERS.includes(device.driver) && !isVfioPciVariant(host, device.driver),
  );
  if (otherDisplays.length > 0) return { singleGpu: false, singleGpuOff: `the host keeps a display on ${otherDisplays.map((device) => `${device.address} (${device.driver})`).join(", ")}` };
  return bootGpu ? { singleGpu: true } : { singleGpu: false, singleGpuOff: "no GPU handed over is the boot VGA device on a host driver" };
}

/** The device files whose users block the handover, as data: it is journaled with the steps that wait for them. */
export type Watched = {
  /** The GPUs' DRM and fbdev nodes, the firmware framebuffers' that go, and NVIDIA's /dev/nvidiaN. */
  files: string[];
  /** Every framebuffer (single-GPU mode)... */
  framebuffers: boolean;
  /** ...but these, of display devices the host keeps on their drivers (absent in journals of before). */
  keptFramebuffers?: string[];
  /** Every /dev/nvidia* (the nvidia module is to go). */
  nvidia: boolean;
};

/**
 * The GPUs' DRM and fbdev nodes and NVIDIA's /dev/nvidiaN (its minor from
 * /proc/driver/nvidia), and the firmware framebuffers' that go with them;
 * every framebuffer in single-GPU mode; every
 * /dev/nvidia* when the nvidia module is to go.
 */
function watchedFiles(host: Host, devices: Device[], singleGpu: boolean, nvidiaUnloads: boolean, firmwareFramebuffers: FirmwareFramebuffers): Watched {
  const nodes = new Set(devices.flatMap((device) => pciDeviceNodes(host, device.address)));
  // Firmware framebuffers that go with the devices, in any mode: an fbdev held open keeps efifb's hold on the BARs after the unbind (it lets go at the last close; measured on 6.1: test/kernel/efifb-holder.test.ts).
  if (firmwareFramebuffers === "go") for (const { nodes: fbs } of boundFirmwareFramebuffers(host)) for (const node of fbs) nodes.add(`/dev/${node}`);
  for (const device of devices.filter((device) => device.driver === "nvidia")) {
    const minor = /Device Minor:\s*(\d+)/.exec(host.readTrimmed(`/proc/driver/nvidia/gpus/${device.address}/information`) ?? "")?.[1];
    if (minor) nodes.add(`/dev/nvidia${minor}`);
  }
  if (!singleGpu) return { files: [...nodes].sort(), framebuffers: false, nvidia: nvidiaUnloads };
  // single-gpu="yes" beside a GPU the host keeps: a program on that GPU's framebuffer (fbterm, kmscon) does not hold the VM's.
  const ours = new Set(devices.map((device) => device.address));
  // Only the class: on the single-GPU path each sysfs read costs (docs/bench.md).
  const kept = host
    .list(PCI_DEVICES)
    .filter((address) => !ours.has(address) && isDisplayClass(host.readTrimmed(pciPath(address, "class")) ?? ""))
    .flatMap((address) => pciDeviceNodes(host, address).filter((node) => /^\/dev\/fb\d+$/.test(node)));
  // The firmware framebuffers of the boot GPU the host keeps (efifb under its driver without fbdev) are its too.
  if (firmwareFramebuffers !== "go") kept.push(...boundFirmwareFramebuffers(host).flatMap(({ nodes }) => nodes.map((node) => `/dev/${node}`)));
  return { files: [...nodes].sort(), framebuffers: true, ...(kept.length > 0 ? { keptFramebuffers: kept.sort() } : {}), nvidia: nvidiaUnloads };
}

const watchesSomething = (watched: Watched) => watched.files.length > 0 || watched.framebuffers || watched.nvidia;

export function isWatched(watched: Watched): (file: string) => boolean {
  const kept = watched.keptFramebuffers ?? [];
  return (file) => watched.files.includes(file) || (watched.framebuffers && /^\/dev\/fb\d+$/.test(file) && !kept.includes(file)) || (watched.nvidia && file.startsWith("/dev/nvidia"));
}

/** Every process with one of the files open (from /proc/PID/fd), named by pid and command. A process whose files cannot be read refuses: it may hold one. */
export function processesHolding(host: Host, watched: (file: string) => boolean): Holder[] {
  const holders: Holder[] = [];
  for (const pid of processIds(host)) {
    for (const file of openFiles(host, pid).filter(watched)) holders.push({ pid: Number(pid), command: processName(host, pid), file });
  }
  return holders;
}

export function describeHolders(holders: Holder[]): string {
  return holders.map((holder) => `pid ${holder.pid} (${holder.command}) holds ${holder.file}`).join(", ");
}

/**
 * The vfio files of a device (its sysfs directory: a PCI function's, an
 * mdev's) that exist: its group's /dev/vfio/N (an mdev's group is an emulated
 * one) and, with iommufd (6.6+), /dev/vfio/devices/vfioN (6.1 has the
 * vfio-dev/vfioN directory but no such node). Read them before a remove,
 * which takes them away. Only to name who holds the device: none when they
 * cannot be read, and the remove goes ahead all the same.
 */
export function vfioDeviceFiles(host: Host, deviceDir: string): string[] {
  try {
    const group = host.readlink(`${deviceDir}/iommu_group`)?.split("/").pop();
    const cdevs = host.list(`${deviceDir}/vfio-dev`).filter((name) => /^vfio\d+$/.test(name));
    const files = [...(group && /^\d+$/.test(group) ? [`/dev/vfio/${group}`] : []), ...cdevs.map((name) => `/dev/vfio/devices/${name}`)];
    return files.filter((file) => host.exists(file));
  } catch {
    return [];
  }
}

/**
 * What to do about a driver write into a device (an mdev's remove, a VF's
 * vGPU type) that failed or waits while processes hold its vfio device
 * (`files`, from vfioDeviceFiles): "pid 777 (qemu-system-x86) holds
 * /dev/vfio/12, the mdev's vfio device: end it", or, when none can be named,
 * where to look. `what`: "the mdev", "the VF".
 */
export function vfioHoldersAdvice(host: Host, files: string[], what: string): { holders?: string; fix: string } {
  let holders: string | undefined;
  try {
    const held = files.length > 0 ? processesHolding(host, (file) => files.includes(file.replace(/ \(deleted\)$/, ""))) : [];
    holders = held.length > 0 ? describeHolders(held) : undefined;
  } catch {
    holders = undefined; // a process whose files cannot be read: the write's own error says what happened
  }
  const fix = holders ? `${holders}, ${what}'s vfio device: end it` : `if a process still holds ${what}'s vfio device (${files.join(", ") || "/dev/vfio/N"}; fuser -v names it), end it`;
  return { ...(holders ? { holders } : {}), fix };
}

/** "auto": NVIDIA's stack when a device is on nvidia and no card left to the host needs it. */
function modulesToUnload(host: Host, config: VfioConfig, devices: Device[]): string[] {
  if (config.unloadModules !== "auto") return config.unloadModules;
  // The rest of the bus is read only when it can matter: each sysfs read costs (docs/bench.md).
  if (!devices.some((device) => device.driver === "nvidia")) return [];
  return modulesTheHostNeeds(host, NVIDIA_MODULES, devices).modules.length > 0 ? [] : NVIDIA_MODULES;
}

export type HostNeeds = { modules: string[]; devices: PciDevice[] };

/** What an explicit unload-modules list names that devices the host keeps need: refused (unloadRefusals), never unloaded; auto leaves those out itself. */
export function hostNeedsOf(host: Host, config: VfioConfig, devices: { address: string }[]): HostNeeds {
  return config.unloadModules === "auto" ? { modules: [], devices: [] } : modulesTheHostNeeds(host, config.unloadModules, devices);
}

/**
 * The loaded ones of `modules` (either spelling) that a device the host
 * keeps (not one of `devices`) needs, with those devices: the module of its
 * driver (amdgpu drives the host's iGPU and the VM's dGPU alike), one using
 * it (nvidia_drm, the display of the host's NVIDIA card) or one it uses
 * (drm_ttm_helper under amdgpu), as /sys/module/NAME/holders links them.
 * Unloading one would unbind that device or take its display.
 */
export function modulesTheHostNeeds(host: Host, modules: string[], devices: { address: string }[]): HostNeeds {
  const loaded = modules.map(normalModule).filter((module) => moduleLoaded(host, module));
  if (loaded.length === 0) return { modules: [], devices: [] };
  const ours = new Set(devices.map((device) => device.address));
  const moduleOf = new Map<string, string | undefined>();
  const kept = host.list(PCI_DEVICES).flatMap((address) => {
    const driver = ours.has(address) ? undefined : pciDriver(host, address);
    if (driver === undefined) return [];
    if (!moduleOf.has(driver)) moduleOf.set(driver, driverModule(host, driver));
    const module = moduleOf.get(driver);
    return module === undefined ? [] : [{ address, module }];
  });
  const users = new Map<string, Set<string>>();
  const usersOf = (module: string) => {
    if (!users.has(module)) users.set(module, moduleUsers(host, module));
    return users.get(module)!;
  };
  const related = (listed: string, module: string) => listed === module || usersOf(module).has(listed) || usersOf(listed).has(module);
  const needed = loaded.filter((listed) => kept.some(({ module }) => related(listed, module)));
  const needing = kept.filter(({ module }) => needed.some((listed) => related(listed, module)));
  return { modules: needed, devices: needing.map(({ address }) => readPciDevice(host, address)) };
}

/** Every module that uses `module`, directly or through others. */
function moduleUsers(host: Host, module: string): Set<string> {
  const users = new Set<string>();
  const pending = [module];
  while (pending.length > 0) {
    for (const user of moduleHolders(host, pending.pop()!)) {
      if (!users.has(user)) pending.push(user);
      users.add(user);
    }
  }
  return users;
}

export const moduleLoaded = (host: Host, module: string) => host.exists(`/sys/module/${module}/refcnt`);
const moduleHolders = (host: Host, module: string) => host.list(`/sys/module/${module}/holders`);

/**
 * The loaded ones of `wanted` but `refused`, each after every module that
 * uses it; a user outside the list is an error (a refused one has its own).
 * `auto` (wanted is auto's list) takes no additions: the fix is the whole
 * list, written out.
 */
function unloadOrder(host: Host, wanted: string[], auto: boolean, refused: string[]): string[] {
  const listed = wanted.map(normalModule);
  const remaining = listed.filter((module) => !refused.includes(module) && moduleLoaded(host, module));
  for (const module of remaining) {
    const outsider = moduleHolders(host, module).find((holder) => !listed.includes(holder));
    if (outsider && auto) {
      throw new VmhookError(
        `vfio: cannot unload module ${module}: module ${outsider} uses it; unload-modules="auto" unloads only ${remaining.join(", ")}: name them all, unload-modules="${[outsider, ...remaining].join(",")}", or leave them loaded (unload-modules="none")`,
      );
    }
    if (outsider) {
      throw new VmhookError(`vfio: cannot unload module ${module}: module ${outsider} uses it; add ${outsider} to unload-modules (before ${module}) or leave ${module} loaded`);
    }
  }
  const order: string[] = [];
  while (remaining.length > 0) {
    const next = remaining.findIndex((module) => moduleHolders(host, module).every((holder) => order.includes(holder)));
    order.push(...remaining.splice(next === -1 ? 0 : next, 1));
  }
  return order;
}
