// Transactions in systemd's sense: every plugin plans its steps for the
// event (reading the host, changing nothing), then the runner applies them in
// order, each journaled with its record *before* it acts; when one fails,
// what was done is undone in reverse and the host is as it was. Every
// journaled record is checked by its action before its undo runs.
import { CallLease } from "./call-lease.ts";
import { CUSTOM_PREFIX, customPluginError, namingCustomPlugin, withPluginName, type PluginInstance } from "./config.ts";
import { claimsFor } from "./claims.ts";
import { Deadline, waitFor } from "./deadline.ts";
import type { Domain } from "./domain.ts";
import { CommandTimedOut, describeError, StrayError, VmhookError } from "./errors.ts";
import type { ExecResult, Host } from "./host.ts";
import { completeJournals, readJournal, removeJournal, sharedState, writeJournal, type Journal, type JournalEntry, type JournalPhase } from "./journal.ts";
import { withHostLock, type HeldLock } from "./lock.ts";
import { recoverCommandLine } from "./metadata-text.ts";
import type { Logger } from "./log.ts";
import { paths } from "./paths.ts";
import {
  isLegacyPlugin,
  type Action,
  type AnyPlugin,
  type ApplyContext,
  type BaseContext,
  type HookEvent,
  type LegacyContext,
  type LegacyPlugin,
  type PlanContext,
  type PlannedEvent,
  type Plugin,
  type PluginRegistry,
  type Refusal,
  type RunOptions,
  type Step,
  type StepHandle,
  type UndoContext,
  type UndoRecord,
} from "./plugin.ts";
import { pluginTimeLimitMs, settingToRaise, type HostSettings } from "./settings.ts";
import { forgetFinishedWrites, StuckWriteError } from "./stuck-writes.ts";

export interface RunEnvironment {
  host: Host;
  log: Logger;
  settings: HostSettings;
  /** Where plugins named in journals are loaded from. */
  registry: PluginRegistry;
  /**
   * How the runner takes the host-wide lock: withHostLock unless given. A test
   * wraps it to act the moment the lock is let go, as another hook waiting
   * for it in flock(2) may.
   */
  withHostLock?: typeof withHostLock;
}

/** A step as `vmhook plan` shows it and as prepare journals it. */
export interface PlannedStep {
  plugin: string;
  event: HookEvent;
  action: string;
  description: string;
  record: UndoRecord;
  /** Why this step cannot succeed on this host: `vmhook plan` marks it, a run refuses the event before its first apply. */
  refused?: Refusal;
  /** Applied while the next steps apply (Step.background). */
  background?: boolean;
}

/** What the apply phase runs, in order: a planned step, or a first-interface plugin's handler (it journals its own steps). */
type Unit = { instance: PluginInstance; step: PlannedStep } | { instance: PluginInstance; legacy: LegacyPlugin<unknown> };

type DomainId = { name: string; uuid: string };

/** A context's common part, all of it reaching the host through `lease`'s host; what hands it to a plugin guards it whole (lease.context). */
function baseContext(env: RunEnvironment, lease: CallLease, pluginId: string, event: HookEvent, domain: DomainId, deadline: Deadline): BaseContext {
  const host = lease.host(env.host);
  const { log } = env;
  // A program starts only within the deadline, and is killed at its end at the latest.
  const bounded = (command: string, options: RunOptions) => {
    deadline.check(`starting ${command}`);
    return { timeoutMs: deadline.clamp(options.timeoutMs ?? 30_000), input: options.input };
  };
  const sharedName = pluginId.replace(/[^a-z0-9._-]/g, "_");
  return {
    host,
    domain,
    event,
    log,
    deadline,
    settings: env.settings.plugins[pluginId] ?? {},
    waitFor: (what, ready, options) => waitFor(host, deadline, what, ready, options),
    run(command, args, options = {}) {
      return checkedRun(command, args, options, host.exec(command, args, bounded(command, options)));
    },
    async runAsync(command, args, options = {}) {
      return checkedRun(command, args, options, await host.execAsync(command, args, { ...bounded(command, options), ...(options.started ? { started: options.started } : {}) }));
    },
    journals: () => completeJournals(host),
    claims: claimsFor(host, domain.uuid),
    shared: {
      read: <T>(check: (value: unknown) => T) => sharedState.read(host, sharedName, check),
      write: (value: unknown) => sharedState.write(host, sharedName, value),
      remove: () => sharedState.remove(host, sharedName),
    },
  };
}

/** A program's result, or an error naming it and its first line of output, unless failure is allowed. */
function checkedRun(command: string, args: string[], options: RunOptions, result: ExecResult): ExecResult {
  if (options.allowFailure) return result;
  const cmdline = [command, ...args].join(" ");
  if (result.error) throw new VmhookError(`could not run ${cmdline}: ${result.error}`);
  if (result.timedOut) throw new CommandTimedOut(`${cmdline} did not finish in time and was killed`);
  if (result.status !== 0) {
    const why = (result.stderr.trim() || result.stdout.trim()).split("\n")[0] || `exit status ${result.status ?? result.signal}`;
    throw new VmhookError(`${cmdline} failed: ${why}`);
  }
  return result;
}

