// What the forward plugin writes, computed purely from typed values: the nft
// transaction that puts a domain's forwards in place (or takes them out), and
// the iptables-restore input for libvirt's iptables backend. Nothing from the
// domain XML reaches these texts except through the typed, checked values.
//
// Layout: vmhook's own table `inet vmhook` with three NAT base chains
// (prerouting, output, postrouting) that only jump, per domain, to the chain
// vm-<uuid> (DNAT) and vm-<uuid>-hairpin (masquerade). Everything vmhook adds
// outside its own chains carries the comment "vmhook:<uuid>", so undo finds
// exactly what one domain added, whatever else changed meanwhile.
import type { Family, IpAddress } from "./address.ts";
import { formatRange, type PortForward, type PortRange } from "./config.ts";
import { formatSubnet, type Subnet } from "./network.ts";

export const TABLE = "vmhook";
/** DNAT before conntrack's confirm and before filter (priority 0); masquerade at the usual srcnat priority. */
const BASE_CHAINS = [
  { name: "prerouting", spec: "type nat hook prerouting priority -100; policy accept;" },
  { name: "output", spec: "type nat hook output priority -100; policy accept;" },
  { name: "postrouting", spec: "type nat hook postrouting priority 100; policy accept;" },
] as const;

/** libvirt's nftables backend (10.4+): per family a table libvirt_network whose guest_input chain rejects new connections to a NAT network. */
const LIBVIRT_NFT = { table: "libvirt_network", chain: "guest_input" };
/** libvirt's iptables backend: the FORWARD sub-chain that rejects new connections into the bridge. */
export const LIBVIRT_IPTABLES_CHAIN = "LIBVIRT_FWI";

/** One forward with everything resolved: the guest's address, its bridge and subnet. */
export interface ResolvedForward {
  family: Family;
  guest: IpAddress;
  hostAddress?: IpAddress;
  interface?: string;
  bridge: string;
  /** The guest network's subnet, the source of hairpin traffic. */
  subnet: Subnet;
  hairpin: boolean;
  ports: PortForward[];
}

export const libvirtNftChain = (family: Family) => `${ipKeyword(family)} ${LIBVIRT_NFT.table} ${LIBVIRT_NFT.chain}`;

/** What of vmhook's (and libvirt's) rules exists now, from `nft -j list ruleset`. */
export interface RulesetView {
  tableExists: boolean;
  /** Chains of inet vmhook. */
  chains: string[];
  /** How many rules each chain of inet vmhook holds (chains without rules are left out). */
  rulesIn: Map<string, number>;
  /**
   * Rules carrying a "vmhook:…" comment, anywhere; behindReject: a reject
   * comes before it in its chain, so it lets nothing through (libvirt
   * re-inserts its rules at the head of its chains when it reloads them).
   */
  tagged: { family: string; table: string; chain: string; handle: number; comment: string; behindReject: boolean }[];
  /** Chains that exist, as "family table chain" (to know libvirt's backend). */
  allChains: Set<string>;
}

export const domainTag = (uuid: string) => `vmhook:${uuid}`;
const domainChain = (uuid: string) => `vm-${uuid}`;
const hairpinChain = (uuid: string) => `vm-${uuid}-hairpin`;

const nfproto = (family: Family) => (family === 4 ? "ipv4" : "ipv6");
const ipKeyword = (family: Family) => (family === 4 ? "ip" : "ip6");
const nftPorts = (range: PortRange) => formatRange(range);
const quoted = (name: string) => `"${name}"`;

/** dnat target: 192.168.122.10:22, [fd00::10]:22, or the address alone when a range keeps its ports. */
function dnatTarget(forward: ResolvedForward, port: PortForward): string {
  const keepsPorts = port.host.first !== port.host.last;
  if (keepsPorts) return forward.guest.text;
  return `${forward.family === 6 ? `[${forward.guest.text}]` : forward.guest.text}:${port.guest.first}`;
}

/** The DNAT rules of one domain's chain (jumped to from prerouting and output). */
function dnatRules(forward: ResolvedForward): string[] {
  const ip = ipKeyword(forward.family);
  // Hairpin traffic (the network's other guests) arrives on the bridge, whatever interface= says.
  const from = forward.interface
    ? forward.hairpin
      ? `iifname { ${quoted(forward.interface)}, ${quoted(forward.bridge)} } `
      : `iifname ${quoted(forward.interface)} `
    : forward.hairpin
      ? ""
      : `iifname != ${quoted(forward.bridge)} `;
  // Always addressed to the host: host-address= only narrows that to one of its
  // addresses, so a foreign one (the host's own connections out, traffic it
  // routes) never reaches the guest.
  const to = `fib daddr type local ${ip} daddr ${forward.hostAddress ? forward.hostAddress.text : `!= ${forward.family === 4 ? "127.0.0.0/8" : "::1"}`} `;
  return forward.ports.map(
    (port) => `meta nfproto ${nfproto(forward.family)} ${from}${to}meta l4proto ${port.protocol} th dport ${nftPorts(port.host)} dnat ${ip} to ${dnatTarget(forward, port)}`,
  );
}

