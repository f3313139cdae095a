// A dry run of one event: the steps the hook would take, planned and not
// applied. Shared by `vmhook plan` and the commands that check a config
// against this host before saving it.
import type { PluginInstance } from "./config.ts";
import { Deadline } from "./deadline.ts";
import type { Domain } from "./domain.ts";
import type { Host } from "./host.ts";
import { newJournal, readJournal } from "./journal.ts";
import { createLogger } from "./log.ts";
import type { PluginRegistry } from "./plugin.ts";
import { loadSettings } from "./settings.ts";
import { planEvent, type PlannedStep } from "./transaction.ts";

export type PlannableEvent = "prepare" | "start" | "started" | "stopped";

export async function dryRun(host: Host, domain: Domain, instances: PluginInstance[], event: PlannableEvent, echo: "stderr" | "none", registry: PluginRegistry): Promise<PlannedStep[]> {
  const log = createLogger(host, { domain: domain.name, event, echo, file: false });
  const settings = loadSettings(host);
  const journal = readJournal(host, domain.uuid) ?? newJournal(host, { name: domain.name, uuid: domain.uuid });
  return planEvent(event, instances, domain, journal, { host, log, settings, registry }, new Deadline(host, settings.deadlineSeconds * 1000));
}