/** A planner's context, with `extras` (an apply's update, a handler's step), guarded whole by `lease`. */
function planContext<Extras extends object>(env: RunEnvironment, lease: CallLease, instance: PluginInstance, event: PlannedEvent, domain: Domain, journal: Journal, deadline: Deadline, extras: Extras): PlanContext<unknown> & Extras {
  const { plugin } = instance;
  return lease.context({
    ...baseContext(env, lease, instance.id, event, journal.domain, deadline),
    config: instance.config,
    domainXml: domain,
    // Through their actions' checks, as before an undo: a planner builds paths and arguments from them too.
    records: journal.entries
      .filter((entry) => entry.plugin === instance.id)
      .map((entry) => (isLegacyPlugin(plugin) ? entry.undo : actionOf(plugin, instance.id, entry.undo).check(entry.undo))),
    ...extras,
  });
}

/** The action a journaled record names, or an error: a record of an unknown kind is not undone, nor planned from, as if it were none. */
function actionOf(plugin: Plugin, pluginId: string, record: UndoRecord): Action<UndoRecord, unknown> {
  const action = plugin.actions[record.action];
  if (!action) throw new VmhookError(`${pluginId}: the journal holds an unknown change "${record.action}"; was it written by a newer vmhook?`);
  return action;
}

/**
 * A plugin's planner, apply, handler or undo, bounded in time: a JS plugin
 * may return a promise that never settles, and a hook that just waits would
 * either hang libvirt or, once the event loop drains, end as if all went
 * well. The timer keeps the process alive until then; past the limit the
 * work is abandoned and reported as failed (the caller rolls back what was
 * journaled). `work` builds the plugin's context on the lease it is given:
 * once the call is abandoned or has ended, nothing it still does through
 * that context reaches the host or the journal.
 */
async function settleWithin<T>(env: RunEnvironment, pluginId: string, event: string, deadline: Deadline, where: () => string, work: (lease: CallLease) => T | Promise<T>): Promise<T> {
  const pluginSettings = env.settings.plugins[pluginId] ?? {};
  const limitMs = pluginTimeLimitMs(pluginSettings, pluginId, deadline.remainingMs());
  const lease = new CallLease(pluginId, env.log);
  // A stray error while the call runs is most likely its own: it is abandoned as at its time limit, named.
  const stray = deadline.abandoned.catch((cause: unknown) => {
    lease.end("was abandoned");
    throw cause instanceof StrayError ? strayInCall(pluginId, event, where(), cause.stray) : cause;
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const overrun = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      lease.end("was abandoned");
      const setting = settingToRaise(pluginSettings, pluginId, limitMs, deadline.setting);
      const raise = pluginId.startsWith("plugin:") ? `; make it finish, or raise ${setting}` : `; raise ${setting} if the host is just slow`;
      reject(new VmhookError(`${pluginId} did not finish ${event} within ${limitMs / 1000} s (${where()}) and was abandoned${raise}`));
    }, limitMs);
  });
  try {
    const result = await Promise.race([stray, work(lease), overrun]);
    // A promise the call left rejected is reported only once the microtasks have run: still this call's failure.
    await new Promise((resolve) => setImmediate(resolve));
    return await Promise.race([stray, result]); // `stray` first: rejected by now, it wins
  } finally {
    clearTimeout(timer);
    lease.end("ended");
  }
}

function strayInCall(pluginId: string, event: string, where: string, stray: unknown): VmhookError {
  const fix = pluginId.startsWith(CUSTOM_PREFIX) ? "the plugin must await every promise it makes and catch what its callbacks throw" : "a fault in vmhook: report it with /var/log/vmhook.log";
  return new VmhookError(`${pluginId}: a stray error while ${event} ran (${where}): ${describeError(stray)}; ${fix}`);
}

/**
 * Shared plugins plan, apply and undo under the host-wide lock; the whole
 * event at once, so nothing changes between plan and apply, and each undo
 * with its journal write, so no other VM counts a claim already given back.
 * `work` gets the held lock, so an apply can step outside it for a slow wait
 * (ApplyContext.outsideHostLock); the plugins after it are planned again.
 */
async function underLockIf<T>(shared: boolean, env: RunEnvironment, deadline: Deadline, work: (held?: HeldLock) => Promise<T>): Promise<T> {
  return shared ? (env.withHostLock ?? withHostLock)(env.host, deadline, work) : work();
}

/**
 * reconnect and stopped never fail (the VM runs on; QEMU has exited): one
 * plugin that fails keeps no other from its steps. Each failure is logged and
 * the next plugins still run; stopped reports the first one at its end.
 */
class CarryOn {
  /** `unlogged`: its line, left for the hook to log when throwFirst throws it. */
  private first: { error: unknown; unlogged?: string } | undefined;
  private constructor(
    private readonly event: PlannedEvent,
    private readonly log: Logger,
  ) {}

  static at(event: PlannedEvent, log: Logger): CarryOn | undefined {
    return event === "reconnect" || event === "stopped" ? new CarryOn(event, log) : undefined;
  }

