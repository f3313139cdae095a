// A journal an earlier run of the domain left (a prepare killed, a start
// libvirt abandoned before QEMU ran): prepare refuses while a QEMU of the
// domain runs, and otherwise gives it back first and plans on the host as
// that leaves it. The one rule the hook's prepare acts by and `vmhook plan`
// (with validate and enable) reports by; release keeps a journal alike
// while that QEMU runs.
import type { Domain } from "./domain.ts";
import { describeError, VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import { readJournal, type Journal } from "./journal.ts";
import { recoverCommandLine } from "./metadata-text.ts";
import { paths } from "./paths.ts";
import { domainQemus } from "./processes.ts";

/** The leftover journal prepare gives back before it plans, if any; throws prepare's refusal while a QEMU of the domain runs. */
export function leftoverBeforePrepare(host: Host, domain: Domain): Journal | undefined {
  const leftover = readJournal(host, domain.uuid);
  if (leftover) refuseIfQemuRuns(host, domain, leftover);
  return leftover;
}

/**
 * libvirt runs prepare only for a domain it believes shut off, and release
 * once it has killed the domain's QEMU, or after a failed start (a refused
 * prepare) without one: a QEMU of this UUID alive now is a guest libvirt
 * lost track of, and what the journal holds (devices, pages, CPUs) is that
 * guest's. Neither event takes it from under it.
 */
function refuseIfQemuRuns(host: Host, { name }: Domain, leftover: Journal): void {
  const live = liveQemus(host, leftover, `prepare of ${name} refused`, EARLIER_RUN, [`once /proc can be read, start ${name} again`]);
  if (live.length === 0) return;
  throw new VmhookError(`prepare of ${name} refused: ${lostQemu(live, leftover, EARLIER_RUN)}`, [
    `shut that guest down from inside, or kill ${live.join(" ")}, then start ${name} again: prepare gives back what the earlier run holds first`,
    "vmhook status shows what it holds",
  ]);
}

/** release: see refuseIfQemuRuns; the journal stays for the next prepare or vmhook recover once that QEMU has gone. */
export function keepWhileQemuRuns(host: Host, journal: Journal): void {
  const { name } = journal.domain;
  const recover = recoverCommandLine(name);
  const live = liveQemus(host, journal, `release of ${name}`, ITS_JOURNAL, [`once /proc can be read and no QEMU of ${name} runs, run ${recover}`]);
  if (live.length === 0) return;
  throw new VmhookError(`release of ${name}: ${lostQemu(live, journal, ITS_JOURNAL)}`, [
    `once it has exited (shut that guest down from inside, or kill ${live.join(" ")}), run ${recover}`,
    "vmhook status shows what it holds",
  ]);
}

const EARLIER_RUN = "an earlier run made for it";
const ITS_JOURNAL = "its journal holds";
const keptChanges = (journal: Journal, whose: string) => `the ${journal.entries.length} change(s) ${whose} are kept`;

/** The pids of every live QEMU of the journal's domain; when /proc cannot tell, `what` fails and the journal is kept. */
function liveQemus(host: Host, journal: Journal, what: string, whose: string, remedies: string[]): number[] {
  try {
    return domainQemus(host, journal.domain.uuid, journal);
  } catch (error) {
    throw new VmhookError(`${what}: whether a QEMU of this domain still runs cannot be told (${describeError(error)}), so ${keptChanges(journal, whose)}`, remedies);
  }
}

/** Why a journal stays: the domain's QEMU that libvirt lost track of still runs. */
function lostQemu(live: number[], journal: Journal, whose: string): string {
  // At release it may also be the domain's own QEMU that libvirt killed and that has not exited (stuck in a device's driver).
  const which = whose === ITS_JOURNAL ? "which libvirt has lost track of, or which has not exited since libvirt killed it (stuck in the kernel)" : "which libvirt has lost track of";
  return `a QEMU of this domain still runs (pid ${live.join(", ")}, -uuid ${journal.domain.uuid}), ${which}; ${keptChanges(journal, whose)}, not taken from under it`;
}

/**
 * Why no plan of prepare can be shown while a journal of the domain holds
 * changes: prepare's steps are planned on the host once they are given back
 * (by its release, while it runs; by prepare itself, when an earlier run
 * left them), and planning them now would read the host as they left it (a
 * GPU already on vfio-pci, pages already reserved).
 */
export class LeftoverUnplanned extends VmhookError {
  constructor(domain: Domain, journal: Journal, running: boolean) {
    const held = `${journal.entries.length} change(s)`;
    const where = `its journal ${paths.journal(domain.uuid)}`;
    super(
      running
        ? `${domain.name} runs now, holding the ${held} of ${where}: its release gives them back, and the prepare of its next start plans on the host as that leaves it, which cannot be planned while they are in place`
        : `prepare of ${domain.name} first gives back the ${held} an earlier run of it left (${where}, phase ${journal.phase}), then plans on the host as that leaves it, which cannot be planned while they are in place`,
      [
        ...[...journal.entries].reverse().map((entry) => `undo: ${entry.plugin}: ${entry.description}`),
        running
          ? `once ${domain.name} is shut off, vmhook plan shows the steps`
          : `once ${domain.name} is shut off, ${recoverCommandLine(domain.name)} gives them back now; then vmhook plan shows the steps (vmhook status shows what it holds)`,
      ],
    );
  }

  /** What validate and enable say in place of the host's check: why, and when it can be made. */
  get notChecked(): string {
    return `NOT checked against this host: ${this.message}; ${this.lines.at(-1)}`;
  }
}
