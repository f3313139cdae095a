// The forward plugin's pure parts: the element parser, the nft transaction
// builder, the journal record check, /proc/net and libvirt network parsing,
// and the planning checks (policy, other VMs). Real traffic: test/net.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { assertPlanIsPrepare, plannedSteps as plannedStepsFor } from "../helpers/plan.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { conntrackOn, NAT_NETWORK, nftHost, type NftObject } from "../helpers/nft-host.ts";
import { SimHost } from "../helpers/simhost.ts";
import { loadDomainPlugins } from "../../lib/config.ts";
import { parseDomain } from "../../lib/domain.ts";
import { readJournal, type Journal } from "../../lib/journal.ts";
import { parseIp } from "../../plugins/forward/address.ts";
import { registry } from "../../plugins/index.ts";
import type { ForwardConfig } from "../../plugins/forward/config.ts";
import { localAddresses, parseConntrackListing, staleEntries } from "../../plugins/forward/conntrack.ts";
import { parseProcNet } from "../../plugins/forward/listeners.ts";
import { parseNetworkXml } from "../../plugins/forward/network.ts";
import { buildRecord, checkListeners, checkOtherVms } from "../../plugins/forward/plan.ts";
import { checkRecord, describeForwards } from "../../plugins/forward/record.ts";
import { applyScript, inFrontOfReject, iptablesApplyInput, iptablesRemovalInput, parseRuleset, removalScript, type ResolvedForward, type RulesetView } from "../../plugins/forward/rules.ts";

const UUID = "11111111-2222-4333-8444-555555555555";
const OTHER = "99999999-2222-4333-8444-555555555555";

function domain(elements: string): string {
  return `<domain type='kvm'><name>vm</name><uuid>${UUID}</uuid><memory unit='MiB'>64</memory>
  <devices><interface type='network'><mac address='52:54:00:AA:BB:01'/><source network='default'/></interface></devices>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${elements}</vmhook:hooks></metadata></domain>`;
}

/** A host with nothing on it but its root, root's alone: the defaults of the settings and the policy apply. */
const EMPTY_HOST = new SimHost();

async function parse(elements: string): Promise<ForwardConfig> {
  const [instance] = await loadDomainPlugins(parseDomain(domain(elements)), EMPTY_HOST, registry);
  return instance!.config as ForwardConfig;
}

