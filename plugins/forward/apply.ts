// Applying and undoing one forward record on the host: one `nft -f`
// transaction each (plus iptables-restore where libvirt uses iptables), both
// computed from what the ruleset holds right now, so both are idempotent.
import { VmhookError } from "../../lib/errors.ts";
import type { ExecResult } from "../../lib/host.ts";
import { kernelRelease } from "../../lib/kernel-modules.ts";
import type { BaseContext } from "../../lib/plugin.ts";
import { deleteStaleEntries } from "./conntrack.ts";
import { iptablesFamily, type CheckedRecord, type IptablesTool } from "./record.ts";
import { applyScript, domainChains, domainTag, inFrontOfReject, iptablesApplyInput, iptablesNftChain, iptablesRemovalInput, libvirtNftChain, LIBVIRT_IPTABLES_CHAIN, parseRuleset, removalScript, TABLE, type ResolvedForward, type RulesetView } from "./rules.ts";

type Runner = Pick<BaseContext, "run">;
type Changer = Pick<BaseContext, "host" | "log" | "run">;

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

/** nft's own words for a transaction it did not take: its first lines of stderr. */
const nftWhy = (result: ExecResult) => result.error ?? (result.timedOut ? "it did not finish in time and was killed" : result.stderr.trim().split("\n").slice(0, 3).join(" / ") || `exit ${result.status ?? result.signal}`);

/** `changedNothing`: called before it throws when nft provably committed nothing (it exited non-zero, or never started); not when killed: the kernel may have taken the transaction already. */
function runNft(ctx: Runner, script: string, changedNothing: () => void = () => {}): void {
  if (script === "") return;
  const result = ctx.run("nft", ["-f", "-"], { timeoutMs: NFT_TIMEOUT_MS, input: script, allowFailure: true });
  if (result.status !== 0 || result.error) {
    const lines = script.trimEnd().split("\n");
    if (result.timedOut || result.signal !== null) {
      const how = result.timedOut ? "did not finish in time and was killed" : `was killed (${result.signal})`;
      throw new VmhookError(`forward: nft ${how}: the kernel may have taken the transaction, so the domain's entry stays for release to take out`, lines);
    }
    changedNothing();
    throw new VmhookError(`forward: nft refused the transaction, nothing was changed: ${nftWhy(result)}`, lines);
  }
}

/**
 * Refuses, at prepare, the domain's transaction when nft or the kernel would
 * not take it (an nft too old for its expressions, a kernel without the inet
 * family's nat): `nft --check` runs it through the kernel and commits nothing.
 * Found at start instead, the domain's other plugins would have acted first (a
 * GPU taken from the desktop, and handed back).
 */
export function checkApply(ctx: Changer, view: RulesetView, uuid: string, forwards: ResolvedForward[]): void {
  const script = applyScript(view, uuid, forwards);
  const result = ctx.run("nft", ["--check", "-f", "-"], { timeoutMs: NFT_TIMEOUT_MS, input: script, allowFailure: true });
  if (result.status === 0 && !result.error) return;
  const version = /\bv[\d.]+/.exec(ctx.run("nft", ["--version"], { timeoutMs: NFT_TIMEOUT_MS, allowFailure: true }).stdout)?.[0];
  throw new VmhookError(
    `forward: nft${version ? ` (nftables ${version})` : ""} with Linux ${kernelRelease(ctx.host) || "(release unknown)"} would refuse the domain's rules: ${nftWhy(result)}; nothing was changed; update nftables and the kernel: vmhook's rules need nat in nft's inet family (Linux 5.2 or later) and its fib, ct and th expressions`,
    script.trimEnd().split("\n"),
  );
}

const LIST_TIMEOUT_MS = 15_000;
/** iptables' own answer to `-S CHAIN` for a chain that does not exist (legacy and nft, iptables and ip6tables), with exit status 1. */
const NO_SUCH_CHAIN = "No chain/target/match by that name";

/** What to do once a failed listing works again, by when it failed. */
const AFTER_FAILED_LISTING = {
  start: "nothing was changed: find out why, then start the VM again",
  undo: "the domain's forward stays in its journal (undo-failed): find out why, then run vmhook recover",
  reconnect: "nothing was changed: find out why, then restart libvirtd or the VM to put the forward back",
} as const;

/**
 * `TOOL -S LIBVIRT_FWI`, or undefined when the chain is not there. For
 * iptables-nft the nft ruleset `view` says whether it is (iptables-nft 1.8.9
 * answers -S of a missing chain with "chain `LIBVIRT_FWI' in table `filter'
 * is incompatible"); otherwise only iptables' own "no such chain" answer
 * means absent. Any other failure (the xtables lock held, a timeout, the tool
 * missing) throws: a listing that failed says nothing about what the chain
 * holds, and taking it for an empty chain would leave a domain's exceptions
 * behind with no record of them, or a start without them.
 */
export function iptablesListing(ctx: Runner, tool: IptablesTool, view: RulesetView, when: keyof typeof AFTER_FAILED_LISTING): string | undefined {
  if (tool.endsWith("-nft") && !iptablesNftChain(view, iptablesFamily(tool))) return undefined;
  const args = ["-w", "10", "-S", LIBVIRT_IPTABLES_CHAIN];
  const result = ctx.run(tool, args, { timeoutMs: LIST_TIMEOUT_MS, allowFailure: true });
  if (result.status === 0 && !result.error) return result.stdout;
  const message = ((result.stderr.trim() || result.stdout.trim()).split("\n")[0] ?? "").replace(/\.$/, "");
  if (result.status === 1 && message.includes(NO_SUCH_CHAIN)) return undefined;
  const why = result.error
    ? `could not be run (${result.error})`
    : result.timedOut
      ? "did not finish in time and was killed"
      : `failed (${result.status === null ? `signal ${result.signal}` : `exit ${result.status}`})${message ? `: ${message}` : ""}`;
  throw new VmhookError(
    `forward: cannot list libvirt's ${LIBVIRT_IPTABLES_CHAIN} chain: ${[tool, ...args].join(" ")} ${why}; a listing that failed is not an empty chain, so ${AFTER_FAILED_LISTING[when]}`,
  );
}

