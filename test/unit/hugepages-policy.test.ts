// The hugepages plugin's pure parts, branch by branch: the step size, the
// grow loop against the floor and the kernel, the give-back-then-reclaim
// retry policy and its bounds, the floor and its setting, the fit check,
// and arithmetic at 2^53.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { boundedProduct, boundedSum } from "../../lib/bounded.ts";
import { checkFit, floorSetting, freeMemoryFloorKiB, nodeFloorKiB, type HostView } from "../../plugins/hugepages/fit.ts";
import { growInSteps, growWithRetries, stepPages, type RetryIo } from "../../plugins/hugepages/grow.ts";
import { GiB, MiB } from "../helpers/hugepage-kernel.ts";

/**
 * A pool of 2M pages over `availableKiB` of memory with a floor: each write
 * grants at most `grantable()` new pages; every call is recorded in order.
 */
function fakePool(options: { availableKiB: number; floorKiB?: number; grantable?: (round: number) => number; surplus?: number; clock?: number[] }) {
  const calls: string[] = [];
  let total = options.surplus ?? 0;
  let surplus = options.surplus ?? 0;
  let available = options.availableKiB;
  let round = 1;
  const clock = options.clock ?? [];
  const io: RetryIo = {
    read: () => ({ total, persistent: total - surplus }),
    write(count) {
      calls.push(`write ${count}`);
      const promoted = Math.min(surplus, Math.max(0, count - (total - surplus)));
      surplus -= promoted;
      const wanted = Math.max(0, count - (total - surplus));
      const granted = Math.min(wanted, options.grantable?.(round) ?? Infinity);
      total += granted;
      available -= granted * 2048;
    },
    headroomKiB: () => available - (options.floorKiB ?? 0),
    holding: (pages) => calls.push(`holding ${pages}`),
    giveBack(pages) {
      calls.push(`give back ${pages}`);
      total -= pages;
      available += pages * 2048;
    },
    reclaim() {
      calls.push("reclaim");
      round++;
    },
    memory: () => (calls.push("measure"), { availableKiB: available, freeKiB: available }),
    monotonicMs: () => clock.shift() ?? 0,
  };
  return { io, calls, pages: () => total };
}

test("stepPages: what is missing, capped by the headroom and by 1 GiB; nothing when not one page fits", () => {
  assert.is(stepPages(10, 2048, 100 * GiB), 10);
  assert.is(stepPages(5000, 2048, 100 * GiB), 512, "1 GiB of 2M pages");
  assert.is(stepPages(5000, 2048, 300 * MiB), 150, "the headroom");
  assert.is(stepPages(8, GiB, 100 * GiB), 1, "one 1G page per step");
  assert.is(stepPages(8, GiB, 1023 * MiB), 0);
  assert.is(stepPages(8, 2048, -5 * GiB), 0, "below the floor already");
});

test("growInSteps: steps until done, reporting each persistent increase", () => {
  const { io, calls } = fakePool({ availableKiB: 100 * GiB });
  const grown: number[] = [];
  assert.equal(growInSteps(io, 1100, 2048, (n) => grown.push(n)), { fresh: 1100, stop: "done" });
  assert.equal(calls, ["write 512", "write 1024", "write 1100"]);
  assert.equal(grown, [512, 512, 76]);
});

test("growInSteps: surplus pages promoted first count as held, but not as new pages", () => {
  const { io } = fakePool({ availableKiB: 100 * GiB, surplus: 10 });
  const grown: number[] = [];
  assert.equal(growInSteps(io, 20, 2048, (n) => grown.push(n)), { fresh: 20, stop: "done" });
  assert.equal(grown, [30]);
});

test("growInSteps: stops at the floor, never asking the kernel for a page below it", () => {
  const { io, calls } = fakePool({ availableKiB: 3 * GiB, floorKiB: 2 * GiB + 100 * MiB });
  assert.equal(growInSteps(io, 1000, 2048, () => {}), { fresh: 462, stop: "floor" });
  assert.equal(calls, ["write 462"]);
});