async function parseError(elements: string): Promise<string> {
  try {
    await parse(elements);
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error(`expected ${elements} to be refused`);
}

test("ports: HOST[:GUEST][/proto], ranges kept on the same ports, tcp by default", async () => {
  const config = await parse(`<vmhook:forward guest="192.168.122.10" ports="2222:22, 8443:443/tcp,60000-60010/udp"/>`);
  assert.equal(config.forwards[0]!.ports, [
    { protocol: "tcp", host: { first: 2222, last: 2222 }, guest: { first: 22, last: 22 } },
    { protocol: "tcp", host: { first: 8443, last: 8443 }, guest: { first: 443, last: 443 } },
    { protocol: "udp", host: { first: 60000, last: 60010 }, guest: { first: 60000, last: 60010 } },
  ]);
  assert.is(config.forwards[0]!.guest!.text, "192.168.122.10");
});

test("the same host port may go to an IPv4 and an IPv6 guest; IPv6 addresses are written canonically", async () => {
  const config = await parse(`<vmhook:forward guest="192.168.122.10" ports="2222:22"/><vmhook:forward guest="FD00:122:0:0:0:0:0:10" ports="2222:22"/>`);
  assert.is(config.forwards[1]!.guest!.text, "fd00:122::10");
  assert.is(parseIp("2001:db8:0:0:1:0:0:1")!.text, "2001:db8::1:0:0:1");
  assert.is(parseIp("::")!.text, "::");
});

test("bad values are refused naming the element, the value and the fix", async () => {
  const cases: [string, RegExp][] = [
    [`<vmhook:forward ports="70000"/>`, /<vmhook:forward ports="70000">: ports= item "70000" has port range 70000 outside 1-65535/],
    [`<vmhook:forward ports="22;flush ruleset"/>`, /item "22;flush ruleset" is not a port forward; write HOST\[:GUEST\]/],
    [`<vmhook:forward ports="1000-1010:2000-2010"/>`, /maps a range to other ports/],
    [`<vmhook:forward ports="2222" guest="192.168.122.300"/>`, /guest="192.168.122.300" is not an IP address/],
    [`<vmhook:forward ports="2222" guest="10.0.0.1/24"/>`, /guest="10.0.0.1\/24" is not an IP address/],
    [`<vmhook:forward ports="2222" guest="127.0.0.1"/>`, /is a loopback, unspecified, multicast or broadcast address/],
    [`<vmhook:forward ports="2222" guest="10.0.0.5" host-address="fd00::1"/>`, /of different IP versions/],
    [`<vmhook:forward ports="2222" interface='eth0" accept'/>`, /interface="eth0" accept" is not a network interface name/],
    [`<vmhook:forward ports="2222" hairpin="maybe"/>`, /hairpin="maybe" must be yes or no/],
    [`<vmhook:forward ports="2222" gest="10.0.0.5"/>`, /has unknown attribute gest; allowed: guest, ports, host-address, interface, hairpin/],
    [`<vmhook:forward guest="10.0.0.5"/>`, /has no ports/],
    [`<vmhook:forward ports="2222:22"/><vmhook:forward ports="2200-2300/tcp"/>`, /forwards host port tcp 2200-2300, which <vmhook:forward ports="2222:22"> forwards already/],
  ];
  for (const [elements, expected] of cases) assert.match(await parseError(elements), expected, elements);
});

test("the same host port may go out twice when host-address= tells the two apart; unset or equal host-address= values clash", async () => {
  const config = await parse(`<vmhook:forward ports="2222:22" host-address="203.0.113.5"/><vmhook:forward ports="2222:22" host-address="203.0.113.6"/>`);
  assert.equal(config.forwards.map((forward) => forward.hostAddress!.text), ["203.0.113.5", "203.0.113.6"]);
  for (const second of [`host-address="203.0.113.5"`, ""]) {
    assert.match(await parseError(`<vmhook:forward ports="2222:22" host-address="203.0.113.5"/><vmhook:forward ports="2222:22" ${second}/>`), /forwards host port tcp 2222, which <vmhook:forward ports="2222:22" host-address="203.0.113.5"> forwards already/);
  }
});

const FORWARD: ResolvedForward = {
  family: 4,
  guest: parseIp("192.168.122.10")!,
  bridge: "virbr0",
  subnet: { network: parseIp("192.168.122.0")!, prefix: 24 },
  hairpin: false,
  ports: [
    { protocol: "tcp", host: { first: 2222, last: 2222 }, guest: { first: 22, last: 22 } },
    { protocol: "udp", host: { first: 60000, last: 60010 }, guest: { first: 60000, last: 60010 } },
  ],
};
const EMPTY: RulesetView = { tableExists: false, chains: [], rulesIn: new Map(), tagged: [], allChains: new Set() };

test("apply: one transaction with vmhook's table, the domain's chain, its jumps, and libvirt's exceptions when libvirt's chain exists", () => {
  const view: RulesetView = { ...EMPTY, allChains: new Set(["ip libvirt_network guest_input"]) };
  const script = applyScript(view, UUID, [{ ...FORWARD, hairpin: true }]);
  assert.equal(script.trimEnd().split("\n"), [
    "add table inet vmhook",
    "add chain inet vmhook prerouting { type nat hook prerouting priority -100; policy accept; }",
    "add chain inet vmhook output { type nat hook output priority -100; policy accept; }",
    "add chain inet vmhook postrouting { type nat hook postrouting priority 100; policy accept; }",
    `add chain inet vmhook vm-${UUID}`,
    `add rule inet vmhook vm-${UUID} meta nfproto ipv4 fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto tcp th dport 2222 dnat ip to 192.168.122.10:22`,
    `add rule inet vmhook vm-${UUID} meta nfproto ipv4 fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto udp th dport 60000-60010 dnat ip to 192.168.122.10`,
    `add rule inet vmhook prerouting jump vm-${UUID} comment "vmhook:${UUID}"`,
    `add rule inet vmhook output jump vm-${UUID} comment "vmhook:${UUID}"`,
    `add chain inet vmhook vm-${UUID}-hairpin`,
    `add rule inet vmhook vm-${UUID}-hairpin meta nfproto ipv4 ip saddr 192.168.122.0/24 ip daddr 192.168.122.10 meta l4proto tcp th dport 22 ct status dnat masquerade`,
    `add rule inet vmhook vm-${UUID}-hairpin meta nfproto ipv4 ip saddr 192.168.122.0/24 ip daddr 192.168.122.10 meta l4proto udp th dport 60000-60010 ct status dnat masquerade`,
    `add rule inet vmhook postrouting jump vm-${UUID}-hairpin comment "vmhook:${UUID}"`,
    `insert rule ip libvirt_network guest_input oifname "virbr0" ip daddr 192.168.122.10 meta l4proto tcp th dport 22 ct status dnat counter accept comment "vmhook:${UUID}"`,
    `insert rule ip libvirt_network guest_input oifname "virbr0" ip daddr 192.168.122.10 meta l4proto udp th dport 60000-60010 ct status dnat counter accept comment "vmhook:${UUID}"`,
  ]);
});

test("interface= and host-address= narrow the DNAT; IPv6 targets are bracketed", () => {
  const v6: ResolvedForward = { ...FORWARD, family: 6, guest: parseIp("fd00::10")!, hostAddress: parseIp("2001:db8::1")!, interface: "eth0", ports: [FORWARD.ports[0]!] };
  assert.match(applyScript(EMPTY, UUID, [v6]), `meta nfproto ipv6 iifname "eth0" fib daddr type local ip6 daddr 2001:db8::1 meta l4proto tcp th dport 2222 dnat ip6 to [fd00::10]:22\n`);
});

test("hairpin= with interface= lets the network's other guests in too: their connections arrive on the bridge, not on interface=", () => {
  const both: ResolvedForward = { ...FORWARD, interface: "eth0", hairpin: true, ports: [FORWARD.ports[0]!] };
  assert.match(applyScript(EMPTY, UUID, [both]), `meta nfproto ipv4 iifname { "eth0", "virbr0" } fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto tcp th dport 2222 dnat ip to 192.168.122.10:22\n`);
});

test("host-address= only narrows the host's own addresses: an address that is not the host's (the host's own connections out, traffic routed through) is never redirected to the guest", () => {
  const elsewhere: ResolvedForward = { ...FORWARD, hostAddress: parseIp("198.51.100.7")!, ports: [FORWARD.ports[0]!] };
  assert.match(applyScript(EMPTY, UUID, [elsewhere]), `meta nfproto ipv4 iifname != "virbr0" fib daddr type local ip daddr 198.51.100.7 meta l4proto tcp th dport 2222 dnat ip to 192.168.122.10:22\n`);
});

const listing = (objects: object[]) => JSON.stringify({ nftables: [{ metainfo: {} }, ...objects] });

test("undo: nothing left gives an empty transaction; the last domain takes the table; others keep it", () => {
  assert.is(removalScript(EMPTY, UUID), "");
  const tagged = (chain: string, handle: number, uuid = UUID, table = "vmhook", family = "inet") => ({ rule: { family, table, chain, handle, comment: `vmhook:${uuid}`, expr: [] } });
  const alone = parseRuleset(
    listing([{ table: { family: "inet", name: "vmhook" } }, { chain: { family: "inet", table: "vmhook", name: `vm-${UUID}` } }, tagged("prerouting", 4), tagged("guest_input", 9, UUID, "libvirt_network", "ip")]),
  );
  assert.is(removalScript(alone, UUID), "delete rule ip libvirt_network guest_input handle 9\ndelete table inet vmhook\n");
  const shared = parseRuleset(
    listing([
      { table: { family: "inet", name: "vmhook" } },
      { chain: { family: "inet", table: "vmhook", name: `vm-${UUID}` } },
      { chain: { family: "inet", table: "vmhook", name: `vm-${OTHER}` } },
      tagged("prerouting", 4),
      tagged("prerouting", 5, OTHER),
    ]),
  );
  assert.is(removalScript(shared, UUID), `delete rule inet vmhook prerouting handle 4\nflush chain inet vmhook vm-${UUID}\ndelete chain inet vmhook vm-${UUID}\n`);
});

test("libvirt's iptables backend: exceptions in LIBVIRT_FWI, removed exactly from iptables -S, and replaced in the same restore", () => {
  const input = iptablesApplyInput("-N LIBVIRT_FWI\n", [FORWARD], 4, UUID);
  assert.match(input, `-I LIBVIRT_FWI -d 192.168.122.10/32 -o virbr0 -p udp -m udp --dport 60000:60010 -m conntrack --ctstate DNAT -m comment --comment "vmhook:${UUID}" -j ACCEPT`);
  assert.is(iptablesApplyInput("-N LIBVIRT_FWI\n", [FORWARD], 6, UUID), "");
  const exception = `LIBVIRT_FWI -d 192.168.122.10/32 -o virbr0 -p tcp -m tcp --dport 22 -m conntrack --ctstate DNAT -m comment --comment "vmhook:${UUID}" -j ACCEPT`;
  const shown = `-N LIBVIRT_FWI\n-A ${exception}\n-A LIBVIRT_FWI -o virbr0 -j REJECT --reject-with icmp-port-unreachable\n`;
  assert.is(iptablesRemovalInput(shown, UUID), `*filter\n-D ${exception}\nCOMMIT\n`);
  assert.is(iptablesApplyInput(shown, [{ ...FORWARD, ports: [FORWARD.ports[0]!] }], 4, UUID), `*filter\n-D ${exception}\n-I ${exception}\nCOMMIT\n`);
  assert.is(iptablesRemovalInput(shown, OTHER), "");
});

test("libvirt's nftables backend: an exception that a reject comes before in guest_input (libvirt re-inserted its rules at the head on a reload) is read as behind it; in front, it is not", () => {
  const chain = { family: "ip", table: "libvirt_network", chain: "guest_input" };
  const accept = { ...chain, handle: 9, comment: `vmhook:${UUID}`, expr: [{ accept: null }] };
  const libvirts = [
    { rule: { ...chain, handle: 7, expr: [{ match: { op: "in", left: { ct: { key: "state" } }, right: ["established", "related"] } }, { accept: null }] } },
    { rule: { ...chain, handle: 8, expr: [{ match: { op: "==", left: { meta: { key: "oif" } }, right: "virbr0" } }, { reject: null }] } },
  ];
  const listed = (rules: object[]) => parseRuleset(JSON.stringify({ nftables: [{ chain: { family: "ip", table: "libvirt_network", name: "guest_input" } }, ...rules] })).tagged.map((rule) => rule.behindReject);
  assert.equal(listed([{ rule: accept }, ...libvirts]), [false], "as vmhook inserted it");
  assert.equal(listed([...libvirts, { rule: accept }]), [true], "after libvirt's reload");
  assert.equal(listed([libvirts[1]!, { rule: { ...accept, chain: "guest_output" } }]), [false], "a reject in another chain does not count");
  assert.equal(inFrontOfReject(`-N LIBVIRT_FWI\n-A LIBVIRT_FWI -o virbr0 -j REJECT --reject-with icmp-port-unreachable\n-A LIBVIRT_FWI -j ACCEPT\n`), ["-N LIBVIRT_FWI"]);
});

test("the record names the iptables tool that holds libvirt's LIBVIRT_FWI: iptables-nft when nft shows it, else iptables-legacy when that has it", () => {
  const nft: RulesetView = { ...EMPTY, allChains: new Set(["ip filter LIBVIRT_FWI"]) };
  const v6: ResolvedForward = { ...FORWARD, family: 6, guest: parseIp("fd00::10")!, subnet: { network: parseIp("fd00::")!, prefix: 64 } };
  assert.equal(buildRecord(UUID, [FORWARD, v6], nft).iptables, ["iptables-nft"]);
  assert.equal(buildRecord(UUID, [FORWARD, v6], nft, (tool) => tool === "ip6tables-legacy").iptables, ["iptables-nft", "ip6tables-legacy"]);
  assert.equal(buildRecord(UUID, [FORWARD], EMPTY).iptables, []);
});

test("journal records round-trip, and a tampered one is refused before it reaches nft", () => {
  const record = buildRecord(UUID, [FORWARD], EMPTY);
  assert.equal(checkRecord(record).forwards, [FORWARD]);
  for (const [key, value] of [["guest", "192.168.122.10; flush ruleset"], ["bridge", 'virbr0" accept'], ["ports", "22 accept"], ["subnet", "192.168.122.0/99"]] as const) {
    const tampered = { ...record, forwards: [{ ...record.forwards[0]!, [key]: value }] };
    assert.throws(() => checkRecord(tampered), /is not valid/, key);
  }
  assert.throws(() => checkRecord({ ...record, uuid: "../../etc" }), /is not valid \(uuid\)/);
  assert.is(describeForwards([FORWARD]), "forward tcp 2222 → 192.168.122.10:22, udp 60000-60010 → 192.168.122.10:60000-60010 (nft table inet vmhook)");
});

test("a host port another VM's journal holds is refused naming that VM; other families and protocols pass", () => {
  const theirs = buildRecord(OTHER, [FORWARD], EMPTY);
  const journal = { domain: { name: "db", uuid: OTHER }, entries: [{ plugin: "forward", undo: theirs }] } as unknown as Journal;
  const mine = (protocol: "tcp" | "udp", port: number, family: 4 | 6 = 4): ResolvedForward[] => [
    { ...FORWARD, family, guest: family === 4 ? FORWARD.guest : parseIp("fd00::10")!, ports: [{ protocol, host: { first: port, last: port }, guest: { first: 22, last: 22 } }] },
  ];
  assert.throws(() => checkOtherVms(mine("udp", 60005), UUID, [journal]), /host port udp 60005 is forwarded to VM "db" already/);
  checkOtherVms(mine("tcp", 60005), UUID, [journal]);
  checkOtherVms(mine("tcp", 2222, 6), UUID, [journal]);
  checkOtherVms(mine("tcp", 2222), OTHER, [journal]);
});

test("/proc/net: listening TCP and unconnected UDP sockets, IPv4 and IPv6 addresses decoded", () => {
  const tcp = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4711 1 0 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4712 1 0 100 0 0 10 0
   2: 0A00000A:D2F0 0A00000B:0016 01 00000000:00000000 00:00000000 00000000     0        0 4713 1 0 100 0 0 10 0`;
  assert.equal(
    parseProcNet(tcp, "tcp", 4).map(({ address, port, loopback, wildcard, inode }) => ({ address, port, loopback, wildcard, inode })),
    [
      { address: "127.0.0.1", port: 3306, loopback: true, wildcard: false, inode: 4711 },
      { address: "0.0.0.0", port: 22, loopback: false, wildcard: true, inode: 4712 },
    ],
  );
  const tcp6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5001 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5003 1 0 100 0 0 10 0`;
  assert.equal(parseProcNet(tcp6, "tcp", 6).map(({ address, port, loopback }) => `${address} ${port} ${loopback}`), [":: 22 false", "::1 8080 true"]);
});

test("a host service bound to the forward's IPv6 host-address is found, whichever zero run the kernel's address has: the forward would take its traffic", () => {
  // fd00:0:0:1::1, as /proc/net/tcp6 prints it (each 32-bit word little-endian), listening on 2222.
  const tcp6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 000000FD010000000000000001000000:08AE 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5002 1 0 100 0 0 10 0`;
  assert.equal(parseProcNet(tcp6, "tcp", 6).map(({ address }) => address), ["fd00:0:0:1::1"], "written as the forward's own addresses are (RFC 5952)");
  const host = new SimHost().file("/proc/net/tcp6", tcp6);
  const v6: ResolvedForward = { ...FORWARD, family: 6, guest: parseIp("fd00:122::10")!, hostAddress: parseIp("fd00:0:0:1::1")!, ports: [FORWARD.ports[0]!] };
  assert.throws(() => checkListeners(host, [v6]), /host port tcp 2222 \(IPv6\) is in use: .* listens on \[fd00:0:0:1::1\]:2222/);
});

test("an IPv6 socket bound to an IPv4-mapped address (Java binds IPv4 addresses so) is an IPv4 listener: it holds the IPv4 port, not the IPv6 one", () => {
  // ::ffff:203.0.113.5 on 8080 and ::ffff:127.0.0.1 on 8081, as /proc/net/tcp6 prints them.
  const tcp6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF0000057100CB:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5004 1 0 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5005 1 0 100 0 0 10 0`;
  assert.equal(
    parseProcNet(tcp6, "tcp", 6).map(({ family, address, loopback }) => `${family} ${address} ${loopback}`),
    ["4 203.0.113.5 false", "4 127.0.0.1 true"],
  );
  const host = new SimHost().file("/proc/net/tcp6", tcp6);
  const on = (port: number, family: 4 | 6 = 4): ResolvedForward[] => [
    { ...FORWARD, family, guest: family === 4 ? FORWARD.guest : parseIp("fd00:122::10")!, ports: [{ protocol: "tcp", host: { first: port, last: port }, guest: { first: 80, last: 80 } }] },
  ];
  assert.throws(() => checkListeners(host, on(8080)), /host port tcp 8080 is in use: .* listens on 203\.0\.113\.5:8080/);
  checkListeners(host, on(8080, 6));
  checkListeners(host, on(8081));
});

test("libvirt network files: status or definition, NAT by default, netmask or prefix, DHCP hosts by MAC", () => {
  const network = parseNetworkXml(
    `<networkstatus><network><name>default</name><forward/><bridge name='virbr0'/>
      <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp><host mac='52:54:00:AA:BB:01' ip='192.168.122.10'/></dhcp></ip>
      <ip family='ipv6' address='fd00:122::1' prefix='64'/></network></networkstatus>`,
    "/run/libvirt/network/default.xml",
  );
  assert.is(network.mode, "nat");
  assert.equal(network.subnets.map((subnet) => `${subnet.network.text}/${subnet.prefix}`), ["192.168.122.0/24", "fd00:122::/64"]);
  assert.equal(network.dhcpHosts.map((host) => `${host.mac} ${host.ip.text}`), ["52:54:00:aa:bb:01 192.168.122.10"]);
  assert.is(parseNetworkXml("<network><name>iso</name><bridge name='virbr1'/></network>", "f").mode, "isolated");
  assert.throws(() => parseNetworkXml(`<network><name>x</name><bridge name='a"b'/></network>`, "f"), /is not a bridge name vmhook can use/);
});

test("vmhook plan --event start lists exactly the step start runs; release takes the rules out", async () => {
  const { sim, nftScripts } = nftHost(UUID);
  const xml = domain(`<vmhook:forward ports="2222:22,60000-60010/udp"/>`);
  assert.equal(await assertPlanIsPrepare(sim, xml, "vm", "start"), ["forward: forward tcp 2222 → 192.168.122.10:22, udp 60000-60010 → 192.168.122.10:60000-60010 (nft table inet vmhook)"]);
  assert.is(nftScripts.length, 1);
  assert.match(nftScripts[0]!, /add rule inet vmhook vm-11111111-2222-4333-8444-555555555555 .*meta l4proto tcp th dport 2222 dnat ip to 192\.168\.122\.10:22/);
  const released = await runHookEvent(sim, "release", "end", xml);
  assert.is(released.code, 0, released.stderr);
  assert.is(nftScripts.at(-1), "delete table inet vmhook\n");
  assert.not.ok(sim.exists(`/run/vmhook/${UUID}.json`), "the journal is gone after release");
});

test("prepare refuses what start would (nft not installed, a host port another VM forwards), before any plugin of the domain changes the host", async () => {
  const xml = domain(`<vmhook:forward ports="2222:22"/>`);
  const noNft = new SimHost().dir("/var/log").dir("/run").file("/run/libvirt/network/default.xml", NAT_NETWORK);
  const withoutNft = await runHookEvent(noNft, "prepare", "begin", xml);
  assert.is(withoutNft.code, 1, "refused at prepare");
  assert.match(withoutNft.stderr.split("\n")[0]!, /^vmhook: forward: nft is not available \(nft: not found\); install nftables \(apt install nftables\)$/);
  assert.equal(noNft.stateFiles(), [], "nothing journaled");

  const { sim, nftScripts } = nftHost(OTHER);
  const other = xml.replace(UUID, OTHER).replace("<name>vm</name>", "<name>db</name>");
  assert.is((await runHookEvent(sim, "start", "begin", other, "db")).code, 0);
  const before = sim.snapshot();
  const clash = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(clash.code, 1, "refused at prepare");
  assert.match(clash.stderr.split("\n")[0]!, 'forward: host port tcp 2222 is forwarded to VM "db" already');
  assert.equal(sim.snapshot(), before, "the host is as it was");
  assert.is(nftScripts.length, 1, "only db's rules went in");
});

test("prepare refuses rules nft or the kernel would not take (an old nft, a kernel without the inet family's nat), naming nft's words, its version and the kernel, before any plugin of the domain changes the host", async () => {
  const { sim, nftScripts } = nftHost(UUID);
  sim.file("/proc/sys/kernel/osrelease", "4.19.0-27-amd64");
  const nft = sim.execHandler("nft")!;
  const checked: string[] = [];
  sim.onExec("nft", (args, host, options) => {
    if (args.join(" ") === "--check -f -") checked.push(options.input ?? "");
    if (args.join(" ") === "--version") return { status: 0, stdout: "nftables v0.9.0 (Fearless Fosdick)\n" };
    if (args.join(" ") === "--check -f -") return { status: 1, stderr: "Error: Could not process rule: No such file or directory\nadd chain inet vmhook prerouting { type nat hook prerouting priority -100; policy accept; }\n" };
    return nft(args, host, options);
  });
  const xml = domain(`<vmhook:forward ports="2222:22"/>`);
  const before = sim.snapshot();
  const refused = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(refused.code, 1, "refused at prepare, not at start after the other plugins acted");
  assert.match(
    refused.stderr.split("\n")[0]!,
    "forward: nft (nftables v0.9.0) with Linux 4.19.0-27-amd64 would refuse the domain's rules: Error: Could not process rule: No such file or directory / add chain inet vmhook prerouting",
  );
  assert.match(refused.stderr.split("\n")[0]!, "nothing was changed; update nftables and the kernel: vmhook's rules need nat in nft's inet family (Linux 5.2 or later)");
  assert.match(checked.join(""), /add rule inet vmhook vm-11111111-2222-4333-8444-555555555555 .*dnat ip to 192\.168\.122\.10:22/, "the check ran start's transaction");
  assert.equal(nftScripts, [], "nothing applied");
  assert.equal(sim.snapshot(), before, "the host is as it was");
});

test("an unreadable listening-socket table refuses the forward at start, naming the file and the errno: no listeners seen is not no listeners", async () => {
  const { sim, nftScripts } = nftHost(UUID);
  sim.file("/proc/net/tcp", "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode").failRead("/proc/net/tcp", "EIO");
  const before = sim.snapshot();
  const outcome = await runHookEvent(sim, "start", "begin", domain(`<vmhook:forward ports="2222:22"/>`));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, "cannot read /proc/net/tcp (EIO); vmhook does not act on what it cannot read");
  assert.equal(nftScripts, [], "no rule went in");
  assert.equal(sim.snapshot(), before);
  assert.equal(sim.stateFiles(), []);
  sim.clearFailures();
  const started = await runHookEvent(sim, "start", "begin", domain(`<vmhook:forward ports="2222:22"/>`));
  assert.is(started.code, 0, started.stderr);
});

test("an unreadable network status file is refused, naming it: the definition (maybe another bridge or subnet) does not stand in for it", async () => {
  const { sim, nftScripts } = nftHost(UUID);
  sim.file("/etc/libvirt/qemu/networks/default.xml", NAT_NETWORK.replace(/192\.168\.122\./g, "10.0.5.").replace("virbr0", "virbr9")).failRead("/run/libvirt/network/default.xml", "EIO");
  const before = sim.snapshot();
  const outcome = await runHookEvent(sim, "start", "begin", domain(`<vmhook:forward ports="2222:22"/>`));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, "cannot read /run/libvirt/network/default.xml (EIO)");
  assert.equal(nftScripts, []);
  assert.equal(sim.snapshot(), before);
});

