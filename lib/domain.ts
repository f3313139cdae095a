// The domain XML as vmhook needs it: identity, memory, NUMA, CPU pinning,
// host devices, and the vmhook metadata element. Everything a plugin can
// derive from standard libvirt XML is read here once.
import { attributeText, ConfigError, excerpt, VmhookError } from "./errors.ts";
import { NAMESPACE_URI, ROOT_ELEMENT } from "./paths.ts";
import { childElements, metadataNode, metadataNodes, prefixMistake, readableOthersPrefixes, refuseMisplacedNamespace, virshSetCommand, type MetadataNode } from "./metadata-text.ts";
import { parseCpuset, parseCpusetUnion, parseNodeset } from "./cpuset.ts";
import { PATTERNS, parseInteger, parsePciAddress, parseUuid, sizeToKiB } from "./validate.ts";
import { declaresNamespace, ELEMENT_NODE, xmldom, type XmlDocument, type XmlElement, type XmlNode } from "./xml.ts";
import { readXml, XmlSyntaxError } from "./xml-reader.ts";

export interface PciHostdev {
  type: "pci";
  address: string;
  managed: boolean;
  /** <driver model='…'/>: the VFIO driver libvirt (>= 10.0) binds instead of the one it would choose (vfio-pci, or a variant of it). */
  driverModel?: string;
}

export interface MdevHostdev {
  type: "mdev";
  uuid: string;
  /** vfio-pci, vfio-ccw, vfio-ap: the mdev's device API. */
  model: string;
}

/** A guest NIC on a libvirt network or bridge: what the forward plugin needs to find the guest's address. */
export interface NetworkInterface {
  type: string;
  /** Lower-case aa:bb:cc:dd:ee:ff; undefined when libvirt has not assigned one yet. */
  mac?: string;
  /** <source network>: the libvirt network's name, as written (checked before it names a file). */
  network?: string;
}

export interface NumaCell {
  id: number;
  memoryKiB: number;
}

/**
 * <devices><memory model='dimm|virtio-mem'>: hotpluggable memory present at
 * start, counted in <memory> beside the cells, backed like its target cell
 * (virtio-mem: up to its whole <size>, as the guest plugs it).
 */
export interface MemoryDevice {
  model: "dimm" | "virtio-mem";
  /** <target><size>: for virtio-mem, the most the guest can plug. */
  sizeKiB: number;
  /** <target><node>: the guest NUMA cell it belongs to. */
  node?: number;
  /** <source><pagesize>: its own huge page size. */
  pageSizeKiB?: number;
  /** <source><nodemask>: the host nodes its memory comes from. */
  nodemask?: number[];
}

export interface Domain {
  name: string;
  uuid: string;
  memoryKiB: number;
  currentMemoryKiB: number;
  vcpus: number;
  /** <memoryBacking><hugepages>: present, with its <page> entries (size in KiB, optional guest nodeset). */
  hugepages?: { pages: { sizeKiB: number; nodeset?: string }[] };
  /**
   * <numatune><memory>: host NUMA nodes for all guest memory. placement
   * "auto": numad picks them as the domain starts, after the prepare hook
   * (libvirt drops any nodeset), also implied by <vcpu placement='auto'>.
   */
  numatuneMemory?: { mode: string; placement: "static" | "auto"; nodeset?: number[] };
  /** <numatune><memnode cellid nodeset>: host nodes per guest cell. */
  memnodes: { cellid: number; mode: string; nodeset: number[] }[];
  /** <cpu><numa><cell>: guest NUMA cells. */
  numaCells: NumaCell[];
  memoryDevices: MemoryDevice[];
  /** <cputune>: every CPU its vcpupin, emulatorpin and iothreadpin cpusets name, together. */
  cputune: { pinned: number[] };
  /**
   * <vcpu cpuset>: where libvirt runs every vCPU, the emulator and each I/O
   * thread that has no pin of its own; undefined with placement 'auto', where
   * libvirt ignores it for numad's choice.
   */
  vcpuCpuset?: number[];
  hostdevs: (PciHostdev | MdevHostdev)[];
  /**
   * <interface type='hostdev'> with a PCI source: a NIC (an SR-IOV VF) the VM
   * gets as a network interface; with managed='yes' libvirt moves it to
   * vfio-pci itself, after prepare. libvirt keeps it out of the <hostdev>s.
   */
  hostdevInterfaces: PciHostdev[];
  interfaces: NetworkInterface[];
  /**
   * The user of <seclabel model='dac'><label>USER:GROUP</label> (a name, or
   * +UID): libvirt runs the domain's QEMU as that user in place of
   * qemu.conf's. Undefined when the domain sets none.
   */
  dacUser?: string;
  /** The <vmhook:hooks> element, if the domain has one. */
  metadata?: XmlElement;
}

