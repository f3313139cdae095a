// `vmhook recover`, for what no journal holds any more: a claim in the
// ledger whose holder's journal is gone (removed by hand, or lost to a crash
// between two writes) while it does not run, and a plugin's shared state no
// claim needs (isolate's saved IRQ affinities). Each is given back by its
// plugin's own undo, as the holder's release would have; never for a domain
// that runs, nor when whether it runs cannot be told.
import { claimsFor, claimsLedgerError } from "../claims.ts";
import { Deadline } from "../deadline.ts";
import { describeError } from "../errors.ts";
import type { Host } from "../host.ts";
import { readJournal } from "../journal.ts";
import { ifDomainIdle, withHostLock } from "../lock.ts";
import { createLogger } from "../log.ts";
import { paths } from "../paths.ts";
import { isLegacyPlugin, type Plugin, type PluginRegistry } from "../plugin.ts";
import { loadSettings, type HostSettings } from "../settings.ts";
import { planUnjournaled, undoUnjournaled, type RunEnvironment } from "../transaction.ts";
import { runningDomains, uuidRunningOrWhyUnknown } from "./running.ts";

/** A claim of a holder whose journal is gone: given back (what its undo did), failed (what it tried, and why), or left (why). */
export interface OrphanClaim {
  uuid: string;
  resource: string;
  given?: string;
  failed?: string;
  skipped?: "running" | "state-unknown" | "hook-at-work";
  error?: string;
}

/** A plugin's shared state no claim needs: given back, failed (what it tried, if it got that far, and why), or left (why: a domain runs that may need it). */
export interface UnheldShared {
  plugin: string;
  given?: string;
  failed?: string;
  left?: string;
  error?: string;
}

/** An undo's outcome as recover reports it. */
const reported = ({ description, error }: { description: string; error?: string }) => (error ? { failed: description, error } : { given: description });

type Builtin = { id: string; plugin: Plugin };

export interface Recovery {
  host: Host;
  settings: HostSettings;
  registry: PluginRegistry;
  echo: "none" | "stderr";
  /** false when vmhook will not write its log (recover said why once): the lines go to stderr only. */
  logToFile: boolean;
}

async function builtins({ host, registry }: Pick<Recovery, "host" | "registry">): Promise<Builtin[]> {
  const loaded = await Promise.all(registry.builtinNames().map(async (id) => ({ id, plugin: await registry.load(id, host) })));
  return loaded.flatMap(({ id, plugin }) => (isLegacyPlugin(plugin) ? [] : [{ id, plugin }]));
}

const undoDeadline = ({ host, settings }: Recovery) => new Deadline(host, settings.undoDeadlineSeconds * 1000, "undoDeadlineSeconds");

function environment(recovery: Recovery, domain: string): RunEnvironment {
  const { host, settings, registry, echo, logToFile } = recovery;
  return { host, settings, registry, log: createLogger(host, { domain, event: "recover", echo, file: logToFile }) };
}

/**
 * The claims of every holder whose journal is gone (`only`: of that UUID
 * alone). Each holder is decided under its domain's lock, then the host
 * lock, as a hook of it would act: the ledger read again there, its journal
 * looked for again, whether it runs judged there. None when the ledger
 * cannot be read (recover says so on its own).
 */
export async function giveBackOrphanClaims(recovery: Recovery, only?: string): Promise<OrphanClaim[]> {
  const { host } = recovery;
  if (claimsLedgerError(host)) return [];
  const holders = new Set(Object.values(claimsFor(host, "").list("")).flatMap((claim) => claim.holders));
  const plugins = await builtins(recovery);
  const results: OrphanClaim[] = [];
  for (const uuid of holders) {
    if ((only !== undefined && uuid !== only) || journaled(host, uuid)) continue;
    try {
      const outcome = await ifDomainIdle(host, uuid, () => withHostLock(host, undoDeadline(recovery), async () => giveBackClaimsOf(recovery, plugins, uuid)));
      results.push(...(outcome.busy ? heldBy(host, uuid).map((resource) => ({ uuid, resource, skipped: "hook-at-work" as const })) : outcome.value));
    } catch (error) {
      results.push(...heldBy(host, uuid).map((resource) => ({ uuid, resource, error: describeError(error) })));
    }
  }
  return results;
}