test("reconnect puts back rules that went missing, warns, and adds nothing to the journal; nothing missing plans nothing", async () => {
  const { sim, nftScripts, dropRules } = nftHost(UUID);
  const xml = domain(`<vmhook:forward ports="2222:22"/>`);
  assert.is((await runHookEvent(sim, "start", "begin", xml)).code, 0);
  const journal = sim.read(`/run/vmhook/${UUID}.json`);
  assert.equal(await plannedStepsFor(sim, xml, "reconnect"), []);
  dropRules();
  assert.equal(await plannedStepsFor(sim, xml, "reconnect"), ["forward: put back forward tcp 2222 → 192.168.122.10:22 (nft table inet vmhook)"]);
  const reconnected = await runHookEvent(sim, "reconnect", "begin", xml);
  assert.is(reconnected.code, 0, reconnected.stderr);
  assert.is(nftScripts.length, 2, "the rules went in again");
  assert.match(sim.read("/var/log/vmhook.log"), /chain inet vmhook vm-11111111-2222-4333-8444-555555555555, the jump from inet vmhook prerouting, the jump from inet vmhook output went missing/);
  assert.equal(JSON.parse(sim.read(`/run/vmhook/${UUID}.json`)).entries, JSON.parse(journal).entries, "the journal holds the start step only");
});

