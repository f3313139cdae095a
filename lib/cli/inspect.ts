// Read-only commands: validate, plan, status. None of them changes the host.
import type { CommandModule } from "yargs";
import { loadDomainPlugins, type PluginInstance } from "../config.ts";
import { parseDomain, type Domain } from "../domain.ts";
import { describeError, VmhookError } from "../errors.ts";
import { recoverCommandLine } from "../metadata-text.ts";
import type { Host } from "../host.ts";
import { runDoctor } from "../diagnostics/doctor.ts";
import { dryRun } from "../dry-run.ts";
import { LeftoverUnplanned } from "../leftover.ts";
import { markRefused, refusalOf } from "../plan-feasibility.ts";
import { notCheckedHere, readDomainSource } from "./domain-source.ts";
import { describeRunHolding } from "../custom-plugins/executable.ts";
import { readJournal, type Journal } from "../journal.ts";
import { isLegacyPlugin, type HookEvent, type PlannedEvent, type Refusal } from "../plugin.ts";
import type { PlannedStep } from "../transaction.ts";
import { registry } from "../../plugins/index.ts";
import type { GlobalOptions } from "./options.ts";
import { print, printJson } from "./output.ts";
import { domainBusy } from "../lock.ts";
import { abandonedStart } from "./recover.ts";
import { describeUnheldSharedView, unheldSharedNow } from "./recover-unheld.ts";
import { runningOrWhyUnknown } from "./running.ts";
import type { SessionDaemon } from "../libvirt-client.ts";
import { libvirtNaming, namingArgument, namingText, twoDefinitionsText, type DomainNaming } from "../definitions.ts";
import { adviceFor, describeStuckWrite, listStuckWrites } from "../stuck-writes.ts";
import { journalsAndClaims, type HolderView } from "../claims.ts";
import type { Json } from "../records.ts";
import { refuseUntrustedStateDir } from "../state-files.ts";

interface DomainArgs extends GlobalOptions {
  domain: string;
  connect?: string;
}

const validate: CommandModule<GlobalOptions, DomainArgs> = {
  command: "validate <domain>",
  describe: "check a domain XML's vmhook metadata without touching the host",
  builder: (y) =>
    y
      .positional("domain", { type: "string", demandOption: true, describe: DOMAIN_ARGUMENT })
      .option("connect", { alias: "c", type: "string", requiresArg: true, describe: "libvirt URI, as virsh --connect (for a domain name)" }),
  async handler(args) {
    const host = args.host;
    const source = readDomainSource(args.domain, host, args.connect);
    let domain: Domain | undefined;
    let instances: PluginInstance[];
    try {
      domain = parseDomain(source.xml, source.source);
      instances = await loadDomainPlugins(domain, host, registry);
    } catch (error) {
      // --json answers "is it valid?" here too, never with an empty stdout; the message still goes to stderr.
      if (args.json) printJson({ ok: false, ...(domain ? { domain: { name: domain.name, uuid: domain.uuid } } : {}), ...errorFields("invalid", error) });
      throw error;
    }
    if (source.session) return validSessionDomain(source.source, domain, instances, source.session, args.json);
    const hostCheck = await checkHere(host, domain, instances, source.onThisHost, args.domain);
    if ("refused" in hostCheck && hostCheck.refused.length > 0) {
      process.exitCode = 1;
      if (args.json) printJson({ ok: false, domain: { name: domain.name, uuid: domain.uuid }, refused: hostCheck.refused });
      else print(`${source.source}: valid, but prepare would refuse it on this host:\n${hostCheck.refused.map((reason) => `  ${reason}`).join("\n")}`);
      return;
    }
    // A config valid elsewhere is still valid: exit 0, but never pass "not checked" off as "fits here".
    const unchecked = "unchecked" in hostCheck ? hostCheck.unchecked : undefined;
    if (args.json) {
      printJson({ ok: true, domain: { name: domain.name, uuid: domain.uuid }, plugins: instances.map((i) => ({ id: i.id, config: i.config })), hostChecked: !unchecked, ...(unchecked ? { notChecked: unchecked } : {}) });
    } else if (instances.length === 0) {
      print(`${source.source}: ok; ${domain.name} has no vmhook metadata, so the hook leaves it alone`);
    } else {
      print(`${source.source}: ok; ${domain.name} runs ${instances.map((i) => i.id).join(", ")}${unchecked ? `\n  the config is valid, but it was ${unchecked}` : ""}`);
    }
  },
};