  /** `line`: what to log, unless journaled() logged it already (stopped's first failure: the hook logs what it throws). */
  failed(error: unknown, line?: string): void {
    if (this.event === "stopped" && this.first === undefined) {
      this.first = { error, unlogged: line };
      return;
    }
    this.first ??= { error };
    if (line !== undefined) this.log.error(line);
  }

  /** The event ended on an error of its own (the deadline, a journal write): the first failure, never thrown now, is logged. */
  endedOnAnotherError(): void {
    if (this.first?.unlogged !== undefined) this.log.error(this.first.unlogged);
  }

  plannerFailed(pluginId: string, error: unknown): void {
    if (this.event === "reconnect") {
      this.log.warn(`${pluginId}: reconnect check failed: ${describeError(error)}`);
      return;
    }
    const named = customPluginError(pluginId, error);
    this.failed(named, describeError(named));
  }

  throwFirst(): void {
    if (this.event === "stopped" && this.first) throw this.first.error;
  }
}

/**
 * Each plugin's planned steps for `event`, checked against the plugin's actions. Changes nothing. `carryOn`: a planner that fails is left out, the others still planned.
 * `forPlan` (`vmhook plan`): each step's planNote joins its description, within the planner's call; a run never asks for one.
 */
async function planUnits(event: PlannedEvent, instances: PluginInstance[], domain: Domain, journal: Journal, env: RunEnvironment, deadline: Deadline, carryOn?: CarryOn, forPlan = false): Promise<Unit[]> {
  const units: Unit[] = [];
  for (const instance of instances) {
    const plugin = instance.plugin;
    if (isLegacyPlugin(plugin)) {
      if (plugin[event]) units.push({ instance, legacy: plugin });
      continue;
    }
    const planner = plugin.plan[event];
    if (!planner) continue;
    deadline.check(`planning ${instance.id}`);
    try {
      const steps = await namingCustomPlugin(instance.id, () =>
        settleWithin(env, instance.id, `planning ${event}`, deadline, () => "its planner", (lease) => {
          const planned = planner(planContext(env, lease, instance, event, domain, journal, deadline, {}));
          return forPlan ? Promise.resolve(planned).then(withPlanNotes) : planned;
        }),
      );
      // Checked before any is kept: a plugin left out (carryOn) is left out whole.
      units.push(...steps.map((step) => plannedUnit(instance, event, step)));
    } catch (error) {
      if (!carryOn) throw error;
      carryOn.plannerFailed(instance.id, error);
    }
  }
  return units;
}

/** The steps as `vmhook plan` shows them: each one's planNote in its description. */
const withPlanNotes = (steps: Step[]): Step[] => steps.map(({ planNote, ...step }) => (planNote ? { ...step, description: `${step.description}${planNote()}` } : step));

/** One planned step, checked against its plugin's actions. */
function plannedUnit(instance: PluginInstance, event: PlannedEvent, step: Step): Unit {
  const action = (instance.plugin as Plugin).actions[step.action];
  if (!action || step.record.action !== step.action) {
    throw new VmhookError(`internal: ${instance.id} planned a step "${step.description}" with action ${step.action}, which it does not declare`);
  }
  // A refused step is never applied, journaled or undone: its record may lack what only the host could have given (a vGPU type's id).
  const record = step.refused ? step.record : namingCustomPlugin(instance.id, () => action.check(step.record));
  const planned: PlannedStep = { plugin: instance.id, event, action: step.action, description: step.description, record, ...(step.background ? { background: true } : {}) };
  return { instance, step: step.refused ? { ...planned, refused: namedRefusal(instance.id, step.refused) } : planned };
}

/**
 * The refusal naming the plugin that made it, once: built-ins start their
 * reason with their id ("hugepages: …") or their element ("<vmhook:mdev …>: …"),
 * a custom plugin may write its name or nothing, and the user must see which
 * plugin refused the start.
 */
function namedRefusal(pluginId: string, refusal: Refusal): Refusal {
  return { ...refusal, reason: withPluginName(pluginId, refusal.reason) };
}

/**
 * What `vmhook plan` shows: every plugin's steps for the event. First-interface
 * custom plugins are asked by running their handlers with dryRun set.
 */
export async function planEvent(event: PlannedEvent, instances: PluginInstance[], domain: Domain, journal: Journal, env: RunEnvironment, deadline: Deadline): Promise<PlannedStep[]> {
  const units = await planUnits(event, instances, domain, journal, env, deadline, undefined, true);
  const steps: PlannedStep[] = [];
  for (const unit of units) {
    if ("step" in unit) {
      steps.push(unit.step);
      continue;
    }
    const listSteps = (lease: CallLease) => {
      const ctx: LegacyContext<unknown> = planContext(env, lease, unit.instance, event, domain, journal, deadline, {
        dryRun: true,
        step: async (description: string, record: UndoRecord) => {
          steps.push({ plugin: unit.instance.id, event, action: record.action, description, record });
        },
      });
      return unit.legacy[event]!(ctx);
    };
    await namingCustomPlugin(unit.instance.id, () => settleWithin(env, unit.instance.id, event, deadline, () => "its handler, listing steps", listSteps));
  }
  return steps;
}

