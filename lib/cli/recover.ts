// `vmhook recover`: give back what journals hold for domains that no longer
// run (the hook was killed, the host crashed mid-release, an undo failed),
// then what no journal holds any more (recover-unheld.ts).
// Whether a domain runs is read from libvirt's own state directory, never by
// calling libvirt.
import type { CommandModule } from "yargs";
import { Deadline } from "../deadline.ts";
import { nameArgument, recoverCommandLine } from "../metadata-text.ts";
import type { Host } from "../host.ts";
import { claimsLedgerError } from "../claims.ts";
import { listJournals, readJournal, type Journal } from "../journal.ts";
import { ifDomainIdle } from "../lock.ts";
import { createLogger, logRefusal, oneLine } from "../log.ts";
import { paths } from "../paths.ts";
import { processInstance } from "../processes.ts";
import { runningOrWhyUnknown } from "./running.ts";
import { definedUuid, libvirtNaming, namingArgument, namingText } from "../definitions.ts";
import { describeOrphanClaim, describeUnheldShared, giveBackOrphanClaims, giveBackUnheldShared, type Recovery } from "./recover-unheld.ts";
import { loadSettings } from "../settings.ts";
import { staleJournalNote, undoJournal, undoneText, unremovedJournalNote } from "../transaction.ts";
import { describeFinishedWrite, forgetFinishedWrites } from "../stuck-writes.ts";
import { lonelyTemps, readStateFile, refuseUntrustedStateDir, removeStaleTemps } from "../state-files.ts";
import { registry } from "../../plugins/index.ts";
import type { GlobalOptions } from "./options.ts";
import { print, printJson } from "./output.ts";
import { PATTERNS } from "../validate.ts";

/**
 * The unreadable journals that may be the named domain's: by UUID its own
 * file; by name (a broken journal does not say whose it is) every one, unless
 * the domain's own journal was read.
 */
function unreadableOf(name: string | undefined, broken: { file: string; error: string }[], found: boolean): { file: string; error: string }[] {
  if (name === undefined) return broken;
  const uuid = name.toLowerCase();
  if (PATTERNS.uuid.test(uuid)) return broken.filter((item) => item.file === paths.journal(uuid));
  return found ? [] : broken;
}

/**
 * A journal in phase "starting" without a pid file: libvirt launches QEMU,
 * and writes its pid file, only after the prepare and start hooks.
 */
export const BEING_STARTED = "libvirt is starting it (prepared; QEMU not launched yet), or its libvirtd stopped while starting it";
export const forceWhenShutOff = (name: string) => `if virsh domstate ${nameArgument(name)} says shut off and no start is under way, run ${recoverCommandLine(name, true)}`;

/**
 * Why a journal still "starting" is left over: libvirt's daemon that ran its
 * prepare is gone, and a daemon started again does not resume a start (a
 * QEMU it had launched would have a pid file, checked first). Undefined while
 * that daemon runs, when the journal does not name it (written by an older
 * vmhook, or the daemon was not found), or when /proc cannot tell.
 */
export function abandonedStart(host: Host, journal: Journal): string | undefined {
  const { phase, starter } = journal;
  if (phase !== "starting" || typeof starter?.instance !== "string") return undefined;
  const pid = Number(starter.instance.split(":")[0]);
  try {
    if (processInstance(host, pid) === starter.instance) return undefined;
  } catch {
    return undefined;
  }
  return `${starter.command} (pid ${pid}), which was starting it, is gone`;
}

/** The domain name in a journal's temp copy; undefined when the copy cannot be read (cut off as it was written): then only its UUID names it. */
function nameInTemp(host: Host, temp: string): string | undefined {
  try {
    const name = (JSON.parse(readStateFile(host, temp, "journal copy") ?? "null") as Partial<Journal> | null)?.domain?.name;
    return typeof name === "string" ? name : undefined;
  } catch {
    return undefined;
  }
}

interface RecoverArgs extends GlobalOptions {
  name?: string;
  force: boolean;
}

