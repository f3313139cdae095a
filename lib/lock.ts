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
const LOCK_UN = 8;

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

/** The lock while it is held: work that needs no lock (a slow reclaim) can let go of it for a while. */
export interface HeldLock {
  /** Releases the lock, runs `work`, and takes the lock again (waiting no longer than the deadline). */
  released<T>(work: () => T): T;
}

function acquire(lock: Flock, fd: number, host: Host, deadline: Deadline): void {
  let interval = 5;
  while (lock(fd, LOCK_EX | LOCK_NB) !== 0) {
    if (deadline.remainingMs() <= 0) {
      throw new VmhookError(`another vmhook held the host-wide lock ${paths.hostLock} until the deadline; see vmhook status`);
    }
    host.sleep(Math.min(interval, deadline.remainingMs()));
    interval = Math.min(interval * 2, 100);
  }
}

/**
 * Runs `work` while holding the host-wide lock. Not re-entrant: the transaction
 * runner takes it around a shared plugin's handler or undo, plugins never do.
 */
export async function withHostLock<T>(host: Host, deadline: Deadline, work: (held: HeldLock) => Promise<T>): Promise<T> {
  const lock = await loadFlock();
  host.mkdir(paths.stateDir);
  const fd = fs.openSync(host.resolve(paths.hostLock), "a", 0o600);
  try {
    acquire(lock, fd, host, deadline);
    return await work({
      released(inner) {
        lock(fd, LOCK_UN);
        try {
          return inner();
        } finally {
          acquire(lock, fd, host, deadline);
        }
      },
    });
  } finally {
    fs.closeSync(fd); // closing the descriptor releases the flock
  }
}
