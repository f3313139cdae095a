// Read-only commands: validate, plan, status. None of them changes the host.
import type { CommandModule } from "yargs";
import { loadDomainPlugins, type PluginInstance } from "../config.ts";
import { Deadline } from "../deadline.ts";
import { parseDomain, type Domain } from "../domain.ts";
import { RootedHost, type Host } from "../host.ts";
import { listJournals, newJournal, readJournal, type Journal } from "../journal.ts";
import { createLogger } from "../log.ts";
import type { HookEvent, PlannedEvent, Refusal } from "../plugin.ts";
import { loadSettings } from "../settings.ts";
import { planEvent, type PlannedStep } from "../transaction.ts";
import { registry } from "../../plugins/index.ts";
import type { GlobalOptions } from "./options.ts";
import { print, printJson, readDomainFile, sourceName } from "./output.ts";
import { domainBusy } from "../lock.ts";
import { domainRunning } from "./recover.ts";

interface DomainArgs extends GlobalOptions {
  domain: string;
}

const validate: CommandModule<GlobalOptions, DomainArgs> = {
  command: "validate <domain>",
  describe: "check a domain XML's vmhook metadata without touching the host",
  builder: (y) => y.positional("domain", { type: "string", demandOption: true, describe: "domain XML file, or - for stdin" }),
  async handler(args) {
    const host = new RootedHost(args.root);
    const domain = parseDomain(readDomainFile(args.domain), sourceName(args.domain));
    const instances = await loadDomainPlugins(domain, host, registry);
    const refused = await refusedHere(host, domain, instances);
    if (refused.length > 0) {
      process.exitCode = 1;
      if (args.json) printJson({ ok: false, domain: { name: domain.name, uuid: domain.uuid }, refused });
      else print(`${sourceName(args.domain)}: valid, but prepare would refuse it on this host:\n${refused.map((reason) => `  ${reason}`).join("\n")}`);
      return;
    }
    if (args.json) {
      printJson({ ok: true, domain: { name: domain.name, uuid: domain.uuid }, plugins: instances.map((i) => ({ id: i.id, config: i.config })) });
    } else if (instances.length === 0) {
      print(`${sourceName(args.domain)}: ok; ${domain.name} has no vmhook metadata, so the hook leaves it alone`);
    } else {
      print(`${sourceName(args.domain)}: ok; ${domain.name} runs ${instances.map((i) => i.id).join(", ")}`);
    }
  },
};

/** The steps `event` would take, from the plugins' planners: nothing on the host changes. */
async function planSteps(host: Host, domain: Domain, instances: PluginInstance[], event: Exclude<PlannedEvent, "reconnect">, echo: "stderr" | "none"): Promise<PlannedStep[]> {
  const log = createLogger(host, { domain: domain.name, event, echo, file: false });
  const settings = loadSettings(host);
  const journal = readJournal(host, domain.uuid) ?? newJournal(host, { name: domain.name, uuid: domain.uuid });
  return planEvent(event, instances, domain, journal, { host, log, settings, registry }, new Deadline(host, settings.deadlineSeconds * 1000));
}

/**
 * What prepare would refuse on this host (a request that cannot fit), from its
 * plan. Where the host cannot be read (another machine's XML, a bare
 * --root), validate checks the config alone.
 */
async function refusedHere(host: Host, domain: Domain, instances: PluginInstance[]): Promise<string[]> {
  if (instances.length === 0) return [];
  try {
    return (await planSteps(host, domain, instances, "prepare", "none")).flatMap((step) => (step.refused ? [`${step.plugin}: ${step.refused.reason}`] : []));
  } catch {
    return [];
  }
}

interface PlanArgs extends DomainArgs {
  event: string;
}

const PLANNABLE = ["prepare", "start", "started", "stopped", "release"] as const;

const plan: CommandModule<GlobalOptions, PlanArgs> = {
  command: "plan <domain>",
  describe: "dry run: the steps the hook would take for an event, changing nothing",
  builder: (y) =>
    y
      .positional("domain", { type: "string", demandOption: true, describe: "domain XML file, or - for stdin" })
      .option("event", { type: "string", choices: PLANNABLE, default: "prepare", describe: "the libvirt event to plan" }),
  async handler(args) {
    const host = new RootedHost(args.root);
    const domain = parseDomain(readDomainFile(args.domain), sourceName(args.domain));
    const instances = await loadDomainPlugins(domain, host, registry);
    const event = args.event as (typeof PLANNABLE)[number];
    let steps: PlannedStep[];
    if (event === "release") {
      const journal = readJournal(host, domain.uuid);
      steps = (journal?.entries ?? []).reverse().map((entry) => ({ plugin: entry.plugin, event: "release" as HookEvent, action: entry.undo.action, description: `undo: ${entry.description}`, record: entry.undo }));
    } else {
      steps = await planSteps(host, domain, instances, event, args.json ? "none" : "stderr");
    }
    // A step that cannot succeed here fails the plan, as it would fail the start.
    if (steps.some((step) => step.refused)) process.exitCode = 1;
    if (args.json) {
      printJson({ domain: { name: domain.name, uuid: domain.uuid }, event, steps });
      return;
    }
    if (steps.length === 0) {
      print(`${event} of ${domain.name}: nothing to do`);
      return;
    }
    print(`${event} of ${domain.name} would take ${steps.length} step(s):`);
    const refusal = (refused: Refusal) => [`REFUSED: ${refused.reason}`, ...refused.remedies.map((remedy) => `  ${remedy}`)].map((line) => `\n     ${line}`).join("");
    steps.forEach((step, index) => print(`  ${index + 1}. ${step.plugin}: ${step.description}${step.refused ? refusal(step.refused) : ""}`));
    if (process.exitCode === 1) print(`${event} of ${domain.name} would fail: vmhook refuses the marked step(s) before changing anything`);
  },
};

async function journalSummary(host: Host, journal: Journal) {
  return {
    domain: journal.domain,
    phase: journal.phase,
    running: domainRunning(host, journal.domain.name),
    hookAtWork: await domainBusy(host, journal.domain.uuid),
    since: journal.createdAt,
    holds: journal.entries.map((entry) => ({ plugin: entry.plugin, description: entry.description, state: entry.state, error: entry.error })),
  };
}

const status: CommandModule<GlobalOptions, GlobalOptions> = {
  command: "status",
  describe: "which VM holds what, from the journals in /run/vmhook",
  async handler(args) {
    const host = new RootedHost(args.root);
    const { journals, broken } = listJournals(host);
    const summaries = await Promise.all(journals.map((journal) => journalSummary(host, journal)));
    if (args.json) {
      printJson({ domains: summaries, unreadable: broken });
      return;
    }
    if (summaries.length === 0 && broken.length === 0) print("no VM holds anything (no journals in /run/vmhook)");
    for (const summary of summaries) {
      const state = summary.running ? "running" : summary.hookAtWork ? "its hook is at work right now" : "not running: run vmhook recover to give its changes back";
      print(`${summary.domain.name} (${summary.domain.uuid}) ${summary.phase}, ${state}`);
      for (const held of summary.holds) print(`  ${held.state === "applied" ? "-" : `[${held.state}]`} ${held.plugin}: ${held.description}${held.error ? `: ${held.error}` : ""}`);
    }
    for (const item of broken) print(`unreadable journal ${item.file}: ${item.error}`);
  },
};

export const inspectCommands = [validate, plan, status] as CommandModule<GlobalOptions, any>[];