test("reconnect puts back a hairpin that went missing (its jump from postrouting, the masquerade rules of its chain), as it does the DNAT: other guests reach the forward again", async () => {
  const { sim, dropWhere, listed } = nftHost(UUID);
  const xml = domain(`<vmhook:forward ports="2222:22,60000-60010/udp" hairpin="yes"/>`);
  assert.is((await runHookEvent(sim, "start", "begin", xml)).code, 0);
  const applied = listed();
  assert.equal(await plannedStepsFor(sim, xml, "reconnect"), [], "all in place: nothing to put back");
  const losses: [string, (object: NftObject) => boolean, RegExp][] = [
    ["nft delete rule inet vmhook postrouting handle …", (object) => object.rule?.chain === "postrouting", /the jump from inet vmhook postrouting went missing/],
    ["nft flush chain inet vmhook vm-…-hairpin", (object) => object.rule?.chain === `vm-${UUID}-hairpin`, /2 rule\(s\) of chain inet vmhook vm-[-0-9a-f]+-hairpin went missing/],
    ["nft flush chain inet vmhook vm-…", (object) => object.rule?.chain === `vm-${UUID}`, /2 rule\(s\) of chain inet vmhook vm-[-0-9a-f]+5555 went missing/],
  ];
  for (const [how, gone, warning] of losses) {
    dropWhere(gone);
    assert.equal(await plannedStepsFor(sim, xml, "reconnect"), ["forward: put back forward tcp 2222 → 192.168.122.10:22, udp 60000-60010 → 192.168.122.10:60000-60010, hairpin (nft table inet vmhook)"], how);
    const reconnected = await runHookEvent(sim, "reconnect", "begin", xml);
    assert.is(reconnected.code, 0, reconnected.stderr);
    assert.match(sim.read("/var/log/vmhook.log"), warning, how);
    assert.equal(listed(), applied, `${how}: all back`);
  }
});