function restore(ctx: Runner, tool: IptablesTool, input: string): void {
  if (input === "") return;
  ctx.run(`${tool}-restore`, ["--noflush", "-w", "10"], { timeoutMs: 15_000, input });
}

/** What applying a record needs to know first: the nft ruleset and libvirt's iptables chains, read before anything changes. */
export interface Listed {
  view: RulesetView;
  listings: { tool: IptablesTool; listing: string }[];
}

/** Reads what applyRecord needs; throws, having changed nothing, when a listing fails or libvirt's chain has gone. */
export function listForApply(ctx: Runner, record: CheckedRecord, when: "start" | "reconnect"): Listed {
  const view = readRuleset(ctx);
  const listings = record.iptables.map((tool) => {
    const listing = iptablesListing(ctx, tool, view, when);
    if (listing === undefined) throw new VmhookError(`forward: libvirt's ${LIBVIRT_IPTABLES_CHAIN} chain vanished from ${tool}; restart the network (virsh net-destroy/net-start) and start the VM again`);
    return { tool, listing };
  });
  return { view, listings };
}

/**
 * Puts exactly the record's forwards in place (replacing whatever the domain
 * had), from what listForApply read, then deletes the conntrack entries of the
 * host ports that bypass them (`changedNothing`: as runNft's, for its nft
 * transaction, the first change). What conntrack could not delete is a warning:
 * the rules are right, and only peers that were sending already wait longer.
 */
export function applyRecord(ctx: Changer, record: CheckedRecord, { view, listings }: Listed, changedNothing?: () => void): void {
  runNft(ctx, applyScript(view, record.uuid, record.forwards), changedNothing);
  for (const { tool, listing } of listings) restore(ctx, tool, iptablesApplyInput(listing, record.forwards, iptablesFamily(tool), record.uuid));
  for (const failure of deleteStaleEntries(ctx, record.forwards, "apply")) ctx.log.warn(`forward: ${failure}; a peer already sending to a forwarded port may keep reaching the host until it pauses`);
}

/**
 * Takes out everything the domain has; does nothing when nothing is left (the
 * chain gone holds nothing), then deletes the conntrack entries the forward
 * made. Throws when it cannot tell, or when an entry may be left: its flow
 * would keep reaching the guest's address, so the entry stays for vmhook recover.
 */
export function undoRecord(ctx: Changer, record: CheckedRecord): void {
  const view = readRuleset(ctx);
  runNft(ctx, removalScript(view, record.uuid));
  for (const tool of record.iptables) {
    const listing = iptablesListing(ctx, tool, view, "undo");
    if (listing !== undefined) restore(ctx, tool, iptablesRemovalInput(listing, record.uuid));
  }
  const failures = deleteStaleEntries(ctx, record.forwards, "undo");
  if (failures.length > 0) {
    throw new VmhookError(`forward: the rules are out, but flows the forward made may still reach ${[...new Set(record.forwards.map((forward) => forward.guest.text))].join(", ")}: ${failures.join("; ")}; find out why, then run vmhook recover`);
  }
}

/** What is missing of the record's rules, in words; [] when all is in place. */
export function missingRules(ctx: Runner, record: CheckedRecord): string[] {
  const view = readRuleset(ctx);
  const tag = domainTag(record.uuid);
  const tagged = view.tagged.filter((rule) => rule.comment === tag);
  const missing: string[] = [];
  for (const { name, rules, jumpsFrom } of domainChains(record.uuid, record.forwards)) {
    if (!view.chains.includes(name)) missing.push(`chain inet ${TABLE} ${name}`);
    else if ((view.rulesIn.get(name) ?? 0) < rules.length) missing.push(`${rules.length - (view.rulesIn.get(name) ?? 0)} rule(s) of chain inet ${TABLE} ${name}`);
    for (const base of jumpsFrom) {
      if (!tagged.some((rule) => rule.family === "inet" && rule.table === TABLE && rule.chain === base)) missing.push(`the jump from inet ${TABLE} ${base}`);
    }
  }
  for (const family of [4, 6] as const) {
    const chain = libvirtNftChain(family);
    const wanted = record.forwards.filter((forward) => forward.family === family).reduce((sum, forward) => sum + forward.ports.length, 0);
    const found = tagged.filter((rule) => `${rule.family} ${rule.table} ${rule.chain}` === chain && !rule.behindReject).length;
    if (view.allChains.has(chain) && found < wanted) missing.push(`${wanted - found} exception(s) in front of libvirt's reject in ${chain}`);
  }
  for (const tool of record.iptables) {
    const listing = iptablesListing(ctx, tool, view, "reconnect") ?? "";
    const wanted = record.forwards.filter((forward) => forward.family === iptablesFamily(tool)).reduce((sum, forward) => sum + forward.ports.length, 0);
    const found = inFrontOfReject(listing).filter((line) => line.includes(`--comment "${tag}"`)).length;
    if (found < wanted) missing.push(`${wanted - found} exception(s) in front of libvirt's reject in ${tool} ${LIBVIRT_IPTABLES_CHAIN}`);
  }
  return missing;
}
