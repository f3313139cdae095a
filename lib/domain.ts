// The domain XML as vmhook needs it: identity, memory, NUMA, CPU pinning,
// host devices, and the vmhook metadata element. Everything a plugin can
// derive from standard libvirt XML is read here once.
import { DOMParser, type Element, type Node } from "@xmldom/xmldom";
import * as xpath from "xpath";
import { ConfigError, VmhookError } from "./errors.ts";
import { NAMESPACE_URI, ROOT_ELEMENT } from "./paths.ts";
import { childElements, prefixMistake, refuseMisplacedNamespace } from "./metadata-text.ts";
import { parseCpuset } from "./cpuset.ts";
import { PATTERNS, parseInteger, parsePciAddress, parseUuid, sizeToKiB } from "./validate.ts";

export interface PciHostdev {
  type: "pci";
  address: string;
  managed: boolean;
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

export interface Domain {
  name: string;
  uuid: string;
  memoryKiB: number;
  currentMemoryKiB: number;
  vcpus: number;
  /** <memoryBacking><hugepages>: present, with its <page> entries (size in KiB, optional guest nodeset). */
  hugepages?: { pages: { sizeKiB: number; nodeset?: string }[] };
  /** <numatune><memory>: host NUMA nodes for all guest memory. */
  numatuneMemory?: { mode: string; nodeset?: number[] };
  /** <numatune><memnode cellid nodeset>: host nodes per guest cell. */
  memnodes: { cellid: number; mode: string; nodeset: number[] }[];
  /** <cpu><numa><cell>: guest NUMA cells. */
  numaCells: NumaCell[];
  cputune: { vcpupins: number[][]; emulatorpin?: number[]; iothreadpins: number[][] };
  hostdevs: (PciHostdev | MdevHostdev)[];
  interfaces: NetworkInterface[];
  /** The <vmhook:hooks> element, if the domain has one. */
  metadata?: Element;
}

const select = xpath.useNamespaces({ vmhook: NAMESPACE_URI });

function nodes(expression: string, context: Node): Element[] {
  return select(expression, context as never) as unknown as Element[];
}

function first(expression: string, context: Node): Element | undefined {
  return nodes(expression, context)[0];
}

function text(expression: string, context: Node): string | undefined {
  const element = first(expression, context);
  return element?.textContent?.trim() || undefined;
}

function attr(element: Element | undefined, name: string): string | undefined {
  if (!element || !element.hasAttribute(name)) return undefined;
  return element.getAttribute(name) ?? undefined;
}

/** Parses XML text into a document, turning every parser complaint into one clear error. */
export function parseXmlDocument(xml: string, what: string) {
  if (xml.trim() === "") throw new VmhookError(`${what} is empty; expected a libvirt <domain> XML document`);
  const problems: string[] = [];
  let document;
  try {
    document = new DOMParser({
      onError: (level: string, message: string) => {
        if (level !== "warning") problems.push(message);
      },
    }).parseFromString(xml, "text/xml");
  } catch (error) {
    problems.push(error instanceof Error ? error.message : String(error));
  }
  if (!document || problems.length > 0) {
    // libvirt stores a prefixed element given to virsh metadata as <vmhook:vmhook:hooks>
    const mistake = prefixMistake(xml);
    if (mistake) throw mistake;
    throw new VmhookError(`${what} is not well-formed XML: ${problems[0]?.split("\n")[0] ?? "unknown error"}`);
  }
  return document;
}

/** Reads the parts of a domain XML that vmhook uses. Throws ConfigError naming the element on bad values. */
export function parseDomain(xml: string, what = "domain XML"): Domain {
  const document = parseXmlDocument(xml, what);
  const root = document.documentElement;
  if (!root || root.localName !== "domain") {
    throw new VmhookError(`${what}: the root element is <${root?.localName ?? "none"}>, expected <domain>`);
  }
  // Exactly as libvirt keeps it, spaces included: it names libvirt's pid file
  // (/run/libvirt/qemu/NAME.pid), by which vmhook recover tells a running domain.
  const name = first("/domain/name", document)?.textContent ?? "";
  if (name.trim() === "") throw new ConfigError("<domain>", "has no <name>");
  const uuidText = text("/domain/uuid", document);
  if (!uuidText) throw new ConfigError("<domain>", "has no <uuid>; libvirt adds one on define, so pass the XML from virsh dumpxml");
  const uuid = parseUuid(uuidText, "<uuid>", "value");

  const memoryElement = first("/domain/memory", document);
  const memoryKiB = memoryElement ? sizeToKiB(memoryElement.textContent ?? "", attr(memoryElement, "unit"), "<memory>", "value") : 0;
  const currentElement = first("/domain/currentMemory", document);
  const currentMemoryKiB = currentElement
    ? sizeToKiB(currentElement.textContent ?? "", attr(currentElement, "unit"), "<currentMemory>", "value")
    : memoryKiB;
  const vcpuText = text("/domain/vcpu", document);
  const vcpus = vcpuText ? parseInteger(vcpuText, "<vcpu>", "value", 1, 16384) : 1;

  return {
    name,
    uuid,
    memoryKiB,
    currentMemoryKiB,
    vcpus,
    hugepages: parseMemoryBacking(document),
    ...parseNumatune(document),
    numaCells: nodes("/domain/cpu/numa/cell", document).map((cell, index) => ({
      id: attr(cell, "id") !== undefined ? parseInteger(attr(cell, "id")!, "<cpu><numa><cell>", "id", 0, 1023) : index,
      memoryKiB: sizeToKiB(attr(cell, "memory") ?? "0", attr(cell, "unit"), "<cpu><numa><cell>", "memory"),
    })),
    cputune: {
      vcpupins: nodes("/domain/cputune/vcpupin", document).map((pin) =>
        parseCpuset(attr(pin, "cpuset") ?? "", "<cputune><vcpupin>", "cpuset"),
      ),
      emulatorpin: optionalCpuset(first("/domain/cputune/emulatorpin", document), "<cputune><emulatorpin>"),
      iothreadpins: nodes("/domain/cputune/iothreadpin", document).map((pin) =>
        parseCpuset(attr(pin, "cpuset") ?? "", "<cputune><iothreadpin>", "cpuset"),
      ),
    },
    hostdevs: parseHostdevs(document),
    interfaces: parseInterfaces(document),
    metadata: first(`/domain/metadata/vmhook:${ROOT_ELEMENT}`, document) ?? refuseMisplacedNamespace(nodes("/domain/metadata/*", document)),
  };
}

function optionalCpuset(element: Element | undefined, where: string): number[] | undefined {
  return element ? parseCpuset(attr(element, "cpuset") ?? "", where, "cpuset") : undefined;
}

function parseMemoryBacking(document: Node): Domain["hugepages"] {
  const hugepages = first("/domain/memoryBacking/hugepages", document);
  if (!hugepages) return undefined;
  return {
    pages: nodes("page", hugepages).map((page) => ({
      sizeKiB: sizeToKiB(attr(page, "size") ?? "", attr(page, "unit") ?? "KiB", "<memoryBacking><hugepages><page>", "size"),
      nodeset: attr(page, "nodeset"),
    })),
  };
}

function parseNodeset(value: string | undefined, where: string): number[] {
  return parseCpuset(value ?? "", where, "nodeset", 1023);
}

function parseNumatune(document: Node): Pick<Domain, "numatuneMemory" | "memnodes"> {
  const memory = first("/domain/numatune/memory", document);
  return {
    numatuneMemory: memory
      ? {
          mode: attr(memory, "mode") ?? "strict",
          nodeset: attr(memory, "nodeset") !== undefined ? parseNodeset(attr(memory, "nodeset"), "<numatune><memory>") : undefined,
        }
      : undefined,
    memnodes: nodes("/domain/numatune/memnode", document).map((memnode) => ({
      cellid: parseInteger(attr(memnode, "cellid") ?? "", "<numatune><memnode>", "cellid", 0, 1023),
      mode: attr(memnode, "mode") ?? "strict",
      nodeset: parseNodeset(attr(memnode, "nodeset"), "<numatune><memnode>"),
    })),
  };
}

function parseHostdevs(document: Node): Domain["hostdevs"] {
  const hostdevs: Domain["hostdevs"] = [];
  for (const hostdev of nodes("/domain/devices/hostdev[@mode='subsystem']", document)) {
    const type = attr(hostdev, "type");
    if (type === "pci") {
      const address = first("source/address", hostdev);
      if (!address) throw new ConfigError("<hostdev type='pci'>", "has no <source><address>");
      const hex = (name: string, fallback?: string) => {
        const value = attr(address, name) ?? fallback;
        if (value === undefined || !/^(0x)?[0-9a-fA-F]{1,4}$/.test(value)) {
          throw new ConfigError("<hostdev type='pci'><source><address>", `${name}="${value ?? ""}" is not a hexadecimal number like 0x01`);
        }
        return parseInt(value, 16);
      };
      const pci = `${hex("domain", "0").toString(16).padStart(4, "0")}:${hex("bus").toString(16).padStart(2, "0")}:${hex("slot").toString(16).padStart(2, "0")}.${hex("function", "0").toString(16)}`;
      hostdevs.push({
        type: "pci",
        address: parsePciAddress(pci, "<hostdev type='pci'><source><address>", "address"),
        managed: attr(hostdev, "managed") === "yes",
      });
    } else if (type === "mdev") {
      const address = first("source/address", hostdev);
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

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function parseInterfaces(document: Node): NetworkInterface[] {
  return nodes("/domain/devices/interface", document).map((nic) => {
    const mac = attr(first("mac", nic), "address")?.trim().toLowerCase();
    if (mac !== undefined && !MAC.test(mac)) throw new ConfigError("<interface><mac>", `address="${mac}" is not a MAC address like 52:54:00:12:34:56`);
    const network = attr(first("source", nic), "network");
    return { type: attr(nic, "type") ?? "", ...(mac ? { mac } : {}), ...(network !== undefined ? { network } : {}) };
  });
}

/** The child elements of <vmhook:hooks>, in document order. */
export const metadataChildren = childElements;

/** The attributes of an element as a plain object (for plugins' config parsers and JSON plugins). */
export function attributes(element: Element): Record<string, string> {
  const result: Record<string, string> = {};
  for (let i = 0; i < element.attributes.length; i++) {
    const attribute = element.attributes.item(i)!;
    if (attribute.name.startsWith("xmlns")) continue;
    result[attribute.localName ?? attribute.name] = attribute.value;
  }
  return result;
}

/** How an element is named in messages: <vmhook:hugepages size="2M">. */
export function describeElement(element: Element): string {
  const attrs = Object.entries(attributes(element))
    .map(([key, value]) => ` ${key}="${value}"`)
    .join("");
  return `<vmhook:${element.localName}${attrs}>`;
}