/** conntrack -L lines: a client (203.0.113.9) of the host (10.0.0.1), and the guest (192.168.122.10) masqueraded to a remote peer. */
const CONNTRACK = {
  /** A WireGuard-like peer sending to host port 60005 before the forward went in: no DNAT. */
  beforeForward: "udp      17 29 src=203.0.113.9 dst=10.0.0.1 sport=51820 dport=60005 [UNREPLIED] src=10.0.0.1 dst=203.0.113.9 sport=60005 dport=51820 mark=0 use=1",
  /** The guest's own connection out to a remote port 60005, masqueraded: not addressed to the host. */
  guestOut: "udp      17 29 src=192.168.122.10 dst=198.51.100.7 sport=40000 dport=60005 src=198.51.100.7 dst=10.0.0.1 sport=60005 dport=40000 mark=0 use=1",
  /** A flow the forward DNATed to the guest. */
  forwardedUdp: "udp      17 170 src=203.0.113.9 dst=10.0.0.1 sport=51821 dport=60006 src=192.168.122.10 dst=203.0.113.9 sport=60006 dport=51821 [ASSURED] mark=0 use=1",
  forwardedTcp: "tcp      6 431999 ESTABLISHED src=203.0.113.9 dst=10.0.0.1 sport=50000 dport=2222 src=192.168.122.10 dst=203.0.113.9 sport=22 dport=50000 [ASSURED] mark=0 use=1",
  /** The host's own TCP connection out to a remote port 2222: apply leaves TCP alone (a stateful firewall would cut it). */
  hostOutTcp: "tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=198.51.100.7 sport=45000 dport=2222 src=198.51.100.7 dst=10.0.0.1 sport=2222 dport=45000 [ASSURED] mark=0 use=1",
  /** The host's own UDP flow out to a remote port 60005 (QUIC, a WireGuard client): not addressed to the host, no rule takes it. */
  hostOutUdp: "udp      17 170 src=10.0.0.1 dst=198.51.100.7 sport=41000 dport=60005 src=198.51.100.7 dst=10.0.0.1 sport=60005 dport=41000 [ASSURED] mark=0 use=1",
  /** Another port altogether. */
  dns: "udp      17 29 src=10.0.0.1 dst=10.0.0.53 sport=41000 dport=53 src=10.0.0.53 dst=10.0.0.1 sport=53 dport=41000 mark=0 use=1",
};
/** conntrack -D of the entries to host port `hostPort` whose replies come from replySource:replyPort. */
const deleted = (protocol: string, hostPort: number, replySource: string, replyPort: number) => `-D -f ipv4 -p ${protocol} -d 10.0.0.1 --dport ${hostPort} -r ${replySource} --reply-port-src ${replyPort}`;