test("growInSteps: the kernel granting fewer than asked stops the loop", () => {
  const { io } = fakePool({ availableKiB: 100 * GiB, grantable: () => 100 });
  assert.equal(growInSteps(io, 1000, 2048, () => {}), { fresh: 100, stop: "kernel" });
});

test("growWithRetries: gives back, measures, then reclaims, and succeeds in the next round", () => {
  const { io, calls, pages } = fakePool({ availableKiB: 100 * GiB, grantable: (round) => (round === 1 ? 100 : Infinity) });
  assert.equal(growWithRetries(io, 300, 2048, { maxRounds: 3, retryMs: 10_000 }), { ok: true, rounds: 2 });
  assert.equal(calls, ["write 300", "holding 100", "give back 100", "holding 0", "measure", "reclaim", "write 300", "holding 300"]);
  assert.is(pages(), 300);
});

test("growWithRetries: bounded by maxRounds however long the timeout; reports the best round and memory after the give-back", () => {
  const { io, calls, pages } = fakePool({ availableKiB: 10 * GiB, grantable: (round) => [0, 100, 250, 200][round]! });
  const result = growWithRetries(io, 300, 2048, { maxRounds: 3, retryMs: 3_600_000 });
  assert.equal(result, { ok: false, rounds: 3, best: 250, stop: "kernel", after: { availableKiB: 10 * GiB, freeKiB: 10 * GiB } });
  assert.is(calls.filter((c) => c === "reclaim").length, 2);
  assert.is(pages(), 0, "everything given back");
});

test("growWithRetries: the timeout ends the retries after the one retry that always runs", () => {
  const never = { availableKiB: 10 * GiB, grantable: () => 0 };
  const zero = fakePool({ ...never });
  assert.is((growWithRetries(zero.io, 300, 2048, { maxRounds: 5, retryMs: 0 }) as { rounds: number }).rounds, 2);
  // start 0; round 1 ends at 1 s (retry), round 2 at 2 s (retry: 2 s < 3 s), round 3 at 3 s: stop
  const timed = fakePool({ ...never, clock: [0, 1000, 2000, 3000, 4000] });
  assert.is((growWithRetries(timed.io, 300, 2048, { maxRounds: 9, retryMs: 3000 }) as { rounds: number }).rounds, 3);
  assert.equal(zero.calls.filter((c) => c.startsWith("give back")), [], "nothing taken, nothing given back");
});

test("growWithRetries: a round that hit the floor is retried too, and fails as 'floor'", () => {
  const { io } = fakePool({ availableKiB: GiB, floorKiB: GiB });
  assert.equal(growWithRetries(io, 10, 2048, { maxRounds: 2, retryMs: 0 }), { ok: false, rounds: 2, best: 0, stop: "floor", after: { availableKiB: GiB, freeKiB: GiB } });
});

test("the floor: the larger of 5 % of RAM and 1 GiB, or the setting; a node keeps its share", () => {
  assert.is(freeMemoryFloorKiB(8 * GiB, undefined), GiB);
  assert.is(freeMemoryFloorKiB(64 * GiB, undefined), 3355444);
  assert.is(freeMemoryFloorKiB(64 * GiB, 0), 0);
  assert.is(freeMemoryFloorKiB(64 * GiB, 512), 512 * MiB);
  const facts = (totalKiB: number) => ({ totalKiB, availableKiB: 0, freeKiB: 0 });
  assert.is(nodeFloorKiB(2 * GiB, facts(64 * GiB), facts(16 * GiB)), 512 * MiB);
  assert.is(nodeFloorKiB(2 * GiB, facts(0), facts(16 * GiB)), 2 * GiB, "unknown host total: the whole floor");
});

