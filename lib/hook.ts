// Hook mode: what vmhook does for one libvirt event, given the domain XML on
// stdin. hooks/qemu.ts decides which of these runs for which event.
import { loadDomainPlugins, loadReconnectPlugins, type PluginInstance } from "./config.ts";
import { Deadline } from "./deadline.ts";
import { definedUuid, uuidFromXml } from "./definitions.ts";
import { parseDomain, type Domain } from "./domain.ts";
import { ConfigError, CustomConfigError, describeError, FixThenRecover, StrayError, VmhookError } from "./errors.ts";
import { RootedHost, type Host } from "./host.ts";
import { listJournals, newJournal, readJournal, writeJournal, type Journal } from "./journal.ts";
import { createLogger, logProblem, oneLine, openLog, type Logger } from "./log.ts";
import { isLegacyPlugin, type HookEvent, type PlannedEvent, type PluginRegistry } from "./plugin.ts";
import { registry as builtinRegistry } from "../plugins/index.ts";
import { DEFAULT_SETTINGS, loadSettings, type HostSettings } from "./settings.ts";
import { runPlugins, staleJournalNote, undoJournal, undoneText, type RunEnvironment, type UndoResult } from "./transaction.ts";
import { paths } from "./paths.ts";
import { nameArgument, recoverCommandLine } from "./metadata-text.ts";
import { ancestorRunning, LIBVIRT_DAEMONS, pidFileQemu } from "./processes.ts";
import { keepWhileQemuRuns, leftoverBeforePrepare } from "./leftover.ts";
import { libc } from "./libc.ts";
import { withDomainLock } from "./lock.ts";
import { removeStaleTemps } from "./state-files.ts";
import { startWatchdog, type Watchdog } from "./watchdog.ts";

export interface HookInvocation {
  /** Domain name, operation, sub-operation and extra argument, as libvirt passes them. */
  args: string[];
  xml: string;
  root: string;
  /** Tests pass a simulated host; otherwise the host is the root directory. */
  host?: Host;
  /** Where plugins come from; the built-in registry (and plugins.d) unless a test passes its own. */
  registry?: PluginRegistry;
  /**
   * This process is the hook libvirt started (not an in-process test): guard
   * stdout and kill the process when it outlives both deadlines.
   */
  ownProcess?: boolean;
  /** The process that ran the hook (libvirt's daemon); the parent unless a test passes another. */
  parentPid?: number;
}

export class HookRun {
  readonly host: Host;
  readonly log: Logger;
  readonly name: string;
  /** Set once the hard deadline runs (the hook's own process only). */
  watchdog?: Watchdog;
  /** The log, opened once by the hook's own process; open until it exits. */
  readonly logFd?: number;
  /** Why this run's lines (all or some) are not in the log, for stderr at the end. */
  logProblem?: string;
  private settingsCache?: HostSettings;
  private domainCache?: Domain;
  private workDeadlineCache?: Deadline;

  constructor(readonly invocation: HookInvocation) {
    this.host = invocation.host ?? new RootedHost(invocation.root);
    // For messages only: whoever defined the domain chose it, control characters and all.
    this.name = oneLine(invocation.args[0] ?? "?");
    // The hook's own process opens the log once, for every line and for the watchdog's last words.
    const noteLogProblem = (error: unknown) => (this.logProblem ??= logProblem(error));
    this.logFd = invocation.ownProcess ? openLogOnce(this.host, noteLogProblem) : undefined;
    this.log = createLogger(this.host, {
      domain: this.name,
      event: invocation.args.slice(1, 3).join(" "),
      echo: "buffer",
      file: this.logFd ?? !invocation.ownProcess,
      onEntry: (level, line) => this.watchdog?.note(level, line),
      onFileBroken: noteLogProblem,
    });
  }

  get settings(): HostSettings {
    return (this.settingsCache ??= this.loadSettings());
  }

  /**
   * The host settings; at release, settings that cannot be read (edited while
   * the VM ran, written for a later vmhook) give way to the defaults: refusing
   * would keep what the VM took (its GPU, its pages) from the host, and an
   * undo that needs a setting (displayManagerCommand) fails alone, kept for
   * vmhook recover. Every other event refuses.
   */
  private loadSettings(): HostSettings {
    try {
      return loadSettings(this.host);
    } catch (error) {
      if (this.invocation.args[1] !== "release") throw error;
      this.log.error(`${describeError(error)}; released with the default settings; the next start refuses until it is fixed`);
      return DEFAULT_SETTINGS;
    }
  }

