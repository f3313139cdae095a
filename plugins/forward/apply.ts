// Applying and undoing one forward record on the host: one `nft -f`
// transaction each (plus iptables-restore where libvirt uses iptables), both
// computed from what the ruleset holds right now, so both are idempotent.
import { VmhookError } from "../../lib/errors.ts";
import type { BaseContext } from "../../lib/plugin.ts";
import { iptablesFamily, type CheckedRecord, type IptablesTool } from "./record.ts";
import { applyScript, domainChain, domainTag, iptablesApplyInput, iptablesRemovalInput, libvirtNftChain, LIBVIRT_IPTABLES_CHAIN, parseRuleset, removalScript, TABLE, type RulesetView } from "./rules.ts";

type Runner = Pick<BaseContext, "run">;

const NFT_TIMEOUT_MS = 10_000;

/** The current ruleset, as far as the forward plugin cares. */
export function readRuleset(ctx: Runner): RulesetView {
  const result = ctx.run("nft", ["-j", "list", "ruleset"], { timeoutMs: NFT_TIMEOUT_MS, allowFailure: true });
  if (result.error) throw new VmhookError(`forward: nft is not available (${result.error}); install nftables (apt install nftables)`);
  if (result.status !== 0) throw new VmhookError(`forward: nft list ruleset failed: ${result.stderr.trim().split("\n")[0] || `exit ${result.status}`}`);
  try {
    return parseRuleset(result.stdout);
  } catch (error) {
    throw new VmhookError(`forward: cannot read nft's JSON listing (${(error as Error).message})`);
  }
}

function runNft(ctx: Runner, script: string): void {
  if (script === "") return;
  const result = ctx.run("nft", ["-f", "-"], { timeoutMs: NFT_TIMEOUT_MS, input: script, allowFailure: true });
  if (result.status !== 0 || result.error) {
    const why = result.error ?? (result.stderr.trim().split("\n").slice(0, 3).join(" / ") || `exit ${result.status}`);
    throw new VmhookError(`forward: nft refused the transaction, nothing was changed: ${why}`, script.trimEnd().split("\n"));
  }
}

/** `TOOL -S LIBVIRT_FWI`, or undefined when the chain (or the tool) is not there. */
export function iptablesListing(ctx: Runner, tool: IptablesTool): string | undefined {
  const result = ctx.run(tool, ["-w", "10", "-S", LIBVIRT_IPTABLES_CHAIN], { timeoutMs: 15_000, allowFailure: true });
  return result.status === 0 ? result.stdout : undefined;
}

function restore(ctx: Runner, tool: IptablesTool, input: string): void {
  if (input === "") return;
  ctx.run(`${tool}-restore`, ["--noflush", "-w", "10"], { timeoutMs: 15_000, input });
}

/** Puts exactly the record's forwards in place (replacing whatever the domain had). */
export function applyRecord(ctx: Runner, record: CheckedRecord): void {
  runNft(ctx, applyScript(readRuleset(ctx), record.uuid, record.forwards));
  for (const tool of record.iptables) {
    const listing = iptablesListing(ctx, tool);
    if (listing === undefined) throw new VmhookError(`forward: libvirt's ${LIBVIRT_IPTABLES_CHAIN} chain vanished from ${tool}; restart the network (virsh net-destroy/net-start) and start the VM again`);
    restore(ctx, tool, iptablesRemovalInput(listing, record.uuid));
    restore(ctx, tool, iptablesApplyInput(record.forwards, iptablesFamily(tool), record.uuid));
  }
}

/** Takes out everything the domain has; does nothing when nothing is left. */
export function undoRecord(ctx: Runner, record: CheckedRecord): void {
  runNft(ctx, removalScript(readRuleset(ctx), record.uuid));
  for (const tool of record.iptables) {
    const listing = iptablesListing(ctx, tool);
    if (listing !== undefined) restore(ctx, tool, iptablesRemovalInput(listing, record.uuid));
  }
}

/** What is missing of the record's rules, in words; [] when all is in place. */
export function missingRules(ctx: Runner, record: CheckedRecord): string[] {
  const view = readRuleset(ctx);
  const tag = domainTag(record.uuid);
  const tagged = view.tagged.filter((rule) => rule.comment === tag);
  const missing: string[] = [];
  if (!view.chains.includes(domainChain(record.uuid))) missing.push(`chain inet ${TABLE} ${domainChain(record.uuid)}`);
  for (const base of ["prerouting", "output"]) {
    if (!tagged.some((rule) => rule.table === TABLE && rule.chain === base)) missing.push(`the jump from inet ${TABLE} ${base}`);
  }
  for (const family of [4, 6] as const) {
    const chain = libvirtNftChain(family);
    const wanted = record.forwards.filter((forward) => forward.family === family).reduce((sum, forward) => sum + forward.ports.length, 0);
    const found = tagged.filter((rule) => `${rule.family} ${rule.table} ${rule.chain}` === chain).length;
    if (view.allChains.has(chain) && found < wanted) missing.push(`${wanted - found} exception(s) in ${chain}`);
  }
  for (const tool of record.iptables) {
    const listing = iptablesListing(ctx, tool) ?? "";
    const wanted = record.forwards.filter((forward) => forward.family === iptablesFamily(tool)).reduce((sum, forward) => sum + forward.ports.length, 0);
    const found = listing.split("\n").filter((line) => line.includes(`--comment "${tag}"`)).length;
    if (found < wanted) missing.push(`${wanted - found} exception(s) in ${tool} ${LIBVIRT_IPTABLES_CHAIN}`);
  }
  return missing;
}