/**
 * Plans and applies one event of every plugin, in order. Steps go into
 * `journal`, which enters `phaseAfter` (when given) with the write that ends
 * the event. Throws at the first failure; the caller decides whether to roll back.
 * reconnect and stopped go on past a failure (CarryOn).
 */
export async function runPlugins(event: PlannedEvent, instances: PluginInstance[], domain: Domain, journal: Journal, env: RunEnvironment, deadline: Deadline, phaseAfter?: JournalPhase): Promise<void> {
  const shared = instances.some((instance) => instance.plugin.shared);
  const carryOn = CarryOn.at(event, env.log);
  await underLockIf(shared, env, deadline, async (held) => {
    let units = await planUnits(event, instances, domain, journal, env, deadline, carryOn);
    refuseIfAnyRefused(units);
    let plannedWhenLetGo = held?.timesLetGo ?? 0;
    const background = new BackgroundSteps();
    try {
      for (let index = 0; index <= units.length; index++) {
        // A step let go of the host lock (outsideHostLock): another VM's hook may have changed what every plugin after its own planned from,
        // one that planned no step included.
        if (held && held.timesLetGo !== plannedWhenLetGo && endsPlugin(units, index)) {
          await background.finished();
          const after = instances.slice(instances.indexOf(units[index - 1]!.instance) + 1);
          const replanned = await planUnits(event, after, domain, journal, env, deadline, carryOn);
          refuseIfAnyRefused(replanned);
          units = [...units.slice(0, index), ...replanned];
          plannedWhenLetGo = held.timesLetGo;
        }
        if (index === units.length) break;
        const unit = units[index]!;
        background.throwIfFailed();
        deadline.check(`applying ${unit.instance.id}`);
        if ("step" in unit) {
          const kind = `${unit.instance.id} ${unit.step.action}`;
          // Two steps of one action never run at once (two modprobes would each see the other's modules as theirs).
          if (background.runs(kind)) await background.finished();
          const applying = applyStep(env, journal, unit.instance, unit.step, domain, deadline, held, background);
          if (unit.step.background) {
            env.log.info(`${unit.instance.id}: ${unit.step.description}: started in the background`);
            background.start(kind, applying);
          } else if (carryOn) {
            // A step that fails is logged (journaled() does); the next plugins' still run.
            await applying.catch((error: unknown) => carryOn.failed(error));
          } else await applying;
        } else {
          await background.finished();
          const handled = runLegacyHandler(env, journal, unit.instance, unit.legacy, event, domain, deadline);
          if (carryOn) await handled.catch((error: unknown) => carryOn.failed(error, describeError(error))); // it names the plugin (customPluginError)
          else await handled;
        }
      }
      await background.finished();
    } finally {
      // Nothing is undone while a step still acts.
      await background.settled();
    }
    // The last step's "applied" (journaled() leaves it to the next write), and the new phase.
    if (phaseAfter) journal.phase = phaseAfter;
    if (units.length > 0 || phaseAfter) writeJournal(env.host, journal);
  }).catch((error: unknown) => {
    carryOn?.endedOnAnotherError();
    throw error;
  });
  carryOn?.throwFirst();
}

/** Whether the unit before `index` is its plugin's last (the last of all, at units.length). */
const endsPlugin = (units: Unit[], index: number) => index > 0 && (index === units.length || units[index - 1]!.instance !== units[index]!.instance);

/** The steps applying in the background (Step.background) and the first one's failure. */
class BackgroundSteps {
  private readonly running: Promise<void>[] = [];
  private failure: { error: unknown } | undefined;
  /** The kinds ("plugin action") of the steps still applying. */
  private readonly active: string[] = [];

  start(kind: string, applying: Promise<void>): void {
    this.active.push(kind);
    const done = () => void this.active.splice(this.active.indexOf(kind), 1);
    this.running.push(
      applying.then(done, (error: unknown) => {
        done();
        this.failure ??= { error };
      }),
    );
  }

  runs(kind: string): boolean {
    return this.active.includes(kind);
  }

  /** Throws the first failure, without waiting. */
  throwIfFailed(): void {
    if (this.failure) throw this.failure.error;
  }

  /** Waits for every step started so far; throws the first failure. */
  async finished(): Promise<void> {
    await this.settled();
    this.throwIfFailed();
  }

  /** What a step's ctx.afterBackgroundSteps waits for: the steps started before it (a background step never waits for itself). */
  startedSoFar(): () => Promise<void> {
    const before = [...this.running];
    return async () => {
      await Promise.all(before);
      this.throwIfFailed();
    };
  }

  async settled(): Promise<void> {
    await Promise.all(this.running);
  }

  get anyRunning(): boolean {
    return this.active.length > 0;
  }
}

/** A refused step fails the event before anything is applied or journaled: its reason is the error. */
function refuseIfAnyRefused(units: Unit[]): void {
  for (const unit of units) {
    if ("step" in unit && unit.step.refused) throw new VmhookError(unit.step.refused.reason, unit.step.refused.remedies);
  }
}