// Elements are found by walking child elements, as an XPath location path
// without predicates would ("/domain/devices/hostdev"): each step matches
// elements in no namespace, in document order. The xpath package cost more
// than the rest of the hook's start under TCG (docs/bench.md).

/** The child elements of `parent` named `name`, in no namespace. */
function childElementsOf(parent: XmlNode, name: string): XmlElement[] {
  const found: XmlElement[] = [];
  for (let node = parent.firstChild; node; node = node.nextSibling) {
    if (node.nodeType !== ELEMENT_NODE) continue;
    const element = node as XmlElement;
    if (!element.namespaceURI && element.localName === name) found.push(element);
  }
  return found;
}

/** The elements at `steps` below `context`: nodes(document, "domain", "devices", "hostdev"). Plain loops: reduce and flatMap are JavaScript built-ins compiled at their first call, a cost under TCG. */
function nodes(context: XmlNode, ...steps: string[]): XmlElement[] {
  let found: XmlNode[] = [context];
  for (let step = 0; step < steps.length; step++) {
    const next: XmlElement[] = [];
    for (let i = 0; i < found.length; i++) next.push(...childElementsOf(found[i]!, steps[step]));
    found = next;
  }
  return found as XmlElement[];
}

export { nodes as elementsAt };

function first(context: XmlNode, ...steps: string[]): XmlElement | undefined {
  return nodes(context, ...steps)[0];
}

function text(context: XmlNode, ...steps: string[]): string | undefined {
  return first(context, ...steps)?.textContent?.trim() || undefined;
}

function attr(element: XmlElement | undefined, name: string): string | undefined {
  if (!element || !element.hasAttribute(name)) return undefined;
  return element.getAttribute(name) ?? undefined;
}

function refuseEmpty(xml: string, what: string): void {
  if (xml.trim() === "") throw new VmhookError(`${what} is empty; expected a libvirt <domain> XML document`);
}

function notWellFormed(xml: string, what: string, problem: string): Error {
  // libvirt stores a prefixed element given to virsh metadata as <vmhook:vmhook:hooks>
  return prefixMistake(xml) ?? new VmhookError(`${what} is not well-formed XML: ${problem}`);
}

/** Reads XML text with Bun's parser into vmhook's nodes (xml-reader.ts), for reading only; a syntax error names the tags. */
export function readXmlDocument(xml: string, what: string): XmlDocument {
  refuseEmpty(xml, what);
  try {
    return readXml(readableOthersPrefixes(xml));
  } catch (error) {
    if (error instanceof XmlSyntaxError) throw notWellFormed(xml, what, error.message);
    throw error;
  }
}

/** Parses XML text into an xmldom document, to edit it, turning every parser complaint into one clear error. */
export function parseXmlDocument(xml: string, what: string) {
  refuseEmpty(xml, what);
  const problems: string[] = [];
  const { DOMParser } = xmldom();
  let document;
  try {
    document = new DOMParser({
      onError: (level: string, message: string) => {
        if (level !== "warning") problems.push(message);
      },
    }).parseFromString(readableOthersPrefixes(xml), "text/xml");
  } catch (error) {
    problems.push(error instanceof Error ? error.message : String(error));
  }
  if (!document || problems.length > 0) throw notWellFormed(xml, what, problems[0]?.split("\n")[0] ?? "unknown error");
  return document;
}

