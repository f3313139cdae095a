// A simulated host for the forward plugin: libvirt's NAT network "default"
// and an nft that keeps one domain's rules while they are applied (enough for
// missingRules and undo): the table, chains and rules of inet vmhook that the
// last apply transaction added. The ruleset lives in a file under the root,
// where the host snapshot sees it.
import { SimHost } from "./simhost.ts";

export const NAT_NETWORK = `<network><name>default</name><forward mode='nat'/><bridge name='virbr0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp><host mac='52:54:00:aa:bb:01' ip='192.168.122.10'/></dhcp></ip></network>`;

/** The simulated kernel's ruleset, as nft -j list ruleset prints it; absent while nothing of vmhook's is applied. */
const RULESET = "/var/lib/nft-sim/ruleset.json";

/** One object of nft's JSON listing, as far as the forward plugin reads it. */
export interface NftObject {
  table?: { family: string; name: string; handle: number };
  chain?: { family: string; table: string; name: string; handle: number };
  rule?: { family: string; table: string; chain: string; handle: number; comment?: string };
}

/** What the `add table|chain|rule inet vmhook …` lines of an nft script leave in the ruleset. */
export function addedObjects(script: string): NftObject[] {
  const ours = { family: "inet", table: "vmhook" };
  let handle = 1;
  return script.split("\n").flatMap((line): NftObject[] => {
    if (line === "add table inet vmhook") return [{ table: { family: "inet", name: "vmhook", handle: handle++ } }];
    const chain = /^add chain inet vmhook (\S+)/.exec(line);
    if (chain) return [{ chain: { ...ours, name: chain[1]!, handle: handle++ } }];
    const rule = /^add rule inet vmhook (\S+) .*?(?: comment "([^"]+)")?$/.exec(line);
    if (rule) return [{ rule: { ...ours, chain: rule[1]!, handle: handle++, ...(rule[2] ? { comment: rule[2] } : {}) } }];
    return [];
  });
}

/**
 * The NAT network and nft for the domain `uuid` on `sim`; nftScripts: every
 * script nft -f took; dropRules: the whole ruleset gone (nft flush ruleset);
 * dropWhere: the objects `gone` picks taken out (nft delete rule …, flush chain …).
 */
export function nftHost(uuid: string, sim = new SimHost().dir("/var/log").dir("/run")) {
  sim.file("/run/libvirt/network/default.xml", NAT_NETWORK).dir("/var/lib/nft-sim");
  const nftScripts: string[] = [];
  const listed = (): NftObject[] => (sim.exists(RULESET) ? (JSON.parse(sim.read(RULESET)) as { nftables: NftObject[] }).nftables : []);
  const dropRules = () => {
    if (sim.exists(RULESET)) sim.remove(RULESET);
  };
  const dropWhere = (gone: (object: NftObject) => boolean) => sim.file(RULESET, JSON.stringify({ nftables: listed().filter((object) => !gone(object)) }));
  sim.onExec("nft", (args, _sim, options) => {
    if (args.join(" ") === "-j list ruleset") return { status: 0, stdout: JSON.stringify({ nftables: [{ metainfo: { version: "1.0.6" } }, ...listed()] }) };
    if (args.join(" ") === "--check -f -") return { status: 0 }; // prepare's check: the simulated kernel takes every transaction
    if (args.join(" ") !== "-f -") return { status: 1, stderr: `unexpected nft ${args.join(" ")}` };
    nftScripts.push(options.input ?? "");
    if ((options.input ?? "").includes(`add chain inet vmhook vm-${uuid}`)) sim.file(RULESET, JSON.stringify({ nftables: addedObjects(options.input ?? "") }));
    else dropRules();
    return { status: 0 };
  });
  return { sim, nftScripts, dropRules, dropWhere, listed };
}

/** /proc/net/fib_trie of a host whose own addresses are 10.0.0.1 and loopback's (its Local table). */
const FIB_TRIE = `Local:
  +-- 0.0.0.0/0 3 0 4
     +-- 10.0.0.0/24 2 0 2
        |-- 10.0.0.0
           /24 link UNICAST
        |-- 10.0.0.1
           /32 host LOCAL
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
`;

/** conntrack -D's filters: the original (first) or reply (second) src=, dst=, sport=, dport= of an entry. */
const CONNTRACK_FILTERS: Record<string, [key: string, index: number]> = {
  "-s": ["src", 0],
  "-d": ["dst", 0],
  "--sport": ["sport", 0],
  "--dport": ["dport", 0],
  "-r": ["src", 1],
  "-q": ["dst", 1],
  "--reply-port-src": ["sport", 1],
  "--reply-port-dst": ["dport", 1],
};

const conntrackField = (entry: string, [key, index]: [string, number]) => [...entry.matchAll(new RegExp(`\\b${key}=(\\S+)`, "g"))][index]?.[1];

/**
 * conntrack(8) on `sim`, holding `entries` (lines as `conntrack -L` prints
 * them): -L -f FAMILY -p PROTO lists that protocol's, -D deletes every entry
 * its filters (CONNTRACK_FILTERS) match (exit 1 when none matched, as conntrack does).
 * The host's own address is 10.0.0.1 (/proc/net/fib_trie).
 * calls: every command line it took; entries: what the table holds now.
 */
export function conntrackOn(sim: SimHost, entries: string[]): { calls: string[]; entries: string[] } {
  const calls: string[] = [];
  sim.file("/usr/sbin/conntrack", "").file("/proc/net/fib_trie", FIB_TRIE);
  sim.onExec("conntrack", (args) => {
    calls.push(args.join(" "));
    const option = (name: string) => args[args.indexOf(name) + 1];
    const family = option("-f") === "ipv6" ? ":" : ".";
    const ofProtocol = entries.filter((entry) => entry.startsWith(`${option("-p")} `) && entry.split(" src=")[1]!.split(" ")[0]!.includes(family));
    if (args[0] === "-L") return { status: 0, stdout: ofProtocol.map((entry) => `${entry}\n`).join(""), stderr: `conntrack v1.4.7 (conntrack-tools): ${ofProtocol.length} flow entries have been shown.\n` };
    const matched = ofProtocol.filter((entry) => Object.entries(CONNTRACK_FILTERS).every(([name, field]) => !args.includes(name) || conntrackField(entry, field) === option(name)));
    for (const entry of matched) entries.splice(entries.indexOf(entry), 1);
    return { status: matched.length === 0 ? 1 : 0, stderr: `conntrack v1.4.7 (conntrack-tools): ${matched.length} flow entries have been deleted.\n` };
  });
  return { calls, entries };
}