test("start, reconnect and release delete the conntrack entries of the forwarded host ports that go elsewhere than the rules now say: a UDP peer that kept sending gets the guest, and a forwarded flow stops at release", async () => {
  const { sim, dropRules } = nftHost(UUID);
  const conntrack = conntrackOn(sim, [CONNTRACK.beforeForward, CONNTRACK.guestOut, CONNTRACK.hostOutTcp, CONNTRACK.hostOutUdp, CONNTRACK.dns]);
  const xml = domain(`<vmhook:forward ports="2222:22,60000-60010/udp"/>`);
  const started = await runHookEvent(sim, "start", "begin", xml);
  assert.is(started.code, 0, started.stderr);
  assert.equal(conntrack.calls, ["-L -f ipv4 -p udp", deleted("udp", 60005, "10.0.0.1", 60005)], "TCP is not even listed");
  assert.equal(conntrack.entries, [CONNTRACK.guestOut, CONNTRACK.hostOutTcp, CONNTRACK.hostOutUdp, CONNTRACK.dns], "the guest's masqueraded connection out to a remote port 60005 stays, and the host's own connections out (TCP and UDP)");

  conntrack.entries.push(CONNTRACK.forwardedUdp, CONNTRACK.forwardedTcp, CONNTRACK.beforeForward); // the peer sent again while the rules were gone
  dropRules();
  conntrack.calls.length = 0;
  assert.is((await runHookEvent(sim, "reconnect", "begin", xml)).code, 0);
  assert.equal(conntrack.calls, ["-L -f ipv4 -p udp", deleted("udp", 60005, "10.0.0.1", 60005)], "flows already going to the guest are kept");

  conntrack.calls.length = 0;
  const released = await runHookEvent(sim, "release", "end", xml);
  assert.is(released.code, 0, released.stderr);
  assert.equal(conntrack.calls, ["-L -f ipv4 -p tcp", deleted("tcp", 2222, "192.168.122.10", 22), "-L -f ipv4 -p udp", deleted("udp", 60006, "192.168.122.10", 60006)]);
  assert.equal(conntrack.entries, [CONNTRACK.guestOut, CONNTRACK.hostOutTcp, CONNTRACK.hostOutUdp, CONNTRACK.dns]);
  assert.not.match(sim.read("/var/log/vmhook.log"), /conntrack/, "no warning");
});