test("floorSetting: a whole number of MiB from 0 to 2^32, else an error naming the key and the value", () => {
  assert.is(floorSetting({}), undefined);
  assert.is(floorSetting({ minFreeMiB: 2048 }), 2048);
  for (const bad of [-1, 1.5, "1024", 2 ** 32 + 1, 2 ** 53, null]) {
    assert.throws(() => floorSetting({ minFreeMiB: bad }), new RegExp(`"minFreeMiB": ${JSON.stringify(bad)}\\}\\} is not a whole number of MiB`), String(bad));
  }
});

const view = (overrides: Partial<HostView> = {}): HostView => ({
  host: { totalKiB: 16 * GiB, availableKiB: 8 * GiB, freeKiB: 8 * GiB },
  floorKiB: GiB,
  nodes: new Map(),
  poolFree: new Map(),
  ...overrides,
});

test("checkFit: fits, refused for now (boot option offered), refused for good (none); free pages already in the pool are named", () => {
  assert.equal(checkFit([{ sizeKiB: 2048, pages: 3584 }], view()), [{ need: { sizeKiB: 2048, pages: 3584 }, remedies: [] }]);
  const now = checkFit([{ sizeKiB: 2048, pages: 3585 }], view({ poolFree: new Map([["2048/global", 4000]]) }))[0]!;
  assert.is(now.refused, "hugepages: 3585 pages of 2M (7170 MiB) for the 2M pool cannot fit: the host has 8192 MiB available and keeps 1024 MiB free, so it can give 7168 MiB");
  assert.match(now.remedies.join("\n"), "hugepagesz=2M hugepages=3585");
  assert.match(now.remedies.join("\n"), "the 2M pool already holds 4000 free pages: if they were reserved for this VM, drop <vmhook:hugepages> and QEMU uses them");
  const never = checkFit([{ sizeKiB: GiB, pages: 16 }], view())[0]!;
  assert.match(never.remedies[0]!, "the host has 16384 MiB in all and can never give this: give the VM less <memory> (at most 15360 MiB here)");
  assert.not.match(never.remedies.join("\n"), "hugepagesz=");
});

test("checkFit: pools sharing the host are counted together; a node pool must fit its node and the host", () => {
  const fits = checkFit([{ sizeKiB: GiB, pages: 4 }, { sizeKiB: 2048, pages: 2000 }], view());
  assert.equal(fits.map((fit) => fit.refused === undefined), [true, false]);
  const node = { totalKiB: 8 * GiB, availableKiB: 6 * GiB, freeKiB: 6 * GiB };
  const onNode = checkFit([{ sizeKiB: 2048, node: 1, pages: 2900 }], view({ nodes: new Map([[1, node]]) }))[0]!;
  assert.match(onNode.refused!, "node 1 has 6144 MiB available and keeps 512 MiB free, so it can give 5632 MiB");
  assert.match(onNode.remedies.join("\n"), "hugepages=1:2900");
  const hostShort = checkFit([{ sizeKiB: 2048, node: 1, pages: 2000 }], view({ host: { totalKiB: 16 * GiB, availableKiB: 4 * GiB, freeKiB: 0 }, nodes: new Map([[1, node]]) }))[0]!;
  assert.match(hostShort.refused!, "the host has 4096 MiB available");
});

test("arithmetic at 2^53: exact up to Number.MAX_SAFE_INTEGER, an error naming the value past it", () => {
  assert.is(boundedSum(2 ** 53 - 2, 1, "x"), Number.MAX_SAFE_INTEGER);
  assert.throws(() => boundedSum(2 ** 53 - 1, 1, "the pool's new size"), /^the pool's new size comes to 9,007,199,254,740,992, beyond what vmhook can count exactly \(2\^53\)/);
  assert.is(boundedProduct(2 ** 42 - 1, 2048, "x"), 2 ** 53 - 2048);
  assert.throws(() => boundedProduct(2 ** 42, 2048, "memory"), /^memory comes to 9,007,199,254,740,992,/);
  assert.throws(() => checkFit([{ sizeKiB: 2048, pages: 2 ** 43 }], view()), /8796093022208 pages of 2M comes to/);
});

test.run();
