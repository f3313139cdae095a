// `vmhook doctor --fix`: doctor's advice on the domain XML, made into edits
// of the XML itself — hidden KVM and a Hyper-V vendor_id for NVIDIA GPUs,
// virtio disks and NICs, no memory balloon with VFIO, <memoryBacking>
// <hugepages/> where <vmhook:hugepages> reserves pages, every function of a
// passed-through GPU's slot. Reads the host (sysfs) only to know the devices;
// the XML is the only thing it changes, and the caller decides what to do with it.
import { DOMParser, XMLSerializer, type Document, type Element } from "@xmldom/xmldom";
import { metadataChildren, parseDomain, parseXmlDocument, type PciHostdev } from "../domain.ts";
import type { Host } from "../host.ts";
import { childElements } from "../metadata-text.ts";
import { NAMESPACE_URI } from "../paths.ts";
import { isDisplayClass, pciExists, pciIommuGroup, readPciDevice, slotFunctions } from "../pci.ts";
import { parseSizeWithSuffix } from "../validate.ts";
import { handedOverByElements } from "../../plugins/vfio/survey.ts";

export interface DomainFix {
  /** The element it changes: "<features><kvm>". */
  element: string;
  /** Why, in one line. */
  reason: string;
}

export interface FixedDomain {
  /** The domain XML as parsed and written back, before and after the fixes: their diff is the fixes alone. */
  before: string;
  after: string;
  fixes: DomainFix[];
}

const NVIDIA = "0x10de";
/** Twelve characters at most (Hyper-V's vendor id). */
const HYPERV_VENDOR_ID = "0123456789ab";

const child = (parent: Element, name: string) => childElements(parent).find((element) => element.localName === name);
const children = (parent: Element, name: string) => childElements(parent).filter((element) => element.localName === name);

/** The indentation of an element's line, from the white space before it. */
function indentOf(element: Element): string {
  const previous = element.previousSibling;
  return previous?.nodeType === 3 ? (/\n([ \t]*)$/.exec(previous.nodeValue ?? "")?.[1] ?? "") : "";
}

/** The element parsed from `xml`, whose lines (after the first) are indented by `indent` more. */
function importXml(document: Document, xml: string, indent: string): Element {
  return document.importNode(new DOMParser().parseFromString(xml.replace(/\n/g, `\n${indent}`), "text/xml").documentElement!, true) as Element;
}

/** Appends `xml` (one element; nested lines indented by two spaces) as the parent's last child, indented like its siblings. */
function appendXml(document: Document, parent: Element, xml: string): Element {
  const indent = indentOf(parent);
  const element = importXml(document, xml, `${indent}  `);
  const last = parent.lastChild;
  const closingSpace = last?.nodeType === 3 && /^\s*$/.test(last.nodeValue ?? "") ? last : undefined;
  if (closingSpace) {
    parent.insertBefore(document.createTextNode(`\n${indent}  `), closingSpace);
    parent.insertBefore(element, closingSpace);
  } else {
    parent.appendChild(document.createTextNode(`\n${indent}  `));
    parent.appendChild(element);
    parent.appendChild(document.createTextNode(`\n${indent}`));
  }
  return element;
}

/** Inserts `xml` on its own line right after `sibling`. */
function insertAfter(document: Document, sibling: Element, xml: string): Element {
  const indent = indentOf(sibling);
  const element = importXml(document, xml, indent);
  const parent = sibling.parentNode!;
  parent.insertBefore(element, sibling.nextSibling);
  parent.insertBefore(document.createTextNode(`\n${indent}`), element);
  return element;
}

/** Removes an element with the white space of its line. */
function removeElement(element: Element): void {
  const previous = element.previousSibling;
  if (previous?.nodeType === 3 && /^\s*$/.test(previous.nodeValue ?? "")) element.parentNode!.removeChild(previous);
  element.parentNode!.removeChild(element);
}

/** The child element, created (as `xml`) when missing. */
function ensureChild(document: Document, parent: Element, name: string, xml = `<${name}/>`): Element {
  return child(parent, name) ?? appendXml(document, parent, xml);
}

const hex = (value: number, width: number) => `0x${value.toString(16).padStart(width, "0")}`;

function hostdevXml(pciAddress: string): string {
  const [domain, bus, slotFunction] = pciAddress.split(":") as [string, string, string];
  const [slot, fn] = slotFunction.split(".") as [string, string];
  const address = `<address domain="${hex(parseInt(domain, 16), 4)}" bus="${hex(parseInt(bus, 16), 2)}" slot="${hex(parseInt(slot, 16), 2)}" function="${hex(parseInt(fn, 16), 1)}"/>`;
  return `<hostdev mode="subsystem" type="pci" managed="yes">\n  <source>\n    ${address}\n  </source>\n</hostdev>`;
}