/**
 * validate's answer for a session daemon's domain: its config, never this
 * host's check (no prepare of it runs as root), and why vmhook cannot act for
 * it; exit 1 when it has vmhook metadata, as a start of it then fails.
 */
function validSessionDomain(source: string, domain: Domain, instances: PluginInstance[], session: SessionDaemon, json: boolean): void {
  if (instances.length > 0) process.exitCode = 1;
  if (json) {
    printJson({ ok: instances.length === 0, domain: { name: domain.name, uuid: domain.uuid }, plugins: instances.map((i) => ({ id: i.id, config: i.config })), hostChecked: false, session });
    return;
  }
  const verdict = instances.length > 0 ? `valid, but vmhook cannot run ${instances.map((i) => i.id).join(", ")} for ${domain.name}` : `ok; ${domain.name} has no vmhook metadata, so the hook leaves it alone, and could do nothing for it`;
  print(`${source}: ${verdict}: ${session.reason}\n  fix: ${session.fix}`);
}

/** An error as --json reports it: its message under `key`, and its further lines (the fix) as details when it has any. */
function errorFields(key: string, error: unknown): Record<string, string | string[]> {
  return { [key]: describeError(error), ...(error instanceof VmhookError && error.lines.length > 0 ? { details: error.lines } : {}) };
}

/**
 * What prepare would refuse on this host (a request that cannot fit, a plan
 * that fails), from its plan. A file or another host's libvirt may describe a
 * VM of another machine, whose devices this host need not have: a plan that
 * fails there leaves the config checked alone, saying why the host was not,
 * as do the domain's changes in place, which are given back before its prepare plans.
 */
async function checkHere(host: Host, domain: Domain, instances: PluginInstance[], onThisHost: boolean, domainArgument: string): Promise<{ refused: string[] } | { unchecked: string }> {
  if (instances.length === 0) return { refused: [] };
  try {
    return { refused: (await dryRun(host, domain, instances, "prepare", "none", registry)).flatMap((step) => (step.refused ? [step.refused.reason] : [])) };
  } catch (error) {
    // The domain's changes in place (it runs, or an earlier run left them): not a refusal, but no plan of this host either.
    if (error instanceof LeftoverUnplanned) return { unchecked: error.notChecked };
    return onThisHost ? { refused: [describeError(error).split("\n")[0]!] } : { unchecked: notCheckedHere(error, domainArgument) };
  }
}

interface PlanArgs extends DomainArgs {
  event: string;
  connect?: string;
}

const DOMAIN_ARGUMENT = "a libvirt domain's name, a domain XML file (with a / or ending in .xml: ./vm), or - for stdin";

const PLANNABLE = ["prepare", "start", "started", "stopped", "release"] as const;