/** Reads the parts of a domain XML that vmhook uses. Throws ConfigError naming the element on bad values. */
export function parseDomain(xml: string, what = "domain XML"): Domain {
  const document = readXmlDocument(xml, what);
  const root = document.documentElement;
  if (!root || root.localName !== "domain") {
    throw new VmhookError(`${what}: the root element is <${root?.localName ?? "none"}>, expected <domain>`);
  }
  // Exactly as libvirt keeps it, spaces included: it names libvirt's pid file
  // (/run/libvirt/qemu/NAME.pid), by which vmhook recover tells a running domain.
  const name = first(document, "domain", "name")?.textContent ?? "";
  if (name.trim() === "") throw new ConfigError("<domain>", "has no <name>");
  const uuidText = text(document, "domain", "uuid");
  if (!uuidText) throw new ConfigError("<domain>", "has no <uuid>; libvirt adds one on define, so pass the XML from virsh dumpxml");
  const uuid = parseUuid(uuidText, "<uuid>", "value");

  const memoryElement = first(document, "domain", "memory");
  const memoryKiB = memoryElement ? sizeToKiB(memoryElement.textContent ?? "", attr(memoryElement, "unit"), "<memory>", "value") : 0;
  const currentElement = first(document, "domain", "currentMemory");
  const currentMemoryKiB = currentElement
    ? sizeToKiB(currentElement.textContent ?? "", attr(currentElement, "unit"), "<currentMemory>", "value")
    : memoryKiB;
  const vcpuText = text(document, "domain", "vcpu");
  const vcpus = vcpuText ? parseInteger(vcpuText, "<vcpu>", "value", 1, 16384) : 1;
  const vcpuElement = first(document, "domain", "vcpu");
  const vcpuCpusetText = attr(vcpuElement, "placement") === "auto" ? undefined : attr(vcpuElement, "cpuset");
  const vcpuCpuset = vcpuCpusetText !== undefined ? parseCpuset(vcpuCpusetText, "<vcpu>", "cpuset") : undefined;
  const dacUser = parseDacUser(document);

  return {
    name,
    uuid,
    memoryKiB,
    currentMemoryKiB,
    vcpus,
    hugepages: parseMemoryBacking(document),
    ...parseNumatune(document),
    numaCells: nodes(document, "domain", "cpu", "numa", "cell").map((cell, index) => ({
      id: attr(cell, "id") !== undefined ? parseInteger(attr(cell, "id")!, "<cpu><numa><cell>", "id", 0, 1023) : index,
      memoryKiB: sizeToKiB(attr(cell, "memory") ?? "0", attr(cell, "unit"), "<cpu><numa><cell>", "memory"),
    })),
    memoryDevices: parseMemoryDevices(document),
    cputune: { pinned: parseCputune(document) },
    ...(vcpuCpuset ? { vcpuCpuset } : {}),
    hostdevs: parseHostdevs(document),
    hostdevInterfaces: parseHostdevInterfaces(document),
    interfaces: parseInterfaces(document),
    ...(dacUser ? { dacUser } : {}),
    metadata: parseMetadata(document, name),
  };
}

/**
 * The domain's seclabel user (Domain.dacUser) from XML the hook has not
 * parsed yet (vmhook hook's check before it acts); undefined when it sets
 * none or is not well-formed: the hook then refuses the XML itself.
 */
export function dacUserFromXml(xml: string): string | undefined {
  try {
    return parseDacUser(readXmlDocument(xml, "domain XML"));
  } catch {
    return undefined;
  }
}

/** The USER of the domain's <seclabel model='dac'><label>USER:GROUP</label> (a device's own <seclabel> labels files, not QEMU); undefined when it has none. */
function parseDacUser(document: XmlNode): string | undefined {
  const dac = nodes(document, "domain", "seclabel").find((seclabel) => attr(seclabel, "model") === "dac");
  const label = dac ? text(dac, "label") : undefined;
  return label?.split(":")[0]?.trim() || undefined;
}