/** The domain's PCI hostdevs that are NVIDIA GPUs on this host. */
export function nvidiaGpus(host: Host, hostdevs: PciHostdev[]): string[] {
  return hostdevs
    .filter((hostdev) => pciExists(host, hostdev.address))
    .map((hostdev) => readPciDevice(host, hostdev.address))
    .filter((device) => device.vendor === NVIDIA && isDisplayClass(device.classCode))
    .map((device) => device.address);
}

export function fixDomainXml(host: Host, xml: string, what: string): FixedDomain {
  const domain = parseDomain(xml, what);
  const document = parseXmlDocument(xml, what);
  const serialize = () => new XMLSerializer().serializeToString(document);
  const before = serialize();
  const root = document.documentElement!;
  const devices = ensureChild(document, root, "devices");
  const fixes: DomainFix[] = [];
  const pci = domain.hostdevs.filter((hostdev): hostdev is PciHostdev => hostdev.type === "pci");

  const gpus = nvidiaGpus(host, pci);
  if (gpus.length > 0) {
    const features = ensureChild(document, root, "features");
    const kvm = ensureChild(document, features, "kvm", "<kvm>\n  <hidden state=\"on\"/>\n</kvm>");
    const hidden = ensureChild(document, kvm, "hidden", '<hidden state="on"/>');
    if (hidden.getAttribute("state") !== "on") hidden.setAttribute("state", "on");
    const hyperv = ensureChild(document, features, "hyperv", `<hyperv mode="custom">\n  <vendor_id state="on" value="${HYPERV_VENDOR_ID}"/>\n</hyperv>`);
    const vendor = ensureChild(document, hyperv, "vendor_id", `<vendor_id state="on" value="${HYPERV_VENDOR_ID}"/>`);
    if (vendor.getAttribute("state") !== "on") vendor.setAttribute("state", "on");
    if (!vendor.getAttribute("value")) vendor.setAttribute("value", HYPERV_VENDOR_ID);
    const changed = serialize() !== before;
    if (changed) fixes.push({ element: "<features><kvm><hidden>, <hyperv><vendor_id>", reason: `NVIDIA GPU ${gpus.join(", ")}: drivers older than 465 stop with Error 43 when they see a hypervisor` });
  }

  fixes.push(...virtioDisks(devices), ...virtioNics(document, devices));

  if (pci.length > 0) {
    const balloon = child(devices, "memballoon");
    if (!balloon || balloon.getAttribute("model") !== "none") {
      if (balloon) {
        balloon.setAttribute("model", "none");
        // its PCI address and stats belong to the device that goes away
        childElements(balloon).forEach(removeElement);
        while (balloon.firstChild) balloon.removeChild(balloon.firstChild);
      } else appendXml(document, devices, '<memballoon model="none"/>');
      fixes.push({ element: "<memballoon model='none'/>", reason: "VFIO pins all guest memory, so a balloon cannot give any back" });
    }
    const memory = child(root, "memory");
    const current = child(root, "currentMemory");
    if (memory && current && domain.currentMemoryKiB < domain.memoryKiB) {
      current.textContent = memory.textContent;
      current.setAttribute("unit", memory.getAttribute("unit") || "KiB");
      fixes.push({ element: "<currentMemory>", reason: "equal to <memory>: with VFIO the guest holds all of it from the start" });
    }
  }

  const hugepagesElement = domain.metadata && metadataChildren(domain.metadata).find((element) => element.namespaceURI === NAMESPACE_URI && element.localName === "hugepages");
  if (hugepagesElement && !domain.hugepages) {
    const size = hugepagesElement.getAttribute("size");
    const page = size ? `<page size="${parseSizeWithSuffix(size, "<vmhook:hugepages>", "size")}" unit="KiB"/>` : "";
    const hugepages = page ? `<hugepages>\n  ${page}\n</hugepages>` : "<hugepages/>";
    const backing = child(root, "memoryBacking");
    if (backing) appendXml(document, backing, hugepages);
    else {
      const memory = child(root, "currentMemory") ?? child(root, "memory");
      const xml = `<memoryBacking>\n  ${hugepages.replace(/\n/g, "\n  ")}\n</memoryBacking>`;
      if (memory) insertAfter(document, memory, xml);
      else appendXml(document, root, xml);
    }
    fixes.push({ element: "<memoryBacking><hugepages/>", reason: "<vmhook:hugepages> reserves the pages; without it QEMU does not use them" });
  }

  const present = new Set(pci.map((hostdev) => hostdev.address));
  const vfioElements = domain.metadata ? metadataChildren(domain.metadata).filter((element) => element.namespaceURI === NAMESPACE_URI && element.localName === "vfio") : [];
  const handedOver = new Set(vfioElements.length > 0 ? (handedOverByElements(host, vfioElements, domain) ?? []) : []);
  for (const gpu of pci.filter((hostdev) => pciExists(host, hostdev.address) && isDisplayClass(readPciDevice(host, hostdev.address).classCode))) {
    for (const sibling of cardFunctions(host, gpu.address, handedOver).filter((address) => !present.has(address))) {
      appendXml(document, devices, hostdevXml(sibling));
      present.add(sibling);
      fixes.push({ element: `<hostdev> ${sibling}`, reason: siblingReason(host, gpu.address, sibling, handedOver) });
    }
  }
  return { before, after: serialize(), fixes };
}

