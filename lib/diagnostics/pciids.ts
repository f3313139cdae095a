// Names for PCI vendor, device and class ids from the pci.ids database (the
// file lspci reads), when the host has it. The file is about 1.3 MB; one pass
// keeps only the entries asked for instead of building a table of all of it.
import type { Host } from "../host.ts";
import type { PciDevice } from "../pci.ts";

const PCI_IDS_FILES = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"];

/** What to name: lower-case hex ids without 0x ("10de", "2684", class "0300"). */
export interface PciIdQuery {
  vendor: string;
  device: string;
  /** Class and subclass, four hex digits. */
  classCode: string;
}

export interface PciNames {
  /** The pci.ids file read, or undefined when the host has none. */
  source?: string;
  vendor(vendor: string): string | undefined;
  device(vendor: string, device: string): string | undefined;
  className(classCode: string): string | undefined;
}

/** Class names for when the host has no pci.ids: the classes passthrough users meet. */
const COMMON_CLASSES: Record<string, string> = {
  "0106": "SATA controller",
  "0108": "Non-Volatile memory controller",
  "0200": "Ethernet controller",
  "0280": "Network controller",
  "0300": "VGA compatible controller",
  "0302": "3D controller",
  "0380": "Display controller",
  "0403": "Audio device",
  "0600": "Host bridge",
  "0601": "ISA bridge",
  "0604": "PCI bridge",
  "0c03": "USB controller",
  "0c05": "SMBus",
};

export function readPciNames(host: Host, queries: PciIdQuery[]): PciNames {
  const vendors = new Map<string, string>();
  const devices = new Map<string, string>();
  const classes = new Map<string, string>();
  const source = PCI_IDS_FILES.find((file) => host.exists(file));
  if (source) scan(host.read(source), queries, vendors, devices, classes);
  return {
    source,
    vendor: (vendor) => vendors.get(vendor),
    device: (vendor, device) => devices.get(`${vendor}:${device}`),
    className: (classCode) => classes.get(classCode) ?? COMMON_CLASSES[classCode] ?? classes.get(classCode.slice(0, 2)),
  };
}

/** Each device as "0000:01:00.0 (10de:2684 NVIDIA Corporation AD102 [GeForce RTX 4090])", as far as pci.ids names it; one pass over the file for all. */
export function pciDeviceLabels(host: Host, devices: Pick<PciDevice, "address" | "vendor" | "device" | "classCode">[]): string[] {
  const hex = (value: string) => value.replace(/^0x/, "").toLowerCase();
  const ids = devices.map((device) => ({ vendor: hex(device.vendor), device: hex(device.device), classCode: hex(device.classCode).slice(0, 4) }));
  const names = readPciNames(host, ids);
  return devices.map((device, index) => {
    const { vendor, device: id } = ids[index]!;
    const name = [names.vendor(vendor), names.device(vendor, id)].filter(Boolean).join(" ");
    return `${device.address} (${vendor}:${id}${name ? ` ${name}` : ""})`;
  });
}

/**
 * pci.ids lines: "vvvv  Vendor", "\tdddd  Device", "\t\tssss ssss  Subsystem";
 * then the class section: "C cc  Class", "\tss  Subclass", "\t\tpp  Prog-if".
 */
function scan(text: string, queries: PciIdQuery[], vendors: Map<string, string>, devices: Map<string, string>, classes: Map<string, string>): void {
  const wantedVendors = new Set(queries.map((query) => query.vendor));
  const wantedDevices = new Set(queries.map((query) => `${query.vendor}:${query.device}`));
  const wantedClasses = new Set(queries.flatMap((query) => [query.classCode.slice(0, 2), query.classCode]));
  let vendor: string | undefined; // the current vendor, when wanted
  let baseClass: string | undefined; // the current class, when wanted
  let inClasses = false;
  for (let start = 0; start < text.length; ) {
    const newline = text.indexOf("\n", start);
    const end = newline === -1 ? text.length : newline;
    const line = text.slice(start, end);
    start = end + 1;
    if (line === "" || line.startsWith("#") || line.startsWith("\t\t")) continue;
    if (line.startsWith("\t")) {
      const id = line.slice(1, inClasses ? 3 : 5);
      const name = line.slice(inClasses ? 5 : 7).trim();
      if (!inClasses && vendor && wantedDevices.has(`${vendor}:${id}`)) devices.set(`${vendor}:${id}`, name);
      if (inClasses && baseClass && wantedClasses.has(`${baseClass}${id}`)) classes.set(`${baseClass}${id}`, name);
      continue;
    }
    if (line.startsWith("C ")) {
      inClasses = true;
      const id = line.slice(2, 4);
      baseClass = wantedClasses.has(id) ? id : undefined;
      if (baseClass) classes.set(id, line.slice(6).trim());
      continue;
    }
    inClasses = false;
    const id = line.slice(0, 4);
    vendor = wantedVendors.has(id) && /^[0-9a-f]{4} /.test(line) ? id : undefined;
    if (vendor) vendors.set(id, line.slice(6).trim());
  }
}