async function applyStep(env: RunEnvironment, journal: Journal, instance: PluginInstance, planned: PlannedStep, domain: Domain, deadline: Deadline, held: HeldLock | undefined, background: BackgroundSteps): Promise<void> {
  const action = (instance.plugin as Plugin<unknown>).actions[planned.action]!;
  const afterBackgroundSteps = background.startedSoFar();
  // Asked only once apply has returned or thrown: one abandoned at its time limit may still be changing the host.
  let applyEnded = false;
  const { unchangedAfterFailure } = action;
  const unchanged =
    unchangedAfterFailure &&
    ((record: UndoRecord): unknown => {
      if (!applyEnded) return false;
      const lease = new CallLease(instance.id, env.log);
      try {
        return unchangedAfterFailure(action.check(record), lease.context(baseContext(env, lease, instance.id, planned.event, journal.domain, deadline)));
      } finally {
        lease.end("ended");
      }
    });
  await journaled(
    env,
    journal,
    planned,
    (handle) =>
      namingCustomPlugin(instance.id, async () => {
        const apply = async (lease: CallLease) => {
          const ctx: ApplyContext<unknown> = planContext(env, lease, instance, planned.event as PlannedEvent, domain, journal, deadline, {
            update: handle.update,
            nothingToUndo: handle.nothingToUndo,
            outsideHostLock<T>(work: () => T): T {
              // A step in the background may write what the lock guards (the claims ledger).
              if (background.anyRunning) throw new VmhookError(`internal: ${instance.id} steps outside the host lock while a step runs in the background`);
              return held ? held.released(work) : work();
            },
            afterBackgroundSteps,
          });
          try {
            return await action.apply(planned.record, ctx);
          } finally {
            applyEnded = true;
          }
        };
        const updated = await settleWithin(env, instance.id, planned.event, deadline, () => `step "${planned.description}"`, apply);
        if (updated) handle.update(updated);
      }),
    unchanged,
  );
}

/** The adapter for first-interface custom plugins: their handler runs with a ctx.step that journals like a planned step. */
async function runLegacyHandler(env: RunEnvironment, journal: Journal, instance: PluginInstance, plugin: LegacyPlugin<unknown>, event: PlannedEvent, domain: Domain, deadline: Deadline): Promise<void> {
  let currentStep = "before its first step";
  const handle = (lease: CallLease) => {
    const ctx: LegacyContext<unknown> = planContext(env, lease, instance, event, domain, journal, deadline, {
      dryRun: false,
      step: (description: string, record: UndoRecord, action: (handle: StepHandle) => void | Promise<void>) => {
        currentStep = `step "${description}"`;
        // The handle too lasts as long as the handler's call.
        return journaled(env, journal, { plugin: instance.id, event, action: record.action, description, record }, (stepHandle) => action(lease.context(stepHandle)));
      },
    });
    return plugin[event]!(ctx);
  };
  await namingCustomPlugin(instance.id, () => settleWithin(env, instance.id, event, deadline, () => currentStep, handle));
}

/**
 * One step: journaled as pending before `apply` runs, then applied (or
 * dropped when it changed nothing: handle.nothingToUndo, or a failed apply
 * that `unchanged` finds left the host as it was, changedNothingAfter).
 * "applied" reaches the file with the next write (the next step's, or
 * runPlugins' last): a pending entry is undone like an applied one, so a
 * crash in between loses nothing. Dropping an entry is written at once: its
 * undo would change what vmhook never did. A step whose pending write fails
 * never runs, and leaves no entry.
 */
async function journaled(env: RunEnvironment, journal: Journal, planned: PlannedStep, apply: (handle: StepHandle) => void | Promise<void>, unchanged?: (record: UndoRecord) => unknown): Promise<void> {
  const { plugin, event, description, record } = planned;
  const entry: JournalEntry = { plugin, event, description, undo: record, state: "pending", at: new Date(env.host.wallClockMs()).toISOString() };
  journal.entries.push(entry);
  try {
    writeJournal(env.host, journal);
  } catch (error) {
    // The file stays as it was (writeStateFile): nothing of this step to undo, nor to count as undone.
    journal.entries.splice(journal.entries.indexOf(entry), 1);
    throw error;
  }
  let changedNothing = false;
  const settle = () => {
    if (!changedNothing) {
      entry.state = "applied";
      return;
    }
    journal.entries.splice(journal.entries.indexOf(entry), 1);
    writeJournal(env.host, journal);
  };
  try {
    await apply({
      update(next) {
        entry.undo = next;
        writeJournal(env.host, journal);
      },
      nothingToUndo() {
        changedNothing = true;
      },
    });
  } catch (error) {
    changedNothing ||= changedNothingAfter(env, planned, entry.undo, error, unchanged);
    if (changedNothing) {
      try {
        settle();
      } catch (writeError) {
        // The step's failure stays the cause. Dropped here all the same: the rollback's writes catch the file up,
        // and an undo run from the file as it is checks what it gives back, finding nothing.
        env.log.error(`${plugin}: ${description}: the journal could not drop it (it changed nothing): ${describeError(writeError)}`);
      }
    }
    env.log.error(`${plugin}: ${description}: ${describeError(error)}`);
    throw error;
  }
  settle();
  env.log.info(`${plugin}: ${description}: ${changedNothing ? "nothing to undo" : "done"}`);
}