  get domain(): Domain {
    return (this.domainCache ??= parseDomain(this.invocation.xml, "the domain XML on stdin"));
  }

  private env(): RunEnvironment {
    return { host: this.host, log: this.log, settings: this.settings, registry: this.invocation.registry ?? builtinRegistry };
  }

  /**
   * The work's deadline, one per run from its first use, the wait for the
   * domain's lock: a run that waited long has that much less to work, so
   * its rollback still gets the whole undo budget before the watchdog ends
   * the process (its budget counts both from the start).
   */
  workDeadline(): Deadline {
    return (this.workDeadlineCache ??= new Deadline(this.host, this.settings.deadlineSeconds * 1000, "deadlineSeconds"));
  }

  /** A fresh undo budget: a rollback or a release gets all of it. */
  private undoDeadline(): Deadline {
    return new Deadline(this.host, this.settings.undoDeadlineSeconds * 1000, "undoDeadlineSeconds");
  }

  /** `admitted`: an event after this run's prepare, which the policy allowed (lib/config.ts); a refusal now would fail or kill that run. */
  private async plugins(admitted = false): Promise<PluginInstance[]> {
    return loadDomainPlugins(this.domain, this.host, this.invocation.registry ?? builtinRegistry, () => this.settings, admitted);
  }

  /** prepare: undo anything a crashed earlier run left, then apply every plugin's steps as one transaction. */
  async prepare(): Promise<void> {
    // Leftovers are undone first, so the config is judged on the host as it
    // was before that run, not as it left it (the console's IRQ moved); and
    // within the work deadline: the watchdog allows one work and one undo
    // budget, and the rollback below needs the undo one.
    const deadline = this.workDeadline();
    await this.undoLeftovers(deadline);
    const instances = await this.plugins();
    if (instances.length === 0) return;
    const journal = newJournal(this.host, this.domain);
    const starter = this.starter();
    if (starter) journal.starter = starter;
    writeJournal(this.host, journal);
    try {
      await runPlugins("prepare", instances, this.domain, journal, this.env(), deadline, "starting");
      deadline.throwIfAbandoned();
    } catch (error) {
      const steps = journal.entries.length;
      throw withRollbackNote(error, steps, await undoJournal(journal, this.env(), this.undoDeadline()), this.domain.name);
    }
  }

  /** start, started, stopped: the plugins' optional steps; they join the same journal. */
  async handlers(event: "start" | "started" | "stopped"): Promise<void> {
    if (event === "started") this.markRunning();
    const instances = await this.plugins(true).catch((error: unknown) => {
      // libvirt runs stopped after a refused prepare too: its config error was reported there once already.
      const uuid = uuidFromXml(this.invocation.xml);
      if (event === "stopped" && error instanceof VmhookError && !(uuid && readJournal(this.host, uuid))) return [];
      throw error;
    });
    if (!instances.some((instance) => handles(instance, event))) return;
    const journal = readJournal(this.host, this.domain.uuid) ?? newJournal(this.host, this.domain);
    await runPlugins(event, instances, this.domain, journal, this.env(), this.workDeadline());
  }

