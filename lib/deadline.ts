// The hook's hard deadline. libvirt waits for the hook without a timeout, so
// every wait and every child process is bounded by what is left of it.
import { VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";

export class Deadline {
  /** When it runs out, on the monotonic clock (Host.monotonicMs): a wall-clock step does not move it. */
  readonly at: number;
  /** Why the work was given up before its time (abandon), once it was. */
  private abandonedBy: { cause: unknown } | undefined;
  private rejectAbandoned: (cause: unknown) => void = () => {};
  /** Rejects with the cause once the work is abandoned: what a plugin's call races (lib/transaction.ts settleWithin). */
  readonly abandoned = new Promise<never>((_, reject) => (this.rejectAbandoned = reject));

  constructor(
    private readonly host: Host,
    readonly totalMs: number,
    /** The host setting that sets it, named when it runs out. */
    readonly setting: "deadlineSeconds" | "undoDeadlineSeconds" = "deadlineSeconds",
  ) {
    this.at = host.monotonicMs() + totalMs;
    this.abandoned.catch(() => {}); // a deadline nobody races is no unhandled rejection
  }

  /**
   * Gives the work up now, for `cause` (a stray error in the hook's process):
   * the call running is abandoned as at its time limit, and every check
   * after throws it. The first cause stays.
   */
  abandon(cause: unknown): void {
    if (this.abandonedBy) return;
    this.abandonedBy = { cause };
    this.rejectAbandoned(cause);
  }

  throwIfAbandoned(): void {
    if (this.abandonedBy) throw this.abandonedBy.cause;
  }

  remainingMs(): number {
    return Math.max(0, this.at - this.host.monotonicMs());
  }

  /** A timeout no longer than what is left. */
  clamp(ms: number): number {
    return Math.max(1, Math.min(ms, this.remainingMs()));
  }

  check(what: string): void {
    this.throwIfAbandoned();
    if (this.remainingMs() <= 0) {
      throw new VmhookError(
        `vmhook ran out of time (deadline ${Math.round(this.totalMs / 1000)} s) while ${what}; raise "${this.setting}" in /etc/vmhook/vmhook.json if the host is just slow`,
      );
    }
  }
}

/** waitFor's timeout, apart from an error of `ready()` itself (a read that failed), which waitFor passes on as it is. */
export class WaitTimedOut extends VmhookError {}

export interface WaitOptions {
  timeoutMs?: number;
  intervalMs?: number;
}

/**
 * Polls until `ready()` is true: no fixed sleeps. Throws WaitTimedOut naming
 * `what` when the timeout (bounded by the deadline) passes.
 */
export function waitFor(host: Host, deadline: Deadline, what: string, ready: () => boolean, options: WaitOptions = {}): void {
  const timeoutMs = deadline.clamp(options.timeoutMs ?? 10_000);
  const until = host.monotonicMs() + timeoutMs;
  let interval = options.intervalMs ?? 10;
  for (;;) {
    if (ready()) return;
    if (host.monotonicMs() >= until) {
      throw new WaitTimedOut(`timed out after ${(timeoutMs / 1000).toFixed(1)} s waiting until ${what}`);
    }
    host.sleep(Math.min(interval, Math.max(1, until - host.monotonicMs())));
    interval = Math.min(interval * 2, 200);
  }
}