/** Whether the domain has a journal, or one that cannot be read (recover names that one, and leaves what it holds). */
function journaled(host: Host, uuid: string): boolean {
  try {
    return readJournal(host, uuid) !== undefined;
  } catch {
    return true;
  }
}

/** The resources `uuid` holds in the ledger, last taken first: given back in the order a release undoes them. */
const heldBy = (host: Host, uuid: string): string[] =>
  Object.entries(claimsFor(host, uuid).list(""))
    .filter(([, claim]) => claim.holders.includes(uuid))
    .map(([resource]) => resource)
    .reverse();

async function giveBackClaimsOf(recovery: Recovery, plugins: Builtin[], uuid: string): Promise<OrphanClaim[]> {
  const { host } = recovery;
  // A hook that held the lock meanwhile may have journaled it, or given its claims back.
  const held = journaled(host, uuid) ? [] : heldBy(host, uuid);
  if (held.length === 0) return [];
  const running = uuidRunningOrWhyUnknown(host, uuid);
  if (running === true) return held.map((resource) => ({ uuid, resource, skipped: "running" }));
  if (running !== false) return held.map((resource) => ({ uuid, resource, skipped: "state-unknown", error: running }));
  const env = environment(recovery, uuid);
  const results: OrphanClaim[] = [];
  for (const resource of held) results.push({ uuid, resource, ...(await giveBackClaim(recovery, env, plugins, uuid, resource)) });
  return results;
}

/** The holder's claim on `resource`, given back by the undo of the plugin that takes such claims. */
async function giveBackClaim(recovery: Recovery, env: RunEnvironment, plugins: Builtin[], uuid: string, resource: string): Promise<Omit<OrphanClaim, "uuid" | "resource">> {
  try {
    const owner = plugins.map(({ id, plugin }) => ({ id, plugin, step: plugin.orphanedClaim?.(resource) })).find(({ step }) => step);
    if (!owner) return { error: `no plugin of this vmhook takes claims on ${resource}; bring it back by hand, then remove ${uuid} from its holders in ${paths.claims}` };
    const [outcome] = await undoUnjournaled(env, owner.id, owner.plugin, { name: uuid, uuid }, undoDeadline(recovery), () => [owner.step!]);
    return reported(outcome!);
  } catch (error) {
    return { error: describeError(error) };
  }
}

/** Every built-in plugin's shared state that no claim in any journal needs, given back under the host lock. */
export async function giveBackUnheldShared(recovery: Recovery): Promise<UnheldShared[]> {
  const plugins = (await builtins(recovery)).filter(({ plugin }) => plugin.unheldShared);
  try {
    // Nothing kept there: no lock is taken (nor /run/vmhook made) for nothing.
    if (recovery.host.list(`${paths.stateDir}/shared`).length === 0) return [];
    return await withHostLock(recovery.host, undoDeadline(recovery), async () => {
      const results: UnheldShared[] = [];
      for (const { id, plugin } of plugins) {
        try {
          let left: string | undefined;
          const outcomes = await undoUnjournaled(environment(recovery, id), id, plugin, { name: id, uuid: "" }, undoDeadline(recovery), (ctx) => {
            const steps = plugin.unheldShared!(ctx);
            left = steps.length > 0 ? runningWithoutJournal(recovery.host) : undefined;
            return left === undefined ? steps : [];
          });
          if (left !== undefined) results.push({ plugin: id, left });
          results.push(...outcomes.map((outcome) => ({ plugin: id, ...reported(outcome) })));
        } catch (error) {
          results.push({ plugin: id, error: describeError(error) });
        }
      }
      return results;
    });
  } catch (error) {
    return plugins.map(({ id }) => ({ plugin: id, error: describeError(error) }));
  }
}

/**
 * Why shared state no journal claims stays: a domain runs with no journal
 * (the one removed by hand while it ran may be the one that needed it), or
 * undefined. Throws when which domains run cannot be told.
 */