  /** release: undo what the journal holds (not what the metadata says now). Never fails the caller. */
  async release(): Promise<void> {
    const uuid = uuidFromXml(this.invocation.xml);
    const journal = uuid ? readJournal(this.host, uuid) : undefined;
    if (!journal) return;
    // A journal a crash left, of a domain renamed since (libvirt renames only one shut off): named as libvirt and vmhook recover name it now, as at prepare.
    const name = this.invocation.args[0];
    if (name !== undefined && journal.domain.name !== name) journal.domain.name = name;
    keepWhileQemuRuns(this.host, journal);
    // Still "starting": QEMU failed to launch (or a later hook refused); the user saw the display go and come back, and asks why.
    if (journal.phase === "starting") {
      this.log.warn(
        `${this.name} stopped before it ran: libvirt ended its start after prepare (it never reported started), so vmhook gives back what prepare took; why the start failed is in /var/log/libvirt/qemu/${this.name}.log and in the error virsh start printed`,
      );
    }
    const result = await undoJournal(journal, this.env(), this.undoDeadline());
    const { failed, stale } = result;
    const staleLines = stale ? [staleJournalNote(stale, journal.domain.name)] : [];
    if (failed.length > 0) {
      throw new VmhookError(`release of ${journal.domain.name}: ${failed.length} change(s) could not be undone; see /var/log/vmhook.log, then run ${recoverCommandLine(journal.domain.name)}`, [
        ...failed.map((entry) => `${entry.plugin}: ${entry.description}: ${entry.error}`),
        ...staleLines,
      ]);
    }
    if (stale) throw new VmhookError(`release of ${journal.domain.name}: ${undoneText(result)}, but the journal does not say so yet`, staleLines);
    this.log.info(`released: ${undoneText(result)}`);
  }

  /**
   * migrate, restore: the incoming XML must carry a valid config; nothing is
   * changed or printed. A refusal says where that XML comes from: a fix to
   * the domain's definition on this host does not reach it.
   */
  async validate(source: "migrate" | "restore"): Promise<void> {
    try {
      await this.plugins();
    } catch (error) {
      // Only an element's refusal (a custom plugin's parse's too) is the XML's to fix; an unreadable host file is this host's.
      if (!(error instanceof ConfigError || error instanceof CustomConfigError)) throw error;
      throw new VmhookError(error.message, [...error.lines, ...whereIncomingXmlIsFixed(source, this.name, nameArgument(this.invocation.args[0] ?? "?"))]);
    }
  }

  /**
   * reconnect: the daemon restarted while the VM runs. Keep the journal; let
   * plugins check what it holds, each read on its own (one element that no
   * longer reads is logged, and the others still put back what they lost). Never fails.
   */
  async reconnect(): Promise<void> {
    const journal = this.markRunning();
    if (!journal) return;
    this.log.info(`reconnected: journal holds ${journal.entries.length} change(s), phase ${journal.phase}`);
    const held = journal.entries.map((entry) => entry.plugin);
    const { instances, problems } = await loadReconnectPlugins(this.domain, held, this.host, this.invocation.registry ?? builtinRegistry);
    for (const problem of problems) this.log.error(problem);
    await runPlugins("reconnect", instances, this.domain, journal, this.env(), this.workDeadline());
  }

  /** libvirt's daemon running this hook, for vmhook recover to tell a start it abandoned; none when it cannot be found (recover then needs --force). */
  private starter(): Journal["starter"] {
    try {
      return ancestorRunning(this.host, this.invocation.parentPid ?? process.ppid, LIBVIRT_DAEMONS);
    } catch (error) {
      this.log.warn(`cannot tell which libvirt daemon runs this hook (${describeError(error)}); if it stops before the domain starts, vmhook recover needs --force`);
      return undefined;
    }
  }

  /**
   * QEMU runs (started, or reconnected to): from now on a missing pid file
   * means it stopped (vmhook recover), and the QEMU in it is noted, the one
   * process whose life keeps the journal from release (lib/leftover.ts).
   */
  private markRunning(): Journal | undefined {
    const uuid = uuidFromXml(this.invocation.xml);
    const journal = uuid ? readJournal(this.host, uuid) : undefined;
    if (!journal) return journal;
    const qemu = this.runningQemu(journal.domain.uuid);
    if (journal.phase === "starting" || (qemu !== undefined && qemu !== journal.qemu)) {
      if (journal.phase === "starting") journal.phase = "running";
      if (qemu !== undefined) journal.qemu = qemu;
      writeJournal(this.host, journal);
    }
    return journal;
  }

  /** The QEMU libvirt's pid file names, or none (said when the file cannot be read): release then counts every process with the domain's -uuid that libvirt could have started (domainQemus). */
  private runningQemu(uuid: string): string | undefined {
    const name = this.invocation.args[0] ?? "";
    try {
      return pidFileQemu(this.host, name, uuid);
    } catch (error) {
      this.log.warn(`cannot note the QEMU of ${this.name} (${describeError(error)}); until its release, any process of root or libvirt's QEMU user with its -uuid keeps what it holds`);
      return undefined;
    }
  }

