// Timing inside the test/kernel guest, for the guest benches
// (bench/vfio-guest.ts, bench/hugepages-guest.ts): the guest's own clock, read
// by its shell around a script, and the median of a series.
import type { Guest } from "../test/kernel/guest.ts";

// The guest's monotonic clock in ns, from the third line of /proc/timer_list
// ("now at N nsecs"), read by the shell itself (no process started): busybox
// date has no sub-second clock, and /proc/uptime counts in 10 ms steps, as
// coarse as a tenth of the vfio bench's shell floor.
const readClock = (name: string) => `{ read _; read _; read _ _ ${name} _; } < /proc/timer_list`;

/**
 * Runs `script` in the guest and returns its wall time in ms, to 0.1 ms. The
 * script failing fails the call; `untimed` runs after the clock is read
 * (checks, clean-up) and may fail it too.
 */
export async function timedInGuest(guest: Guest, script: string, options: { untimed?: string; timeoutMs?: number } = {}): Promise<number> {
  const out = await guest.ok(`${readClock("a")}\n{\n${script}\n} || exit 1\n${readClock("b")}\n${options.untimed ?? ""}\necho "$a $b"`, { timeoutMs: options.timeoutMs });
  const [start, end] = out.trim().split("\n").pop()!.split(" ").map(Number);
  return Math.round((end! - start!) / 1e5) / 10;
}

/** The middle value; for an even count, the mean of the two middle ones. */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}
