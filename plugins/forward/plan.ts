// Planning a domain's forwards: read the host (libvirt's network files, the
// nft ruleset, listening sockets, other VMs' journals, the host settings),
// check everything, and return the record that apply and undo work from.
// Changes nothing.
import type { Domain } from "../../lib/domain.ts";
import { VmhookError } from "../../lib/errors.ts";
import type { Host } from "../../lib/host.ts";
import { othersRecords, type Journal } from "../../lib/journal.ts";
import { lastOf, type Family, type IpAddress } from "./address.ts";
import { addressesMeet, formatRange, overlaps, type ForwardConfig, type ForwardSpec, type PortForward } from "./config.ts";
import { readListeners, socketOwner } from "./listeners.ts";
import { formatSubnet, readNetwork, subnetOf, type NetworkInfo } from "./network.ts";
import { checkRecord, PLUGIN_ID, serializeForward, type ForwardRecord, type IptablesTool } from "./record.ts";
import { iptablesNftChain, type ResolvedForward, type RulesetView } from "./rules.ts";

/** The forwards with guest, bridge and subnet filled in from the domain's libvirt network. */
export function resolveForwards(host: Host, domain: Domain, config: ForwardConfig): ResolvedForward[] {
  const nics = domain.interfaces.filter((nic) => nic.type === "network" && nic.network !== undefined);
  if (nics.length === 0) {
    throw new VmhookError(`forward: ${domain.name} has no <interface type='network'>; port forwarding is for guests on a libvirt NAT network`);
  }
  const networks = new Map<string, NetworkInfo>();
  const network = (name: string) => networks.get(name) ?? networks.set(name, readNetwork(host, name)).get(name)!;
  return config.forwards.map((spec) => {
    const { nic, info, guest } = spec.guest ? byAddress(spec, nics, network) : byMac(spec, nics[0]!, network);
    if (info.mode !== "nat") {
      throw new VmhookError(`forward: network "${info.name}" of ${nic.mac ?? "the guest's NIC"} is not a NAT network (forward mode ${info.mode}); ${spec.element} forwards into NAT networks only`);
    }
    checkGuest(spec, domain, nic, nics, info, guest);
    const subnet = subnetOf(info, guest)!;
    return {
      family: guest.family,
      guest,
      ...(spec.hostAddress ? { hostAddress: spec.hostAddress } : {}),
      ...(spec.interface ? { interface: spec.interface } : {}),
      bridge: info.bridge,
      subnet,
      hairpin: spec.hairpin,
      ports: spec.ports,
    };
  });
}

type Nic = Domain["interfaces"][number];

function byAddress(spec: ForwardSpec, nics: Nic[], network: (name: string) => NetworkInfo) {
  const guest = spec.guest!;
  for (const nic of nics) {
    const info = network(nic.network!);
    if (subnetOf(info, guest)) return { nic, info, guest };
  }
  const known = nics.map((nic) => `${nic.network} (${network(nic.network!).subnets.map((s) => `${s.network.text}/${s.prefix}`).join(", ") || "no addresses"})`);
  throw new VmhookError(`forward: ${spec.element}: guest=${guest.text} is in none of the domain's networks: ${known.join("; ")}; fix guest=`);
}

function byMac(spec: ForwardSpec, nic: Nic, network: (name: string) => NetworkInfo) {
  const info = network(nic.network!);
  if (!nic.mac) throw new VmhookError(`forward: ${spec.element} has no guest= and the domain's <interface> has no <mac>; set guest= or give the NIC a MAC address`);
  const entry = info.dhcpHosts.find((host) => host.mac === nic.mac && (!spec.hostAddress || host.ip.family === spec.hostAddress.family));
  if (!entry || !subnetOf(info, entry.ip)) {
    throw new VmhookError(
      `forward: ${spec.element} has no guest=, and network "${info.name}" gives MAC ${nic.mac} no fixed address; set guest=, or add <host mac='${nic.mac}' ip='…'/> to its <dhcp> (virsh net-update ${info.name} add ip-dhcp-host …)`,
      [`read ${info.file}`],
    );
  }
  return { nic, info, guest: entry.ip };
}

/**
 * The guest address is one libvirt lets the domain's guests have, and no more:
 * not the host's own address on the bridge (a forward to it would publish the
 * host's services that listen on the bridge only on every host interface),
 * not the subnet's network or broadcast address (for IPv6 the subnet-router
 * anycast address, which is the host's), and not an address the network's
 * <dhcp> reserves for a MAC that is none of the domain's NICs on that network
 * (another VM's). No host policy key lifts these: the host publishes its own
 * services itself, and another VM's forwards belong in that VM's metadata.
 */
