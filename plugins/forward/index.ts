// The forward plugin: host ports forwarded to a guest on a libvirt NAT
// network, IPv4 and IPv6, with nftables (docs/forward.md).
//
//   <vmhook:forward guest="ADDRESS" ports="HOST[:GUEST][/tcp|/udp],…"
//                   host-address="ADDRESS" interface="IFACE" hairpin="yes|no"/>
//
// prepare checks what start will (refusing before other plugins change the
// host); start plans one step (the rules go in when libvirt has started the
// guest's network); the plugin is shared, so the runner plans and applies it under the
// host-wide lock and the other VMs' ports cannot change in between. reconnect
// plans a step that puts back what went missing while libvirtd was away.
import type { Domain } from "../../lib/domain.ts";
import { defineAction, definePlugin, type BaseContext, type PlanContext, type Step, type UndoRecord } from "../../lib/plugin.ts";
import { applyRecord, checkApply, iptablesListing, listForApply, missingRules, readRuleset, undoRecord, type Listed } from "./apply.ts";
import { parseForwardConfig, type ForwardConfig } from "./config.ts";
import { forwardChecks } from "./doctor.ts";
import { buildRecord, checkListeners, checkOtherVms, resolveForwards } from "./plan.ts";
import { checkRecord, describeForwards, PLUGIN_ID, type ForwardRecord } from "./record.ts";
import type { ResolvedForward, RulesetView } from "./rules.ts";

/** The forwards, checked against the host (network, other VMs' journals, listeners) and the ruleset as nft lists it now. */
function checkedForwards(ctx: PlanContext<ForwardConfig>): { forwards: ResolvedForward[]; view: RulesetView } {
  const forwards = resolveForwards(ctx.host, ctx.domainXml, ctx.config);
  checkOtherVms(forwards, ctx.domain.uuid, ctx.journals());
  checkListeners(ctx.host, forwards);
  return { forwards, view: readRuleset(ctx) };
}

/**
 * prepare: start's checks, so what start would refuse (nft missing, a port
 * another VM forwards or a service holds) is refused before the domain's
 * other plugins change the host (a GPU taken from the desktop, hugepages),
 * and so is a transaction nft or the kernel would not take. No step: the
 * rules go in at start, which checks again.
 */
function planPrepare(ctx: PlanContext<ForwardConfig>): Step<ForwardRecord>[] {
  const { forwards, view } = checkedForwards(ctx);
  checkApply(ctx, view, ctx.domain.uuid, forwards);
  return [];
}

/** start: reads the host (network, ruleset, listeners, other VMs' journals) and checks everything; changes nothing. */
function planStart(ctx: PlanContext<ForwardConfig>): Step<ForwardRecord>[] {
  const { forwards, view } = checkedForwards(ctx);
  // A legacy listing that fails refuses the start: it is not "no LIBVIRT_FWI there".
  const record = buildRecord(ctx.domain.uuid, forwards, view, (tool) => legacyFilterTable(ctx, tool) && iptablesListing(ctx, tool, view, "start") !== undefined);
  return [{ action: record.action, record, description: describeForwards(forwards) }];
}

/**
 * Whether the legacy filter table exists, read from /proc: running
 * iptables-legacy to find out would load ip_tables and create the table.
 */
const legacyFilterTable = (ctx: BaseContext, tool: string) =>
  (ctx.host.readTrimmed(tool.startsWith("ip6") ? "/proc/net/ip6_tables_names" : "/proc/net/ip_tables_names") ?? "").split("\n").includes("filter");

/** reconnect: one step per record whose rules a network restart or a firewall reload took out. */
function planReconnect(ctx: PlanContext<unknown>): Step<ForwardRecord>[] {
  return ctx.records
    .filter((record) => record.action === "nft-forward")
    .flatMap((journaled): Step<ForwardRecord>[] => {
      const typed = checkRecord(journaled);
      const missing = missingRules(ctx, typed);
      if (missing.length === 0) return [];
      ctx.log.warn(`forward: ${missing.join(", ")} went missing while libvirtd was away`);
      const record = { ...(journaled as ForwardRecord), action: "restore-forward" as const };
      return [{ action: record.action, record, description: `put back ${describeForwards(typed.forwards)}` }];
    });
}

/** The record checked field by field, kept as journaled JSON: apply and undo parse it again into typed values. */
const checked = (record: UndoRecord): ForwardRecord => (checkRecord(record), record as ForwardRecord);

export default definePlugin<ForwardConfig>({
  name: PLUGIN_ID,
  summary: "forwards host ports to a guest on a libvirt NAT network (nftables, IPv4 and IPv6)",
  usage: '<vmhook:forward guest="ADDRESS" ports="HOST[:GUEST][/tcp|/udp],…" host-address="ADDRESS" interface="IFACE" hairpin="yes|no"/>',
  shared: true,
  parse: (elements, _domain: Domain) => parseForwardConfig(elements),
  plan: { prepare: planPrepare, start: planStart, reconnect: planReconnect },
  check: forwardChecks,
  actions: {
    "nft-forward": defineAction<ForwardRecord, ForwardConfig>({
      check: checked,
      apply: (record, ctx) => {
        const checkedRecord = checkRecord(record);
        let listed: Listed;
        try {
          listed = listForApply(ctx, checkedRecord, "start");
        } catch (error) {
          ctx.nothingToUndo(); // nothing was changed: the rollback has nothing to list or take out
          throw error;
        }
        applyRecord(ctx, checkedRecord, listed, () => ctx.nothingToUndo());
      },
      undo: (record, ctx) => undoRecord(ctx, checkRecord(record)),
    }),
    // The rules belong to the journaled nft-forward entry, whose undo takes them out: this entry leaves the journal.
    "restore-forward": defineAction<ForwardRecord, ForwardConfig>({
      check: checked,
      apply: (record, ctx) => {
        ctx.nothingToUndo();
        const checkedRecord = checkRecord(record);
        applyRecord(ctx, checkedRecord, listForApply(ctx, checkedRecord, "reconnect"));
      },
      undo: (record, ctx) => undoRecord(ctx, checkRecord(record)),
    }),
  },
});
