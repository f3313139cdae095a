// Locks, as flock(2) through libc, so the kernel releases them when a hook is
// killed: a crashed hook never leaves the next one waiting.
//   host lock    /run/vmhook/host.lock   resources all VMs share (the claims ledger)
//   domain lock  /run/vmhook/UUID.lock   one domain's journal: every hook run and recover
// Lock order: domain lock first, then the host lock; never the other way.
import type { Deadline } from "./deadline.ts";
import { VmhookError } from "./errors.ts";
import type { Host, LockFile } from "./host.ts";
import { paths } from "./paths.ts";
import { ensureStateDir, unchangeableState } from "./state-files.ts";

/** Opens (never through a symlink) and locks `file`; waits until `deadline`, or not at all without one. Undefined: held by another. */
async function acquire(host: Host, file: string, deadline: Deadline | undefined): Promise<LockFile | undefined> {
  ensureStateDir(host);
  let lock: LockFile;
  try {
    lock = await host.openLock(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw code === "ELOOP" ? new VmhookError(`lock file ${file} is a symlink; remove it (rm ${file})`) : unchangeableState(error, "open lock file", file);
  }
  let interval = 5;
  while (!lock.tryLock()) {
    if (!deadline || deadline.remainingMs() <= 0) {
      lock.close();
      return undefined;
    }
    host.sleep(Math.min(interval, deadline.remainingMs()));
    interval = Math.min(interval * 2, 100);
  }
  // The holder before us may have removed the file (a domain lock goes with
  // its journal): a lock on a removed file guards nothing, so start over.
  if (!lock.stillAtPath()) {
    lock.close();
    return acquire(host, file, deadline);
  }
  return lock;
}

async function withLock<T>(host: Host, file: string, deadline: Deadline, busy: string, work: () => Promise<T>, removeAfter = () => false): Promise<T> {
  const lock = await acquire(host, file, deadline);
  if (lock === undefined) throw new VmhookError(busy);
  return release(host, file, lock, work, removeAfter);
}

/** Runs `work` holding `lock`; removes the lock file first when `removeAfter` says so (still holding it). */
async function release<T>(host: Host, file: string, lock: LockFile, work: () => Promise<T>, removeAfter: () => boolean): Promise<T> {
  try {
    return await work();
  } finally {
    try {
      if (removeAfter()) host.remove(file);
    } finally {
      lock.close(); // closing the descriptor releases the flock
    }
  }
}

/** A domain's lock file goes when its journal has gone: /run/vmhook keeps nothing for a domain that holds nothing. */
const holdsNothing = (host: Host, uuid: string) => () => !host.exists(paths.journal(uuid));

/** The host lock while it is held: work that needs no lock (a slow reclaim) can let go of it for a while. */
export interface HeldLock {
  /** Releases the lock, runs `work`, and takes the lock again (waiting no longer than the deadline). */
  released<T>(work: () => T): T;
  /** How often it was let go so far: what was read under it before may have changed since. */
  readonly timesLetGo: number;
}

const hostLockBusy = `another vmhook held the host-wide lock ${paths.hostLock} until the deadline; see vmhook status`;

/** Takes the lock on its open file again, waiting until `deadline`. */
function relock(host: Host, lock: LockFile, deadline: Deadline): void {
  let interval = 5;
  while (!lock.tryLock()) {
    if (deadline.remainingMs() <= 0) throw new VmhookError(hostLockBusy);
    host.sleep(Math.min(interval, deadline.remainingMs()));
    interval = Math.min(interval * 2, 100);
  }
}

/** Runs `work` while holding the host-wide lock. Not re-entrant: the runner takes it, plugins never do (they may step outside it: HeldLock). */
export async function withHostLock<T>(host: Host, deadline: Deadline, work: (held: HeldLock) => Promise<T>): Promise<T> {
  const lock = await acquire(host, paths.hostLock, deadline);
  if (lock === undefined) throw new VmhookError(hostLockBusy);
  let timesLetGo = 0;
  const held: HeldLock = {
    get timesLetGo() {
      return timesLetGo;
    },
    released(inner) {
      timesLetGo++;
      lock.unlock();
      try {
        return inner();
      } finally {
        relock(host, lock, deadline);
      }
    },
  };
  return release(host, paths.hostLock, lock, () => work(held), () => false);
}

/** Runs `work` while holding the domain's lock: no other hook run or recover of this domain runs meanwhile. */
export function withDomainLock<T>(host: Host, uuid: string, deadline: Deadline, work: () => Promise<T>): Promise<T> {
  const busy = `another vmhook run of this domain (a hook or vmhook recover) held ${paths.domainLock(uuid)} until the deadline; see vmhook status`;
  return withLock(host, paths.domainLock(uuid), deadline, busy, work, holdsNothing(host, uuid));
}

/** `work` under the domain's lock if nobody holds it now; `busy` when a hook of the domain is at work. */
export async function ifDomainIdle<T>(host: Host, uuid: string, work: () => Promise<T>): Promise<{ busy: true } | { busy: false; value: T }> {
  const lock = await acquire(host, paths.domainLock(uuid), undefined);
  if (lock === undefined) return { busy: true };
  return { busy: false, value: await release(host, paths.domainLock(uuid), lock, work, holdsNothing(host, uuid)) };
}

/** Whether a hook run or recover of the domain holds its lock right now (for vmhook status). */
export async function domainBusy(host: Host, uuid: string): Promise<boolean> {
  return (await ifDomainIdle(host, uuid, async () => undefined)).busy;
}
