// The one interface every plugin implements, built-in or custom: a name (its
// metadata element), a config parser, named event handlers and an undo.
// Modelled on Rollup's plugin objects: plain data plus named hooks that get a
// context object.
import type { Element } from "@xmldom/xmldom";
import type { Deadline, WaitOptions } from "./deadline.ts";
import type { Domain } from "./domain.ts";
import type { ExecResult, Host } from "./host.ts";
import type { Journal } from "./journal.ts";
import type { Logger } from "./log.ts";

export type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

/** What a step needs to be undone: plain JSON, kept in the journal and handed back to `undo`. */
export interface UndoRecord {
  /** The kind of change, e.g. "grow-pool"; the plugin's undo switches on it. */
  action: string;
  [key: string]: Json;
}

export type HookEvent = "prepare" | "start" | "started" | "stopped" | "release" | "migrate" | "restore" | "reconnect";

/** What every handler and every undo gets. */
export interface BaseContext {
  host: Host;
  domain: { name: string; uuid: string };
  event: HookEvent;
  log: Logger;
  /** True in `vmhook plan`: steps are listed, not run. */
  dryRun: boolean;
  deadline: Deadline;
  /**
   * Runs `work` without the host-wide lock (a shared plugin's slow wait that
   * needs no lock, such as reclaiming memory), then takes the lock again.
   * Whatever was read under the lock must be read again afterwards.
   */
  outsideHostLock<T>(work: () => T): T;
  /** Polls until ready() with a timeout bounded by the deadline; no fixed sleeps. */
  waitFor(what: string, ready: () => boolean, options?: WaitOptions): void;
  /** Runs a program with a timeout bounded by the deadline; throws with its stderr when it fails. */
  run(command: string, args: string[], options?: { timeoutMs?: number; input?: string; allowFailure?: boolean }): ExecResult;
  /** Every domain's journal (read under the host-wide lock when the plugin is `shared`). */
  journals(): Journal[];
  /** Host-wide state of a shared resource, e.g. the values the host had before the first VM changed them. */
  shared: {
    read<T>(): T | undefined;
    write(value: unknown): void;
    remove(): void;
  };
  /** Host-level settings for this plugin from /etc/vmhook/vmhook.json ("plugins": {"NAME": {...}}). */
  settings: Record<string, unknown>;
}

export interface StepHandle {
  /** Replaces the journaled undo record, e.g. with how many pages were really added. */
  update(undo: UndoRecord): void;
  /** The action turned out to change nothing: its entry leaves the journal. */
  nothingToUndo(): void;
}

export interface StepOptions {
  /**
   * Why the step cannot succeed on this host: `vmhook plan` lists it marked
   * and exits 1; a real run refuses it before it is journaled. Plugins check
   * every step first, so a real run refuses before changing anything.
   */
  refused?: string;
}

export interface PluginContext<Config> extends BaseContext {
  config: Config;
  /** The full domain model (memory, NUMA, pinning, hostdevs). */
  domainXml: Domain;
  /** This plugin's undo records from earlier events of this run (e.g. stopped sees what prepare did). */
  records: UndoRecord[];
  /**
   * One change to the host: `undo` is journaled first, then `action` runs.
   * If the action throws, the journaled undo still runs during rollback, so
   * keep it accurate with `handle.update` when only part was done.
   */
  step(description: string, undo: UndoRecord, action: (handle: StepHandle) => void | Promise<void>, options?: StepOptions): Promise<void>;
}

export type Handler<Config> = (ctx: PluginContext<Config>) => void | Promise<void>;

export interface Plugin<Config = unknown> {
  /** The metadata element it reads: <vmhook:NAME>. Custom plugins: "plugin:NAME". */
  name: string;
  /** One line for `vmhook plugins`. */
  summary: string;
  /** Element and attributes, for `vmhook plugins` (e.g. '<vmhook:hugepages size="2M|1G" node="N"/>'). */
  usage?: string;
  /** Changes host resources shared by all VMs: its handlers and undos run under the host-wide lock. */
  shared?: boolean;
  /**
   * Turns this plugin's elements (all of them, in document order) into a typed
   * config, deriving what it can from the domain. Pure: no host access. Throws
   * ConfigError naming the element, the attribute, the value and what is allowed.
   */
  parse(elements: Element[], domain: Domain): Config;
  /** Allocate and hand over: every change through ctx.step. */
  prepare?: Handler<Config>;
  start?: Handler<Config>;
  started?: Handler<Config>;
  stopped?: Handler<Config>;
  /** The daemon restarted while the VM runs: check that what the journal holds is still in place. */
  reconnect?: Handler<Config>;
  /** Undoes one record. Idempotent: it may run after a crash halfway, or twice. */
  undo(record: UndoRecord, ctx: BaseContext): void | Promise<void>;
}

/** Identity helper that gives a plugin object its types. */
export function definePlugin<Config>(plugin: Plugin<Config>): Plugin<Config> {
  return plugin;
}
