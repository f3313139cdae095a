// What vmhook hands a plugin's call (a planner, apply, handler or undo) is
// valid only while that call runs. A JS plugin's call abandoned at its time
// limit goes on inside the hook's process while the runner rolls back, and a
// write it makes after the rollback would redo what was just undone, with
// nothing journaled; so would a timer a finished call left behind. Once the
// call has ended, its context refuses every use that reaches the host or the
// journal, and a program it started in the background is killed.
import { VmhookError } from "./errors.ts";
import type { ExecOptions, Host } from "./host.ts";
import type { Logger } from "./log.ts";

export class CallLease {
  /** How the call ended ("was abandoned", "ended"), once it has. */
  private endedAs: string | undefined;
  /** Aborts when the call ends: what kills the programs it left running (ExecOptions.signal). */
  private readonly ending = new AbortController();

  constructor(
    private readonly pluginId: string,
    private readonly log: Logger,
  ) {}

  /** From now on, everything guarded by this lease throws. */
  end(how: string): void {
    this.endedAs ??= how;
    this.ending.abort();
  }

  private refuseIfEnded(what: string): void {
    if (this.endedAs === undefined) return;
    // Logged too: the plugin may well swallow what it is thrown.
    const message = `${this.pluginId}: refused ${what} after its call ${this.endedAs}`;
    this.log.warn(message);
    throw new VmhookError(message);
  }

  /** `host`, each of whose methods throws once the call has ended; a program execAsync started then is killed. */
  host(host: Host): Host {
    return new Proxy(host, {
      get: (target, key) => {
        const value: unknown = Reflect.get(target, key, target);
        if (typeof value !== "function") return value;
        return (...args: unknown[]) => {
          this.refuseIfEnded(`ctx.host.${String(key)}(${typeof args[0] === "string" ? `${JSON.stringify(args[0])}, …` : "…"})`);
          if (key === "execAsync") args[2] = { ...(args[2] as ExecOptions), signal: this.ending.signal };
          return value.apply(target, args);
        };
      },
    });
  }

  /**
   * `ctx`, each of whose functions (update, run, step, …) throws once the call
   * has ended. What it holds that reaches the host (claims, shared) must be
   * built on this lease's host.
   */
  context<Context extends object>(ctx: Context): Context {
    const guarded: Record<string, unknown> = { ...(ctx as Record<string, unknown>) };
    for (const [key, value] of Object.entries(ctx)) {
      if (typeof value !== "function") continue;
      guarded[key] = (...args: unknown[]) => {
        this.refuseIfEnded(`ctx.${key}`);
        return (value as (...args: unknown[]) => unknown).apply(guarded, args);
      };
    }
    return guarded as Context;
  }
}
