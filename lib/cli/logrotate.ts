// The log's rotation: /var/log/vmhook.log grows by a line per step of every
// event of every VM with vmhook metadata, for as long as the host lives.
// `vmhook install` puts this logrotate config in place when logrotate is
// there and nothing else is; uninstall takes it away only when install wrote
// it and nobody changed it since. The Debian package ships the same text as a
// conffile (packaging/debian/logrotate), which dpkg alone owns: its maintainer
// scripts run install and uninstall with --debian-package, and from then on
// neither writes nor removes it (lib/cli/install.ts), whatever the order of a
// hand install and the package.
import type { Host } from "../host.ts";
import { paths } from "../paths.ts";

export const LOGROTATE_CONFIG = "/etc/logrotate.d/vmhook";

/**
 * A rename is safe: vmhook opens the log for every event with O_APPEND (a
 * hook running meanwhile ends its lines in vmhook.log.1, which delaycompress
 * leaves uncompressed until the next rotation) and creates it when it is
 * missing, so neither copytruncate (it loses lines written during the copy)
 * nor create (it races a hook creating the file) is wanted.
 */
export const LOGROTATE_TEXT = `# vmhook's log: a line per step of every event of every VM with vmhook
# metadata. Written by vmhook install (the Debian package ships it as a
# conffile); vmhook uninstall removes it when it is unchanged. vmhook opens
# the log for every event, appending, and creates it (mode 0640, root's) when
# it is missing: a rotation by rename loses no line, so no copytruncate and
# no create.
${paths.log} {
\tmonthly
\tmaxsize 10M
\trotate 12
\tcompress
\tdelaycompress
\tmissingok
\tnotifempty
\tnocreate
}
`;

/** Whether install is to write the config: logrotate is installed (its directory exists) and nothing is at its place. Says why not. */
export function logrotateWanted(host: Host, notes: string[]): boolean {
  if (!host.stat("/etc/logrotate.d")?.isDirectory) {
    notes.push(`${paths.log} is not rotated: logrotate is not installed (no /etc/logrotate.d); install it and run vmhook install again`);
    return false;
  }
  if (host.stat(LOGROTATE_CONFIG)) {
    if (host.readTrimmed(LOGROTATE_CONFIG) !== LOGROTATE_TEXT.trim()) notes.push(`left ${LOGROTATE_CONFIG} alone: it is not the one vmhook writes (yours, or an older vmhook's)`);
    return false;
  }
  return true;
}

/** Writes the config; install records that it does before it does, so a crash between leaves none it did not record. */
export function installLogrotate(host: Host, notes: string[]): void {
  // logrotate skips a config others may write; readable by all as its neighbours are
  host.createFile(LOGROTATE_CONFIG, LOGROTATE_TEXT, 0o644);
  notes.push(`installed ${LOGROTATE_CONFIG}: ${paths.log} is rotated monthly (or past 10 MiB), the last 12 retained`);
}

/**
 * The Debian package's conffile is dpkg's: never written here. One the
 * administrator deleted stays deleted, as dpkg keeps it on upgrades; said,
 * with the way back.
 */
export function notePackagedLogrotate(host: Host, notes: string[]): void {
  if (!host.stat(LOGROTATE_CONFIG)) notes.push(`${paths.log} is not rotated: ${LOGROTATE_CONFIG}, the Debian package's conffile, was deleted, and dpkg keeps it deleted; to get it back, reinstall the package with dpkg's --force-confmiss`);
}

/** Removes the config install wrote, unless it was changed since: then it is the administrator's and stays, named. */
export function removeLogrotate(host: Host): string[] {
  if (!host.stat(LOGROTATE_CONFIG)) return [];
  if (host.readTrimmed(LOGROTATE_CONFIG) !== LOGROTATE_TEXT.trim()) return [`left ${LOGROTATE_CONFIG}: it was changed since vmhook install wrote it; remove it by hand once ${paths.log} is gone`];
  host.remove(LOGROTATE_CONFIG);
  return [`removed ${LOGROTATE_CONFIG}`];
}
