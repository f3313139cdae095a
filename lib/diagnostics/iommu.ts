// IOMMU groups as passthrough sees them: a device can only be given to a VM
// together with every other device of its IOMMU group (bridges aside, when
// on a driver vfio accepts beside it), so each group gets a verdict. Reads sysfs and procfs only, through the Host.
import type { Host } from "../host.ts";
import { howToBootWith, howToBootWithout } from "../host-advice.ts";
import { kernelRelease } from "../kernel-modules.ts";
import { freeBridge, isBridgeClass, readPciDevice, viableBeside } from "../pci.ts";
import { PATTERNS } from "../validate.ts";
import { readPciNames } from "./pciids.ts";

const IOMMU_GROUPS = "/sys/kernel/iommu_groups";

export interface GroupDevice {
  address: string;
  /** "0300": class and subclass. */
  classCode: string;
  className?: string;
  /** "10de:2684" */
  ids: string;
  vendorName?: string;
  deviceName?: string;
  driver?: string;
  bridge: boolean;
  /** Whether vfio accepts it, as it is now, beside a device of its group passed through (viableBeside): the verdict counts no bridge that it accepts. */
  viableBeside: boolean;
}

export type GroupVerdict = "isolated" | "blocked" | "shared" | "bridges-only";

export interface IommuGroup {
  id: string;
  devices: GroupDevice[];
  verdict: GroupVerdict;
  /** One line: what the verdict means for passthrough. */
  reason: string;
}

export interface IommuReport {
  enabled: boolean;
  groups: IommuGroup[];
  /** The pci.ids file names came from, if any. */
  namesFrom?: string;
  /** With no groups: why, and the kernel parameter that turns the IOMMU on. */
  advice?: { reason: string; fix: string };
}

const hex = (value: string) => value.replace(/^0x/, "").toLowerCase();
/** "0000:01:00.1" → "0000:01:00": functions of one slot are one card. */
const slotOf = (address: string) => address.replace(/\.[0-7]$/, "");
const short = (address: string) => address.replace(/^0000:/, "");

export function readIommuGroups(host: Host): IommuReport {
  const ids = host.list(IOMMU_GROUPS).filter((id) => /^\d+$/.test(id)).sort((a, b) => Number(a) - Number(b));
  if (ids.length === 0) return { enabled: false, groups: [], advice: iommuOffAdvice(host) };

  const members = ids.map((id) => ({ id, addresses: host.list(`${IOMMU_GROUPS}/${id}/devices`) }));
  const pci = members.flatMap((group) => group.addresses).filter((address) => PATTERNS.pciAddress.test(address)).map((address) => readPciDevice(host, address));
  const release = kernelRelease(host);
  const names = readPciNames(host, pci.map((device) => ({ vendor: hex(device.vendor), device: hex(device.device), classCode: hex(device.classCode).slice(0, 4) })));
  const byAddress = new Map(
    pci.map((device) => {
      const [vendor, id, classCode] = [hex(device.vendor), hex(device.device), hex(device.classCode).slice(0, 4)];
      const entry: GroupDevice = {
        address: device.address,
        classCode,
        className: names.className(classCode),
        ids: `${vendor}:${id}`,
        vendorName: names.vendor(vendor),
        deviceName: names.device(vendor, id),
        driver: device.driver,
        bridge: isBridgeClass(device.classCode),
        viableBeside: viableBeside(host, device, release),
      };
      return [device.address, entry];
    }),
  );
  const groups = members.map(({ id, addresses }) => {
    // Non-PCI members (rare on x86) still share the group: list them by name.
    const devices = addresses.map((address) => byAddress.get(address) ?? { address, classCode: "", ids: "", bridge: false, viableBeside: true });
    return { id, devices, ...verdict(devices) };
  });
  return { enabled: true, groups, namesFrom: names.source };
}

/** A group to pass through that holds a bridge vfio does not accept: "blocked", naming it and how to free it (as prepare refuses it). */
function verdict(devices: GroupDevice[]): { verdict: GroupVerdict; reason: string } {
  const grouping = groupingVerdict(devices);
  const blocking = devices.filter((device) => device.bridge && !device.viableBeside);
  if (grouping.verdict === "bridges-only" || blocking.length === 0) return grouping;
  return { verdict: grouping.verdict === "isolated" ? "blocked" : grouping.verdict, reason: [grouping.reason, ...blocking.map((bridge) => `but it holds ${describeBlockingBridge(bridge)}: ${freeBridge(bridge.address, bridge.driver!)}`)].join("; ") };
}

