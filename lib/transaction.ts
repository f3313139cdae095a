// Transactions in systemd's sense: the plugins' steps for one event are
// applied in order, each journaled with its undo *before* it acts; when one
// fails, what was done is undone in reverse and the host is as it was.
import type { PluginInstance } from "./config.ts";
import { Deadline, waitFor } from "./deadline.ts";
import type { Domain } from "./domain.ts";
import { describeError, VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import { listJournals, removeJournal, sharedState, writeJournal, type Journal, type JournalEntry } from "./journal.ts";
import { withHostLock, type HeldLock } from "./lock.ts";
import type { Logger } from "./log.ts";
import type { BaseContext, HookEvent, Plugin, PluginContext, StepHandle, UndoRecord } from "./plugin.ts";
import type { HostSettings } from "./settings.ts";
import { loadPlugin } from "../plugins/index.ts";

export interface RunEnvironment {
  host: Host;
  log: Logger;
  settings: HostSettings;
  /** `vmhook plan`: steps are collected here instead of being run. */
  dryRun?: { steps: PlannedStep[] };
}

export interface PlannedStep {
  plugin: string;
  event: HookEvent;
  description: string;
  undo: UndoRecord;
  /** Why this step cannot succeed on this host (prepare would refuse before changing anything). */
  refused?: string;
}

/** The host lock a shared plugin's handler or undo runs under, while it does. */
type LockSlot = { held?: HeldLock };

function baseContext(env: RunEnvironment, pluginId: string, event: HookEvent, domain: { name: string; uuid: string }, deadline: Deadline, lock: LockSlot = {}): BaseContext {
  const { host, log } = env;
  const sharedName = pluginId.replace(/[^a-z0-9._-]/g, "_");
  return {
    host,
    domain,
    event,
    log,
    dryRun: env.dryRun !== undefined,
    deadline,
    settings: env.settings.plugins[pluginId] ?? {},
    waitFor: (what, ready, options) => waitFor(host, deadline, what, ready, options),
    outsideHostLock: (work) => (lock.held ? lock.held.released(work) : work()),
    run(command, args, options = {}) {
      deadline.check(`starting ${command}`);
      const result = host.exec(command, args, { timeoutMs: deadline.clamp(options.timeoutMs ?? 30_000), input: options.input });
      if (!options.allowFailure) {
        const cmdline = [command, ...args].join(" ");
        if (result.error) throw new VmhookError(`could not run ${cmdline}: ${result.error}`);
        if (result.timedOut) throw new VmhookError(`${cmdline} did not finish in time and was killed`);
        if (result.status !== 0) {
          const why = (result.stderr.trim() || result.stdout.trim()).split("\n")[0] || `exit status ${result.status ?? result.signal}`;
          throw new VmhookError(`${cmdline} failed: ${why}`);
        }
      }
      return result;
    },
    journals: () => listJournals(host).journals,
    shared: {
      read: <T>() => sharedState.read<T>(host, sharedName),
      write: (value: unknown) => sharedState.write(host, sharedName, value),
      remove: () => sharedState.remove(host, sharedName),
    },
  };
}

async function underLockIf<T>(plugin: Plugin<unknown>, env: RunEnvironment, deadline: Deadline, lock: LockSlot, work: () => Promise<T>): Promise<T> {
  // A dry run changes nothing, so it need not wait for a VM that is starting.
  if (!plugin.shared || env.dryRun) return work();
  return withHostLock(env.host, deadline, async (held) => {
    lock.held = held;
    try {
      return await work();
    } finally {
      lock.held = undefined;
    }
  });
}

/**
 * Runs one event's handler of every plugin, in order. Steps go into `journal`.
 * Throws at the first failure; the caller decides whether to roll back.
 */
export async function runHandlers(
  event: Exclude<HookEvent, "release">,
  instances: PluginInstance[],
  domain: Domain,
  journal: Journal,
  env: RunEnvironment,
  deadline: Deadline,
): Promise<void> {
  for (const instance of instances) {
    const handler = instance.plugin[event as "prepare"];
    if (!handler) continue;
    deadline.check(`starting ${instance.id}`);
    const lock: LockSlot = {};
    const ctx: PluginContext<unknown> = {
      ...baseContext(env, instance.id, event, journal.domain, deadline, lock),
      config: instance.config,
      domainXml: domain,
      records: journal.entries.filter((entry) => entry.plugin === instance.id).map((entry) => entry.undo),
      step: (description, undo, action, options) => step(env, journal, instance.id, event, description, undo, action, options?.refused),
    };
    await underLockIf(instance.plugin, env, deadline, lock, async () => handler(ctx));
  }
}

async function step(
  env: RunEnvironment,
  journal: Journal,
  pluginId: string,
  event: HookEvent,
  description: string,
  undo: UndoRecord,
  action: (handle: StepHandle) => void | Promise<void>,
  refused: string | undefined,
): Promise<void> {
  if (env.dryRun) {
    env.dryRun.steps.push({ plugin: pluginId, event, description, undo, ...(refused ? { refused } : {}) });
    return;
  }
  if (refused) throw new VmhookError(refused);
  const entry: JournalEntry = { plugin: pluginId, event, description, undo, state: "pending", at: new Date(env.host.now()).toISOString() };
  journal.entries.push(entry);
  writeJournal(env.host, journal);
  let changedNothing = false;
  const settle = () => {
    if (changedNothing) journal.entries.splice(journal.entries.indexOf(entry), 1);
    else entry.state = "applied";
    writeJournal(env.host, journal);
  };
  try {
    await action({
      update(next) {
        entry.undo = next;
        writeJournal(env.host, journal);
      },
      nothingToUndo() {
        changedNothing = true;
      },
    });
  } catch (error) {
    if (changedNothing) settle();
    env.log.error(`${pluginId}: ${description}: ${describeError(error)}`);
    throw error;
  }
  settle();
  env.log.info(`${pluginId}: ${description}: ${changedNothing ? "nothing to undo" : "done"}`);
}

export interface UndoResult {
  undone: number;
  failed: JournalEntry[];
}

/**
 * Undoes a journal's entries in reverse order, best effort: each success is
 * removed from the journal at once (so a crash here resumes where it stopped),
 * each failure is logged and kept for `vmhook recover`. The journal file is
 * deleted when nothing is left. Plugins in `loaded` (already loaded by the
 * caller) are used as they are; the others are loaded by their journal id.
 */
export async function undoJournal(journal: Journal, env: RunEnvironment, deadline: Deadline, loaded: PluginInstance[] = []): Promise<UndoResult> {
  const { host, log } = env;
  journal.phase = "releasing";
  writeJournal(host, journal);
  let undone = 0;
  for (const entry of [...journal.entries].reverse()) {
    try {
      const plugin = loaded.find((instance) => instance.id === entry.plugin)?.plugin ?? (await loadPlugin(entry.plugin, host));
      const lock: LockSlot = {};
      await underLockIf(plugin, env, deadline, lock, async () =>
        plugin.undo(entry.undo, baseContext(env, entry.plugin, "release", journal.domain, deadline, lock)),
      );
      journal.entries.splice(journal.entries.indexOf(entry), 1);
      writeJournal(host, journal);
      undone++;
      log.info(`${entry.plugin}: undo ${entry.description}: done`);
    } catch (error) {
      entry.state = "failed";
      entry.error = describeError(error);
      writeJournal(host, journal);
      log.error(`${entry.plugin}: undo ${entry.description}: ${entry.error}`);
    }
  }
  const failed = journal.entries.filter((entry) => entry.state === "failed");
  if (journal.entries.length === 0) {
    removeJournal(host, journal.domain.uuid);
  } else {
    journal.phase = "release-failed";
    writeJournal(host, journal);
  }
  return { undone, failed };
}