/** <vmhook:hooks> in <metadata>; any other element there in vmhook's namespace is refused. */
function parseMetadata(document: XmlNode, domainName: string): XmlElement | undefined {
  const elements = metadataElements(document);
  refuseStrayElements(elements, domainName);
  refuseSecondHooks(elements, domainName);
  return elements.find((element) => element.namespaceURI === NAMESPACE_URI && element.localName === ROOT_ELEMENT) ?? refuseMisplacedNamespace(elements, domainName);
}

/**
 * The elements of the first <metadata>: libvirt reads only that one
 * (./metadata[1]) and drops the others at define. vmhook's element in a later
 * one is refused, as it would pass a check of the file and never run.
 */
function metadataElements(document: XmlNode): XmlElement[] {
  const [first, ...later] = nodes(document, "domain", "metadata");
  for (const [index, metadata] of later.entries()) {
    const ours = childElements(metadata).find((element) => element.namespaceURI === NAMESPACE_URI);
    if (ours) throw new ConfigError("<metadata>", `appears ${later.length + 1} times: libvirt keeps only the first (virsh define drops the others), so <${ours.tagName}> in <metadata> number ${index + 2} would never run; move it into the first <metadata>`);
  }
  return first ? childElements(first) : [];
}

/** vmhook's elements in <metadata> (libvirt keeps one), and the first that is not <hooks>. */
function vmhookElements(metadataChildren: XmlElement[]): { vmhooks: XmlElement[]; stray?: XmlElement } {
  const vmhooks = metadataChildren.filter((element) => element.namespaceURI === NAMESPACE_URI);
  return { vmhooks, stray: vmhooks.find((element) => element.localName !== ROOT_ELEMENT) };
}

/** The plugin elements of vmhook's elements in <metadata>: those of <hooks>, and any that stands outside it. */
function pluginNodes(vmhooks: XmlElement[]): MetadataNode[] {
  return vmhooks.flatMap((element) => (element.localName === ROOT_ELEMENT ? metadataNodes(element) : [metadataNode(element)]));
}

/**
 * A plugin element in vmhook's namespace straight in <metadata>, as `virsh
 * metadata --set '<hugepages/>'` stores one: vmhook reads only <vmhook:hooks>,
 * so its configuration would silently never run.
 */
function refuseStrayElements(metadataChildren: XmlElement[], domainName: string): void {
  const { vmhooks, stray } = vmhookElements(metadataChildren);
  if (!stray) return;
  // The fix stores every vmhook element there in one <hooks>, so none is lost.
  throw new ConfigError(describeElement(stray), `stands straight in <metadata>, outside <vmhook:${ROOT_ELEMENT}>, where vmhook does not read it, so it would never run; vmhook's metadata is one <${ROOT_ELEMENT}> element around the plugin elements`, [`fix: ${virshSetCommand(domainName, pluginNodes(vmhooks))}`]);
}

/**
 * A second <vmhook:hooks> in <metadata>, as written by hand in a file: libvirt
 * keeps the first element of each namespace there and drops the others at
 * define (virXMLNodeSanitizeNamespaces), so its plugins would silently never run.
 */
function refuseSecondHooks(metadataChildren: XmlElement[], domainName: string): void {
  const { vmhooks } = vmhookElements(metadataChildren);
  const second = vmhooks[1];
  if (!second) return;
  throw new ConfigError(`<${second.tagName}>`, `is a second element in vmhook's namespace in <metadata>: libvirt keeps only the first (virsh define drops the others), so its plugins would never run; merge them into one <vmhook:${ROOT_ELEMENT}>`, [`fix: ${virshSetCommand(domainName, pluginNodes(vmhooks))}`]);
}

/**
 * The plugin elements libvirt holds in vmhook's namespace, for `vmhook config`
 * to show and store again: inside <hooks>, or straight in <metadata>, where the
 * hook refuses them (`stray` names the first such element).
 */
