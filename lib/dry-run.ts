// A dry run of one event: the steps the hook would take, planned and not
// applied. Shared by `vmhook plan` and the commands that check a config
// against this host before saving it.
import type { PluginInstance } from "./config.ts";
import { Deadline } from "./deadline.ts";
import type { Domain } from "./domain.ts";
import type { Host } from "./host.ts";
import { newJournal, readJournal } from "./journal.ts";
import { leftoverBeforePrepare, LeftoverUnplanned } from "./leftover.ts";
import { createLogger } from "./log.ts";
import { runningOrWhyUnknown } from "./cli/running.ts";
import type { PluginRegistry } from "./plugin.ts";
import { loadSettings } from "./settings.ts";
import { planEvent, type PlannedStep } from "./transaction.ts";

export type PlannableEvent = "prepare" | "start" | "started" | "stopped";

export async function dryRun(host: Host, domain: Domain, instances: PluginInstance[], event: PlannableEvent, echo: "stderr" | "none", registry: PluginRegistry): Promise<PlannedStep[]> {
  // Changes of the domain in place are given back before its prepare plans: said, never planned past (the host it would plan on is not this one).
  if (event === "prepare") {
    // libvirt runs prepare only for a domain shut off: a running one's journal is its own run's, which its release gives back.
    // Only one libvirt runs (its pid file): for a QEMU libvirt lost track of it runs no release, and prepare's own refusal (leftoverBeforePrepare) names it.
    const running = runningOrWhyUnknown(host, { name: domain.name, uuid: undefined }) === true;
    const held = running ? readJournal(host, domain.uuid) : leftoverBeforePrepare(host, domain);
    // A leftover listing no change (a release that could not remove it) gives nothing back: prepare plans on the host as it is.
    if (held && (running || held.entries.length > 0)) throw new LeftoverUnplanned(domain, held, running);
  }
  const log = createLogger(host, { domain: domain.name, event, echo, file: false });
  const settings = loadSettings(host);
  // A prepare starts a journal of its own; the later events join the one it wrote.
  const journal = (event !== "prepare" && readJournal(host, domain.uuid)) || newJournal(host, domain);
  return planEvent(event, instances, domain, journal, { host, log, settings, registry }, new Deadline(host, settings.deadlineSeconds * 1000));
}