export const recoverCommand: CommandModule<GlobalOptions, RecoverArgs> = {
  command: "recover [name]",
  describe: "undo the journals of domains that are no longer running (all, or the one named); also give back what no journal holds: the claims of a domain whose journal is gone (all, or that UUID) and shared state no claim needs (all)",
  builder: (y) =>
    y
      .positional("name", { type: "string", describe: "domain name or UUID" })
      .option("force", { type: "boolean", default: false, describe: "undo even if libvirt's state says the domain still runs, or it is being started" }),
  async handler(args) {
    const host = args.host;
    const settings = loadSettings(host);
    // What others could have put there is not undone, nor any note there removed, as the hook would not.
    refuseUntrustedStateDir(host);
    // README's advice when the hook seems never to run: a log vmhook will not write through is said here, once, even when nothing is recovered.
    const logRefused = logRefusal(host);
    if (logRefused) process.stderr.write(`vmhook: warn: ${oneLine(logRefused)}\n`);
    const logToFile = logRefused === undefined;
    const { journals, broken } = listJournals(host);
    // Helpers that were blocked in a driver and have finished since: their notes go, so the undos below may write to those devices again.
    const finished = forgetFinishedWrites(host);
    if (!args.json) for (const write of finished) print(describeFinishedWrite(write));
    // By name: the journal's, or libvirt's now (renamed since it started); or by UUID.
    const named = args.name === undefined ? undefined : [args.name.toLowerCase(), definedUuid(host, args.name)];
    const isChosen = (domain: { name?: string; uuid: string }) => !args.name || domain.name === args.name || named!.includes(domain.uuid);
    // A hook killed writing its domain's first journal left only the temp copy: nothing to undo; it goes under the domain's lock, as the next hook's would.
    for (const { file, temp } of lonelyTemps(host, paths.stateDir)) {
      const uuid = file.slice(paths.stateDir.length + 1, -".json".length);
      if (PATTERNS.uuid.test(uuid) && isChosen({ uuid, name: nameInTemp(host, temp) })) await ifDomainIdle(host, uuid, async () => removeStaleTemps(host, file));
    }
    const chosen = journals.filter((j) => isChosen(j.domain));
    const results = [];
    for (const journal of chosen) {
      const { uuid } = journal.domain;
      const naming = libvirtNaming(host, journal.domain);
      // name: what the pid file is looked for by; shown: both names while two definitions carry the UUID.
      const { name } = naming;
      const shown = namingText(naming);
      const named = { domain: { name, uuid }, ...(naming.definedAs ? { definedAs: naming.definedAs } : {}) };
      // A hook of the domain holds its lock from start to end: undoing now
      // would take back what it is handing over, so nothing is decided
      // outside the lock, not even whether the domain runs (a started hook
      // may have marked it running since). --force does not override the lock.
      const log = createLogger(host, { domain: name, event: "recover", echo: args.json ? "none" : "stderr", file: logToFile });
      const outcome = await ifDomainIdle(host, uuid, async () => {
        // Read again under the lock: the journal listed above may be gone or rewritten since.
        const current = readJournal(host, uuid);
        if (!current) return { undone: 0, unfinished: 0, failed: [] };
        if (!args.force) {
          const running = runningOrWhyUnknown(host, { name, uuid });
          if (running !== false) return { running };
          // No pid file yet says nothing while libvirt is starting the VM: only --force takes that back, or the end of the daemon that was starting it.
          const abandoned = abandonedStart(host, current);
          if (current.phase === "starting" && !abandoned) return "starting" as const;
          if (abandoned && !args.json) print(`${shown}: its start was abandoned: ${abandoned}`);
        }
        return undoJournal(current, { host, log, settings, registry }, new Deadline(host, settings.undoDeadlineSeconds * 1000, "undoDeadlineSeconds"));
      });
      if (outcome.busy) {
        results.push({ ...named, skipped: "hook-at-work" });
        if (!args.json) print(`${shown}: a hook of this domain is at work right now; run vmhook recover again when it is done`);
        continue;
      }
      if (outcome.value === "starting") {
        results.push({ ...named, skipped: "starting" });
        if (!args.json) print(`${shown}: ${BEING_STARTED}; nothing of it was undone: ${forceWhenShutOff(namingArgument(naming, uuid))}`);
        process.exitCode = 1;
        continue;
      }
      if ("running" in outcome.value) {
        const { running } = outcome.value;
        if (typeof running === "string") {
          // Not knowing whether it runs is no licence to undo: this one waits, the others go on.
          results.push({ ...named, skipped: "state-unknown", error: running });
          if (!args.json) print(`${shown}: cannot tell whether it still runs: ${running}; nothing of it was undone`);
          process.exitCode = 1;
        } else {
          results.push({ ...named, skipped: "running" });
          if (!args.json) print(`${shown}: still running; its changes are given back when it stops (use --force to undo now)`);
        }
        continue;
      }
      const { undone, unfinished, failed, stale, unremoved } = outcome.value;
      results.push({ ...named, undone, unfinished, failed: failed.map((e) => ({ plugin: e.plugin, description: e.description, error: e.error })), ...(stale ? { stale } : {}), ...(unremoved ? { unremoved } : {}) });
      const argument = namingArgument(naming, uuid);
      // A journal left behind, listing a change or none, is a recover that has not finished: said on stdout, and the exit says it too.
      const left = stale ? [staleJournalNote(stale, argument)] : unremoved ? [unremovedJournalNote(unremoved, { name: argument, uuid })] : [];
      if (!args.json) {
        const given = undoneText(outcome.value);
        if (failed.length > 0) print(`${shown}: ${given}; ${failed.length} still failing (see above): fix the cause and run vmhook recover again`);
        else print(`${shown}: ${given}${left.length > 0 ? `, but ${left[0]}` : ""}`);
        if (failed.length > 0 && left.length > 0) print(`${shown}: ${left[0]}`);
      }
      if (failed.length > 0 || left.length > 0) process.exitCode = 1;
    }
    // What no journal holds: claims of a domain whose journal is gone (recovering all, or its UUID), and shared state no claim needs (recovering all).
    const recovery: Recovery = { host, settings, registry, echo: args.json ? "none" : "stderr", logToFile };
    const uuid = args.name?.toLowerCase();
    const orphanClaims = uuid === undefined || PATTERNS.uuid.test(uuid) ? await giveBackOrphanClaims(recovery, uuid) : [];
    const unheldShared = args.name ? [] : await giveBackUnheldShared(recovery);
    if ([...orphanClaims, ...unheldShared].some((item) => item.error)) process.exitCode = 1;
    // Journals it cannot read are left as they are, and said so: they may hold changes.
    const unreadable = unreadableOf(args.name, broken, chosen.length > 0);
    // The ledger is no one domain's: a recover of all says when it cannot be read, as for a journal.
    const unreadableClaims = args.name ? undefined : claimsLedgerError(host);
    if (unreadable.length > 0 || unreadableClaims) process.exitCode = 1;
    if (args.json) {
      printJson({ recovered: results, orphanClaims, unheldShared, unreadable, finishedStuckWrites: finished, ...(unreadableClaims ? { unreadableClaims } : {}) });
      return;
    }
    for (const claim of orphanClaims) print(describeOrphanClaim(claim));
    for (const shared of unheldShared) print(describeUnheldShared(shared));
    if (chosen.length + orphanClaims.length + unheldShared.length === 0 && unreadable.length === 0 && !unreadableClaims) print(args.name ? `nothing to recover for ${args.name} (no journal in ${paths.stateDir})` : "nothing to recover");
    for (const item of unreadable) print(`unreadable journal ${item.file}: ${item.error}; nothing of it was undone`);
    if (unreadableClaims) print(`unreadable claims ledger: ${unreadableClaims}; nothing it holds was given back`);
  },
};