function checkGuest(spec: ForwardSpec, domain: Domain, nic: Nic, nics: Nic[], info: NetworkInfo, guest: IpAddress): void {
  const subnet = subnetOf(info, guest)!;
  const what = spec.guest ? `guest=${guest.text}` : `the address network "${info.name}" gives MAC ${nic.mac} (${guest.text})`;
  const fail = (why: string, fix: string) => new VmhookError(`forward: ${spec.element}: ${what} is ${why}; ${fix}`);
  // The address leaving guest= out would take (byMac: the first NIC's reservation), when it is another one.
  const own = nic === nics[0] && nic.mac ? info.dhcpHosts.find((host) => host.mac === nic.mac && host.ip.family === guest.family && host.ip.text !== guest.text) : undefined;
  const ownAddress = spec.guest
    ? `set guest= to this VM's own address on network "${info.name}"${own ? ` (or leave guest= out: ${own.ip.text} is the address the network gives its MAC ${nic.mac})` : ""}`
    : `fix its <host mac='${nic.mac}' ip='…'/> (virsh net-update ${info.name} modify ip-dhcp-host …)`;
  if (info.hostAddresses.some((address) => address.text === guest.text)) {
    throw fail(`the host's own address on network "${info.name}" (its <ip address> on ${info.bridge}): a forward to it would publish the host's services on ${info.bridge} on every host interface`, ownAddress);
  }
  const range = `network "${info.name}" (${formatSubnet(subnet)})`;
  // A /31 or /32 (RFC 3021) has neither, an IPv6 /127 (RFC 6164) no anycast address.
  if (guest.family === 4 && subnet.prefix <= 30) {
    if (guest.text === subnet.network.text) throw fail(`the network address of ${range}, not a guest's`, ownAddress);
    if (guest.text === lastOf(subnet.network, subnet.prefix).text) throw fail(`the broadcast address of ${range}, not a guest's`, ownAddress);
  }
  if (guest.family === 6 && subnet.prefix <= 126 && guest.text === subnet.network.text) {
    throw fail(`the subnet-router anycast address of ${range}, the host's, not a guest's`, ownAddress);
  }
  const macs = nics.filter((other) => other.network === nic.network && other.mac !== undefined).map((other) => other.mac);
  const reserved = info.dhcpHosts.find((host) => host.ip.text === guest.text && !macs.includes(host.mac));
  if (reserved) {
    throw fail(
      `the address network "${info.name}" reserves for MAC ${reserved.mac} (<host mac='${reserved.mac}' ip='${guest.text}'/>), which is no NIC of ${domain.name}: another VM's`,
      `set guest= to this VM's own address, or put the forward in the metadata of the VM with that MAC`,
    );
  }
}

const describePort = (family: Family, port: PortForward) => `${port.protocol} ${formatRange(port.host)}${family === 6 ? " (IPv6)" : ""}`;

/** Refuses a host port that another running VM forwards already, naming that VM. */
export function checkOtherVms(forwards: ResolvedForward[], uuid: string, journals: Journal[]): void {
  for (const { domain, record: theirs } of othersRecords(journals, uuid, PLUGIN_ID, checkRecord)) {
    for (const mine of forwards) {
      for (const port of mine.ports) {
        const clash = theirs.forwards.find(
          (other) =>
            other.family === mine.family &&
            addressesMeet(other.hostAddress, mine.hostAddress) &&
            other.ports.some((their) => their.protocol === port.protocol && overlaps(their.host, port.host)),
        );
        if (clash) {
          throw new VmhookError(`forward: host port ${describePort(mine.family, port)} is forwarded to VM "${domain.name}" already (vmhook status shows it); choose another host port or stop that VM`);
        }
      }
    }
  }
}

/** Refuses a host port a host process listens on: the forward would take its traffic away. */
export function checkListeners(host: Host, forwards: ResolvedForward[]): void {
  for (const forward of forwards) {
    for (const port of forward.ports) {
      const listener = readListeners(host, port.protocol).find(
        (socket) =>
          socket.port >= port.host.first &&
          socket.port <= port.host.last &&
          !socket.loopback &&
          (socket.family === forward.family || (socket.family === 6 && socket.wildcard)) &&
          (socket.wildcard || !forward.hostAddress || socket.address === forward.hostAddress.text),
      );
      if (listener) {
        throw new VmhookError(
          `forward: host port ${describePort(forward.family, port)} is in use: ${socketOwner(host, listener.inode)} listens on ${listener.family === 6 ? `[${listener.address}]` : listener.address}:${listener.port}; choose another host port or stop that service`,
        );
      }
    }
  }
}

/**
 * The record start journals: everything apply, undo and reconnect need, plus
 * the iptables tools that hold libvirt's LIBVIRT_FWI: iptables-nft's chains
 * show in the nft ruleset; iptables-legacy is asked (`hasLegacyChain`) only
 * when they do not.
 */
export function buildRecord(uuid: string, forwards: ResolvedForward[], view: RulesetView, hasLegacyChain: (tool: IptablesTool) => boolean = () => false): ForwardRecord {
  const families = [...new Set(forwards.map((forward) => forward.family))];
  const iptables = families.flatMap((family): IptablesTool[] => {
    if (iptablesNftChain(view, family)) return [family === 4 ? "iptables-nft" : "ip6tables-nft"];
    const legacy = family === 4 ? "iptables-legacy" : "ip6tables-legacy";
    return hasLegacyChain(legacy) ? [legacy] : [];
  });
  return { action: "nft-forward", uuid, forwards: forwards.map(serializeForward), iptables };
}