const plan: CommandModule<GlobalOptions, PlanArgs> = {
  command: "plan <domain>",
  describe: "dry run: the steps the hook would take for an event, changing nothing; exit 1 when one cannot succeed here",
  builder: (y) =>
    y
      .positional("domain", { type: "string", demandOption: true, describe: DOMAIN_ARGUMENT })
      .option("event", { type: "string", requiresArg: true, choices: PLANNABLE, default: "prepare", describe: "the libvirt event to plan" })
      .option("connect", { alias: "c", type: "string", requiresArg: true, describe: "libvirt URI, as virsh --connect (for a domain name)" }),
  async handler(args) {
    const host = args.host;
    const source = readDomainSource(args.domain, host, args.connect);
    const event = args.event as (typeof PLANNABLE)[number];
    let domain: Domain | undefined;
    let instances: PluginInstance[];
    let planned: PlannedStep[];
    try {
      domain = parseDomain(source.xml, source.source);
      instances = await loadDomainPlugins(domain, host, registry);
      // No step of a plan would be what happens: the system's state (its networks, its journals) says nothing of this domain.
      if (source.session) return sessionPlan(domain, event, instances, source.session, args.json);
      if (event === "release") {
        const journal = readJournal(host, domain.uuid);
        planned = (journal?.entries ?? []).reverse().map((entry) => ({ plugin: entry.plugin, event: "release" as HookEvent, action: entry.undo.action, description: `undo: ${entry.description}`, record: entry.undo }));
      } else {
        planned = await dryRun(host, domain, instances, event, args.json ? "none" : "stderr", registry);
      }
    } catch (error) {
      // --json keeps its shape when there is no plan: nothing possible, and why; the message still goes to stderr.
      if (args.json) printJson({ ...(domain ? { domain: { name: domain.name, uuid: domain.uuid } } : {}), event, steps: [], blocking: [], possible: false, ...errorFields("error", error) });
      throw error;
    }
    // What the plugins' checks say cannot work on this host (prepare is where the host must give something).
    const findings = event === "prepare" ? ((await runDoctor(host, { file: source.source, xml: source.xml })).domain?.findings ?? []) : [];
    const planning = instances.filter(({ plugin }) => (isLegacyPlugin(plugin) ? plugin[event as PlannedEvent] : plugin.plan[event as PlannedEvent])).map(({ id }) => id);
    const { steps, blocking } = markRefused(planned, findings, planning);
    const refused = steps.filter((step) => step.refused).length + blocking.length;
    if (refused > 0) process.exitCode = 1;
    if (args.json) {
      printJson({ domain: { name: domain.name, uuid: domain.uuid }, event, steps, blocking, possible: refused === 0 });
      return;
    }
    if (steps.length === 0 && blocking.length === 0) {
      print(`${event} of ${domain.name}: nothing to do`);
      return;
    }
    print(`${event} of ${domain.name} would take ${steps.length} step(s):`);
    const refusal = (refused: Refusal) => [`REFUSED: ${refused.reason}`, ...refused.remedies.map((remedy) => `  ${remedy}`)].map((line) => `\n     ${line}`).join("");
    steps.forEach((step, index) => print(`  ${index + 1}. ${step.plugin}: ${step.description}${step.refused ? refusal(step.refused) : ""}`));
    for (const finding of blocking) print(`  ${finding.plugin}:${refusal(refusalOf(finding))}`);
    // The planners' own marks stop prepare before it acts; a failing check makes it fail (and roll back) on the way.
    if (planned.some((step) => step.refused)) print(`${event} of ${domain.name} would fail: vmhook refuses the marked step(s) before changing anything`);
    else if (refused > 0) print(`${event} of ${domain.name} cannot succeed on this host: ${refused} refused step(s) or check(s) above`);
  },
};

/** plan's answer for a session daemon's domain: no plan, and why; exit 1 when it has vmhook metadata, as a start of it then fails. */
function sessionPlan(domain: Domain, event: string, instances: PluginInstance[], session: SessionDaemon, json: boolean): void {
  const possible = instances.length === 0;
  if (!possible) process.exitCode = 1;
  if (json) printJson({ domain: { name: domain.name, uuid: domain.uuid }, event, steps: [], blocking: [], possible, session });
  else print(`${event} of ${domain.name}: ${possible ? "nothing to do (no vmhook metadata), and " : ""}vmhook cannot act for it: ${session.reason}\n  fix: ${session.fix}`);
}

async function journalSummary(host: Host, journal: Journal) {
  // Named as libvirt names it now: its pid file, and what vmhook recover is given, go by that name.
  const { name, nameWhenStarted, definedAs } = libvirtNaming(host, journal.domain);
  const domain = { name, uuid: journal.domain.uuid };
  const running = runningOrWhyUnknown(host, domain);
  const abandoned = running === false ? abandonedStart(host, journal) : undefined;
  return {
    domain,
    ...(nameWhenStarted ? { nameWhenStarted } : {}),
    ...(definedAs ? { definedAs } : {}),
    phase: journal.phase,
    // null with the reason when its pid file cannot be read: neither "running" nor "not running".
    running: typeof running === "string" ? null : running,
    ...(typeof running === "string" ? { runningUnknown: running } : {}),
    ...(abandoned ? { abandonedStart: abandoned } : {}),
    hookAtWork: await domainBusy(host, journal.domain.uuid),
    since: journal.createdAt,
    holds: journal.entries.map((entry) => {
      // An executable's description says only that it ran; what it replied says what it holds.
      const holding = entry.plugin.startsWith("plugin:") ? describeRunHolding(entry.undo) : undefined;
      return { plugin: entry.plugin, description: holding ? `${entry.description}: ${holding}` : entry.description, state: entry.state, error: entry.error };
    }),
  };
}

const PHASES: Record<string, string> = { preparing: "preparing", releasing: "releasing", "rolling-back": "undoing a start that failed", "release-failed": "its release failed", "rollback-failed": "its start failed, and undoing it did not finish" };

const naming = (summary: Awaited<ReturnType<typeof journalSummary>>): DomainNaming => ({ name: summary.domain.name, definedAs: summary.definedAs });