/** Hairpin: guests of the same network reaching the forward get the host as their peer, so replies come back through it. */
function hairpinRules(forward: ResolvedForward): string[] {
  if (!forward.hairpin) return [];
  const ip = ipKeyword(forward.family);
  return forward.ports.map(
    (port) =>
      `meta nfproto ${nfproto(forward.family)} ${ip} saddr ${formatSubnet(forward.subnet)} ${ip} daddr ${forward.guest.text} meta l4proto ${port.protocol} th dport ${nftPorts(port.guest)} ct status dnat masquerade`,
  );
}

/**
 * The exception in libvirt's guest_input chain: a reject in libvirt's table is
 * final whatever another table accepts, and libvirt lets only related and
 * established connections into a NAT network. A connection that vmhook's DNAT
 * made (ct status dnat) to the guest's forwarded port is let through, before
 * libvirt's reject.
 */
function libvirtExceptionRule(forward: ResolvedForward, port: PortForward, uuid: string): string {
  const ip = ipKeyword(forward.family);
  return `oifname ${quoted(forward.bridge)} ${ip} daddr ${forward.guest.text} meta l4proto ${port.protocol} th dport ${nftPorts(port.guest)} ct status dnat counter accept comment ${quoted(domainTag(uuid))}`;
}

/** Lines that take out everything one domain has in nft, given what exists now. */
function removalLines(view: RulesetView, uuid: string): string[] {
  const tag = domainTag(uuid);
  const ours = [domainChain(uuid), hairpinChain(uuid)].filter((chain) => view.chains.includes(chain));
  const othersLeft = view.chains.some((chain) => chain.startsWith("vm-") && !ours.includes(chain));
  const tagged = view.tagged.filter((rule) => rule.comment === tag);
  const lines: string[] = [];
  for (const rule of tagged) {
    const insideOurTable = rule.family === "inet" && rule.table === TABLE;
    if (insideOurTable && !othersLeft) continue; // goes with the table
    lines.push(`delete rule ${rule.family} ${rule.table} ${rule.chain} handle ${rule.handle}`);
  }
  if (!view.tableExists) return lines;
  if (!othersLeft) return [...lines, `delete table inet ${TABLE}`];
  for (const chain of ours) lines.push(`flush chain inet ${TABLE} ${chain}`, `delete chain inet ${TABLE} ${chain}`);
  return lines;
}

/** The nft transaction that takes a domain's forwards out: empty when nothing of it is left (undo is idempotent). */
export function removalScript(view: RulesetView, uuid: string): string {
  const lines = removalLines(view, uuid);
  return lines.length === 0 ? "" : `${lines.join("\n")}\n`;
}

/** One of the domain's chains in inet vmhook: its rules and the base chains that jump to it. */
export interface DomainChain {
  name: string;
  rules: string[];
  jumpsFrom: string[];
}

/**
 * The domain's chains as applyScript writes them (vm-<uuid>, and
 * vm-<uuid>-hairpin when a forward has hairpin): reconnect checks each part
 * from the same list, so nothing apply writes goes missing unnoticed.
 */
export function domainChains(uuid: string, forwards: ResolvedForward[]): DomainChain[] {
  const hairpins = forwards.flatMap(hairpinRules);
  return [
    { name: domainChain(uuid), rules: forwards.flatMap(dnatRules), jumpsFrom: ["prerouting", "output"] },
    ...(hairpins.length > 0 ? [{ name: hairpinChain(uuid), rules: hairpins, jumpsFrom: ["postrouting"] }] : []),
  ];
}

/**
 * The nft transaction that makes a domain's forwards exactly `forwards`:
 * whatever the domain had before goes out in the same transaction, so a repeat
 * (reconnect) or a leftover never doubles a rule.
 */
export function applyScript(view: RulesetView, uuid: string, forwards: ResolvedForward[]): string {
  const tag = quoted(domainTag(uuid));
  // Removing first may delete the whole table (last domain); re-adding it in the same transaction is valid.
  const lines = [
    ...removalLines(view, uuid),
    `add table inet ${TABLE}`,
    ...BASE_CHAINS.map((base) => `add chain inet ${TABLE} ${base.name} { ${base.spec} }`),
    ...domainChains(uuid, forwards).flatMap(({ name, rules, jumpsFrom }) => [
      `add chain inet ${TABLE} ${name}`,
      ...rules.map((rule) => `add rule inet ${TABLE} ${name} ${rule}`),
      ...jumpsFrom.map((base) => `add rule inet ${TABLE} ${base} jump ${name} comment ${tag}`),
    ]),
  ];
  for (const forward of forwards) {
    const libvirtChain = libvirtNftChain(forward.family);
    if (!view.allChains.has(libvirtChain)) continue;
    for (const port of forward.ports) lines.push(`insert rule ${libvirtChain} ${libvirtExceptionRule(forward, port, uuid)}`);
  }
  return `${lines.join("\n")}\n`;
}

