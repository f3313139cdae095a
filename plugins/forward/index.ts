// The forward plugin: host ports forwarded to a guest on a libvirt NAT
// network, IPv4 and IPv6, with nftables (docs/forward.md).
//
//   <vmhook:forward guest="ADDRESS" ports="HOST[:GUEST][/tcp|/udp],…"
//                   host-address="ADDRESS" interface="IFACE" hairpin="yes|no"/>
//
// Shaped as typed actions: parse (pure) → plan (reads the host, checks,
// returns the record) → apply / undo (one nft transaction each) → check of a
// journaled record; the handlers below are thin glue to the step interface.
import type { Element } from "@xmldom/xmldom";
import type { Domain } from "../../lib/domain.ts";
import { definePlugin, type BaseContext, type PluginContext, type UndoRecord } from "../../lib/plugin.ts";
import { applyRecord, iptablesListing, missingRules, readRuleset, undoRecord } from "./apply.ts";
import { parseForwardConfig, type ForwardConfig } from "./config.ts";
import { allowedHostPorts, buildRecord, checkListeners, checkOtherVms, checkPolicy, resolveForwards } from "./plan.ts";
import { checkRecord, describeForwards, PLUGIN_ID, type ForwardRecord } from "./record.ts";

/** Reads the host and checks everything; changes nothing. */
export function planForwards(ctx: PluginContext<ForwardConfig>): { description: string; record: ForwardRecord } {
  const forwards = resolveForwards(ctx.host, ctx.domainXml, ctx.config);
  checkPolicy(forwards, allowedHostPorts(ctx.settings));
  checkOtherVms(forwards, ctx.domain.uuid, ctx.journals());
  checkListeners(ctx.host, forwards);
  const record = buildRecord(ctx.domain.uuid, forwards, readRuleset(ctx), (tool) => legacyFilterTable(ctx, tool) && iptablesListing(ctx, tool) !== undefined);
  return { description: describeForwards(forwards), record };
}

/**
 * Whether the legacy filter table exists, read from /proc: running
 * iptables-legacy to find out would load ip_tables and create the table.
 */
const legacyFilterTable = (ctx: BaseContext, tool: string) =>
  (ctx.host.readTrimmed(tool.startsWith("ip6") ? "/proc/net/ip6_tables_names" : "/proc/net/ip_tables_names") ?? "").split("\n").includes("filter");

/** start: the guest's network exists (libvirt started it before the domain); QEMU is not running yet. */
async function start(ctx: PluginContext<ForwardConfig>): Promise<void> {
  const { description, record } = planForwards(ctx);
  await ctx.step(description, record, () => applyRecord(ctx, checkRecord(record)));
}

/** The daemon restarted: put back what a network restart or a firewall reload took out. */
function reconnect(ctx: PluginContext<ForwardConfig>): void {
  for (const record of ctx.records.map(checkRecord)) {
    const missing = missingRules(ctx, record);
    if (missing.length === 0) continue;
    ctx.log.warn(`forward: ${missing.join(", ")} went missing while libvirtd was away; putting the forwards back`);
    applyRecord(ctx, record);
  }
}

function undo(record: UndoRecord, ctx: BaseContext): void {
  undoRecord(ctx, checkRecord(record));
}

export default definePlugin<ForwardConfig>({
  name: PLUGIN_ID,
  summary: "forwards host ports to a guest on a libvirt NAT network (nftables, IPv4 and IPv6)",
  usage: '<vmhook:forward guest="ADDRESS" ports="HOST[:GUEST][/tcp|/udp],…" host-address="ADDRESS" interface="IFACE" hairpin="yes|no"/>',
  shared: true,
  parse: (elements: Element[], _domain: Domain) => parseForwardConfig(elements),
  start,
  reconnect,
  undo,
});