  private async undoLeftovers(deadline: Deadline): Promise<void> {
    const leftover = leftoverBeforePrepare(this.host, this.domain);
    if (!leftover) return;
    this.log.warn(`found a journal from an earlier run (phase ${leftover.phase}, ${leftover.entries.length} change(s)); undoing it first`);
    // libvirt renames only a domain that is shut off, keeping its UUID: what stays of the journal must name it as vmhook recover and libvirt's pid file will.
    if (leftover.domain.name !== this.domain.name) {
      this.log.info(`the journal names the domain ${leftover.domain.name}, renamed ${this.domain.name} since`);
      leftover.domain.name = this.domain.name;
    }
    const { failed } = await undoJournal(leftover, this.env(), deadline);
    if (failed.length > 0) {
      throw new VmhookError(`an earlier run of ${this.domain.name} left changes that cannot be undone; run ${recoverCommandLine(this.domain.name)} and check vmhook status`, failed.map((entry) => `${entry.plugin}: ${entry.description}: ${entry.error}`));
    }
  }
}

/** Whether a plugin does anything at this event (first-interface custom plugins: a handler). */
function handles(instance: PluginInstance, event: PlannedEvent): boolean {
  const plugin = instance.plugin;
  return isLegacyPlugin(plugin) ? plugin[event] !== undefined : plugin.plan[event] !== undefined;
}

/**
 * Where the XML of a refused migrate or restore is fixed. A restore gets the
 * XML saved with the VM's state (libvirt reads it from the image), a
 * migrate the source's running XML: editing the definition here changes
 * neither, and the next start from the managed save is refused alike.
 */
function whereIncomingXmlIsFixed(source: "migrate" | "restore", name: string, command: string): string[] {
  if (source === "migrate") {
    return [`the XML checked is ${name}'s as it runs on the source host: fix it there (vmhook config ${command} --edit on the source edits the running domain), or give the destination a fixed one with virsh migrate --xml FILE`];
  }
  return [
    `the XML checked is the one saved with ${name}'s state (virsh managedsave, virsh save), not ${name}'s definition: virsh metadata and vmhook config do not change it`,
    `to change that XML: virsh managedsave-edit ${command} (virsh save-image-edit FILE before virsh restore FILE); or virsh start --force-boot ${command} boots ${name} afresh from its definition, discarding the saved state`,
  ];
}

/**
 * The cause, then what the rollback did: each change it could not undo, with
 * why, is what `virsh start` shows. vmhook recover is advised only while
 * something is left for it, a change or a journal listing one: a cause whose
 * fix ends in it (FixThenRecover) loses that part when nothing is.
 */
function withRollbackNote(error: unknown, steps: number, result: UndoResult, name: string): VmhookError {
  const { failed, stale } = result;
  const lines = error instanceof VmhookError ? error.lines : [];
  if (failed.length > 0) {
    return new VmhookError(describeError(error), [
      ...lines,
      `${failed.length} of ${steps} change(s) could not be undone: run ${recoverCommandLine(name)} and see vmhook status`,
      ...failed.map((entry) => `not undone: ${entry.plugin}: ${entry.description}: ${entry.error}`),
      ...(stale ? [staleJournalNote(stale, name)] : []),
    ]);
  }
  const undone = `the host was left as it was (${undoneText(result)})`;
  if (stale) return new VmhookError(describeError(error), [...lines, `${undone}, but ${staleJournalNote(stale, name)}`]);
  const cause = error instanceof FixThenRecover ? error.remedyAlone() : error;
  return new VmhookError(describeError(cause), [...lines, `${undone}, so there is nothing to recover`]);
}

/**
 * libvirt reads the hook's stdout as replacement XML on migrate and restore,
 * so nothing may reach it: file descriptor 1 becomes a copy of stderr, and
 * whatever a plugin prints (console.log, process.stdout, Bun.write,
 * writeSync(1)) goes to stderr instead.
 */
async function guardStdout(): Promise<void> {
  if ((await libc()).dup2(2, 1) < 0) throw new VmhookError("cannot point stdout at stderr (dup2 failed)");
}

export type EventAction = (run: HookRun) => Promise<void>;