/** "bridge 00:01.0 on shpchp, which vfio does not accept beside a device passed through". */
export const describeBlockingBridge = (bridge: GroupDevice) => `bridge ${short(bridge.address)} on ${bridge.driver}, which vfio does not accept beside a device passed through`;

/** The verdict from which cards share the group, bridges aside. */
function groupingVerdict(devices: GroupDevice[]): { verdict: GroupVerdict; reason: string } {
  const endpoints = devices.filter((device) => !device.bridge);
  const slots = [...new Set(endpoints.map((device) => slotOf(device.address)))];
  if (endpoints.length === 0) return { verdict: "bridges-only", reason: "only bridges: nothing to pass through" };
  if (slots.length === 1) {
    return endpoints.length === 1
      ? { verdict: "isolated", reason: `${short(endpoints[0]!.address)} can be passed through alone` }
      : { verdict: "isolated", reason: `one card: pass all ${endpoints.length} functions (${endpoints.map((d) => short(d.address)).join(", ")}) together` };
  }
  const cards = slots.map((slot) => {
    const functions = endpoints.filter((device) => slotOf(device.address) === slot);
    return `${short(slot)} (${functions.map((device) => device.className ?? device.ids).join(", ")})`;
  });
  return {
    verdict: "shared",
    // Not "impossible": prepare accepts the others beside it when they have no driver or one vfio accepts (viableBeside).
    reason: `${slots.length} cards share it: ${cards.join(", ")}; a group goes to a VM whole: to pass one card through, give the VM the others too, or leave them with no driver or on vfio-pci/pci-stub (the host cannot use them meanwhile), or move the card to a slot with its own group`,
  };
}

/** Why there are no groups, from the CPU vendor and the kernel command line. */
export function iommuOffAdvice(host: Host): { reason: string; fix: string } {
  const cpuinfo = host.readTrimmed("/proc/cpuinfo") ?? "";
  const cmdline = (host.readTrimmed("/proc/cmdline") ?? "").split(/\s+/);
  const vendor = /^vendor_id\s*:\s*(\S+)/m.exec(cpuinfo)?.[1];
  const disabling = cmdline.find((word) => ["iommu=off", "intel_iommu=off", "amd_iommu=off"].includes(word));
  if (disabling) {
    return { reason: `the IOMMU is off: the kernel was booted with ${disabling}`, fix: howToBootWithout(host, disabling) };
  }
  if (vendor === "GenuineIntel") {
    return cmdline.includes("intel_iommu=on")
      ? { reason: "the IOMMU is off: the kernel has intel_iommu=on but found no IOMMU", fix: "enable VT-d (Intel Virtualization Technology for Directed I/O) in the firmware setup" }
      : { reason: "the IOMMU is off (Intel CPU, no intel_iommu=on on the kernel command line)", fix: `boot with intel_iommu=on iommu=pt: ${howToBootWith(host, "intel_iommu=on iommu=pt")}; VT-d must be enabled in the firmware setup` };
  }
  if (vendor === "AuthenticAMD") {
    return {
      reason: "the IOMMU is off (AMD CPU: the kernel turns the AMD IOMMU on by itself when the firmware provides it)",
      fix: `enable the IOMMU (AMD-Vi) in the firmware setup and boot with iommu=pt (amd_iommu=on, which guides add, does no harm): ${howToBootWith(host, "iommu=pt")}`,
    };
  }
  return { reason: "the IOMMU is off (no IOMMU groups in /sys/kernel/iommu_groups)", fix: `enable VT-d/AMD-Vi in the firmware setup and boot with intel_iommu=on iommu=pt (Intel) or amd_iommu=on iommu=pt (AMD): ${howToBootWith(host, "intel_iommu=on iommu=pt (or amd_iommu=on iommu=pt)")}` };
}

/** "10de:2684 NVIDIA Corporation AD102 [GeForce RTX 4090]", as far as names are known. */
export function describeDevice(device: GroupDevice): string {
  const name = [device.vendorName, device.deviceName].filter(Boolean).join(" ");
  return `${device.ids}${name ? ` ${name}` : ""}`;
}
