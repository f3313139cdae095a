// The one interface every plugin implements, built-in or custom: a name (its
// metadata element), a config parser, typed actions and pure planners.
// Modelled on Rollup's plugin objects (plain data plus named hooks that get a
// context) and on systemd's transactions (the whole plan is built, reading
// the host only, before any job runs; jobs are of a few fixed types).
//
//   parse(elements, domain)   metadata → typed config, no host access
//   plan.prepare(ctx)         reads the host, changes nothing, returns steps
//   actions[kind].apply       one step's change; the runner journals it first
//   actions[kind].check       validates a journaled record before any undo
//   actions[kind].undo        gives one change back; idempotent
//   actions[kind].unchangedAfterFailure
//                             optional: after apply threw, whether the host
//                             reads as before (then nothing is undone)
//
// `vmhook plan` prints exactly what plan.* returns, and prepare runs exactly
// that: no plugin branches on a dry run.
import type { XmlElement } from "./xml.ts";
import type { PolicyRule } from "./authorize.ts";
import type { Claims } from "./claims.ts";
import type { Deadline, WaitOptions } from "./deadline.ts";
import type { Domain } from "./domain.ts";
import type { ExecResult, Host } from "./host.ts";
import type { Journal } from "./journal.ts";
import type { Finding } from "./diagnostics/findings.ts";
import type { Logger } from "./log.ts";

export type { Json, UndoRecord } from "./records.ts";
import type { UndoRecord } from "./records.ts";

export type HookEvent = "prepare" | "start" | "started" | "stopped" | "release" | "migrate" | "restore" | "reconnect";

export interface RunOptions {
  timeoutMs?: number;
  input?: string;
  allowFailure?: boolean;
  /**
   * runAsync: called with the program's pid before it runs (Host.execAsync's
   * `started`): journal it there ("PID:STARTTIME", processInstance), so that
   * the undo after a hook killed meanwhile ends it first (endLeftRunning).
   */
  started?: (pid: number) => void;
}

/** What every handler and every undo gets. */
export interface BaseContext {
  host: Host;
  domain: { name: string; uuid: string };
  event: HookEvent;
  log: Logger;
  deadline: Deadline;
  /** Polls until ready() with a timeout bounded by the deadline; no fixed sleeps. */
  waitFor(what: string, ready: () => boolean, options?: WaitOptions): void;
  /** Runs a program with a timeout bounded by the deadline; throws with its stderr when it fails. */
  run(command: string, args: string[], options?: RunOptions): ExecResult;
  /** run, without blocking the process while the program runs: for a step in the background (Step.background). */
  runAsync(command: string, args: string[], options?: RunOptions): Promise<ExecResult>;
  /**
   * Every domain's journal (read under the host-wide lock when the plugin is
   * `shared`). Throws when any journal cannot be read: what a shared
   * resource is computed from must be complete.
   */
  journals(): Journal[];
  /** The host-wide claims ledger, as this domain sees it (lib/claims.ts). `shared` plugins only: it is read under the host lock. */
  claims: Claims;
  /** Host-wide state of a shared resource, e.g. the values the host had before the first VM changed them. `check` validates what the file holds, throwing what is wrong. */
  shared: {
    read<T>(check: (value: unknown) => T): T | undefined;
    write(value: unknown): void;
    remove(): void;
  };
  /** Host-level settings for this plugin from /etc/vmhook/vmhook.json ("plugins": {"NAME": {...}}). */
  settings: Record<string, unknown>;
}

/** The events a plugin plans steps for. */
export type PlannedEvent = "prepare" | "start" | "started" | "stopped" | "reconnect";

/** What a planner gets: the config, the domain, and this plugin's records from earlier events. */
export interface PlanContext<Config> extends BaseContext {
  config: Config;
  /** The full domain model (memory, NUMA, pinning, hostdevs). */
  domainXml: Domain;
  /** This plugin's journal records from earlier events of this run (e.g. stopped sees what prepare did). */
  records: UndoRecord[];
}