export function storedPlugins(xml: string, domainName: string): { nodes: MetadataNode[]; stray?: string } {
  const elements = metadataElements(readXmlDocument(xml, `domain ${domainName}`));
  const { vmhooks, stray } = vmhookElements(elements);
  if (vmhooks.length === 0) refuseMisplacedNamespace(elements, domainName);
  return { nodes: pluginNodes(vmhooks), ...(stray ? { stray: `<${stray.tagName}>` } : {}) };
}

/** The CPUs of every pin in <cputune> (the first emulatorpin, as libvirt reads one), together: only their union is used. */
function parseCputune(document: XmlNode): number[] {
  const pins = (name: string) => nodes(document, "domain", "cputune", name).map((pin) => ({ text: attr(pin, "cpuset") ?? "", element: `<cputune><${name}>` }));
  return parseCpusetUnion([...pins("vcpupin"), ...pins("emulatorpin").slice(0, 1), ...pins("iothreadpin")], "cpuset");
}

function parseMemoryBacking(document: XmlNode): Domain["hugepages"] {
  const hugepages = first(document, "domain", "memoryBacking", "hugepages");
  if (!hugepages) return undefined;
  return {
    pages: nodes(hugepages, "page").map((page) => ({
      sizeKiB: sizeToKiB(attr(page, "size") ?? "", attr(page, "unit") ?? "KiB", "<memoryBacking><hugepages><page>", "size"),
      nodeset: attr(page, "nodeset"),
    })),
  };
}

/** Memory devices whose memory is RAM (nvdimm and virtio-pmem map a file, sgx-epc is enclave memory). */
const RAM_MEMORY_MODELS = ["dimm", "virtio-mem"] as const;

function parseMemoryDevices(document: XmlNode): MemoryDevice[] {
  return nodes(document, "domain", "devices", "memory").flatMap((memory) => {
    const model = RAM_MEMORY_MODELS.find((ram) => ram === attr(memory, "model"));
    if (!model) return [];
    const where = `<devices><memory model='${model}'>`;
    const size = first(memory, "target", "size");
    const node = text(memory, "target", "node");
    const pagesize = first(memory, "source", "pagesize");
    const nodemask = text(memory, "source", "nodemask");
    return [
      {
        model,
        sizeKiB: sizeToKiB(size?.textContent ?? "", attr(size, "unit"), `${where}<target><size>`, "value"),
        ...(node === undefined ? {} : { node: parseInteger(node, `${where}<target><node>`, "value", 0, 1023) }),
        ...(pagesize ? { pageSizeKiB: sizeToKiB(pagesize.textContent ?? "", attr(pagesize, "unit"), `${where}<source><pagesize>`, "value") } : {}),
        ...(nodemask === undefined ? {} : { nodemask: parseNodeset(nodemask, `${where}<source><nodemask>`, "value") }),
      },
    ];
  });
}

function nodesetAttribute(value: string | undefined, where: string): number[] {
  return parseNodeset(value ?? "", where, "nodeset");
}

function parseNumatune(document: XmlNode): Pick<Domain, "numatuneMemory" | "memnodes"> {
  const memory = first(document, "domain", "numatune", "memory");
  const nodeset = attr(memory, "nodeset");
  const placement = attr(memory, "placement") ?? (nodeset === undefined && attr(first(document, "domain", "vcpu"), "placement") === "auto" ? "auto" : "static");
  // As libvirt reads it: numad's placement for the vCPUs is the memory's too when no <numatune><memory> names nodes.
  const placedByNumad = placement === "auto";
  return {
    numatuneMemory:
      memory || placedByNumad
        ? {
            mode: attr(memory, "mode") ?? "strict",
            placement: placedByNumad ? "auto" : "static",
            nodeset: nodeset !== undefined && !placedByNumad ? nodesetAttribute(nodeset, "<numatune><memory>") : undefined,
          }
        : undefined,
    memnodes: nodes(document, "domain", "numatune", "memnode").map((memnode) => ({
      cellid: parseInteger(attr(memnode, "cellid") ?? "", "<numatune><memnode>", "cellid", 0, 1023),
      mode: attr(memnode, "mode") ?? "strict",
      nodeset: nodesetAttribute(attr(memnode, "nodeset"), "<numatune><memnode>"),
    })),
  };
}