/**
 * The action of a known event whose domain XML is missing (`problem`: why):
 * of the domain only its name is known. An event that may fail refuses; one
 * that may not (stopped, release, reconnect) changes nothing and says what
 * vmhook still holds under that name, for vmhook recover.
 */
export function withoutDomainXml(problem: string, mayFail: boolean): EventAction {
  return async (run) => {
    const [name = "?", op] = run.invocation.args;
    // A check that changes nothing: the hook run by hand would hand devices over and take pages at prepare with no VM starting.
    const passItOn = `whatever runs vmhook (a dispatcher script at /etc/libvirt/hooks/qemu?) must pass its stdin on (exec or "$@", not < /dev/null); to check what vmhook makes of ${name}'s XML without changing the host: virsh dumpxml ${nameArgument(name)} | vmhook plan -`;
    if (mayFail) {
      throw new VmhookError(`${op} of ${run.name} refused: the domain XML on stdin ${problem}, so vmhook cannot tell whether ${run.name} asks for its plugins`, [
        `libvirt passes it at every ${op}: ${passItOn}`,
      ]);
    }
    throw new VmhookError(`${op} of ${run.name}: the domain XML on stdin ${problem}, so vmhook cannot tell which of its changes are ${run.name}'s`, [...heldUnderName(run.host, name), passItOn]);
  };
}

/** What the journals hold for the domain called `name` (journals are kept by UUID; each names its domain), or why that is unknown. */
function heldUnderName(host: Host, name: string): string[] {
  let listed: ReturnType<typeof listJournals>;
  try {
    listed = listJournals(host);
  } catch (error) {
    return [`${paths.stateDir} cannot be read (${describeError(error)}), so what vmhook holds for ${name} is unknown: see vmhook status`];
  }
  // A domain renamed (virsh domrename) since its journal was started is found by the UUID of libvirt's definition of it.
  const uuid = definedUuid(host, name);
  const held = listed.journals
    .filter((journal) => journal.domain.name === name || journal.domain.uuid === uuid)
    .map((journal) => {
      const startedAs = journal.domain.name === name ? "" : ` (started as ${journal.domain.name})`;
      return `its journal ${paths.journal(journal.domain.uuid)}${startedAs} holds ${journal.entries.length} change(s), kept: once ${name} is shut off, run ${recoverCommandLine(name)}`;
    });
  if (listed.broken.length > 0) held.push(`${listed.broken.length} journal(s) in ${paths.stateDir} cannot be read and may be ${name}'s: see vmhook status`);
  return held.length > 0 ? held : [`no journal in ${paths.stateDir} names ${name}: vmhook holds nothing for it`];
}

/**
 * Every hook run of a domain holds the domain's lock (so does vmhook
 * recover): two runs never interleave on one journal, and leftovers of a
 * killed run, such as a half-written journal temp file, are cleared first.
 */
async function runUnderDomainLock(run: HookRun, action: EventAction): Promise<void> {
  const uuid = uuidFromXml(run.invocation.xml);
  if (!uuid) return action(run);
  await withDomainLock(run.host, uuid, run.workDeadline(), async () => {
    removeStaleTemps(run.host, paths.journal(uuid));
    await action(run);
  });
}

/**
 * In the hook's own process, the end of the event loop with the work still
 * pending (a promise nothing will ever settle) is a failure, never success:
 * without this the process would simply exit 0.
 */
async function settleOrDrain(work: Promise<void>, invocation: HookInvocation): Promise<void> {
  if (!invocation.ownProcess) return work;
  const what = `${invocation.args.slice(1, 3).join(" ")} of ${invocation.args[0] ?? "?"}`;
  let onDrain = () => {};
  const drained = new Promise<never>((_, reject) => {
    onDrain = () => reject(new VmhookError(`${what} ended with its work unfinished (a promise that never settles); the journal is kept for release or vmhook recover`));
  });
  process.once("beforeExit", onDrain);
  try {
    await Promise.race([work, drained]);
  } finally {
    process.off("beforeExit", onDrain);
  }
}

/**
 * A plugin's stray error (a promise nobody awaits, a throw in a timer's
 * callback) would have the runtime print its own text and exit 1, skipping
 * the rollback. In an event that may fail it abandons the work as its
 * deadline would (the call running fails, naming the plugin; prepare rolls
 * back); in one that may not (libvirt kills a VM whose reconnect hook fails;
 * release must give back all it can) it is logged and the work goes on.
 * The undo budget is never abandoned: a rollback runs to its end.
 */
