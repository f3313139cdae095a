// A wall clock that jumps while a hook waits: NTP steps it at boot, exactly
// when VMs with <autostart> start (hours on a host whose RTC keeps local
// time, days after a dead CMOS battery), and `date -s` may step it any time.
// Every wait and limit is measured on the monotonic clock: a step back must
// not stretch a wait (libvirt waits on the hook), nor a step forward end one
// that was fine.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Deadline, WaitTimedOut, waitFor } from "../../lib/deadline.ts";
import { SimHost } from "../helpers/simhost.ts";
import { stepWallClock } from "../helpers/wall-clock.ts";
import { wallStepEnv } from "../helpers/wall-clock-shim.ts";

const HOUR = 3_600_000;

/** Runs `work` with the wall clock stepped by `ms` at its first call of `stepNow`; the clock is put back after. */
function withStep<T>(ms: number, work: (stepNow: () => void) => T): T {
  let undo: (() => void) | undefined;
  try {
    return work(() => void (undo ??= stepWallClock(ms)));
  } finally {
    undo?.();
  }
}

/** Never ready; throws once the wait has gone on for 3 s (an hour's wait would stall the tests). */
function stillWaiting(started: number): false {
  if (performance.now() - started > 3_000) throw new Error("still waiting after 3 s");
  return false;
}

test("a bounded wait during which the wall clock steps back an hour still gives up at its timeout", () => {
  const sim = new SimHost();
  const deadline = new Deadline(sim, 60_000);
  const started = performance.now();
  withStep(-HOUR, (stepNow) => {
    assert.throws(
      () => waitFor(sim, deadline, "the display manager has stopped", () => (stepNow(), stillWaiting(started)), { timeoutMs: 400 }),
      (error: unknown) => error instanceof WaitTimedOut,
    );
  });
  const took = performance.now() - started;
  assert.ok(took >= 400 && took < 2_000, `the 0.4 s wait took ${Math.round(took)} ms`);
});

test("a bounded wait during which the wall clock steps forward an hour waits on, until what it waits for is ready", () => {
  const sim = new SimHost();
  const deadline = new Deadline(sim, 60_000);
  const started = performance.now();
  withStep(HOUR, (stepNow) => {
    waitFor(sim, deadline, "vfio-pci is bound", () => (stepNow(), performance.now() - started >= 300), { timeoutMs: 2_000 });
  });
  const took = performance.now() - started;
  assert.ok(took >= 300 && took < 2_000, `ready after ${Math.round(took)} ms`);
});

test("the hook's deadline: a wall clock stepped forward an hour does not end it, one stepped back does not stretch it", () => {
  const sim = new SimHost();
  const deadline = new Deadline(sim, 60_000);
  withStep(HOUR, (stepNow) => {
    stepNow();
    deadline.check("stopping display-manager.service");
    assert.ok(deadline.remainingMs() > 59_000 && deadline.remainingMs() <= 60_000, `${deadline.remainingMs()} ms left`);
  });
  withStep(-HOUR, (stepNow) => {
    stepNow();
    assert.ok(deadline.remainingMs() <= 60_000, `${deadline.remainingMs()} ms left of a 60 s deadline`);
    assert.ok(deadline.clamp(10 * HOUR) <= 60_000, "a 10 h wait is cut to what is left");
  });
});

test("the host's sleep lasts what it was asked for when the wall clock is stepped back during it (every poll of every wait sleeps)", () => {
  // The process reads a wall clock an hour ahead of the kernel's: the same as a step back an hour right after a reading.
  const host = path.resolve(import.meta.dirname, "../../lib/host.ts");
  const script = `import { RootedHost } from ${JSON.stringify(host)}; const started = performance.now(); new RootedHost("/").sleep(200); console.log(Math.round(performance.now() - started));`;
  const child = spawnSync(process.execPath, ["-e", script], { encoding: "utf8", timeout: 10_000, env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...wallStepEnv(0, HOUR) } });
  assert.is(child.signal, null, "a 200 ms sleep was still sleeping after 10 s");
  assert.is(child.status, 0, child.stderr);
  const slept = Number(child.stdout.trim());
  assert.ok(slept >= 200 && slept < 2_000, `slept ${slept} ms`);
});

/** Reads of the wall clock, and waits that end at a wall time: only where the Host seam keeps them. */
const WALL_CLOCK = /Date\.now\(|new Date\(\)|performance\.timeOrigin|Atomics\.wait\(/g;
const WALL_CLOCK_ALLOWED: Record<string, string[]> = {
  "lib/host.ts": ["Date.now("], // Host.wallClockMs
  "lib/watchdog.ts": ["new Date()"], // the stamp of its log line
};

test("hooks/, lib/ and plugins/ read the wall clock only through Host.wallClockMs (and the watchdog's log stamp): every duration is on the monotonic clock", () => {
  const repo = path.resolve(import.meta.dirname, "../..");
  const found: Record<string, string[]> = {};
  for (const layer of ["hooks", "lib", "plugins"]) {
    for (const entry of fs.readdirSync(path.join(repo, layer), { recursive: true })) {
      const file = path.join(layer, String(entry));
      if (!file.endsWith(".ts")) continue;
      const reads = [...fs.readFileSync(path.join(repo, file), "utf8").matchAll(WALL_CLOCK)].map((match) => match[0]);
      if (reads.length > 0) found[file] = reads;
    }
  }
  assert.equal(found, WALL_CLOCK_ALLOWED);
});

test.run();