function runningWithoutJournal(host: Host): string | undefined {
  const unjournaled = runningDomains(host).filter(({ uuid }) => !journaled(host, uuid));
  if (unjournaled.length === 0) return undefined;
  const named = unjournaled.map(({ name, uuid }) => `${name} (${uuid})`).join(", ");
  return `${named} run${unjournaled.length === 1 ? "s" : ""} with no journal of it, and may need it; once ${unjournaled.length === 1 ? "it stops" : "they stop"}, run vmhook recover`;
}

/** A plugin's shared state no claim needs, as status and doctor show it: what recover would give back, or why that cannot be told. */
export interface UnheldSharedView {
  plugin: string;
  recoverWould?: string;
  /** Why recover leaves it for now (giveBackUnheldShared's runningWithoutJournal). */
  left?: string;
  error?: string;
}

/**
 * What giveBackUnheldShared would give back now, planned by the same plugin
 * function with no lock taken and nothing changed (status, doctor: a
 * snapshot). A release that ends while it reads (the originals forgotten,
 * then its journal removed) leaves one plan naming what its claim held: only
 * what two plans in a row name is shown. Each plugin's error when what the
 * plan is computed from cannot be read.
 */
export async function unheldSharedNow(host: Host, registry: PluginRegistry): Promise<UnheldSharedView[]> {
  const plugins = (await builtins({ host, registry })).filter(({ plugin }) => plugin.unheldShared);
  try {
    if (host.list(`${paths.stateDir}/shared`).length === 0) return [];
    const settings = loadSettings(host);
    const deadline = undoDeadline({ host, settings, registry, echo: "none", logToFile: false });
    const results: UnheldSharedView[] = [];
    for (const { id, plugin } of plugins) {
      const env: RunEnvironment = { host, settings, registry, log: createLogger(host, { domain: id, event: "status", echo: "none", file: false }) };
      const plan = () => planUnjournaled(env, id, { name: id, uuid: "" }, deadline, (ctx) => plugin.unheldShared!(ctx)).map((step) => step.description);
      try {
        const first = plan();
        const again = first.length > 0 ? plan() : [];
        const shown = first.filter((description) => again.includes(description));
        const left = shown.length > 0 ? runningWithoutJournal(host) : undefined;
        results.push(...shown.map((description) => ({ plugin: id, recoverWould: description, ...(left ? { left } : {}) })));
      } catch (error) {
        results.push({ plugin: id, error: describeError(error) });
      }
    }
    return results;
  } catch (error) {
    return plugins.map(({ id }) => ({ plugin: id, error: describeError(error) }));
  }
}

/** What status and doctor say of a plugin's shared state no claim needs. */
export function describeUnheldSharedView({ plugin, recoverWould, left, error }: UnheldSharedView): string {
  if (!recoverWould) return `${plugin}: cannot tell whether it keeps what no VM holds: ${error}`;
  const kept = `${plugin} keeps what no VM holds (no journal claims it)`;
  return left ? `${kept}: vmhook recover leaves it for now (${recoverWould}): ${left}` : `${kept}: vmhook recover would ${recoverWould}`;
}

/** What recover prints for a claim of a holder whose journal is gone. */
export function describeOrphanClaim({ uuid, resource, given, failed, skipped, error }: OrphanClaim): string {
  const claim = `claim ${resource} of ${uuid} (no journal of it is left`;
  if (given) return `${claim}, and it does not run): given back: ${given}`;
  if (failed) return `${claim}, and it does not run): could not be given back (${failed}): ${error}; fix the cause and run vmhook recover again`;
  if (skipped === "running") return `${claim}): left as it is: it still runs; once it stops, run vmhook recover`;
  if (skipped === "state-unknown") return `${claim}): left as it is: cannot tell whether it runs: ${error}`;
  if (skipped === "hook-at-work") return `${claim}): left as it is: a hook of this domain is at work right now; run vmhook recover again when it is done`;
  return `${claim}): not given back: ${error}`;
}

/** What recover prints for a plugin's shared state no claim needs. */
export function describeUnheldShared({ plugin, given, failed, left, error }: UnheldShared): string {
  if (given) return `${plugin}: given back what no VM holds: ${given}`;
  if (left) return `${plugin}: left what no journal holds: ${left}`;
  if (failed) return `${plugin}: could not give back what no VM holds (${failed}): ${error}; fix the cause and run vmhook recover again`;
  return `${plugin}: what no VM holds was not given back: ${error}`;
}