test("a forwarded UDP service with many peers (DNS, a game server): release cuts their flows with one conntrack per host port, not one per flow (each a dump of the whole table), and start likewise", async () => {
  const { sim } = nftHost(UUID);
  const flow = (peerPort: number, replySource: string, replyPort: number) =>
    `udp      17 29 src=203.0.113.9 dst=10.0.0.1 sport=${peerPort} dport=60005 src=${replySource} dst=203.0.113.9 sport=${replyPort} dport=${peerPort} mark=0 use=1`;
  const peers = Array.from({ length: 300 }, (_, index) => 20_000 + index);
  const conntrack = conntrackOn(sim, [...peers.map((port) => flow(port, "10.0.0.1", 60005)), CONNTRACK.guestOut, CONNTRACK.hostOutUdp]);
  const xml = domain(`<vmhook:forward ports="60000-60010/udp"/>`);
  assert.is((await runHookEvent(sim, "start", "begin", xml)).code, 0);
  assert.equal(conntrack.calls, ["-L -f ipv4 -p udp", deleted("udp", 60005, "10.0.0.1", 60005)], "the peers that were sending to the host");
  assert.equal(conntrack.entries, [CONNTRACK.guestOut, CONNTRACK.hostOutUdp]);

  conntrack.entries.push(...peers.map((port) => flow(port, "192.168.122.10", 60005)));
  conntrack.calls.length = 0;
  assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
  assert.equal(conntrack.calls, ["-L -f ipv4 -p udp", deleted("udp", 60005, "192.168.122.10", 60005)], "the flows the forward made");
  assert.equal(conntrack.entries, [CONNTRACK.guestOut, CONNTRACK.hostOutUdp]);
});

