// Read-only views of PCI devices in sysfs, shared by the vfio plugin and the
// diagnostics. Addresses must already be validated (lib/validate.ts).
import { VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import { PATTERNS } from "./validate.ts";

export const PCI_DEVICES = "/sys/bus/pci/devices";

export interface PciDevice {
  address: string;
  /** "0x030000" */
  classCode: string;
  vendor: string;
  device: string;
  /** Bound driver name, or undefined when unbound. */
  driver?: string;
  iommuGroup?: string;
  bootVga: boolean;
}

export function pciPath(address: string, file = ""): string {
  return `${PCI_DEVICES}/${address}${file ? `/${file}` : ""}`;
}

export function pciExists(host: Host, address: string): boolean {
  return host.exists(pciPath(address));
}

/** The driver a device is bound to (basename of its driver link). */
export function pciDriver(host: Host, address: string): string | undefined {
  const target = host.readlink(pciPath(address, "driver"));
  return target ? target.split("/").pop() : undefined;
}

export function pciIommuGroup(host: Host, address: string): string | undefined {
  const target = host.readlink(pciPath(address, "iommu_group"));
  return target ? target.split("/").pop() : undefined;
}

export function readPciDevice(host: Host, address: string): PciDevice {
  return {
    address,
    classCode: host.readTrimmed(pciPath(address, "class")) ?? "0x000000",
    vendor: host.readTrimmed(pciPath(address, "vendor")) ?? "0x0000",
    device: host.readTrimmed(pciPath(address, "device")) ?? "0x0000",
    driver: pciDriver(host, address),
    iommuGroup: pciIommuGroup(host, address),
    bootVga: host.readTrimmed(pciPath(address, "boot_vga")) === "1",
  };
}

/** All PCI devices, sorted by address. */
export function listPciDevices(host: Host): PciDevice[] {
  return host.list(PCI_DEVICES).map((address) => readPciDevice(host, address));
}

/** Addresses in an IOMMU group (/sys/kernel/iommu_groups/N/devices). */
export function iommuGroupMembers(host: Host, group: string): string[] {
  return host.list(`/sys/kernel/iommu_groups/${group}/devices`);
}

/** Whether the device is an SR-IOV virtual function (it has a physfn link). */
export const isVirtualFunction = (host: Host, address: string) => host.exists(pciPath(address, "physfn"));

/** Where an SR-IOV virtual function comes from: its physical function and that one's sriov_numvfs then (null: unreadable). */
// A type, not an interface: it is journaled (Json).
export type SriovOrigin = {
  physfn: string;
  numVfs: number | null;
};

/** The device's SR-IOV origin, read while it exists; null for a device that is no virtual function. */
export function sriovOrigin(host: Host, address: string): SriovOrigin | null {
  const physfn = host.readlink(pciPath(address, "physfn"))?.split("/").pop();
  if (physfn === undefined) return null;
  const numVfs = Number(host.readTrimmed(pciPath(physfn, "sriov_numvfs")));
  return { physfn, numVfs: Number.isSafeInteger(numVfs) && numVfs > 0 ? numVfs : null };
}

/** A journaled SriovOrigin, checked before it becomes a path or a command; absent in records from before it: null. */
export function checkSriovOrigin(value: unknown): SriovOrigin | null {
  if (value === null || value === undefined) return null;
  const { physfn, numVfs } = value as Partial<SriovOrigin>;
  if (typeof physfn !== "string" || !PATTERNS.pciAddress.test(physfn) || !(numVfs === null || (Number.isSafeInteger(numVfs) && numVfs! > 0))) {
    throw new VmhookError(`vfio: the journal names SR-IOV origin ${JSON.stringify(value).slice(0, 120)}, which is not a physical function and a number of VFs`);
  }
  return { physfn, numVfs: numVfs as number | null };
}

/**
 * "ADDRESS is gone from the PCI bus", and what brings it back: a rescan, or
 * for a virtual function (which no scan finds: only its physical function's
 * driver creates it) its PF's sriov_numvfs, written from 0.
 */
export function goneFromBus(host: Host, address: string, sriov: SriovOrigin | null): string {
  if (sriov === null) return `${address} is gone from the PCI bus; echo 1 > ${PCI_RESCAN}`;
  const numvfs = pciPath(sriov.physfn, "sriov_numvfs");
  const count = sriov.numVfs ?? "N";
  const now = host.readTrimmed(numvfs);
  const first = !pciExists(host, sriov.physfn)
    ? `echo 1 > ${PCI_RESCAN} (brings back ${sriov.physfn}), then `
    : now !== undefined && now !== "0"
      ? `echo 0 > ${numvfs} (it shows ${now}; the kernel changes a count only from 0, removing its other VFs), then `
      : "";
  return `${address} is gone from the PCI bus: it is an SR-IOV virtual function of ${sriov.physfn}, which no rescan finds again; create it again with ${first}echo ${count} > ${numvfs} (the number of VFs it had)`;
}

const PCI_RESCAN = "/sys/bus/pci/rescan";

/** An SR-IOV physical function's virtual functions now (its virtfnN links), sorted; none for any other device. */
export function virtualFunctions(host: Host, address: string): string[] {
  const links = host.list(pciPath(address)).filter((name) => /^virtfn\d+$/.test(name));
  return links.flatMap((link) => host.readlink(pciPath(address, link))?.split("/").pop() ?? []).sort();
}

/**
 * The other functions of a device's card (0000:01:00.1 for 0000:01:00.0's
 * audio). SR-IOV functions share a slot without being one card: a VF's slot
 * holds its PF (the host's own GPU: unbinding it destroys every VF) and other
 * VFs, each passed on its own, so a VF has none and a PF's VFs are not its.
 */
export function slotFunctions(host: Host, address: string): string[] {
  if (isVirtualFunction(host, address)) return [];
  const slot = address.slice(0, -2);
  return host.list(PCI_DEVICES).filter((other) => other.startsWith(`${slot}.`) && !isVirtualFunction(host, other));
}

export const isDisplayClass = (classCode: string) => classCode.startsWith("0x03");
/** A 3D controller (0x0302): not VGA-compatible, without display outputs (NVIDIA's data-centre cards; a card whose outputs are switched off): it shows the host nothing. */
export const isComputeOnlyClass = (classCode: string) => classCode.startsWith("0x0302");
export const isBridgeClass = (classCode: string) => classCode.startsWith("0x0604") || classCode.startsWith("0x0600");

/** Drivers that leave a device free for vfio-pci's group check (no host use of it). */
export const HARMLESS_DRIVERS = ["vfio-pci", "pci-stub"];
/** Drivers the kernel's vfio accepts beside a device in use: they manage DMA themselves (driver_managed_dma). */
const GROUP_VIABLE_DRIVERS = [...HARMLESS_DRIVERS, "pcieport"];

/**
 * Whether a PCI driver is a vfio-pci variant (mlx5_vfio_pci, xe-vfio-pci,
 * nvgrace_gpu_vfio_pci, ...): its module uses vfio_pci_core. Such a driver
 * exists to hand its device to vfio, which claims the whole group's DMA, so
 * it manages DMA itself (driver_managed_dma) as vfio-pci does. Known from
 * the kernel, not from a list of names: the driver's module link, and that
 * module among vfio_pci_core's holders (none when vfio_pci_core is built in:
 * then not known, so not accepted).
 */
export function isVfioPciVariant(host: Host, driver: string): boolean {
  const module = driverModule(host, driver);
  return module !== undefined && host.exists(`/sys/module/vfio_pci_core/holders/${module}`);
}

/** The module a PCI driver comes from (nvidia → nvidia, xe-vfio-pci → xe_vfio_pci), when it is a loadable one. */
export function driverModule(host: Host, driver: string): string | undefined {
  return host.readlink(`${PCI_DRIVERS}/${driver}/module`)?.split("/").pop();
}

/**
 * The PCI drivers a module registers, as its /sys/module/M/drivers/pci:NAME
 * links name them: the kernel links a built-in module's drivers there as a
 * loaded one's, and the module's drivers of other buses (platform:NAME) are
 * no PCI drivers. One directory, not every PCI driver's module link.
 */
export function moduleDrivers(host: Host, module: string): string[] {
  return host.list(`/sys/module/${module}/drivers`).flatMap((entry) => (entry.startsWith("pci:") && PATTERNS.moduleName.test(entry.slice(4)) ? [entry.slice(4)] : []));
}

/**
 * Whether the device is on a VFIO driver, whose device QEMU opens as it is:
 * vfio-pci, a vfio-pci variant (isVfioPciVariant), or any driver that
 * registered it with vfio, which its vfio-dev/vfioN shows (Linux >= 6.6 with
 * the vfio cdev: also where vfio_pci_core is built in and has no holders/).
 */
export function onVfioDriver(host: Host, address: string, driver: string | undefined): boolean {
  if (driver === undefined) return false;
  return driver === "vfio-pci" || isVfioPciVariant(host, driver) || host.list(pciPath(address, "vfio-dev")).some((name) => /^vfio\d+$/.test(name));
}

/**
 * Whether vfio lets a group be used while `other` (a member not handed over)
 * stays as it is: with no driver, one of GROUP_VIABLE_DRIVERS or a vfio-pci
 * variant. Kernels before 5.19 also took a PCI-to-PCI bridge (a header other
 * than normal) on any driver; since, that driver must manage DMA itself. A
 * host bridge's header is normal: on a driver, it never is. The one rule for
 * prepare, doctor and `vmhook iommu`.
 */
export function viableBeside(host: Host, other: Pick<PciDevice, "classCode" | "driver">, release: string): boolean {
  if (other.driver === undefined || GROUP_VIABLE_DRIVERS.includes(other.driver) || isVfioPciVariant(host, other.driver)) return true;
  const [major, minor] = (/^(\d+)\.(\d+)/.exec(release) ?? []).slice(1).map(Number);
  const before519 = major !== undefined && minor !== undefined && (major < 5 || (major === 5 && minor < 19));
  return before519 && other.classCode.startsWith("0x0604");
}

/** viableBeside's rule for a device other than a bridge, in words: "with no driver or on vfio-pci, pci-stub, pcieport or a vfio-pci variant driver (...)". */
export const VIABLE_BESIDE_WORDS = `with no driver or on ${GROUP_VIABLE_DRIVERS.join(", ")} or a vfio-pci variant driver (its module uses vfio_pci_core)`;

/** How to free a bridge vfio does not accept beside a device in use: vfio-pci takes no bridge, so off its driver or onto pcieport. */
export const freeBridge = (address: string, driver: string) => `unbind it from ${driver} (echo ${address} > ${PCI_DRIVERS}/${driver}/unbind) or let pcieport drive it`;

export const PCI_DRIVERS = "/sys/bus/pci/drivers";

/** Whether a PCI driver is registered (its module is loaded or built in). */
export function pciDriverRegistered(host: Host, driver: string): boolean {
  return host.exists(`${PCI_DRIVERS}/${driver}`);
}

/** The driver_override value, or undefined when none is set (the kernel shows "(null)"). */
export function pciDriverOverride(host: Host, address: string): string | undefined {
  const value = host.readTrimmed(pciPath(address, "driver_override"));
  return value && value !== "(null)" ? value : undefined;
}

/** power/control: "auto" when runtime PM may suspend the device, "on" when it is forbidden; undefined when unreadable. */
export function pciPowerControl(host: Host, address: string): "on" | "auto" | undefined {
  const value = host.readTrimmed(pciPath(address, "power/control"));
  return value === "on" || value === "auto" ? value : undefined;
}

/** How the kernel resets the device ("flr bus", ...), or undefined when the kernel does not say. */
export function pciResetMethod(host: Host, address: string): string | undefined {
  return host.readTrimmed(pciPath(address, "reset_method")) || undefined;
}

/** The device files a GPU's driver created: /dev/dri/card0, /dev/dri/renderD128, /dev/fb0. */
export function pciDeviceNodes(host: Host, address: string): string[] {
  const dri = host.list(pciPath(address, "drm")).filter((name) => /^(card|renderD)\d+$/.test(name)).map((name) => `/dev/dri/${name}`);
  const fb = host.list(pciPath(address, "graphics")).filter((name) => /^fb\d+$/.test(name)).map((name) => `/dev/${name}`);
  return [...dri, ...fb];
}
