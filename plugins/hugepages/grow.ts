// Growing one pool without endangering the host: in steps of at most 1 GiB,
// reading what is available before each, never past the free-memory floor;
// on a shortfall, give back what was taken first, then reclaim (drop caches,
// compact) and try again, a bounded number of rounds. Pure over a `PoolIo`,
// so the policy is tested without a kernel and the glue stays thin.
import { boundedSum } from "../../lib/bounded.ts";

/** A pool as mm/hugetlb.c counts it: all pages, and the persistent ones (all minus surplus). */
export interface PoolCount {
  total: number;
  persistent: number;
}

/** The kernel as one pool sees it. */
export interface PoolIo {
  read(): PoolCount;
  /**
   * Sets the persistent count; the kernel may grant fewer new pages than asked.
   * `before`: the pool as read just before, so the write can be journaled
   * (from what, to what) before it is made.
   */
  write(count: number, before: PoolCount): void;
  /** KiB that may still be taken before the floor of the pool's scope (host, and node). */
  headroomKiB(): number;
}

const GiB = 1024 * 1024;
/** MemAvailable is read again after at most this much. */
const MAX_STEP_KIB = GiB;

/** Pages to ask for in the next step: what is missing, capped by the headroom and by one step's size. */
export function stepPages(missing: number, sizeKiB: number, headroomKiB: number): number {
  const byHeadroom = Math.floor(Math.max(0, headroomKiB) / sizeKiB);
  const byStep = Math.max(1, Math.floor(MAX_STEP_KIB / sizeKiB));
  return Math.max(0, Math.min(missing, byHeadroom, byStep));
}

/** Why growing stopped: the need is met, the next page would cross the floor, or the kernel granted fewer than asked. */
export type GrowStop = "done" | "floor" | "kernel";

/**
 * Grows the pool by `pages` new pages, step by step. `onGrown` gets the
 * increase of the persistent pool (new pages, plus surplus pages the kernel
 * promotes first; 0 when the kernel granted nothing) right after every write,
 * for the journal: that is where the write stops being in flight.
 */
export function growInSteps(io: PoolIo, pages: number, sizeKiB: number, onGrown: (persistent: number) => void): { fresh: number; stop: GrowStop } {
  let fresh = 0;
  while (fresh < pages) {
    const step = stepPages(pages - fresh, sizeKiB, io.headroomKiB());
    if (step === 0) return { fresh, stop: "floor" };
    const before = io.read();
    io.write(boundedSum(before.total, step, "the pool's new size"), before);
    const after = io.read();
    const gained = Math.max(0, after.total - before.total);
    fresh += gained;
    onGrown(Math.max(0, after.persistent - before.persistent));
    if (gained < step) return { fresh, stop: "kernel" };
  }
  return { fresh, stop: "done" };
}

export interface RetryIo extends PoolIo {
  /** The journal: how many persistent pages this VM holds in the pool now, and no write in flight. */
  holding(pages: number): void;
  /** Shrinks the persistent pool by this VM's pages, the write journaled before it is made. */
  giveBack(pages: number): void;
  /** Drops caches and compacts memory, without holding the host lock. */
  reclaim(): void;
  /** MemAvailable and MemFree of the pool's scope, for the report. */
  memory(): { availableKiB: number; freeKiB: number };
  /** The monotonic clock (Host.monotonicMs): how long the retries took. */
  monotonicMs(): number;
}

export interface RetryPolicy {
  /** Rounds in all, the first included. */
  maxRounds: number;
  /** Retries stop once this long has passed; one retry always runs. */
  retryMs: number;
}

/** The default: one try and two retries. */
export const RETRY_ROUNDS = 3;

export type GrowResult =
  | { ok: true; rounds: number }
  /** `best`: most new pages one round got; `after`: memory measured after the give-back. */
  | { ok: false; rounds: number; best: number; stop: Exclude<GrowStop, "done">; after: { availableKiB: number; freeKiB: number } };

export function growWithRetries(io: RetryIo, pages: number, sizeKiB: number, policy: RetryPolicy): GrowResult {
  const started = io.monotonicMs();
  let best = 0;
  for (let round = 1; ; round++) {
    let held = 0;
    const { fresh, stop } = growInSteps(io, pages, sizeKiB, (grown) => io.holding((held += grown)));
    if (stop === "done") return { ok: true, rounds: round };
    best = Math.max(best, fresh);
    // Give back before reclaiming: a partial pool helps nobody, the host needs the memory.
    if (held > 0) {
      io.giveBack(held);
      io.holding(0);
    }
    const after = io.memory();
    const elapsedMs = io.monotonicMs() - started;
    const outOfTime = round > 1 && elapsedMs >= policy.retryMs;
    if (round >= policy.maxRounds || outOfTime) return { ok: false, rounds: round, best, stop, after };
    io.reclaim();
  }
}