// ---- libvirt's iptables backend

const restoreInput = (lines: string[]) => (lines.length === 0 ? "" : `*filter\n${lines.join("\n")}\nCOMMIT\n`);

/** `-D` lines for the domain's exceptions in `iptables -S LIBVIRT_FWI`. */
function exceptionRemovals(listing: string, uuid: string): string[] {
  const marker = `--comment "${domainTag(uuid)}"`;
  return listing
    .split("\n")
    .filter((line) => line.startsWith(`-A ${LIBVIRT_IPTABLES_CHAIN} `) && line.includes(marker))
    .map((line) => `-D${line.slice(2)}`);
}

/**
 * iptables-restore input making the domain's exceptions of one family in
 * LIBVIRT_FWI exactly `forwards`'s: whatever `listing` shows of the domain's
 * goes out in the same restore (one transaction), so a repeat (reconnect)
 * never doubles them, and a restore that fails leaves them as they were.
 */
export function iptablesApplyInput(listing: string, forwards: ResolvedForward[], family: Family, uuid: string): string {
  const inserts = forwards
    .filter((forward) => forward.family === family)
    .flatMap((forward) =>
      forward.ports.map((port) => {
        const ports = port.guest.first === port.guest.last ? `${port.guest.first}` : `${port.guest.first}:${port.guest.last}`;
        const hostBits = family === 4 ? 32 : 128;
        return `-I ${LIBVIRT_IPTABLES_CHAIN} -d ${forward.guest.text}/${hostBits} -o ${forward.bridge} -p ${port.protocol} -m ${port.protocol} --dport ${ports} -m conntrack --ctstate DNAT -m comment --comment "${domainTag(uuid)}" -j ACCEPT`;
      }),
    );
  return restoreInput([...exceptionRemovals(listing, uuid), ...inserts]);
}

/** The rules of `iptables -S LIBVIRT_FWI` in front of its first REJECT: only there does an exception let a connection through. */
export function inFrontOfReject(listing: string): string[] {
  const lines = listing.split("\n");
  const reject = lines.findIndex((line) => / -j REJECT\b/.test(line));
  return reject === -1 ? lines : lines.slice(0, reject);
}

/** iptables-restore input deleting the domain's exceptions, from `iptables -S LIBVIRT_FWI`; "" when there are none. */
export function iptablesRemovalInput(listing: string, uuid: string): string {
  return restoreInput(exceptionRemovals(listing, uuid));
}

// ---- reading nft's JSON listing

interface NftObject {
  table?: { family: string; name: string };
  chain?: { family: string; table: string; name: string };
  rule?: { family: string; table: string; chain: string; handle: number; comment?: string; expr?: unknown };
}

/** Parses `nft -j list ruleset`. Throws when the text is not nft's JSON. */
export function parseRuleset(json: string): RulesetView {
  const parsed = JSON.parse(json) as { nftables?: NftObject[] };
  if (!Array.isArray(parsed.nftables)) throw new Error("no nftables array");
  const view: RulesetView = { tableExists: false, chains: [], rulesIn: new Map(), tagged: [], allChains: new Set() };
  /** Chains ("family table chain") where a reject came already: nft lists a chain's rules in order. */
  const rejecting = new Set<string>();
  for (const object of parsed.nftables) {
    if (object.table && object.table.family === "inet" && object.table.name === TABLE) view.tableExists = true;
    if (object.chain) {
      view.allChains.add(`${object.chain.family} ${object.chain.table} ${object.chain.name}`);
      if (object.chain.family === "inet" && object.chain.table === TABLE) view.chains.push(object.chain.name);
    }
    const rule = object.rule;
    if (rule && rule.family === "inet" && rule.table === TABLE) view.rulesIn.set(rule.chain, (view.rulesIn.get(rule.chain) ?? 0) + 1);
    if (!rule) continue;
    const chain = `${rule.family} ${rule.table} ${rule.chain}`;
    if (typeof rule.comment === "string" && rule.comment.startsWith("vmhook:") && Number.isSafeInteger(rule.handle)) {
      view.tagged.push({ family: rule.family, table: rule.table, chain: rule.chain, handle: rule.handle, comment: rule.comment, behindReject: rejecting.has(chain) });
    }
    if (Array.isArray(rule.expr) && rule.expr.some((statement) => typeof statement === "object" && statement !== null && "reject" in statement)) rejecting.add(chain);
  }
  return view;
}

/** Whether libvirt's iptables chain for a family shows in nft (iptables-nft, the default of Debian and Fedora). */
export const iptablesNftChain = (view: RulesetView, family: Family) => view.allChains.has(`${family === 4 ? "ip" : "ip6"} filter ${LIBVIRT_IPTABLES_CHAIN}`);