/** The largest value of each part of a PCI address (libvirt's virPCIDeviceAddressIsValid). */
const PCI_ADDRESS_LIMITS = { domain: 0xffffffff, bus: 0xff, slot: 0x1f, function: 0x7 };

function parseHostdevs(document: XmlNode): Domain["hostdevs"] {
  const hostdevs: Domain["hostdevs"] = [];
  // libvirt takes a hostdev without mode as a subsystem one.
  for (const hostdev of nodes(document, "domain", "devices", "hostdev").filter((hostdev) => (attr(hostdev, "mode") ?? "subsystem") === "subsystem")) {
    const type = attr(hostdev, "type");
    if (type === "pci") {
      const address = first(hostdev, "source", "address");
      if (!address) throw new ConfigError("<hostdev type='pci'>", "has no <source><address>");
      // A driver name: it becomes a path (/sys/bus/pci/drivers/NAME) and a module to load.
      const driverModel = attr(first(hostdev, "driver"), "model");
      if (driverModel !== undefined && !PATTERNS.moduleName.test(driverModel)) {
        throw new ConfigError("<hostdev type='pci'><driver>", `${attributeText("model", driverModel)} is not a driver name like vfio-pci or mlx5_vfio_pci`);
      }
      hostdevs.push({
        type: "pci",
        address: pciSourceAddress(address, "<hostdev type='pci'><source><address>"),
        managed: attr(hostdev, "managed") === "yes",
        ...(driverModel !== undefined ? { driverModel } : {}),
      });
    } else if (type === "mdev") {
      const address = first(hostdev, "source", "address");
      const model = attr(hostdev, "model") ?? "vfio-pci";
      hostdevs.push({
        type: "mdev",
        uuid: parseUuid(attr(address, "uuid") ?? "", "<hostdev type='mdev'><source><address>", "uuid"),
        model: PATTERNS.moduleName.test(model) ? model : "vfio-pci",
      });
    }
  }
  return hostdevs;
}

/** The PCI ones: libvirt takes the source's kind from its address's type (a USB one has type='usb'), and managed from the <interface>. */
function parseHostdevInterfaces(document: XmlNode): PciHostdev[] {
  return nodes(document, "domain", "devices", "interface").flatMap((nic) => {
    const address = first(nic, "source", "address");
    if (attr(nic, "type") !== "hostdev" || attr(address, "type") !== "pci") return [];
    return [{ type: "pci" as const, address: pciSourceAddress(address!, "<interface type='hostdev'><source><address type='pci'>"), managed: attr(nic, "managed") === "yes" }];
  });
}

/** A <source><address domain bus slot function> as the kernel names the device (0000:01:00.0). */
function pciSourceAddress(address: XmlElement, where: string): string {
  // As libvirt reads them (strtoul, base 0, after white space and a + sign): 0x0a hexadecimal, 10 decimal, 012 octal; within its limits (virPCIDeviceAddressIsValid, a 32-bit domain).
  const addressPart = (name: keyof typeof PCI_ADDRESS_LIMITS, fallback?: string) => {
    const value = attr(address, name) ?? fallback;
    const digits = value?.replace(/^[\t\n\v\f\r ]*\+?/, "");
    const number = digits === undefined ? undefined : /^0[xX][0-9a-fA-F]+$/.test(digits) ? parseInt(digits, 16) : /^0[0-7]*$/.test(digits) ? parseInt(digits, 8) : /^[1-9][0-9]*$/.test(digits) ? parseInt(digits, 10) : undefined;
    if (number === undefined) {
      throw new ConfigError(where, `${attributeText(name, value ?? "")} is not a number like 0x01 (hexadecimal), 1 (decimal) or 01 (octal)`);
    }
    if (number > PCI_ADDRESS_LIMITS[name]) {
      throw new ConfigError(where, `${attributeText(name, value!)} is above 0x${PCI_ADDRESS_LIMITS[name].toString(16)}, the largest PCI ${name}; lspci -D shows the device's address`);
    }
    return number;
  };
  const pci = `${addressPart("domain", "0").toString(16).padStart(4, "0")}:${addressPart("bus").toString(16).padStart(2, "0")}:${addressPart("slot").toString(16).padStart(2, "0")}.${addressPart("function", "0").toString(16)}`;
  return parsePciAddress(pci, where, "address");
}