test("conntrack entries: host-address= narrows them to that address; IPv6 listings are read; a line that cannot be read is an error, not a skipped entry", () => {
  const peer = (destination: string) => `udp      17 29 src=203.0.113.9 dst=${destination} sport=51820 dport=60005 [UNREPLIED] src=${destination} dst=203.0.113.9 sport=60005 dport=51820 mark=0 use=1`;
  const entries = parseConntrackListing(`${peer("10.0.0.1")}\n${peer("10.0.0.2")}\n`, "udp");
  const narrowed: ResolvedForward = { ...FORWARD, hostAddress: parseIp("10.0.0.2")! };
  const local = new Set(["10.0.0.1", "10.0.0.2"]);
  assert.equal(staleEntries(entries, [narrowed], "apply", local).map((entry) => entry.original.destination.text), ["10.0.0.2"]);
  assert.equal(staleEntries(entries, [narrowed], "undo", local), [], "neither goes to the guest");
  const v6 = parseConntrackListing("udp      17 29 src=fd00:250::2 dst=fd00:250:0:0::1 sport=40000 dport=60005 src=fd00:150::10 dst=fd00:250::2 sport=60005 dport=40000 [ASSURED] mark=0 use=1\n", "udp");
  assert.is(v6[0]!.original.destination.text, "fd00:250::1");
  assert.is(staleEntries(v6, [{ ...FORWARD, family: 6, guest: parseIp("fd00:150::10")! }], "undo", new Set()).length, 1);
  assert.throws(() => parseConntrackListing("udp      17 29 src=10.0.0.1 dport=5\n", "udp"), /cannot read conntrack's listing: udp +17 29 src=10\.0\.0\.1 dport=5/);
});

test("the host's own addresses, as the DNAT rule takes them: fib_trie's LOCAL leaves and if_inet6's addresses, loopback left out; unreadable, an error", () => {
  const sim = new SimHost().file("/proc/net/if_inet6", "00000000000000000000000000000001 01 80 10 80       lo\nfd000250000000000000000000000001 02 40 00 80     eth0\n");
  assert.equal([...localAddresses(sim, 6)], ["fd00:250::1"]);
  assert.throws(() => localAddresses(sim, 4), /cannot read \/proc\/net\/fib_trie for the host's own addresses/);
  conntrackOn(sim, []);
  assert.equal([...localAddresses(sim, 4)], ["10.0.0.1"]);
});

test("without conntrack the forward starts and releases all the same, with one warning each naming the package", async () => {
  const { sim, nftScripts } = nftHost(UUID);
  const xml = domain(`<vmhook:forward ports="2222:22,60000-60010/udp"/>`);
  const started = await runHookEvent(sim, "start", "begin", xml);
  assert.is(started.code, 0, started.stderr);
  assert.is(nftScripts.length, 1, "the rules went in");
  assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
  const warnings = sim.read("/var/log/vmhook.log").split("\n").filter((line) => line.includes("conntrack"));
  assert.is(warnings.length, 2, warnings.join("\n"));
  for (const line of warnings) assert.match(line, /warn: forward: conntrack is not installed \(apt install conntrack\)/);
});

test("a conntrack that fails: start goes on with a warning (the rules are right), release stays undo-failed for vmhook recover (flows it could not cut would still reach the guest's address)", async () => {
  const { sim } = nftHost(UUID);
  conntrackOn(sim, []);
  sim.onExec("conntrack", () => ({ status: 1, stderr: "conntrack v1.4.7 (conntrack-tools): Operation failed: Device or resource busy\n" }));
  const xml = domain(`<vmhook:forward ports="60000-60010/udp"/>`);
  assert.is((await runHookEvent(sim, "start", "begin", xml)).code, 0);
  assert.match(sim.read("/var/log/vmhook.log"), /warn: forward: conntrack -L -f ipv4 -p udp failed: .*Device or resource busy; a peer already sending/);
  await runHookEvent(sim, "release", "end", xml);
  const journal = JSON.parse(sim.read(`/run/vmhook/${UUID}.json`));
  assert.match(JSON.stringify(journal), /undo-failed/);
  assert.match(JSON.stringify(journal), /conntrack -L -f ipv4 -p udp failed: .*Device or resource busy/);
});

test("reconnect: an element that no longer reads (a live metadata edit, a plugin gone from plugins.d) is logged naming it, and forward still puts back its rules from the journal", async () => {
  const started = domain(`<vmhook:forward ports="2222:22"/>`);
  const edits: [string, string, RegExp][] = [
    ["an unknown element", `<vmhook:forward ports="2222:22"/><vmhook:frobnicate/>`, /error: .*<vmhook:frobnicate>: is not a vmhook element/],
    ["another plugin's bad attribute", `<vmhook:forward ports="2222:22"/><vmhook:nosleep when="always"/>`, /error: .*nosleep: .*<vmhook:nosleep when="always">: .*when/],
    ["a custom plugin not installed", `<vmhook:forward ports="2222:22"/><vmhook:plugin name="gone"/>`, /error: .*plugin:gone: .*gone/],
    ["forward's own element", `<vmhook:forward ports="70000"/>`, /error: .*forward: .*<vmhook:forward ports="70000">: ports= item "70000"/],
    ["forward's element removed", ``, /reconnected: journal holds 1 change/],
  ];
  for (const [what, elements, logged] of edits) {
    const { sim, nftScripts, dropRules } = nftHost(UUID);
    assert.is((await runHookEvent(sim, "start", "begin", started)).code, 0);
    dropRules();
    const reconnected = await runHookEvent(sim, "reconnect", "begin", domain(elements));
    assert.is(reconnected.code, 0, what);
    assert.is(nftScripts.length, 2, `${what}: the rules went in again`);
    assert.match(sim.read("/var/log/vmhook.log"), logged, what);
  }
});


test("start: a transaction nft refuses (it exits non-zero: the kernel took none of it) changed nothing, so it leaves the journal: release neither lists nor removes rules nor deletes conntrack entries, and says 0 changes undone; it used to keep the entry and undo it (nft, conntrack) as 1 change", async () => {
  const { sim } = nftHost(UUID);
  const { calls } = conntrackOn(sim, []);
  const nft = sim.execHandler("nft")!;
  sim.onExec("nft", (args, host, options) => (args.join(" ") === "-f -" ? { status: 1, stderr: "Error: Could not process rule: No such file or directory\n" } : nft(args, host, options)));
  const xml = domain(`<vmhook:forward ports="2222:22"/>`);
  const before = sim.snapshot();
  const outcome = await runHookEvent(sim, "start", "begin", xml);
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, "forward: nft refused the transaction, nothing was changed: Error: Could not process rule: No such file or directory");
  assert.equal(readJournal(sim, UUID)?.entries ?? [], [], "no entry for release to undo");
  const nftRuns = () => sim.execs.filter((call) => call.command === "nft").map((call) => call.args.join(" "));
  const atStart = nftRuns();
  assert.equal(atStart.filter((args) => args === "-f -").length, 1);
  assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
  assert.equal(nftRuns(), atStart, "release ran no nft");
  assert.equal(calls, [], "no conntrack run");
  assert.not.match(sim.read("/var/log/vmhook.log"), /released: [1-9]/);
  assert.equal(sim.snapshot(), before);
});

test("start: an nft killed at its timeout may have committed: the message says so, not that nothing was changed, and the entry stays for release, which reads the ruleset to take out what went in", async () => {
  const { sim } = nftHost(UUID);
  const nft = sim.execHandler("nft")!;
  sim.onExec("nft", (args, host, options) => (args.join(" ") === "-f -" ? { status: null, signal: "SIGKILL", timedOut: true } : nft(args, host, options)));
  const xml = domain(`<vmhook:forward ports="2222:22"/>`);
  const outcome = await runHookEvent(sim, "start", "begin", xml);
  assert.is(outcome.code, 1);
  const first = outcome.stderr.split("\n")[0]!;
  assert.match(first, "forward: nft did not finish in time and was killed: the kernel may have taken the transaction, so the domain's entry stays for release to take out");
  assert.not.match(first, "nothing was changed");
  assert.is(readJournal(sim, UUID)?.entries.length, 1, "the entry stays");
  const listings = () => sim.execs.filter((call) => call.command === "nft" && call.args.join(" ") === "-j list ruleset").length;
  const before = listings();
  assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
  assert.is(listings(), before + 1, "release read the ruleset to take out what went in");
  assert.not.ok(sim.exists(`/run/vmhook/${UUID}.json`));
});

test.run();