/** One change the runner journals, then applies with actions[action].apply. */
export interface Step<Record extends UndoRecord = UndoRecord> {
  /** The forward action, e.g. "grow-pool", "unload-module"; also record.action. */
  action: Record["action"];
  /** What undo needs; journaled before apply runs. */
  record: Record;
  /** One line for the log, `vmhook plan` and `vmhook status`. */
  description: string;
  /**
   * Why this step cannot succeed on this host, found while planning (e.g. the
   * pages do not fit above the free-memory floor): `vmhook plan` marks it
   * REFUSED and exits 1, and the runner refuses the event before its first apply.
   */
  refused?: Refusal;
  /**
   * The runner starts the step's apply and goes on with the next steps while
   * it runs (vfio-pci loads while the GPU lets go of its driver). A later
   * step that needs it done awaits ctx.afterBackgroundSteps(); the runner
   * waits for it before a step of the same action, a step of another
   * interface, the end of the event and any undo, and applies no further
   * step once it failed.
   */
  background?: boolean;
  /**
   * What `vmhook plan` adds to the description, and nothing else: computed
   * only there, as it may read what a run of the step does not need (vfio:
   * the host's ids= for vfio-pci, from modprobe.d and the kernel command line).
   */
  planNote?: () => string;
}

/** Why a planned step cannot succeed on this host (the error's first line), and what to do about it. */
export interface Refusal {
  /** Starts with the plugin's id ("hugepages: …") like every error a plugin throws: it is shown as is (the runner puts the id in front when it is missing). */
  reason: string;
  remedies: string[];
  /** Names the refusal for the plugin's doctor check that reports it too (Finding.refusal): `vmhook plan` shows it once, on this step. */
  key?: string;
}

/** What apply gets on top of the planner's context. */
export interface ApplyContext<Config> extends PlanContext<Config> {
  /** Replaces the journaled record at once, e.g. with how many pages were really added so far. */
  update(record: UndoRecord): void;
  /**
   * The change turned out to be nothing, as apply knows by itself (a refusal
   * before the first change, a program that exited non-zero): the entry leaves
   * the journal, also when apply throws next. What only a read-back of the
   * host tells belongs in Action.unchangedAfterFailure.
   */
  nothingToUndo(): void;
  /**
   * Runs `work` without the host-wide lock the runner holds around a shared
   * plugin's event (a slow wait that needs no lock, such as reclaiming
   * memory), then takes the lock again. Whatever was read under the lock must
   * be read again afterwards (the runner plans the plugins after this one
   * again). Without the lock held, it just runs `work`.
   */
  outsideHostLock<T>(work: () => T): T;
  /** Waits until the background steps (Step.background) started before this step have finished; throws the first one's error. */
  afterBackgroundSteps(): Promise<void>;
}

/** What an undo gets on top of the base context. */
export interface UndoContext extends BaseContext {
  /**
   * Replaces the journaled record at once: an undo that gives back in parts,
   * or whose change may be cut off (a pool write), records what it is about
   * to do before doing it, so the next undo after a crash never does it twice.
   */
  update(record: UndoRecord): void;
}

export interface Action<Record extends UndoRecord, Config> {
  /**
   * Validates a journaled record and returns it typed, or throws naming what
   * is wrong. Runs before every undo: journals are root-owned, but their
   * values still become paths, arguments and unit names.
   */
  check(record: UndoRecord): Record;
  /** Makes the change, waiting inside for what it needs (a device bound, a unit stopped). May return the record updated. */
  apply(record: Record, ctx: ApplyContext<Config>): void | Record | Promise<void | Record>;
  /**
   * Asked by the runner once apply has thrown (and not called nothingToUndo),
   * with the record as last journaled: true when the host reads as it did
   * before the step (a refused write whose file reads as before, a device
   * still bound), so the entry leaves the journal and the rollback neither
   * undoes nor counts it. Reads only. Unknown means changed: an answer that
   * throws or is not `true` keeps the entry, and the runner never asks while
   * something of the step may still act (a helper blocked in the kernel,
   * StuckWriteError; an apply abandoned at its time limit). Absent: every
   * failed apply is undone.
   */
  unchangedAfterFailure?(record: Record, ctx: BaseContext): boolean;
  /** Gives the change back. Idempotent: it may run after a crash halfway, or twice. */
  undo(record: Record, ctx: UndoContext): void | Promise<void>;
}

/** What `vmhook doctor` asks a plugin about one domain: its elements, as written (they may not parse). */
export interface CheckContext {
  host: Host;
  domain: Domain;
  elements: XmlElement[];
}

export type Planner<Config> = (ctx: PlanContext<Config>) => Step[] | Promise<Step[]>;

