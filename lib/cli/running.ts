// Whether a domain's QEMU runs, read from libvirt's own state directory
// (/run/libvirt/qemu/NAME.pid), never by calling libvirt; or why that cannot
// be told, which is never taken for "not running".
import { describeError } from "../errors.ts";
import type { Host } from "../host.ts";
import { paths } from "../paths.ts";
import { readJournal, type Journal } from "../journal.ts";
import { domainQemus, pidFileProcess, qemuUuid } from "../processes.ts";

/** Whether libvirt's pid file of the domain names a live process; a name with a slash names none, so whether it runs cannot be told (throws). */
function domainRunning(host: Host, name: string): boolean {
  return pidFileProcess(host, name) !== undefined;
}

/**
 * The domains whose QEMU runs, each with the UUID it was started with: every
 * libvirt pid file naming a live process with -uuid UUID. libvirt always
 * passes -uuid, so a live process without it is no domain's (driver.pid
 * there is libvirt's own daemon). Throws when the directory, a pid file or a
 * command line cannot be read.
 */
export function runningDomains(host: Host): { name: string; uuid: string }[] {
  return host
    .list(paths.libvirtQemuRunDir)
    .filter((entry) => entry.endsWith(".pid"))
    .flatMap((entry) => {
      const name = entry.slice(0, -".pid".length);
      const pid = pidFileProcess(host, name);
      // One that has just exited has no command line left (undefined).
      const uuid = pid === undefined ? undefined : qemuUuid(host, pid);
      return uuid ? [{ name, uuid }] : [];
    });
}

/**
 * Whether the domain of this UUID runs, when no journal names it (a claim's
 * holder whose journal is gone): one of runningDomains. Or why that cannot be
 * told: the directory, a pid file or a command line cannot be read.
 */
export function uuidRunningOrWhyUnknown(host: Host, uuid: string): boolean | string {
  try {
    return runningDomains(host).some((domain) => domain.uuid === uuid);
  } catch (error) {
    return describeError(error);
  }
}

/**
 * A domain as whether it runs is asked: its name (libvirt's pid file), its
 * UUID (undefined only when nothing names it), and, where its XML is known,
 * the user of its <seclabel model='dac'> (Domain.dacUser): a QEMU of its UUID
 * run as that user is its own, as the journal's note makes it at release.
 */
export interface DomainToFind {
  name: string;
  uuid: string | undefined;
  dacUser?: string;
}

/**
 * Whether the domain runs, or why that cannot be told (its pid file, or /proc,
 * cannot be read). A QEMU of its UUID that libvirt lost track of (a libvirtd
 * that crashed: no pid file) runs too: what its journal holds is that guest's.
 * The UUID is asked for everywhere (undefined only when nothing names it), so
 * no command counts such a guest shut off where another counts it running.
 */
export function runningOrWhyUnknown(host: Host, domain: DomainToFind): boolean | string {
  try {
    // The pid file is read once: lostTrackPids would read it again.
    return domainRunning(host, domain.name) || (domain.uuid !== undefined && lostQemus(host, domain.uuid, domain.dacUser).length > 0);
  } catch (error) {
    return describeError(error);
  }
}

/** The live QEMUs with the domain's -uuid when no live process is in its pid file: libvirt has lost track of them. Throws as runningOrWhyUnknown says. */
export function lostTrackPids(host: Host, domain: DomainToFind): number[] {
  return domain.uuid === undefined || domainRunning(host, domain.name) ? [] : lostQemus(host, domain.uuid, domain.dacUser);
}

/**
 * The QEMUs of the UUID, as the hook's release counts them (domainQemus), by
 * what its journal notes; a journal that cannot be read notes nothing. The
 * seclabel user of the XML at hand stands in where no journal names one; a
 * journal that cannot tell it (written before vmhook kept it) has every
 * process of the UUID count, as its release does.
 */
function lostQemus(host: Host, uuid: string, dacUser: string | undefined): number[] {
  let journal: Journal | undefined;
  try {
    journal = readJournal(host, uuid);
  } catch {
    journal = undefined;
  }
  const seclabelUser = journal === undefined ? (dacUser ?? null) : journal.dacUser === undefined ? undefined : (journal.dacUser ?? dacUser ?? null);
  return domainQemus(host, uuid, { qemu: journal?.qemu, dacUser: seclabelUser });
}
