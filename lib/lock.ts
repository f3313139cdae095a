// The host-wide lock for resources that all VMs share (hugepage pools, the
// host CPU set). flock(2) through libc, so the kernel releases it if the hook
// is killed: a crashed hook never leaves the next VM waiting.
import * as fs from "node:fs";
import type { Deadline } from "./deadline.ts";
import { VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import { paths } from "./paths.ts";

const LOCK_EX = 2;
const LOCK_NB = 4;

type Flock = (fd: number, operation: number) => number;
let flock: Flock | undefined;

async function loadFlock(): Promise<Flock> {
  if (!flock) {
    const { dlopen, FFIType } = await import("bun:ffi");
    const libc = dlopen("libc.so.6", { flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 } });
    flock = (fd, operation) => libc.symbols.flock(fd, operation) as number;
  }
  return flock;
}

/**
 * Runs `work` while holding the host-wide lock. Not re-entrant: the transaction
 * runner takes it around a shared plugin's handler or undo, plugins never do.
 */
export async function withHostLock<T>(host: Host, deadline: Deadline, work: () => Promise<T>): Promise<T> {
  const lock = await loadFlock();
  host.mkdir(paths.stateDir);
  const fd = fs.openSync(host.resolve(paths.hostLock), "a", 0o600);
  try {
    let interval = 5;
    while (lock(fd, LOCK_EX | LOCK_NB) !== 0) {
      if (deadline.remainingMs() <= 0) {
        throw new VmhookError(`another vmhook held the host-wide lock ${paths.hostLock} until the deadline; see vmhook status`);
      }
      host.sleep(Math.min(interval, deadline.remainingMs()));
      interval = Math.min(interval * 2, 100);
    }
    return await work();
  } finally {
    fs.closeSync(fd); // closing the descriptor releases the flock
  }
}