/** Element: what parse gets; custom plugins get xmldom's (types/vmhook-plugin.d.ts). */
export interface Plugin<Config = unknown, Element extends XmlElement = XmlElement> {
  /** The metadata element it reads: <vmhook:NAME>. Custom plugins: "plugin:NAME". */
  name: string;
  /** One line for `vmhook plugins`. */
  summary: string;
  /** Element and attributes, for `vmhook plugins` (e.g. '<vmhook:hugepages size="2M|1G" node="N"/>'). */
  usage?: string;
  /** Changes host resources shared by all VMs: its planning, applies and undos run under the host-wide lock. */
  shared?: boolean;
  /**
   * Turns this plugin's elements (all of them, in document order) into a typed
   * config, deriving what it can from the domain. Pure: no host access. Throws
   * ConfigError naming the element, the attribute, the value and what is allowed.
   */
  parse(elements: Element[], domain: Domain): Config;
  /** Per event: read the host, change nothing, return the steps in order. */
  plan: Partial<Record<PlannedEvent, Planner<Config>>>;
  /** Every kind of step this plugin makes, by record.action. */
  actions: Record<string, Action<any, Config>>;
  /** `vmhook doctor`: whether this host has what the domain's elements ask for. Reads only; a config error is reported by doctor itself. */
  check?(ctx: CheckContext): Finding[];
  /**
   * vmhook recover, for a claim in the ledger (lib/claims.ts) whose holder's
   * journal is gone and which does not run: the step whose undo, run as that
   * holder, gives its claim on `resource` back as its release would have.
   * Undefined: not this plugin's claim. Throws for a resource that names what
   * no record of it may (the ledger's keys become arguments too).
   */
  orphanedClaim?(resource: string): Step | undefined;
  /**
   * vmhook recover: the steps whose undo gives back this plugin's shared state
   * (BaseContext.shared) that no claim in any journal needs any more (the
   * journal that held it removed by hand, or lost in a crash). Planned under
   * the host lock; throws when what it is computed from cannot be read.
   */
  unheldShared?(ctx: BaseContext): Step[];
}

/** Identity helper that gives a plugin object its types. */
export function definePlugin<Config>(plugin: Plugin<Config>): Plugin<Config> {
  return plugin;
}

/** Identity helper for one action: `check` types the record for apply and undo. */
export function defineAction<Record extends UndoRecord, Config = unknown>(action: Action<Record, Config>): Action<Record, Config> {
  return action;
}

/** The plugins a run can load: handed to the runner (lib never imports plugins/). */
export interface PluginRegistry {
  builtinNames(): string[];
  /** A plugin by its journal id: a built-in name or "plugin:NAME". */
  load(id: string, host: Host): Promise<AnyPlugin>;
  /** Per plugin id, what its config may ask for under the host policy (lib/authorize.ts). */
  policyRules: Readonly<Record<string, PolicyRule>>;
}

// ---- custom JS plugins of the first interface (vmhook 0.1) --------------------
// Still run, through one adapter in lib/transaction.ts: handlers call
// ctx.step(description, undoRecord, action) and one undo(record) takes every
// record. `vmhook plan` can only list their steps by calling the handlers
// with dryRun set. Built-in plugins never use this form.

export interface StepHandle {
  update(undo: UndoRecord): void;
  nothingToUndo(): void;
}

export interface LegacyContext<Config> extends PlanContext<Config> {
  /** True in `vmhook plan`: steps are listed, not run. */
  dryRun: boolean;
  /** Journals `undo` (pending), then runs `action`: every change belongs inside it, each part named with handle.update before it is made, or a kill in between leaves it in no record. */
  step(description: string, undo: UndoRecord, action: (handle: StepHandle) => void | Promise<void>): Promise<void>;
}

export type LegacyHandler<Config> = (ctx: LegacyContext<Config>) => void | Promise<void>;

export interface LegacyPlugin<Config = unknown, Element extends XmlElement = XmlElement> {
  name: string;
  summary: string;
  usage?: string;
  shared?: boolean;
  parse(elements: Element[], domain: Domain): Config;
  prepare?: LegacyHandler<Config>;
  start?: LegacyHandler<Config>;
  started?: LegacyHandler<Config>;
  stopped?: LegacyHandler<Config>;
  reconnect?: LegacyHandler<Config>;
  undo(record: UndoRecord, ctx: UndoContext): void | Promise<void>;
}

export type AnyPlugin = Plugin<any> | LegacyPlugin<any>;

export const isLegacyPlugin = (plugin: AnyPlugin): plugin is LegacyPlugin<any> => !("actions" in plugin);