/**
 * After a failed apply: whether the step left the host as it was, as its
 * action reads it (Action.unchangedAfterFailure). Unknown means changed: a
 * helper still blocked in the kernel (StuckWriteError) may change the host
 * yet, so it is never asked then; an answer that throws, or is not true, keeps
 * the entry, whose undo checks what it gives back.
 */
function changedNothingAfter(env: RunEnvironment, { plugin, description }: PlannedStep, record: UndoRecord, error: unknown, unchanged?: (record: UndoRecord) => unknown): boolean {
  if (!unchanged || error instanceof StuckWriteError) return false;
  try {
    const answer = unchanged(record);
    if (answer instanceof Promise) {
      // A JS plugin's promise is no answer, and its rejection no stray error of the run.
      answer.catch(() => {});
      env.log.warn(`${plugin}: ${description}: its unchangedAfterFailure answered with a promise (an async function), which is no answer: it must return true or false at once, so the step stays in the journal`);
    }
    return answer === true;
  } catch (readError) {
    env.log.warn(`${plugin}: ${description}: whether its failed apply changed anything cannot be told (${describeError(readError)}); it stays in the journal`);
    return false;
  }
}

export interface UndoResult {
  /** Changes of finished steps given back on the host, the journal's record of it aside (stale). */
  undone: number;
  /**
   * Steps still pending, whose apply had not returned (the hook killed or the
   * step cut off mid-way, or failed): their change may never have been made,
   * so it is not counted as one; their undo checked the host and gave back
   * what of it was there. undoneText says both.
   */
  unfinished: number;
  failed: JournalEntry[];
  /**
   * Why the journal file does not say what the undo did (its last write, or
   * its removal, failed): it still lists changes given back, or never made
   * (a failed step whose drop it did not take), and no other changed. Each
   * undo checks what it gives back, so the next one (release, vmhook
   * recover, the next prepare's leftovers) gives nothing back twice and
   * removes them. Absent when the file says what was done.
   */
  stale?: string;
  /** Why the journal file, listing no change, is still there (its removal failed): a recover that leaves it has not finished. */
  unremoved?: string;
}

/** What an undo gave back, as the rollback, the release and vmhook recover say it: a pending step is not counted as a change made (UndoResult.unfinished). */
export function undoneText({ undone, unfinished }: Pick<UndoResult, "undone" | "unfinished">): string {
  const changes = `${undone} change(s) undone`;
  return unfinished === 0 ? changes : `${changes}, and ${unfinished} unfinished step(s), cut off or failed before they returned and so perhaps never made, checked against the host and given back as far as made`;
}

/**
 * What an undo whose journal file could not be brought up to date
 * (UndoResult.stale) leaves, as the rollback, the release and vmhook recover
 * say it: a journal listing changes already given back or never made, and
 * what removes them. `name`: the domain as vmhook recover takes it.
 */
export function staleJournalNote(stale: string, name: string): string {
  return `its journal still lists changes already given back or never made: ${stale}, with ${recoverCommandLine(name)} (the next start does it too): it checks each against the host, gives nothing back twice, and removes them`;
}

/** What an undo whose journal, listing no change, could not be removed (UndoResult.unremoved) leaves, as the undo's log and vmhook recover say it. */
export function unremovedJournalNote(unremoved: string, { name, uuid }: DomainId): string {
  return `the journal ${paths.journal(uuid)} could not be removed (${unremoved}); it lists no change, so nothing is undone again: the next start of ${name}, or ${recoverCommandLine(name)}, removes it`;
}

/**
 * What the journal file an undo could not bring up to date says, read back
 * from it: whether it lists a change `journal` no longer holds (given back,
 * or dropped as never made, with a write that failed), and whether it lists
 * none. The words of the undo follow the file, not what its writes were
 * meant to leave there. A file that cannot be read back is taken as stale:
 * it may list anything.
 */
function leftFile(host: Host, journal: Journal, error: unknown): Pick<UndoResult, "stale" | "unremoved"> {
  const cause = describeError(error);
  let onDisk: Journal | undefined;
  try {
    onDisk = readJournal(host, journal.domain.uuid);
  } catch (readError) {
    return { stale: `${cause}; nor can it be read back (${describeError(readError)})` };
  }
  if (!onDisk) return {};
  const key = (entry: JournalEntry) => JSON.stringify([entry.plugin, entry.event, entry.description, entry.at]);
  const held = journal.entries.map(key);
  const more = onDisk.entries.filter((entry) => {
    const index = held.indexOf(key(entry));
    if (index === -1) return true;
    held.splice(index, 1);
    return false;
  });
  if (more.length > 0) return { stale: cause };
  return onDisk.entries.length === 0 ? { unremoved: cause } : {};
}

/**
 * Gives one journaled change back: the record is checked by its action first.
 * ctx.update rewrites the entry's record at once (while the undo's lease lasts).
 */