function watchStrayErrors(run: HookRun, mayFail: boolean): void {
  const onStray = (error: unknown) => {
    run.log.error(`stray error of a plugin, ${mayFail ? "failing the event" : "ignored"}: ${describeError(error)}`);
    if (mayFail) run.workDeadline().abandon(new StrayError(error));
  };
  process.on("uncaughtException", onStray).on("unhandledRejection", onStray);
}

/** The log, checked and opened (the watchdog's worker cannot check it); none, and `onFailure` told why, when it cannot be written. */
function openLogOnce(host: Host, onFailure: (error: unknown) => void): number | undefined {
  try {
    return openLog(host, "append");
  } catch (error) {
    onFailure(error);
    return undefined;
  }
}

/**
 * Whether vmhook holds changes of the run's domain for vmhook recover to give
 * back: its journal is there (a start refused before its first step left
 * none). Held, when that cannot be told.
 */
function holdsChanges(run: HookRun): boolean {
  const uuid = uuidFromXml(run.invocation.xml);
  if (!uuid) return false;
  try {
    return run.host.exists(paths.journal(uuid));
  } catch {
    return true;
  }
}

/**
 * Runs one event and turns the outcome into libvirt's terms: the exit code,
 * and on failure a stderr whose first line says what failed and what to do.
 * `mayFail`: whether a failure should abort what libvirt is doing (prepare,
 * start, started, migrate, restore); for the rest vmhook always exits 0.
 */
export async function runEvent(invocation: HookInvocation, event: HookEvent | undefined, action: EventAction | undefined, mayFail: boolean): Promise<number> {
  const run = new HookRun(invocation);
  try {
    return await runEventOnce(run, event, action, mayFail);
  } finally {
    // Last: libvirt shows stderr's first line as the cause of a failure.
    if (run.logProblem) process.stderr.write(`vmhook: warn: this run is missing from vmhook's log: ${oneLine(run.logProblem)}\n`);
  }
}

async function runEventOnce(run: HookRun, event: HookEvent | undefined, action: EventAction | undefined, mayFail: boolean): Promise<number> {
  const { invocation } = run;
  if (!action) {
    run.log.info(`event "${invocation.args.slice(1, 3).join(" ")}" is not one vmhook knows; nothing to do`);
    return 0;
  }
  try {
    if (invocation.ownProcess) {
      await guardStdout();
      const { deadlineSeconds, undoDeadlineSeconds } = run.settings;
      watchStrayErrors(run, mayFail);
      const budgetSeconds = deadlineSeconds + undoDeadlineSeconds + 5;
      const uuid = uuidFromXml(invocation.xml);
      run.watchdog = startWatchdog({
        budgetMs: budgetSeconds * 1000,
        spentMs: performance.now(), // Bun: ms since the process started, on the monotonic clock
        what: `${invocation.args.slice(1, 3).join(" ")} of ${run.name}`,
        budgetSource: `deadlineSeconds + undoDeadlineSeconds + 5 in ${paths.hostConfig}`,
        logFd: run.logFd,
        journalFile: uuid && run.host.resolve(paths.journal(uuid)),
        recoverCommand: oneLine(recoverCommandLine(invocation.args[0] ?? "?")),
        exitCode: mayFail ? 1 : 0,
      });
    }
    await settleOrDrain(runUnderDomainLock(run, action), invocation);
    run.workDeadline().throwIfAbandoned();
    return 0;
  } catch (caught) {
    const error = caught instanceof FixThenRecover && !holdsChanges(run) ? caught.nothingHeld() : caught;
    const headline = describeError(error);
    run.log.error(headline);
    const details = error instanceof VmhookError ? error.lines : error instanceof Error && error.stack ? [error.stack] : [];
    for (const line of details) run.log.error(line);
    process.stderr.write(
      [`vmhook: ${oneLine(headline)}`, ...details.map((line) => `  ${oneLine(line)}`), `  (${event ?? "event"} of ${run.name}; log: /var/log/vmhook.log)`].join("\n") + "\n",
    );
    return mayFail ? 1 : 0;
  }
}
