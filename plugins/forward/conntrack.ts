// Connection tracking entries of the forwarded host ports. The kernel NATs a
// flow by its first packet only, and keeps the entry while packets keep
// coming: a UDP peer that was sending to the host port before the rules went
// in keeps reaching the host (never the guest), and a flow the rules DNATed
// keeps reaching the guest's address after they went out (an address another
// VM may have by then). So after the rules go in, the entries of the forwarded
// ports that do not go to the guest are deleted, and after they go out, the
// ones that do; with conntrack(8) (conntrack-tools): the listing is read here
// (conntrack's own filters know no port ranges), and the entries to delete go
// by filter, one `conntrack -D` per host address and port and reply source,
// not one per flow: each -D dumps the whole table (measured: 66 ms per flow
// with 1000 entries, so a forwarded UDP service's thousands of peers would
// outlast the hook's deadline).
import { describeError, VmhookError } from "../../lib/errors.ts";
import { installedProgram, type ExecResult, type Host } from "../../lib/host.ts";
import type { BaseContext } from "../../lib/plugin.ts";
import { addressFromBytes, isLoopback, parseIp, type Family, type IpAddress } from "./address.ts";
import type { PortForward, Protocol } from "./config.ts";
import type { ResolvedForward } from "./rules.ts";

interface Tuple {
  source: IpAddress;
  destination: IpAddress;
  sourcePort: number;
  destinationPort: number;
}

export interface ConntrackEntry {
  protocol: Protocol;
  original: Tuple;
  reply: Tuple;
}

const TIMEOUT_MS = 10_000;
export const CONNTRACK_PACKAGE = "apt install conntrack";
/** conntrack -D's answer (exit 1) when the entry has gone meanwhile: it timed out or the flow ended. */
const NONE_DELETED = /\b0 flow entries have been deleted/;

/** `conntrack -L` lines of `protocol`: the first src=, dst=, sport=, dport= are the original direction, the second the reply. Throws on a line it cannot read. */
export function parseConntrackListing(text: string, protocol: Protocol): ConntrackEntry[] {
  return text
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => {
      const values = new Map<string, string[]>();
      for (const [, key, value] of line.matchAll(/\b(src|dst|sport|dport)=(\S+)/g)) values.set(key!, [...(values.get(key!) ?? []), value!]);
      const tuple = (index: number): Tuple | undefined => {
        const [source, destination] = [parseIp(values.get("src")?.[index] ?? ""), parseIp(values.get("dst")?.[index] ?? "")];
        const [sourcePort, destinationPort] = [Number(values.get("sport")?.[index]), Number(values.get("dport")?.[index])];
        if (!source || !destination || !Number.isInteger(sourcePort) || !Number.isInteger(destinationPort)) return undefined;
        return { source, destination, sourcePort, destinationPort };
      };
      const [original, reply] = [tuple(0), tuple(1)];
      if (!line.startsWith(`${protocol} `) || !original || !reply) throw new VmhookError(`forward: cannot read conntrack's listing: ${line.trim()}`);
      return { protocol, original, reply };
    });
}

const within = (port: number, first: number, last: number) => port >= first && port <= last;

/** The entry is of a host port of `port` (and of host-address=, when the forward has one). */
const ofHostPort = (entry: ConntrackEntry, forward: ResolvedForward, port: PortForward) =>
  entry.protocol === port.protocol &&
  within(entry.original.destinationPort, port.host.first, port.host.last) &&
  (!forward.hostAddress || entry.original.destination.text === forward.hostAddress.text);

/** The entry goes to the guest's port the forward maps its host port to (ranges keep their ports). */
const toGuest = (entry: ConntrackEntry, forward: ResolvedForward, port: PortForward) =>
  entry.reply.source.text === forward.guest.text && entry.reply.sourcePort === port.guest.first + entry.original.destinationPort - port.host.first;

/**
 * The entries whose path the rules just changed: after apply, those of the
 * host's UDP ports not going to the guest, addressed to one of the host's own
 * addresses (`local`: what the DNAT rule takes, fib daddr type local); after
 * undo, those going to the guest. Flows to other machines' ports of that
 * number (the host's own out, a guest's masqueraded) are not the forward's:
 * deleted, a stateful firewall would drop their next reply as new. Apply
 * leaves TCP alone: nothing on the host listens on a forwarded port (the plan
 * refuses one), so no TCP flow to it can be waiting.
 */
export function staleEntries(entries: ConntrackEntry[], forwards: ResolvedForward[], after: "apply" | "undo", local: ReadonlySet<string>): ConntrackEntry[] {
  return entries.filter((entry) =>
    forwards.some((forward) =>
      forward.ports.some(
        (port) =>
          ofHostPort(entry, forward, port) &&
          (after === "undo" ? toGuest(entry, forward, port) : entry.protocol === "udp" && local.has(entry.original.destination.text) && !toGuest(entry, forward, port)),
      ),
    ),
  );
}