/** The VM's state and the journal's phase, said once each: "running", "not running, …". */
function describeState(summary: Awaited<ReturnType<typeof journalSummary>>): string {
  const phase = PHASES[summary.phase];
  if (summary.hookAtWork) return `its hook is at work right now${phase ? ` (${phase})` : ""}; vmhook holds for it`;
  if (summary.running === null) return `cannot tell whether it runs (${summary.runningUnknown}); vmhook holds for it`;
  if (summary.running) return `running${phase ? `, ${phase}` : ""}; vmhook holds for it`;
  const recover = recoverCommandLine(namingArgument(naming(summary), summary.domain.uuid));
  if (summary.abandonedStart) return `its start was abandoned (${summary.abandonedStart}), yet vmhook still holds for it (${recover} gives it back)`;
  if (summary.phase === "starting") return "being started (prepared; QEMU not launched yet); vmhook holds for it";
  return `not running${phase ? ` (${phase})` : ""}, yet vmhook still holds for it (${recover} gives it back)`;
}

const HOLDER_WITHOUT_JOURNAL = { unreadable: "its journal cannot be read", changing: "its journal is being written or removed right now" } as const;

function describeClaimHolder(holder: HolderView): string {
  if (holder.name) return holder.name;
  return `${holder.uuid} (${holder.journal === false ? "no journal of it is left, so no release gives it back: vmhook recover does once it does not run" : HOLDER_WITHOUT_JOURNAL[holder.journal as keyof typeof HOLDER_WITHOUT_JOURNAL]})`;
}

/** "; waiting: 0000:01:00.0 (nvidia)": what the last releaser brings back too. */
function describeWaiting(waiting: Json[]): string {
  if (waiting.length === 0) return "";
  const item = (entry: Json) => {
    const { address, driver } = (entry ?? {}) as { address?: unknown; driver?: unknown };
    return typeof address === "string" && typeof driver === "string" ? `${address} (${driver})` : JSON.stringify(entry);
  };
  return `; waiting: ${waiting.map(item).join(", ")}`;
}

const status: CommandModule<GlobalOptions, GlobalOptions> = {
  command: "status",
  describe: "which VM holds what, from the journals in /run/vmhook",
  async handler(args) {
    const host = args.host;
    // What others could have put there is not shown as what VMs hold.
    refuseUntrustedStateDir(host);
    // The ledger may hold what no journal does any more (a journal removed by hand): shown apart, never folded into "nothing".
    const { journals, broken, claims: claimViews, claimsError } = journalsAndClaims(host);
    const summaries = await Promise.all(journals.map((journal) => journalSummary(host, journal)));
    const stuck = listStuckWrites(host);
    // Shared state no journal claims any more (what vmhook recover gives back), or why that cannot be told.
    const unheldShared = await unheldSharedNow(host, registry);
    if (args.json) {
      printJson({ domains: summaries, unreadable: broken, stuckWrites: stuck, claims: claimViews, unheldShared, ...(claimsError ? { unreadableClaims: claimsError } : {}) });
      return;
    }
    const nothing = summaries.length + broken.length + stuck.length + Object.keys(claimViews).length + unheldShared.length === 0 && !claimsError;
    if (nothing) print("no VM holds anything (no journals in /run/vmhook)");
    for (const summary of summaries) {
      const renamed = summary.nameWhenStarted === undefined ? "" : `, ${summary.nameWhenStarted} when it started`;
      const twice = twoDefinitionsText(naming(summary), summary.domain.uuid);
      print(`${namingText(naming(summary))} (${summary.domain.uuid}${renamed}${twice ? `; ${twice}` : ""}): ${describeState(summary)}:`);
      for (const held of summary.holds) print(`  ${held.state === "applied" ? "-" : `[${held.state}]`} ${held.plugin}: ${held.description}${held.error ? `: ${held.error}` : ""}`);
    }
    for (const item of broken) print(`unreadable journal ${item.file}: ${item.error}`);
    for (const [resource, view] of Object.entries(claimViews)) print(`claim ${resource}: held by ${view.holders.map(describeClaimHolder).join(", ")}${describeWaiting(view.waiting)}`);
    if (claimsError) print(`unreadable claims ledger: ${claimsError}`);
    for (const shared of unheldShared) print(describeUnheldSharedView(shared));
    for (const write of stuck) print(`stuck driver: ${describeStuckWrite(write)}\n  ${write.running ? adviceFor(host, write) : "vmhook recover forgets this note and finishes what the journal still holds"}`);
  },
};

export const inspectCommands = [validate, plan, status] as CommandModule<GlobalOptions, any>[];