async function undoEntry(env: RunEnvironment, lease: CallLease, plugin: AnyPlugin, entry: JournalEntry, journal: Journal, deadline: Deadline): Promise<void> {
  const update = (next: UndoRecord) => {
    entry.undo = next;
    writeJournal(env.host, journal);
  };
  await undoRecord(env, lease, plugin, entry.plugin, entry.undo, journal.domain, deadline, update);
}

/** One record's undo, as `domain`'s: checked by its action first. */
async function undoRecord(env: RunEnvironment, lease: CallLease, plugin: AnyPlugin, pluginId: string, record: UndoRecord, domain: DomainId, deadline: Deadline, update: UndoContext["update"]): Promise<void> {
  const ctx: UndoContext = lease.context({ ...baseContext(env, lease, pluginId, "release", domain, deadline), update });
  if (isLegacyPlugin(plugin)) return plugin.undo(record, ctx);
  const action = actionOf(plugin, pluginId, record);
  await action.undo(action.check(record), ctx);
}

/**
 * vmhook recover, for what no journal holds (a claim whose holder's journal
 * is gone, shared state no claim needs): the steps `plan` makes from a
 * context of `domain`, each undone as a journaled one would be, bounded the
 * same way, under the host lock the caller holds. Each step's description,
 * with the error its undo failed with; a plan that throws, throws.
 */
export async function undoUnjournaled(env: RunEnvironment, pluginId: string, plugin: Plugin, domain: DomainId, deadline: Deadline, plan: (ctx: BaseContext) => Step[]): Promise<{ description: string; error?: string }[]> {
  const outcomes: { description: string; error?: string }[] = [];
  for (const { description, record } of planUnjournaled(env, pluginId, domain, deadline, plan)) {
    try {
      // No journal to rewrite: what an undo records as it goes is read again from the ledger or the shared state by the next recover.
      await settleWithin(env, pluginId, "undo", deadline, () => `undo of "${description}"`, (lease) => undoRecord(env, lease, plugin, pluginId, record, domain, deadline, () => {}));
      outcomes.push({ description });
    } catch (error) {
      outcomes.push({ description, error: describeError(error) });
    }
  }
  return outcomes;
}

/** The steps undoUnjournaled would undo, planned in the context it gives them and not run (status and doctor show them). */
export function planUnjournaled(env: RunEnvironment, pluginId: string, domain: DomainId, deadline: Deadline, plan: (ctx: BaseContext) => Step[]): Step[] {
  const lease = new CallLease(pluginId, env.log);
  try {
    return plan(lease.context(baseContext(env, lease, pluginId, "release", domain, deadline)));
  } finally {
    lease.end("ended");
  }
}

/** How an entry's undo ended: it leaves the journal, or stays marked undo-failed with its cause. */
type UndoOutcome = { done: true } | { done: false; cause: unknown };

async function undoOutcome(env: RunEnvironment, plugin: AnyPlugin, entry: JournalEntry, journal: Journal, deadline: Deadline): Promise<UndoOutcome> {
  try {
    await settleWithin(env, entry.plugin, "undo", deadline, () => `undo of "${entry.description}"`, (lease) => undoEntry(env, lease, plugin, entry, journal, deadline));
    return { done: true };
  } catch (cause) {
    return { done: false, cause };
  }
}

/**
 * Notes how an entry's undo ended and writes the journal. A write that fails
 * (/run full, read-only, out of file descriptors) is logged, never thrown: the
 * file as last written still holds the entry, whose undo checks what it gives
 * back, and the undo goes on to the other entries. The next write that goes
 * through (at the latest undoJournal's last) catches the file up; if none
 * does, undoJournal reads back what the file lists.
 */
function journalOutcome({ host, log }: RunEnvironment, journal: Journal, entry: JournalEntry, outcome: UndoOutcome): void {
  if (outcome.done) journal.entries.splice(journal.entries.indexOf(entry), 1);
  else Object.assign(entry, { state: "undo-failed", error: describeError(outcome.cause) });
  try {
    writeJournal(host, journal);
  } catch (error) {
    log.error(`${entry.plugin}: undo ${entry.description}: the journal could not be written after it: ${describeError(error)}`);
  }
}

/**
 * The plugins of the journal with a record this vmhook cannot read (an action
 * a later vmhook added, a record its action's check refuses), each with why:
 * their records were made around it, so none of them is undone, rather than
 * that plugin's changes half given back. A plugin that cannot be loaded is
 * not here: each of its records fails to load at its undo, all alike.
 */
async function unreadablePlugins(journal: Journal, env: RunEnvironment, loaded: PluginInstance[]): Promise<Map<string, VmhookError>> {
  const unreadable = new Map<string, VmhookError>();
  for (const pluginId of new Set(journal.entries.map((entry) => entry.plugin))) {
    let plugin: AnyPlugin;
    try {
      plugin = loaded.find((instance) => instance.id === pluginId)?.plugin ?? (await env.registry.load(pluginId, env.host));
    } catch {
      continue;
    }
    if (isLegacyPlugin(plugin)) continue;
    for (const entry of journal.entries.filter((each) => each.plugin === pluginId)) {
      try {
        actionOf(plugin, pluginId, entry.undo).check(entry.undo);
      } catch (error) {
        unreadable.set(
          pluginId,
          new VmhookError(
            `${pluginId}: "${entry.description}" in ${paths.journal(journal.domain.uuid)} cannot be read by this vmhook (${describeError(error)}), so every change of ${pluginId} there is kept, not half given back: install the vmhook that wrote it again (a later one) and run vmhook recover ${journal.domain.name}, or restore what its records name by hand and remove them`,
          ),
        );
        break;
      }
    }
  }
  return unreadable;
}

