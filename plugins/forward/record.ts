// The forward plugin's journal record: what one domain's forwards are, in
// plain JSON, so apply, undo and reconnect work from the journal alone. Records
// are root-owned, but they still become nft rules: checkRecord parses every
// field again with the same strict parsers as the metadata.
import type { Json, UndoRecord } from "../../lib/plugin.ts";
import { PATTERNS } from "../../lib/validate.ts";
import { parseIp, type IpAddress } from "./address.ts";
import { formatRange, INTERFACE_NAME, parsePorts } from "./config.ts";
import type { ResolvedForward } from "./rules.ts";

export const PLUGIN_ID = "forward";

/** libvirt's iptables backend runs whichever iptables the host has: the nft flavour (Debian, Fedora) or the legacy one. */
const IPTABLES_TOOLS = ["iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy"] as const;
export type IptablesTool = (typeof IPTABLES_TOOLS)[number];
export const iptablesFamily = (tool: IptablesTool): 4 | 6 => (tool.startsWith("ip6") ? 6 : 4);

interface SerializedForward {
  [key: string]: Json;
  guest: string;
  hostAddress: string | null;
  interface: string | null;
  bridge: string;
  /** network/prefix */
  subnet: string;
  hairpin: boolean;
  /** Canonical ports= text: 2222:22/tcp,60000-60010/udp */
  ports: string;
}

/** nft-forward: the rules put in at start; restore-forward: the same rules put back at reconnect. */
const FORWARD_ACTIONS = ["nft-forward", "restore-forward"] as const;

export interface ForwardRecord extends UndoRecord {
  action: (typeof FORWARD_ACTIONS)[number];
  uuid: string;
  forwards: SerializedForward[];
  /** libvirt's iptables backend: the tools whose LIBVIRT_FWI chain got exceptions. */
  iptables: IptablesTool[];
}

export interface CheckedRecord {
  uuid: string;
  forwards: ResolvedForward[];
  iptables: IptablesTool[];
}

export function serializeForward(forward: ResolvedForward): SerializedForward {
  return {
    guest: forward.guest.text,
    hostAddress: forward.hostAddress?.text ?? null,
    interface: forward.interface ?? null,
    bridge: forward.bridge,
    subnet: `${forward.subnet.network.text}/${forward.subnet.prefix}`,
    hairpin: forward.hairpin,
    ports: forward.ports.map((port) => `${formatRange(port.host)}:${formatRange(port.guest)}/${port.protocol}`).join(","),
  };
}

/** The record as typed values, or an error saying it cannot be trusted. */
export function checkRecord(record: UndoRecord): CheckedRecord {
  const fail = (why: string) => new Error(`forward: journal record ${JSON.stringify(record)} is not valid (${why}); remove the domain's rules by hand (nft list table inet vmhook), then run vmhook recover`);
  const { action, uuid, forwards, iptables } = record;
  if (!FORWARD_ACTIONS.includes(action as ForwardRecord["action"])) throw fail("unknown action");
  if (typeof uuid !== "string" || !PATTERNS.uuid.test(uuid)) throw fail("uuid");
  if (!Array.isArray(iptables) || !iptables.every((tool) => IPTABLES_TOOLS.includes(tool as IptablesTool))) throw fail("iptables");
  if (!Array.isArray(forwards) || forwards.length === 0) throw fail("forwards");
  const address = (value: unknown, what: string): IpAddress => {
    const parsed = typeof value === "string" ? parseIp(value) : undefined;
    if (!parsed || parsed.text !== value) throw fail(what);
    return parsed;
  };
  const name = (value: unknown, what: string): string => {
    if (typeof value !== "string" || !INTERFACE_NAME.test(value)) throw fail(what);
    return value;
  };
  const resolved = forwards.map((item): ResolvedForward => {
    if (typeof item !== "object" || item === null || Array.isArray(item)) throw fail("forward");
    const guest = address(item.guest, "guest");
    const hostAddress = item.hostAddress === null ? undefined : address(item.hostAddress, "hostAddress");
    const [subnetText, prefixText] = typeof item.subnet === "string" ? item.subnet.split("/") : [];
    const network = address(subnetText, "subnet");
    const prefix = Number(prefixText);
    if (!Number.isInteger(prefix) || prefix < 1 || prefix > (network.family === 4 ? 32 : 128)) throw fail("subnet prefix");
    if ((hostAddress && hostAddress.family !== guest.family) || network.family !== guest.family) throw fail("address families");
    if (typeof item.hairpin !== "boolean" || typeof item.ports !== "string") throw fail("hairpin or ports");
    let ports;
    try {
      ports = parsePorts(item.ports, "journal record");
    } catch {
      throw fail("ports");
    }
    return {
      family: guest.family,
      guest,
      ...(hostAddress ? { hostAddress } : {}),
      ...(item.interface === null ? {} : { interface: name(item.interface, "interface") }),
      bridge: name(item.bridge, "bridge"),
      subnet: { network, prefix },
      hairpin: item.hairpin,
      ports,
    };
  });
  return { uuid, forwards: resolved, iptables: iptables as IptablesTool[] };
}

/** One line for the journal, `vmhook status` and `vmhook plan`: host ports → guest. */
export function describeForwards(forwards: ResolvedForward[]): string {
  const parts = forwards.flatMap((forward) =>
    forward.ports.map((port) => {
      const guest = forward.family === 6 ? `[${forward.guest.text}]` : forward.guest.text;
      const from = forward.hostAddress ? `${forward.family === 6 ? `[${forward.hostAddress.text}]` : forward.hostAddress.text}:` : "";
      return `${port.protocol} ${from}${formatRange(port.host)} → ${guest}:${formatRange(port.guest)}`;
    }),
  );
  const hairpin = forwards.some((forward) => forward.hairpin) ? ", hairpin" : "";
  return `forward ${parts.join(", ")}${hairpin} (nft table inet vmhook)`;
}
