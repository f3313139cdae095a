// The undo journal: /run/vmhook/<uuid>.json, one per domain that holds
// anything. Every change is recorded here *before* it is made, so release,
// `vmhook recover` and the next prepare undo what was really done, whatever
// the metadata says now and even after a crash.
import { VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import { paths } from "./paths.ts";
import { ensureStateDir, readStateFile, removeStateFile, writeStateFile } from "./state-files.ts";
import { PATTERNS } from "./validate.ts";
import type { UndoRecord } from "./records.ts";

/**
 * The journal's format, raised only when what a record means changes in a way
 * its own fields cannot show; a later version than this one is refused (a
 * downgrade while VMs run). 1: vmhook 0.1, which journals every change before
 * it is made (each hugepages pool write too), in every record shape each
 * action's check still takes.
 */
export const JOURNAL_VERSION = 1;

/** pending: journaled, its change may or may not have happened; applied: done; undo-failed: its undo failed (kept for vmhook recover). Undone entries leave the journal. */
const ENTRY_STATES = ["pending", "applied", "undo-failed"] as const;
export type EntryState = (typeof ENTRY_STATES)[number];

export interface JournalEntry {
  /** Plugin id: a built-in name ("hugepages") or "plugin:NAME" for a custom one. */
  plugin: string;
  /** The event whose step made this change. */
  event: string;
  description: string;
  undo: UndoRecord;
  state: EntryState;
  at: string;
  error?: string;
}

/**
 * preparing: the prepare hook at work; starting: prepared, and libvirt has not
 * said "started" yet (it launches QEMU, and writes its pid file, only after
 * the prepare and start hooks); running: started (or reconnected);
 * releasing, rolling-back: being undone, a release, or a prepare that failed
 * (or was killed); release-failed, rollback-failed: an undo of either left changes.
 */
const PHASES = ["preparing", "starting", "running", "releasing", "rolling-back", "release-failed", "rollback-failed"] as const;
export type JournalPhase = (typeof PHASES)[number];

/** Why a journal with a version, phase or entry state this vmhook does not know is refused: what it means is known only to the later vmhook. */
const LATER = ": a later vmhook wrote it, and that one undoes it: install it again";

export interface Journal {
  /** The format its records were written in (JOURNAL_VERSION). */
  version: number;
  domain: { name: string; uuid: string };
  phase: JournalPhase;
  /** The hook process that last wrote it. */
  pid: number;
  /**
   * libvirt's daemon that ran the prepare hook (its command, and PID:STARTTIME
   * from lib/processes.ts), when it was found. A daemon started again does not
   * resume a start, so a journal still "starting" once it is gone is left over.
   */
  starter?: { command: string; instance: string };
  /**
   * The domain's QEMU, "PID:STARTTIME", noted from libvirt's pid file at
   * started (and reconnect): while it lives the journal is that guest's
   * (lib/leftover.ts), and no other process with its -uuid counts.
   */
  qemu?: string;
  /**
   * The user the domain's own <seclabel model='dac'> runs its QEMU as, as
   * the XML prepare was given writes it (a name, or +UID); null when it sets
   * none. Until a QEMU is noted, processes of this user count too. Absent
   * in a journal of a vmhook that did not keep it: whom that domain's QEMU
   * runs as cannot be told, so every process with its -uuid counts.
   */
  dacUser?: string | null;
  createdAt: string;
  updatedAt: string;
  entries: JournalEntry[];
}

export function newJournal(host: Host, { name, uuid, dacUser }: { name: string; uuid: string; dacUser?: string }): Journal {
  const now = new Date(host.wallClockMs()).toISOString();
  return { version: JOURNAL_VERSION, domain: { name, uuid }, phase: "preparing", pid: process.pid, dacUser: dacUser ?? null, createdAt: now, updatedAt: now, entries: [] };
}

export function readJournal(host: Host, uuid: string): Journal | undefined {
  const file = paths.journal(uuid);
  // Only a missing journal means "holds nothing"; any other failure must not
  // pass for that (a prepare would write over it, status would hide it).
  const text = readStateFile(host, file, "journal");
  if (text === undefined) return undefined;
  try {
    const journal = JSON.parse(text) as Journal;
    const { version } = journal;
    if (version !== JOURNAL_VERSION || !Array.isArray(journal.entries)) {
      const later = Number.isSafeInteger(version) && version > JOURNAL_VERSION ? LATER : "";
      throw new Error(`unsupported version ${JSON.stringify(version)}; this vmhook reads version ${JOURNAL_VERSION}${later}`);
    }
    // Its writes and its removal go to the file its domain names: one copied or edited under another name would leave this one behind, undone again.
    const domain = journal.domain as Partial<Journal["domain"]> | undefined;
    if (typeof domain?.name !== "string" || typeof domain.uuid !== "string") throw new Error("it names no domain");
    if (domain.uuid !== uuid) throw new Error(`it names domain ${domain.name} (${domain.uuid}), not ${uuid}`);
    const { dacUser } = journal as { dacUser?: unknown };
    if (dacUser !== undefined && dacUser !== null && typeof dacUser !== "string") throw new Error(`its dacUser is ${JSON.stringify(dacUser)}, not a user's name`);
    // A phase or an entry state a later vmhook added (its version unchanged: the field shows it) means what only that one knows.
    if (!PHASES.includes(journal.phase)) throw new Error(`phase ${JSON.stringify(journal.phase)} is not one this vmhook knows${LATER}`);
    for (const [index, entry] of journal.entries.entries()) {
      // vmhook 0.1 wrote "failed" for an undo that failed.
      if ((entry.state as string) === "failed") entry.state = "undo-failed";
      if (typeof entry.state !== "string") throw new Error(`entry ${index + 1} has no state`);
      if (!ENTRY_STATES.includes(entry.state)) throw new Error(`entry ${index + 1} has state ${JSON.stringify(entry.state)}, which this vmhook does not know${LATER}`);
    }
    return journal;
  } catch (error) {
    throw new VmhookError(`journal ${file} cannot be read (${(error as Error).message}); inspect it, then remove it by hand`);
  }
}

export function writeJournal(host: Host, journal: Journal): void {
  ensureStateDir(host);
  journal.updatedAt = new Date(host.wallClockMs()).toISOString();
  journal.pid = process.pid;
  writeStateFile(host, paths.journal(journal.domain.uuid), `${JSON.stringify(journal, null, 2)}\n`);
}

export function removeJournal(host: Host, uuid: string): void {
  removeStateFile(host, paths.journal(uuid));
}

/** Every journal on the host, for shared resources and `vmhook status`. Unreadable ones are reported, not hidden. */
export function listJournals(host: Host): { journals: Journal[]; broken: { file: string; error: string }[] } {
  const journals: Journal[] = [];
  const broken: { file: string; error: string }[] = [];
  for (const name of host.list(paths.stateDir)) {
    const uuid = name.replace(/\.json$/, "");
    if (!name.endsWith(".json") || !PATTERNS.uuid.test(uuid)) continue;
    try {
      const journal = readJournal(host, uuid);
      if (journal) journals.push(journal);
    } catch (error) {
      broken.push({ file: paths.journal(uuid), error: (error as Error).message });
    }
  }
  return { journals, broken };
}

/** Every journal on the host, or why not: what the other VMs hold must not be computed from some of them. */
export function completeJournals(host: Host): Journal[] {
  const { journals, broken } = listJournals(host);
  if (broken.length > 0) {
    throw new VmhookError(`${broken[0]!.error}; vmhook cannot tell what the other VMs hold, so it changes no shared resource (vmhook status lists the journals)`);
  }
  return journals;
}

/**
 * Every record of `plugin` in other domains' journals, each through `check`
 * (its action's check): what a shared resource is computed from must not
 * skip, or misread, one VM's record. One that fails throws, naming its journal.
 */
export function othersRecords<Record>(journals: Journal[], self: string, plugin: string, check: (record: UndoRecord) => Record): { domain: Journal["domain"]; record: Record }[] {
  return journals
    .filter((journal) => journal.domain.uuid !== self)
    .flatMap((journal) =>
      journal.entries
        .filter((entry) => entry.plugin === plugin)
        .map((entry) => {
          try {
            return { domain: journal.domain, record: check(entry.undo) };
          } catch (error) {
            const file = paths.journal(journal.domain.uuid);
            throw new VmhookError(`${plugin}: cannot tell what VM ${journal.domain.name} holds: its journal ${file} has a record vmhook cannot read (${(error as Error).message}); vmhook changes nothing shared until it is fixed: see vmhook status, then restore what the record names by hand and remove the record or the journal`);
          }
        }),
    );
}

/**
 * Host-wide state files of shared resources (/run/vmhook/shared/NAME.json).
 * Missing means "nothing saved"; a file that cannot be read or parsed, or
 * whose content `check` refuses, throws: what it held (e.g. the host's
 * original CPU set) must not be guessed.
 */
export const sharedState = {
  read<T>(host: Host, name: string, check: (value: unknown) => T): T | undefined {
    const file = paths.sharedState(name);
    const text = readStateFile(host, file, "shared state");
    if (text === undefined) return undefined;
    try {
      return check(JSON.parse(text));
    } catch (error) {
      throw new VmhookError(`shared state ${file} cannot be read (${(error as Error).message}); it holds the host's values from before the first VM: restore them by hand, then remove it`);
    }
  },
  write(host: Host, name: string, value: unknown): void {
    ensureStateDir(host);
    ensureStateDir(host, `${paths.stateDir}/shared`);
    writeStateFile(host, paths.sharedState(name), `${JSON.stringify(value, null, 2)}\n`);
  },
  remove(host: Host, name: string): void {
    removeStateFile(host, paths.sharedState(name));
  },
};
