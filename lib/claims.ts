// The host-wide claims ledger: /run/vmhook/claims.json. What several VMs
// share (a kernel module kept unloaded, ...) is claimed here: the first
// taker records the host's original state and changes the host, the last
// releaser restores it, and what must wait for the restore (a device whose
// driver's module is still unloaded for another VM) waits here, not in a
// journal that may be gone by then.
//
// One file rather than a view over all journals: a journal belongs to its
// domain and its lock, while a claim outlives the domain that took it.
// Read and written only under the host lock (shared plugins run under it).
// A ledger that cannot be read is never taken for an empty one: whoever
// needs it fails, naming the file and the fix.
import { VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import { listJournals } from "./journal.ts";
import { paths } from "./paths.ts";
import { PATTERNS } from "./validate.ts";
import type { Json } from "./records.ts";
import { ensureStateDir, readStateFile, removeStateFile, writeStateFile } from "./state-files.ts";

const CLAIMS_VERSION = 1;

export interface Claim {
  /** UUIDs of the domains that hold it, first taker first. */
  holders: string[];
  /** The host's state before the first taker changed it. */
  original: Json;
  /** What the last releaser must bring back too (e.g. devices of released VMs). */
  waiting: Json[];
}

interface Ledger {
  version: number;
  claims: Record<string, Claim>;
}

const FIX = `inspect it; once the resources it names are back as they were (see vmhook status), remove it`;

function read(host: Host): Ledger {
  const text = readStateFile(host, paths.claims, "claims ledger");
  if (text === undefined) return { version: CLAIMS_VERSION, claims: {} };
  let ledger: Ledger;
  try {
    ledger = JSON.parse(text) as Ledger;
  } catch (error) {
    throw new VmhookError(`claims ledger ${paths.claims} cannot be read (${(error as Error).message}); ${FIX}`);
  }
  if (ledger?.version !== CLAIMS_VERSION || typeof ledger.claims !== "object" || ledger.claims === null) {
    throw new VmhookError(`claims ledger ${paths.claims} has unknown version ${JSON.stringify(ledger?.version)} (this vmhook reads version ${CLAIMS_VERSION}); ${FIX}`);
  }
  for (const [resource, claim] of Object.entries(ledger.claims)) {
    const problem = claimProblem(claim);
    if (problem) throw malformedClaim(resource, problem);
  }
  return ledger;
}

const malformedClaim = (resource: string, problem: string) => new VmhookError(`claims ledger ${paths.claims}: claim "${resource}" ${problem}; ${FIX}`);

/**
 * A claim's "original" as the plugin that took it reads it: `read` returns it
 * typed, or undefined when it is not `expected`, and the ledger is refused
 * like one with a malformed field. What the first taker recorded decides what
 * comes back, so it is never guessed.
 */
export function claimOriginal<T>(resource: string, claim: Claim, expected: string, read: (original: Json) => T | undefined): T {
  const value = read(claim.original);
  if (value === undefined) throw malformedClaim(resource, `has "original" ${JSON.stringify(claim.original)}, not ${expected}`);
  return value;
}

/** What is wrong with a claim as read: its holders decide who gives the resource back, so none may be guessed. */
function claimProblem(claim: Partial<Claim> | null): string | undefined {
  if (typeof claim !== "object" || claim === null || Array.isArray(claim)) return `is ${JSON.stringify(claim)}, not a claim`;
  if (!Array.isArray(claim.holders) || !claim.holders.every((holder) => typeof holder === "string" && PATTERNS.uuid.test(holder))) return `has "holders" ${JSON.stringify(claim.holders) ?? "missing"}, not a list of domain UUIDs`;
  if (!Array.isArray(claim.waiting)) return `has "waiting" ${JSON.stringify(claim.waiting) ?? "missing"}, not a list`;
  if (claim.original === undefined) return `has no "original"`;
  return undefined;
}

/** A claim's holder as the journals show it: its domain's name, or why no release will give the claim back. */
export interface HolderView {
  uuid: string;
  name?: string;
  /** false: no journal of it is left (an orphan); "changing": its journal is being written or removed right now. */
  journal: true | false | "unreadable" | "changing";
}

export interface ClaimView {
  holders: HolderView[];
  waiting: Json[];
}

/**
 * The journals and the claims, each holder matched to its journal, for
 * status and doctor (no lock: a snapshot). The ledger is read before and
 * after the journals are listed: a journal is written before its domain takes
 * a claim and removed after it drops it, so a holder without a journal is an
 * orphan only when both reads name it. `claimsError`: the ledger cannot be read.
 */
export function journalsAndClaims(host: Host): ReturnType<typeof listJournals> & { claims: Record<string, ClaimView>; claimsError?: string } {
  let earlier: Record<string, Claim> | undefined;
  try {
    earlier = read(host).claims;
  } catch {
    // said by the second read, which fails the same way
  }
  const { journals, broken } = listJournals(host);
  let later: Record<string, Claim>;
  try {
    later = read(host).claims;
  } catch (error) {
    return { journals, broken, claims: {}, claimsError: (error as Error).message };
  }
  const holder = (resource: string, uuid: string): HolderView => {
    const domain = journals.find((journal) => journal.domain.uuid === uuid)?.domain;
    if (domain) return { uuid, name: domain.name, journal: true };
    if (broken.some((item) => item.file === paths.journal(uuid))) return { uuid, journal: "unreadable" };
    return { uuid, journal: earlier?.[resource]?.holders.includes(uuid) ? false : "changing" };
  };
  const claims = Object.fromEntries(Object.entries(later).map(([resource, claim]) => [resource, { holders: claim.holders.map((uuid) => holder(resource, uuid)), waiting: claim.waiting }]));
  return { journals, broken, claims };
}

/** Why the claims ledger cannot be read (as journalsAndClaims' claimsError says it); undefined when it can. */
export function claimsLedgerError(host: Host): string | undefined {
  try {
    read(host);
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
}

function write(host: Host, ledger: Ledger): void {
  if (Object.keys(ledger.claims).length === 0) return removeStateFile(host, paths.claims);
  ensureStateDir(host);
  writeStateFile(host, paths.claims, `${JSON.stringify(ledger, null, 2)}\n`);
}

/** One domain's view of the ledger: what plugins get as ctx.claims. */
export interface Claims {
  /** Every claim on a resource whose key starts with `prefix`. */
  list(prefix: string): Record<string, Claim>;
  get(resource: string): Claim | undefined;
  /** This domain holds `resource`; `original` is kept from the first taker. True: this domain is the first. */
  take(resource: string, original: Json): boolean;
  /** The first taker, still the only holder, replaces `original` (taken before its change, as what it may do) with what it did. */
  setOriginal(resource: string, original: Json): void;
  /** Holders of `resource` other than this domain. */
  others(resource: string): string[];
  /** Something the last releaser brings back too. */
  addWaiting(resource: string, item: Json): void;
  /** What waits in `resource` and `matches` no longer does (a domain's own journal carries it now). */
  removeWaiting(resource: string, matches: (item: Json) => boolean): void;
  /** This domain no longer holds `resource`; the claim goes with its last holder. */
  drop(resource: string): void;
}

export function claimsFor(host: Host, holder: string): Claims {
  const change = (mutate: (ledger: Ledger) => void) => {
    const ledger = read(host);
    mutate(ledger);
    write(host, ledger);
  };
  return {
    list: (prefix) => Object.fromEntries(Object.entries(read(host).claims).filter(([key]) => key.startsWith(prefix))),
    get: (resource) => read(host).claims[resource],
    take(resource, original) {
      let first = false;
      change((ledger) => {
        const claim = (ledger.claims[resource] ??= { holders: [], original, waiting: [] });
        first = claim.holders.length === 0;
        if (!claim.holders.includes(holder)) claim.holders.push(holder);
      });
      return first;
    },
    setOriginal(resource, original) {
      change((ledger) => {
        const claim = ledger.claims[resource];
        if (claim?.holders.length === 1 && claim.holders[0] === holder) claim.original = original;
      });
    },
    others: (resource) => (read(host).claims[resource]?.holders ?? []).filter((other) => other !== holder),
    addWaiting(resource, item) {
      change((ledger) => {
        const claim = ledger.claims[resource];
        if (!claim) throw new VmhookError(`internal: no claim on ${resource} to wait for`);
        if (!claim.waiting.some((other) => JSON.stringify(other) === JSON.stringify(item))) claim.waiting.push(item);
      });
    },
    removeWaiting(resource, matches) {
      change((ledger) => {
        const claim = ledger.claims[resource];
        if (claim) claim.waiting = claim.waiting.filter((item) => !matches(item));
      });
    },
    drop(resource) {
      change((ledger) => {
        const claim = ledger.claims[resource];
        if (!claim) return;
        claim.holders = claim.holders.filter((other) => other !== holder);
        if (claim.holders.length === 0) delete ledger.claims[resource];
      });
    },
  };
}
