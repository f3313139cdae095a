// A dry run of one event: the steps the hook would take, collected instead of
// run. Shared by `vmhook plan` and the commands that check a config against
// this host before saving it.
import type { PluginInstance } from "./config.ts";
import { Deadline } from "./deadline.ts";
import type { Domain } from "./domain.ts";
import type { Host } from "./host.ts";
import { newJournal, readJournal } from "./journal.ts";
import { createLogger } from "./log.ts";
import { loadSettings } from "./settings.ts";
import { runHandlers, type PlannedStep } from "./transaction.ts";

export type PlannableEvent = "prepare" | "start" | "started" | "stopped";

export async function dryRun(host: Host, domain: Domain, instances: PluginInstance[], event: PlannableEvent, echo: "stderr" | "none"): Promise<PlannedStep[]> {
  const steps: PlannedStep[] = [];
  const log = createLogger(host, { domain: domain.name, event, echo, file: false });
  const settings = loadSettings(host);
  const journal = readJournal(host, domain.uuid) ?? newJournal(host, { name: domain.name, uuid: domain.uuid });
  await runHandlers(event, instances, domain, journal, { host, log, settings, dryRun: { steps } }, new Deadline(host, settings.deadlineSeconds * 1000));
  return steps;
}