/**
 * Undoes a journal's entries in reverse order, best effort: each success is
 * removed from the journal at once (so a crash here resumes where it stopped),
 * each failure is logged and kept for `vmhook recover`. The journal file is
 * deleted when nothing is left. Plugins in `loaded` (already loaded by the
 * caller) are used as they are; the others are loaded by their journal id.
 * Release, the rollback of a failed prepare, leftovers of a crashed run and
 * `vmhook recover` all undo through here.
 */
export async function undoJournal(journal: Journal, env: RunEnvironment, deadline: Deadline, loaded: PluginInstance[] = []): Promise<UndoResult> {
  const { host, log } = env;
  // What is left after a failed undo is said as what it was: a start that never ran, or a VM's release.
  // The phase while undoing keeps which, so an undo killed partway and taken up again still says it.
  const rollback = journal.phase === "preparing" || journal.phase === "rolling-back" || journal.phase === "rollback-failed";
  journal.phase = rollback ? "rolling-back" : "releasing";
  try {
    writeJournal(host, journal);
  } catch (error) {
    // /run full (ENOSPC): the phase is only what vmhook status shows; what the entries changed is given back all the same.
    log.warn(`the journal could not be marked as ${journal.phase} (${describeError(error)}); undoing its changes all the same`);
  }
  let undone = 0;
  let unfinished = 0;
  const unreadable = await unreadablePlugins(journal, env, loaded);
  for (const entry of [...journal.entries].reverse()) {
    const keptWhole = unreadable.get(entry.plugin);
    if (keptWhole) {
      journalOutcome(env, journal, entry, { done: false, cause: keptWhole });
      log.error(`${entry.plugin}: undo ${entry.description}: ${entry.error}`);
      continue;
    }
    let outcome: UndoOutcome;
    try {
      const plugin = loaded.find((instance) => instance.id === entry.plugin)?.plugin ?? (await env.registry.load(entry.plugin, host));
      // A shared plugin's entry leaves the journal (or is marked undo-failed)
      // under the same host lock as its undo: other VMs' prepares compute the
      // shared resources from the journals, and one that took the lock between
      // the undo and the journal write would count a claim already given back.
      outcome = await underLockIf(plugin.shared === true, env, deadline, async () => {
        const settled = await undoOutcome(env, plugin, entry, journal, deadline);
        journalOutcome(env, journal, entry, settled);
        return settled;
      });
    } catch (error) {
      // Loading the plugin or taking the lock failed: nothing was undone.
      outcome = { done: false, cause: error };
      journalOutcome(env, journal, entry, outcome);
    }
    if (!outcome.done) log.error(`${entry.plugin}: undo ${entry.description}: ${entry.error}`);
    else {
      // Given back, whether or not the journal took it: the result says when the file never did (stale).
      if (entry.state === "pending") unfinished++;
      else undone++;
      log.info(`${entry.plugin}: undo ${entry.description}: done`);
    }
  }
  try {
    // This domain's notes whose helper has ended (a hook killed before its helper acted, or before it forgot the note;
    // a note copy it never renamed): no later write may come to forget them, as a write into the same driver would.
    forgetFinishedWrites(host, journal.domain.uuid);
  } catch (error) {
    log.warn(`the stuck-write notes in ${paths.stuckWrites} cannot be looked at (${describeError(error)}); vmhook recover settles them`);
  }
  const failed = journal.entries.filter((entry) => entry.state === "undo-failed");
  // The file catches up here with every outcome its writes above missed, or stays as last written: what it then lists is read back.
  if (journal.entries.length === 0) {
    try {
      removeJournal(host, journal.domain.uuid);
    } catch (error) {
      // /run gone read-only: what the undo did stands, and the prepare that rolled back keeps its own cause.
      const left = leftFile(host, journal, error);
      // A file that lists no change is undone as any other, giving nothing back.
      if (left.stale !== undefined) log.error(staleJournalNote(left.stale, journal.domain.name));
      else if (left.unremoved !== undefined) log.error(unremovedJournalNote(left.unremoved, journal.domain));
      return { undone, unfinished, failed, ...left };
    }
  } else {
    journal.phase = rollback ? "rollback-failed" : "release-failed";
    try {
      writeJournal(host, journal);
    } catch (error) {
      // What failed is reported all the same; the journal as last written still holds it, and each undo checks what it gives back.
      log.error(`the journal could not be written after the undo (${describeError(error)}); it holds what vmhook recover gives back`);
      const { stale } = leftFile(host, journal, error);
      if (stale !== undefined) return { undone, unfinished, failed, stale };
    }
  }
  return { undone, unfinished, failed };
}
