// <vmhook:forward> elements → typed forwards. Pure: every value is checked
// here, strictly, and only these typed values ever become nft rules.
//
//   <vmhook:forward guest="192.168.122.10" ports="2222:22,8443:443/tcp,60000-60010/udp"
//                   host-address="203.0.113.5" interface="eth0" hairpin="no"/>
import type { XmlElement } from "../../lib/xml.ts";
import { readAttributes } from "../../lib/element.ts";
import { describeElement } from "../../lib/domain.ts";
import { attributeText, ConfigError, quoted } from "../../lib/errors.ts";
import { parseYesNo } from "../../lib/validate.ts";
import { isLoopback, parseIp, type IpAddress } from "./address.ts";

export type Protocol = "tcp" | "udp";

export interface PortRange {
  first: number;
  last: number;
}

export interface PortForward {
  protocol: Protocol;
  host: PortRange;
  guest: PortRange;
}

export interface ForwardSpec {
  /** The element as written, for messages. */
  element: string;
  /** undefined: the address the guest's NAT network gives its MAC, found at start. */
  guest?: IpAddress;
  /** undefined: any address of the host. */
  hostAddress?: IpAddress;
  /** undefined: any interface but the guest's bridge. */
  interface?: string;
  hairpin: boolean;
  ports: PortForward[];
}

export interface ForwardConfig {
  forwards: ForwardSpec[];
}

const ATTRIBUTES = ["guest", "ports", "host-address", "interface", "hairpin"] as const;
const MAX_ITEMS = 64;
/** Linux interface names: at most 15 bytes; only characters that need no quoting anywhere. */
export const INTERFACE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/;
const PORT_ITEM = /^(\d{1,5})(?:-(\d{1,5}))?(?::(\d{1,5})(?:-(\d{1,5}))?)?(?:\/(tcp|udp))?$/;

export function parseForwardConfig(elements: XmlElement[]): ForwardConfig {
  const forwards = elements.map(parseElement);
  checkOverlaps(forwards);
  return { forwards };
}

function parseElement(element: XmlElement): ForwardSpec {
  const where = describeElement(element);
  const attrs = readAttributes(element, ATTRIBUTES);
  if (attrs.ports === undefined) throw new ConfigError(where, 'has no ports; write ports="HOST[:GUEST][/tcp|/udp],…", e.g. ports="2222:22"');
  const guest = attrs.guest === undefined ? undefined : parseAddress(attrs.guest, where, "guest");
  const hostAddress = attrs["host-address"] === undefined ? undefined : parseAddress(attrs["host-address"], where, "host-address");
  if (guest && hostAddress && guest.family !== hostAddress.family) {
    throw new ConfigError(where, `${attributeText("guest", attrs.guest!)} and ${attributeText("host-address", attrs["host-address"]!)} are of different IP versions; use two IPv4 or two IPv6 addresses`);
  }
  const name = attrs.interface?.trim();
  if (name !== undefined && (!INTERFACE_NAME.test(name) || name === "lo")) {
    throw new ConfigError(where, `${attributeText("interface", attrs.interface!)} is not a network interface name (letters, digits, "_", "." and "-", at most 15, not lo); ip link lists them`);
  }
  return {
    element: where,
    ...(guest ? { guest } : {}),
    ...(hostAddress ? { hostAddress } : {}),
    ...(name ? { interface: name } : {}),
    hairpin: parseYesNo(attrs.hairpin, where, "hairpin", false),
    ports: parsePorts(attrs.ports, where),
  };
}

function parseAddress(value: string, where: string, attribute: string): IpAddress {
  const address = parseIp(value);
  if (!address) throw new ConfigError(where, `${attributeText(attribute, value)} is not an IP address; write one IPv4 or IPv6 address, e.g. 192.168.122.10 or fd00:122::10`);
  const unusable = isLoopback(address) || address.bytes.every((byte) => byte === 0) || (address.family === 4 ? address.bytes[0]! >= 224 : address.bytes[0] === 0xff);
  if (unusable) throw new ConfigError(where, `${attributeText(attribute, value)} is a loopback, unspecified, multicast or broadcast address; use a unicast address`);
  return address;
}

export function parsePorts(value: string, where: string): PortForward[] {
  const items = value.split(",").map((item) => item.trim());
  if (items.length > MAX_ITEMS) throw new ConfigError(where, `ports= lists ${items.length} items; at most ${MAX_ITEMS} per element (use ranges like 60000-60010)`);
  return items.map((item) => {
    const match = PORT_ITEM.exec(item);
    const bad = (why: string) => new ConfigError(where, `ports= item ${quoted(item)} ${why}; write HOST[:GUEST][/tcp|/udp] with ports 1-65535, e.g. 2222:22, 8443:443/tcp or 60000-60010/udp`);
    if (!match) throw bad("is not a port forward");
    const [, hostFirst, hostLast, guestFirst, guestLast, protocol] = match;
    const range = (first: string, last: string | undefined): PortRange => {
      const from = Number(first);
      const to = last === undefined ? from : Number(last);
      if (from < 1 || to > 65535 || to < from) throw bad(`has port range ${first}${last ? `-${last}` : ""} outside 1-65535 or backwards`);
      return { first: from, last: to };
    };
    const host = range(hostFirst!, hostLast);
    const guest = guestFirst === undefined ? host : range(guestFirst, guestLast);
    const isRange = (ports: PortRange) => ports.last > ports.first;
    if ((isRange(host) || isRange(guest)) && (guest.first !== host.first || guest.last !== host.last)) {
      throw bad("maps a range to other ports; a range forwards to the same ports on the guest (write 60000-60010, not 60000-60010:1000-1010)");
    }
    return { protocol: (protocol ?? "tcp") as Protocol, host, guest };
  });
}

export const overlaps = (a: PortRange, b: PortRange) => a.first <= b.last && b.first <= a.last;
export const formatRange = (range: PortRange) => (range.first === range.last ? `${range.first}` : `${range.first}-${range.last}`);

/** Two forwards of the same host port (same protocol, addresses that can meet) cannot both win. */
function checkOverlaps(forwards: ForwardSpec[]): void {
  const seen: { spec: ForwardSpec; port: PortForward }[] = [];
  for (const spec of forwards) {
    for (const port of spec.ports) {
      const clash = seen.find(
        (other) =>
          familyOf(other.spec) === familyOf(spec) &&
          other.port.protocol === port.protocol &&
          overlaps(other.port.host, port.host) &&
          addressesMeet(other.spec.hostAddress, spec.hostAddress),
      );
      if (clash) {
        throw new ConfigError(spec.element, `forwards host port ${port.protocol} ${formatRange(port.host)}, which ${clash.spec === spec ? "this element" : clash.spec.element} forwards already; each host port can go to one place`);
      }
      seen.push({ spec, port });
    }
  }
}

/** IPv4 unless an address says otherwise: the address libvirt's DHCP gives a MAC is an IPv4 one. */
const familyOf = (spec: Pick<ForwardSpec, "guest" | "hostAddress">): 4 | 6 => spec.guest?.family ?? spec.hostAddress?.family ?? 4;

/** Whether two host-address settings can catch the same packet (undefined: any address). */
export const addressesMeet = (a: { text: string } | undefined | null, b: { text: string } | undefined | null): boolean => !a || !b || a.text === b.text;