/**
 * The other functions of a GPU's card: those of its slot that vfio hands over
 * or that share its IOMMU group, and those of the GPU's vendor (a card's HDMI
 * audio in a group of its own). An APU's iGPU shares its slot with the
 * platform's functions, of another vendor (AMD's 1022 beside the GPU's 1002)
 * and each in its own group: the host's USB controllers, PSP and audio.
 */
function cardFunctions(host: Host, gpu: string, handedOver: Set<string>): string[] {
  const group = pciIommuGroup(host, gpu);
  const vendor = readPciDevice(host, gpu).vendor;
  return slotFunctions(host, gpu).filter((address) => handedOver.has(address) || pciIommuGroup(host, address) === group || readPciDevice(host, address).vendor === vendor);
}

/** Why the VM should have another function of its GPU's card: what takes it from the host anyway, if anything does. */
function siblingReason(host: Host, gpu: string, sibling: string, handedOver: Set<string>): string {
  const card = `on the same card as ${gpu}`;
  if (handedOver.has(sibling)) return `${card}: vfio takes it from the host anyway, so the VM should have it`;
  // The kernel lets QEMU open a group only when no host driver holds a member; managed='yes' detaches the <hostdev>s alone.
  const group = pciIommuGroup(host, gpu);
  if (group !== undefined && pciIommuGroup(host, sibling) === group) {
    return `${card} and in its IOMMU group ${group}: QEMU can open ${gpu} only once every device of the group is off the host's drivers, and libvirt detaches only the <hostdev>s, so the VM should have it`;
  }
  return `${card}: without a <hostdev> the VM gets the GPU without this function (its HDMI audio or USB-C)`;
}

function virtioDisks(devices: Element): DomainFix[] {
  const virtioScsi = children(devices, "controller").some((controller) => controller.getAttribute("type") === "scsi" && controller.getAttribute("model") === "virtio-scsi");
  const disks = children(devices, "disk").filter((disk) => (disk.getAttribute("device") ?? "disk") === "disk");
  const used = new Set(disks.map((disk) => child(disk, "target")?.getAttribute("dev") ?? ""));
  const fixes: DomainFix[] = [];
  for (const disk of disks) {
    const target = child(disk, "target");
    const bus = target?.getAttribute("bus") ?? "";
    if (!target || bus === "virtio" || (bus === "scsi" && virtioScsi)) continue;
    const old = target.getAttribute("dev") ?? "";
    target.setAttribute("bus", "virtio");
    if (!old.startsWith("vd")) {
      const name = nextVirtioName(used);
      used.add(name);
      target.setAttribute("dev", name);
    }
    // a drive address belongs to the emulated controller; libvirt picks a PCI slot for virtio
    const address = child(disk, "address");
    if (address?.getAttribute("type") === "drive") removeElement(address);
    fixes.push({ element: `<disk> ${old}`, reason: `bus ${bus || "default"} → virtio: emulated controllers are much slower (Windows needs the virtio-win drivers installed first)` });
  }
  return fixes;
}

function nextVirtioName(used: Set<string>): string {
  for (let index = 0; ; index++) {
    const name = `vd${index < 26 ? String.fromCharCode(97 + index) : `a${String.fromCharCode(97 + index - 26)}`}`;
    if (!used.has(name)) return name;
  }
}

function virtioNics(document: Document, devices: Element): DomainFix[] {
  const fixes: DomainFix[] = [];
  for (const nic of children(devices, "interface").filter((candidate) => candidate.getAttribute("type") !== "hostdev")) {
    const model = child(nic, "model");
    const old = model?.getAttribute("type") ?? "default";
    if (old === "virtio") continue;
    if (model) model.setAttribute("type", "virtio");
    else appendXml(document, nic, '<model type="virtio"/>');
    const mac = child(nic, "mac")?.getAttribute("address");
    fixes.push({ element: `<interface>${mac ? ` ${mac}` : ""}`, reason: `model ${old} → virtio: an emulated NIC is much slower (Windows needs the virtio-win drivers installed first)` });
  }
  return fixes;
}
