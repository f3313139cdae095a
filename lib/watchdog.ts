// The hook's hard deadline. Deadline checks inside the plugins are
// cooperative; this one is not: a worker thread ends the whole process when
// it outlives its budget, even while the main thread is stuck in a
// synchronous call. libvirt itself waits for the hook forever.
//
// It ends the process with _exit(exitCode) rather than a signal: for events
// that must not fail (reconnect: libvirt kills a VM whose reconnect hook
// fails, and death by a signal is a failure) the hook still exits 0.
//
// Its message is what `virsh start` shows, so it is written when it fires:
// the last cause logged (a warning or error) comes first, the time really
// elapsed (a host short of memory can wake the worker late), and `vmhook
// recover` only when the domain's journal still holds changes.
import type { LogLevel } from "./log.ts";

export interface WatchdogOptions {
  budgetMs: number;
  /**
   * How long the hook has run already, in ms on the monotonic clock: the
   * budget and the time in the message never come from the wall clock, which
   * NTP steps by hours at boot, just when VMs with <autostart> start.
   */
  spentMs: number;
  /** "prepare begin of vm". */
  what: string;
  /** Where the budget comes from, for the message. */
  budgetSource: string;
  /** The log, opened by the main thread (lib/log.ts openLog); absent when it cannot be written. */
  logFd?: number;
  /** The domain's journal, as a real path; absent or empty means nothing is left to undo. */
  journalFile?: string;
  /** The command that gives back what the journal holds. */
  recoverCommand: string;
  exitCode: number;
}

export interface Watchdog {
  /** A line that was logged: a warning or error becomes the cause in the message, anything else the last step. */
  note(level: LogLevel, line: string): void;
}

export function startWatchdog(options: WatchdogOptions): Watchdog {
  const source = `
    import { readFileSync, writeSync } from "node:fs";
    import { dlopen, FFIType } from "bun:ffi";
    const options = ${JSON.stringify(options)};
    let cause, step;
    self.onmessage = ({ data }) => (data.level === "info" ? (step = data.line) : (cause = data.line));
    function stillHeld() {
      if (!options.journalFile) return false;
      try {
        return JSON.parse(readFileSync(options.journalFile, "utf8")).entries.length > 0;
      } catch (error) {
        return error.code !== "ENOENT"; // unreadable: assume it holds something
      }
    }
    const workerStarted = performance.now();
    setTimeout(() => {
      const seconds = Math.round((options.spentMs + performance.now() - workerStarted) / 1000);
      const killed = options.what + " was killed after " + seconds + " s (budget " + Math.round(options.budgetMs / 1000) + " s: " + options.budgetSource + ")";
      const lines = cause ? [cause, killed] : [killed, ...(step ? ["last step: " + step] : [])];
      lines.push(stillHeld() ? "once it is stopped, run " + options.recoverCommand + " to give back what it still holds" : "it holds nothing (its journal is empty): vmhook recover is not needed");
      const text = "vmhook: " + lines.join("\\n  ") + "\\n";
      try { writeSync(2, text); } catch {}
      if (options.logFd !== undefined) try { writeSync(options.logFd, new Date().toISOString() + " " + text); } catch {}
      // Bound only now: dlopen compiles with TinyCC, a cost every hook would pay at start.
      // Should it fail, the process still ends (by a signal).
      try {
        dlopen("libc.so.6", { _exit: { args: [FFIType.i32], returns: FFIType.void } }).symbols._exit(Math.trunc(options.exitCode));
      } finally {
        process.kill(process.pid, "SIGKILL");
      }
    }, Math.max(1, Math.floor(options.budgetMs - options.spentMs)));
  `;
  const worker = new Worker(URL.createObjectURL(new Blob([source], { type: "application/javascript" })));
  (worker as unknown as { unref(): void }).unref(); // Bun's Worker: never keeps a finished hook alive
  return { note: (level, line) => worker.postMessage({ level, line }) };
}
