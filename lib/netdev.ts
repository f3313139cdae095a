// The host's way out behind PCI devices: the network interfaces they drive
// and what runs on those (a bridge or bond they are ports of, a VLAN, a
// macvlan: their uppers in sysfs). Unbinding a NIC removes its interface and
// everything the host routes through it; when that holds the host's only
// default route, the host loses its network, and with it the ssh session the
// VM was started from (in single-GPU mode, the only way in left). Such
// devices never go to a VM, whatever the policy says.
import type { Host } from "./host.ts";

const NET = "/sys/class/net";
const IPV4_ROUTES = "/proc/net/route";
const IPV6_ROUTES = "/proc/net/ipv6_route";
/** route flags (linux/route.h, ipv6_route.h): the route is up; a reject route (unreachable, prohibit) leads nowhere. */
const RTF_UP = 0x1;
const RTF_REJECT = 0x200;

/**
 * The interfaces of a PCI device: those whose sysfs path runs through it. A
 * NIC's own sit in ADDR/net, but virtio-net's sit under ADDR/virtio0, a USB
 * adapter's under the USB controller it is plugged into: all go with the device.
 */
function interfacesOf(host: Host, address: string): string[] {
  return host.list(NET).filter((iface) => (host.readlink(`${NET}/${iface}`) ?? "").split("/").includes(address));
}

/** The interfaces running on `iface`: itself, then its uppers, theirs, and so on (upper_NAME links). */
function stackedOn(host: Host, iface: string): string[] {
  const found = [iface];
  for (let index = 0; index < found.length; index++) {
    for (const entry of host.list(`${NET}/${found[index]}`)) {
      const upper = entry.startsWith("upper_") ? entry.slice("upper_".length) : undefined;
      if (upper && !found.includes(upper)) found.push(upper);
    }
  }
  return found;
}

/**
 * The interfaces the main table's IPv4 default routes leave through
 * (/proc/net/route: destination and mask 0, up). A route with no device
 * ("*": unreachable, prohibit, blackhole, as a VPN kill switch adds) leads nowhere.
 */
function ipv4Defaults(text: string): string[] {
  return text
    .split("\n")
    .slice(1)
    .map((line) => line.trim().split(/\s+/))
    .filter((fields) => fields[0] !== "*" && fields[1] === "00000000" && fields[7] === "00000000" && (parseInt(fields[3] ?? "0", 16) & (RTF_UP | RTF_REJECT)) === RTF_UP)
    .map((fields) => fields[0]!);
}

/** The interfaces IPv6 default routes leave through (/proc/net/ipv6_route: ::/0, up, not a reject route on lo). */
function ipv6Defaults(text: string): string[] {
  return text
    .split("\n")
    .map((line) => line.trim().split(/\s+/))
    .filter((fields) => fields.length >= 10 && /^0{32}$/.test(fields[0]!) && fields[1] === "00")
    .filter((fields) => {
      const flags = parseInt(fields[8]!, 16);
      return (flags & RTF_UP) !== 0 && (flags & RTF_REJECT) === 0;
    })
    .map((fields) => fields[9]!);
}

export interface NetworkUse {
  address: string;
  /** The device's own interface. */
  iface: string;
  /** "enp3s0 carries the host's only IPv4 default route". */
  use: string;
}

/**
 * Why the host needs the network behind these PCI devices, handed over
 * together, [] when the host keeps a way out without them: an interface of
 * theirs, or one running on it, carries every default route of a family
 * (IPv4, IPv6). Throws when the routes cannot be read.
 */
export function networkInUse(host: Host, addresses: string[]): NetworkUse[] {
  const interfaces = addresses.flatMap((address) => interfacesOf(host, address).map((iface) => ({ address, iface, stacked: stackedOn(host, iface) })));
  if (interfaces.length === 0) return [];
  const ipv4 = host.readTrimmed(IPV4_ROUTES);
  if (ipv4 === undefined) throw new Error(`cannot tell whether the host routes through ${interfaces.map(({ iface }) => iface).join(", ")}: ${IPV4_ROUTES} cannot be read`);
  // No file: IPv6 is off (ipv6.disable=1), so there is no IPv6 route to lose.
  const ipv6 = host.readTrimmed(IPV6_ROUTES);
  const families = [
    { family: "IPv4", defaults: ipv4Defaults(ipv4) },
    { family: "IPv6", defaults: ipv6 === undefined ? [] : ipv6Defaults(ipv6) },
  ];
  const goes = new Set(interfaces.flatMap(({ stacked }) => stacked));
  const uses: NetworkUse[] = [];
  for (const { family, defaults } of families) {
    // Another default route through an interface that stays: the host keeps its way out.
    if (defaults.length === 0 || defaults.some((route) => !goes.has(route))) continue;
    for (const { address, iface, stacked } of interfaces) {
      for (const route of [...new Set(defaults)].filter((route) => stacked.includes(route))) {
        uses.push({ address, iface, use: `${route === iface ? `${iface} carries` : `${route}, which runs on ${iface}, carries`} the host's only ${family} default route` });
      }
    }
  }
  return uses;
}
