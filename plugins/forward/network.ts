// The guest's libvirt network, read from libvirt's own files (never virsh: the
// hook runs while libvirt holds the domain's lock). An active network's status
// file comes first (/run/libvirt/network, /var/lib/libvirt/network on older
// libvirt), then its definition in /etc/libvirt/qemu/networks.
import { elementsAt, readXmlDocument } from "../../lib/domain.ts";
import type { XmlElement } from "../../lib/xml.ts";
import { VmhookError } from "../../lib/errors.ts";
import type { Host } from "../../lib/host.ts";
import { inSubnet, netmaskPrefix, networkOf, parseIp, type IpAddress } from "./address.ts";
import { INTERFACE_NAME } from "./config.ts";

export interface Subnet {
  /** The network address (host bits cleared). */
  network: IpAddress;
  prefix: number;
}

export interface NetworkInfo {
  name: string;
  file: string;
  bridge: string;
  /** libvirt's <forward mode>; "nat" when <forward> has no mode, "isolated" without <forward>. */
  mode: string;
  subnets: Subnet[];
  /** The host's own addresses on the bridge: each <ip address>. */
  hostAddresses: IpAddress[];
  /** <dhcp><host mac ip> entries (IPv4). */
  dhcpHosts: { mac: string; ip: IpAddress }[];
}

const NETWORK_DIRS = ["/run/libvirt/network", "/var/lib/libvirt/network", "/etc/libvirt/qemu/networks"];
/** libvirt allows more; these are the names vmhook will turn into a file name. */
const NETWORK_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$/;

const attr = (element: XmlElement | undefined, name: string) => (element?.hasAttribute(name) ? element.getAttribute(name)! : undefined);

/** Parses a network definition or status file. Pure. Throws naming the file when a value is unusable. */
export function parseNetworkXml(xml: string, file: string): NetworkInfo {
  const document = readXmlDocument(xml, file);
  const network = elementsAt(document, "network")[0] ?? elementsAt(document, "networkstatus", "network")[0];
  if (!network) throw new VmhookError(`${file} holds no <network>; is it a libvirt network file?`);
  const name = elementsAt(network, "name")[0]?.textContent?.trim() ?? "";
  const bridge = attr(elementsAt(network, "bridge")[0], "name") ?? "";
  if (!INTERFACE_NAME.test(bridge)) throw new VmhookError(`${file}: <bridge name="${bridge}"> is not a bridge name vmhook can use (libvirt names it when the network starts)`);
  const forward = elementsAt(network, "forward")[0];
  const mode = forward ? (attr(forward, "mode") ?? "nat") : "isolated";
  const subnets: Subnet[] = [];
  const hostAddresses: IpAddress[] = [];
  const dhcpHosts: NetworkInfo["dhcpHosts"] = [];
  for (const ip of elementsAt(network, "ip")) {
    const address = parseIp(attr(ip, "address") ?? "");
    if (!address) continue;
    const netmask = attr(ip, "netmask");
    const prefix = netmask !== undefined ? netmaskPrefix(parseIp(netmask) ?? address) : Number(attr(ip, "prefix") ?? (address.family === 4 ? 24 : 64));
    if (prefix === undefined || !Number.isInteger(prefix) || prefix < 1 || prefix > (address.family === 4 ? 32 : 128)) continue;
    subnets.push({ network: networkOf(address, prefix), prefix });
    hostAddresses.push(address);
    for (const host of elementsAt(ip, "dhcp", "host")) {
      const mac = attr(host, "mac")?.trim().toLowerCase();
      const hostIp = parseIp(attr(host, "ip") ?? "");
      if (mac && hostIp) dhcpHosts.push({ mac, ip: hostIp });
    }
  }
  return { name, file, bridge, mode, subnets, hostAddresses, dhcpHosts };
}

/** The network named by a domain's <interface><source network>, from the first of libvirt's files that exists. */
export function readNetwork(host: Host, name: string): NetworkInfo {
  if (!NETWORK_NAME.test(name)) {
    throw new VmhookError(`network "${name}" (<interface><source network>) has a name vmhook does not read files for; use letters, digits, "_", ".", "+" and "-"`);
  }
  for (const dir of NETWORK_DIRS) {
    const file = `${dir}/${name}.xml`;
    // Only a missing file moves on: an unreadable status file must not let the definition (maybe another bridge or subnet) stand in.
    const xml = host.readTrimmed(file);
    if (xml !== undefined) return parseNetworkXml(xml, file);
  }
  throw new VmhookError(`network "${name}" is unknown: none of ${NETWORK_DIRS.map((dir) => `${dir}/${name}.xml`).join(", ")} exists; define and start it (virsh net-start ${name})`);
}

export const subnetOf = (network: NetworkInfo, address: IpAddress): Subnet | undefined =>
  network.subnets.find((subnet) => inSubnet(address, subnet.network, subnet.prefix));

export const formatSubnet = (subnet: Subnet) => `${subnet.network.text}/${subnet.prefix}`;