/**
 * The host's own addresses of `family` but loopback (the DNAT rule leaves
 * those out): the "/32 host LOCAL" leaves of /proc/net/fib_trie, the
 * addresses of /proc/net/if_inet6 (32 hex digits, network order).
 */
export function localAddresses(host: Host, family: Family): Set<string> {
  const file = family === 4 ? "/proc/net/fib_trie" : "/proc/net/if_inet6";
  let text: string;
  try {
    text = host.read(file);
  } catch (error) {
    throw new VmhookError(`cannot read ${file} for the host's own addresses (${describeError(error)})`);
  }
  const addresses: IpAddress[] = [];
  let leaf: string | undefined;
  for (const line of text.split("\n")) {
    if (family === 6) {
      const hex = /^([0-9a-f]{32})\s/i.exec(line)?.[1];
      if (hex) addresses.push(addressFromBytes(hex.match(/../g)!.map((pair) => parseInt(pair, 16))));
      continue;
    }
    const at = /^\s*\|-- (\S+)$/.exec(line);
    if (at) leaf = at[1];
    const address = leaf !== undefined && /^\s*\/32 host LOCAL\b/.test(line) ? parseIp(leaf) : undefined;
    if (address) addresses.push(address);
  }
  return new Set(addresses.filter((address) => !isLoopback(address)).map((address) => address.text));
}

/**
 * The `conntrack -D` filters that delete exactly `stale`, one per host
 * address and port and reply source and port: staleEntries decides by these
 * four fields alone, so every entry a filter matches is stale (one that
 * appeared since the listing too), whoever the peer.
 */
function deletionFilters(stale: ConntrackEntry[]): string[][] {
  const filters = new Map<string, string[]>();
  for (const { original, reply } of stale) {
    const filter = ["-d", original.destination.text, "--dport", `${original.destinationPort}`, "-r", reply.source.text, "--reply-port-src", `${reply.sourcePort}`];
    filters.set(filter.join(" "), filter);
  }
  return [...filters.values()];
}

const familyName = (family: Family) => (family === 4 ? "ipv4" : "ipv6");

function failure(args: string[], result: ExecResult): string {
  const why = result.error ?? (result.timedOut ? "did not finish in time and was killed" : (result.stderr.trim() || result.stdout.trim()).split("\n")[0] || `exit ${result.status ?? result.signal}`);
  return `conntrack ${args.join(" ")} failed: ${why}`;
}

/**
 * Deletes the entries staleEntries names, per IP version and protocol of the
 * forwards. Without conntrack installed: a warning, nothing else (the rules are
 * right; vmhook doctor reports it). Returns what failed, in words; [] when all
 * went well.
 */
export function deleteStaleEntries(ctx: Pick<BaseContext, "host" | "log" | "run">, forwards: ResolvedForward[], after: "apply" | "undo"): string[] {
  if (!installedProgram(ctx.host, "conntrack")) {
    const path = after === "apply" ? "a peer already sending to a forwarded port keeps reaching the host" : "flows the forward made keep reaching the guest's address until they end";
    ctx.log.warn(`forward: conntrack is not installed (${CONNTRACK_PACKAGE}): ${path}`);
    return [];
  }
  const groups = forwards
    .flatMap((forward) => forward.ports.map((port) => ({ family: forward.family, protocol: port.protocol })))
    .filter((group) => after === "undo" || group.protocol === "udp")
    .filter((group, index, all) => all.findIndex((other) => other.family === group.family && other.protocol === group.protocol) === index);
  const failures: string[] = [];
  for (const { family, protocol } of groups) {
    // Only apply needs them: undo picks the entries that go to the guest.
    let local: Set<string>;
    try {
      local = after === "apply" ? localAddresses(ctx.host, family) : new Set();
    } catch (error) {
      failures.push(describeError(error));
      continue;
    }
    const listArgs = ["-L", "-f", familyName(family), "-p", protocol];
    const listed = ctx.run("conntrack", listArgs, { timeoutMs: TIMEOUT_MS, allowFailure: true });
    if (listed.status !== 0 || listed.error) {
      failures.push(failure(listArgs, listed));
      continue;
    }
    let entries: ConntrackEntry[];
    try {
      entries = parseConntrackListing(listed.stdout, protocol);
    } catch (error) {
      failures.push((error as Error).message.replace(/^forward: /, ""));
      continue;
    }
    for (const filter of deletionFilters(staleEntries(entries, forwards.filter((forward) => forward.family === family), after, local))) {
      const args = ["-D", "-f", familyName(family), "-p", protocol, ...filter];
      const result = ctx.run("conntrack", args, { timeoutMs: TIMEOUT_MS, allowFailure: true });
      if ((result.status !== 0 || result.error) && !(result.status === 1 && NONE_DELETED.test(result.stderr))) failures.push(failure(args, result));
    }
  }
  return failures;
}