/** The domain's PCI devices that libvirt itself moves to vfio-pci as the VM starts: its managed='yes' <hostdev>s and <interface type='hostdev'>s. */
export function libvirtManagedPci(domain: Domain): string[] {
  return [...domain.hostdevs, ...domain.hostdevInterfaces].flatMap((device) => (device.type === "pci" && device.managed ? [device.address] : []));
}

/** The domain's PCI devices libvirt leaves on their host drivers (no managed='yes'), by address, with the element that lists each: the VM gets one only once something else moves it to vfio-pci. */
export function libvirtUnmanagedPci(domain: Domain): Record<string, "hostdev" | "interface"> {
  const listed = (devices: Domain["hostdevs"], element: "hostdev" | "interface") => devices.flatMap((device) => (device.type === "pci" && !device.managed ? [[device.address, element] as const] : []));
  return Object.fromEntries([...listed(domain.hostdevs, "hostdev"), ...listed(domain.hostdevInterfaces, "interface")]);
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function parseInterfaces(document: XmlNode): NetworkInterface[] {
  return nodes(document, "domain", "devices", "interface").map((nic) => {
    const mac = attr(first(nic, "mac"), "address")?.trim().toLowerCase();
    if (mac !== undefined && !MAC.test(mac)) throw new ConfigError("<interface><mac>", `${attributeText("address", mac)} is not a MAC address like 52:54:00:12:34:56`);
    const network = attr(first(nic, "source"), "network");
    return { type: attr(nic, "type") ?? "", ...(mac ? { mac } : {}), ...(network !== undefined ? { network } : {}) };
  });
}

/**
 * The most elements <vmhook:hooks> may hold. Plugins check elements against
 * each other (forward every port against every other), so thousands of them
 * would keep a hook busy for minutes, and libvirt runs every domain's stopped
 * and release in one thread that waits for it. No VM needs more: one
 * <vmhook:forward> takes 64 ports.
 */
const MAX_ELEMENTS = 64;

/**
 * The child elements of <vmhook:hooks>, in document order: the one way the
 * hook, validate, plan and doctor read them, so more than MAX_ELEMENTS are
 * refused before any is read, everywhere.
 */
export function metadataChildren(metadata: XmlElement): XmlElement[] {
  const children = childElements(metadata);
  if (children.length <= MAX_ELEMENTS) return children;
  throw new ConfigError(`<vmhook:${ROOT_ELEMENT}>`, `holds ${children.length} elements, more than the ${MAX_ELEMENTS} vmhook reads; merge them (one <vmhook:forward> takes up to 64 ports, ranges too)`);
}

/** The attributes of an element as a plain object (for plugins' config parsers and JSON plugins). */
export function attributes(element: XmlElement): Record<string, string> {
  const result: Record<string, string> = {};
  for (let i = 0; i < element.attributes.length; i++) {
    const attribute = element.attributes.item(i)!;
    if (declaresNamespace(attribute)) continue;
    result[attribute.localName ?? attribute.name] = attribute.value;
  }
  return result;
}

/** How many characters of attributes describeElement shows before it leaves the rest out. */
const DESCRIBED_ATTRIBUTES_LIMIT = 240;

/** How an element is named in messages: <vmhook:hugepages size="2M">; an element of many attributes by its first ones and "…". */
export function describeElement(element: XmlElement): string {
  let attrs = "";
  for (const [key, value] of Object.entries(attributes(element))) {
    const attribute = ` ${attributeText(key, value)}`;
    if (attrs.length + attribute.length > DESCRIBED_ATTRIBUTES_LIMIT) {
      attrs += " …";
      break;
    }
    attrs += attribute;
  }
  return `<vmhook:${excerpt(element.localName ?? element.tagName)}${attrs}>`;
}
